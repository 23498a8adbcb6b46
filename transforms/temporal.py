"""Which frames a clip takes, with the arithmetic of the authors' released X3D loaders (SlowFast), so that their
weights see the frames they were trained and tested on.

Kinetics (video files and frame folders): the video is not resampled. A clip of `frames` samples every `rate`
frames of a `target_fps` (30) video covers `clip_size = rate * frames / target_fps * fps` of the video's own frames,
a float. Test view i of `views` starts at `delta * i / views` and a training clip at a uniform float in
`[0, delta]`, `delta = max(n - clip_size, 0)`; the window holds the frames from the start to `start + clip_size - 1`
plus the next one, and the clip takes window positions `linspace(0, span - 1, frames)`, clamped to the window,
truncated. A video file's window is cut on its time stamps (dataset.video_io); a frame folder's on exact frame
times (`frame_folder_clip`).

Charades (frame folders, no fps conversion): frame i of a clip is `start + i * rate`, clamped to the video.
"""
import math

import torch

TARGET_FPS = 30  # the frame rate at which a model's `rate` is counted (the authors' target_fps)


def clip_size(frames, rate, fps, target_fps=TARGET_FPS):
    """Source frames one clip covers, a float; this operation order is the released window's (see sample_span)."""
    return rate * frames / target_fps * fps


def sample_span(frames, rate, fps, target_fps=TARGET_FPS):
    """The same length in the order the released code computes it for the linspace (it can differ in the last bit,
    and a truncated position with it)."""
    return frames * rate * fps / target_fps


def clip_start(num_frames, size, view=None, views=1, generator=None):
    """Float start of test view `view` of `views`, or of a training clip (view None: uniform in [0, delta], torch
    RNG so that DataLoader workers differ)."""
    delta = max(num_frames - size, 0)
    if view is None:
        return float(torch.rand((), dtype=torch.float64, generator=generator)) * delta
    return delta * view / views


def window_positions(frames, span):
    """Positions in a clip's window (before clamping to the window's length) of its `frames` samples."""
    return torch.linspace(0, span - 1, frames).long()


def pts_window(start, size, duration_pts, num_frames):
    """(start_pts, end_pts) of a clip's window in a video whose header gives its duration (in time-base units) and
    frame count; `duration / n` first, as the released code divides."""
    per_frame = duration_pts / num_frames
    return int(start * per_frame), int((start + size - 1) * per_frame)


def whole_video_indices(num_frames, frames, span, start):
    """Frame indices where the whole video is at hand (a header without a duration): linspace over the clip from
    `start`, clamped, truncated."""
    return torch.linspace(start, start + span - 1, frames).clamp(0, num_frames - 1).long()


def frame_folder_clip(num_frames, frames, rate, fps, view=None, views=1, target_fps=TARGET_FPS, generator=None):
    """Frame indices of a clip from a folder of `num_frames` frames at `fps`: the video-file rule on exact frame
    times (frame k shown at k / fps), so the window runs from the first frame at or after the start to the last at
    or before the end, plus the next one."""
    size = clip_size(frames, rate, fps, target_fps)
    start = clip_start(num_frames, size, view, views, generator)
    first = min(math.ceil(start), num_frames - 1)
    last = min(math.floor(start + size - 1) + 1, num_frames - 1)
    positions = window_positions(frames, sample_span(frames, rate, fps, target_fps))
    return first + positions.clamp(max=last - first)


def charades_clip(num_frames, frames, rate, view=None, views=1, generator=None):
    """Frame indices of a Charades clip: `start + i * rate` clamped to the video. Test view i of `views` starts at
    round(gap * i), gap = max(n - length, 0) / (views - 1) (one view: the middle); training at a uniform integer in
    [0, n - length] (or [n - length, 0] when the video is shorter than the clip)."""
    length = (frames - 1) * rate + 1
    if view is None:
        low, high = sorted((0, num_frames - length))
        start = int(torch.randint(low, high + 1, (1,), generator=generator))
    elif views > 1:
        start = int(round(max(num_frames - length, 0) / (views - 1) * view))
    else:
        start = max(num_frames - length, 0) // 2
    return torch.tensor([max(min(start + i * rate, num_frames - 1), 0) for i in range(frames)])
