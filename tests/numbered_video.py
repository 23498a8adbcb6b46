"""Test videos that say which frame they are: each frame carries its frame number as a row of black/white blocks
(bits, least significant first) over a moving texture, so a decoded clip reveals which source frames it holds,
whatever the sampling code did. Plus the authors' released sampling arithmetic written out independently of the
code under test (from the stream's own time stamps), for the tests to compare against."""
import math

import av
import numpy as np
import torch
import torch.nn.functional as F

BIT_BLOCK = 8     # px per bit block: survives H.264 / VP8 at the quality below
NUMBER_BITS = 11  # up to 2047 frames
QUALITY_CRF = "12"


def numbered_frames(count, width, height, seed=0):
    """uint8 (count, H, W, 3): a smooth texture that drifts (so resizes have real detail) + the number blocks."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    phases = rng.uniform(0, 2 * math.pi, 6)
    frames = np.empty((count, height, width, 3), np.uint8)
    for i in range(count):
        for c in range(3):
            wave = (np.sin(x / (7 + 3 * c) + phases[c] + i * 0.21) + np.cos(y / (5 + 2 * c) + phases[c + 3] - i * 0.13))
            frames[i, :, :, c] = np.clip(128 + 60 * wave, 0, 255).astype(np.uint8)
        for bit in range(NUMBER_BITS):
            value = 255 if (i >> bit) & 1 else 0
            frames[i, :BIT_BLOCK, bit * BIT_BLOCK:(bit + 1) * BIT_BLOCK] = value
    return frames


def frame_numbers(clip):
    """The frame numbers written by numbered_frames, read back from uint8 T x H x W x 3 frames."""
    half = BIT_BLOCK // 2
    numbers = []
    for frame in clip:
        bits = [int(frame[half, bit * BIT_BLOCK + half].float().mean() > 128) for bit in range(NUMBER_BITS)]
        numbers.append(sum(b << k for k, b in enumerate(bits)))
    return numbers


def write_numbered_video(path, fps, count, width, height, codec="libx264", keyframe_interval=48):
    options = {"crf": QUALITY_CRF, "g": str(keyframe_interval)} if codec == "libx264" else \
        {"crf": "4", "b:v": "4M", "g": str(keyframe_interval)}
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for array in numbered_frames(count, width, height):
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return str(path)


def released_clip_frames(path, frames, rate, view, views, target_fps=30):
    """Source frame numbers (positions in presentation order) of test view `view` of `views`, as the authors'
    released PyAV loader picks them: its window from the header's frame count and duration, the frames whose pts
    fall in it plus the next one, linspace over the window; or, when the header has no duration, the whole decoded
    video sampled directly."""
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        fps, n, duration = float(stream.average_rate), stream.frames, stream.duration
        pts = sorted(frame.pts for frame in container.decode(stream))
    if duration is None or not n:
        size = frames * rate * fps / target_fps
        start = max(len(pts) - size, 0) * view / views
        index = torch.linspace(start, start + size - 1, frames).clamp(0, len(pts) - 1).long()
        return index.tolist()
    size = rate * frames / target_fps * fps
    start = max(n - size, 0) * view / views
    per_frame = duration / n
    start_pts, end_pts = int(start * per_frame), int((start + size - 1) * per_frame)
    window = [k for k, p in enumerate(pts) if start_pts <= p <= end_pts]
    after = [k for k, p in enumerate(pts) if p > end_pts]
    window += after[:1]
    index = torch.linspace(0, frames * rate * fps / target_fps - 1, frames).clamp(0, len(window) - 1).long()
    return [window[i] for i in index.tolist()]


def released_spatial(clip_thwc, size, crop, spatial_index):
    """Normalized float C x T x crop x crop as the released code makes a test view: normalize, short side to `size`
    with plain bilinear (floor long side, none when it already fits), crop at ceil offsets."""
    x = (clip_thwc.float() / 255 - 0.45) / 0.225
    x = x.permute(3, 0, 1, 2)
    h, w = x.shape[-2:]
    if not ((w <= h and w == size) or (h <= w and h == size)):
        new_h, new_w = (int(math.floor(h / w * size)), size) if w < h else (size, int(math.floor(w / h * size)))
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False)
    h, w = x.shape[-2:]
    top, left = math.ceil((h - crop) / 2), math.ceil((w - crop) / 2)
    if h > w:
        top = [0, top, h - crop][spatial_index]
    else:
        left = [0, left, w - crop][spatial_index]
    return x[:, :, top:top + crop, left:left + crop]
