"""Which frames a clip takes. All indices are positions on the target-fps time line (30 fps for Kinetics, the
frame folder's own 24 fps for Charades); a clip of `frames` samples every `rate` frames spans `frames * rate`.

Formulas follow DATA.md (the authors' loaders): indices = floor(linspace(start, start + span - 1, frames)) clamped
to the video; train starts uniformly at random in [0, delta]; test clip i of `views` starts at delta * i / views
(Kinetics) or round(delta * i / (views - 1)) (Charades), with delta = max(n - span, 0).
"""
import torch


def clip_span(frames, rate):
    return frames * rate


def clip_indices(num_frames, frames, rate, start):
    """`frames` indices from `start` over one clip span, clamped to [0, num_frames - 1], rounded down."""
    span = clip_span(frames, rate)
    idx = torch.linspace(float(start), float(start + span - 1), frames)
    return idx.clamp(0, max(num_frames - 1, 0)).floor().long()


def random_clip(num_frames, frames, rate, generator=None):
    """Training: one clip at a uniformly random start (torch RNG, so DataLoader workers differ)."""
    delta = max(num_frames - clip_span(frames, rate), 0)
    start = int(torch.randint(0, delta + 1, (1,), generator=generator))
    return clip_indices(num_frames, frames, rate, start)


def uniform_clip(num_frames, frames, rate, view, views, style="kinetics"):
    """Testing: clip `view` of `views` evenly spaced over the video."""
    delta = max(num_frames - clip_span(frames, rate), 0)
    if style == "charades":
        start = round(delta * view / (views - 1)) if views > 1 else delta // 2
    elif style == "kinetics":
        start = delta * view / views
    else:
        raise ValueError(f"unknown test-clip style {style!r} (expected 'kinetics' or 'charades')")
    return clip_indices(num_frames, frames, rate, start)
