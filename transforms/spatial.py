"""Spatial transforms on uint8 clips, T x H x W x C in, C x T x H x W out. Nothing here makes float clips: a clip
stays uint8 until `normalize_batch` runs on the device, once per batch (4x less memory through the DataLoader).

Resizing is the authors' (SlowFast's): short side to `size` with plain bilinear interpolation
(`F.interpolate(mode="bilinear", align_corners=False)`, no antialiasing) on float frames, the long side
`floor(long / short * size)`, no resize when the short side already is `size`. Only the crop is computed: each
output pixel from the same source pixels and weights F.interpolate uses for it on the whole frame, read from just the
source region the crop needs (the same pixels, up to the final uint8 rounding, for a fraction of the work).
Training crops take PyTorch's uint8 bilinear kernel on the whole frame instead: the same geometry and weights,
pixels within one uint8 level of the float path, about 8x faster (benchmarks/bench_data.py keeps the data loader
ahead of the port's).
"""
import math

import torch
import torch.nn.functional as F

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)
FLIP_PROBABILITY = 0.5


def resized_shape(height, width, size):
    """(height, width) after the short side goes to `size`, the long side floored; None when no resize happens."""
    if (width <= height and width == size) or (height <= width and height == size):
        return None
    if width < height:
        return int(math.floor(float(height) / width * size)), size
    return size, int(math.floor(float(width) / height * size))


def _taps(in_size, out_size, first, count):
    """Source indices and weights of outputs first..first+count-1 of a bilinear resize in_size -> out_size, in
    F.interpolate's float32 arithmetic (align_corners=False: source = (out + 0.5) * in / out - 0.5, clamped at 0)."""
    scale = torch.tensor(in_size, dtype=torch.float32) / out_size
    source = ((torch.arange(first, first + count, dtype=torch.float32) + 0.5) * scale - 0.5).clamp(min=0)
    low = source.long()
    weight = (source - low).clamp(0, 1)
    high = (low + 1).clamp(max=in_size - 1)
    return low, high, weight


def resize_crop(clip, size, top, left, crop):
    """C x T x crop x crop (uint8) of the clip (T x H x W x C) resized to short side `size` (see module doc),
    cropped at (top, left) in the resized frame."""
    t, h, w, c = clip.shape
    shape = resized_shape(h, w, size)
    if shape is None:
        return clip[:, top:top + crop, left:left + crop].permute(3, 0, 1, 2).contiguous()
    rows = _taps(h, shape[0], top, crop)
    cols = _taps(w, shape[1], left, crop)
    row0, row1 = int(rows[0][0]), int(rows[1][-1]) + 1
    col0, col1 = int(cols[0][0]), int(cols[1][-1]) + 1
    region = clip[:, row0:row1, col0:col1]
    # rows first: gathering whole rows is contiguous; then columns on the transposed (T x W x crop x C) result
    upper = region.index_select(1, rows[0] - row0).float()
    lower = region.index_select(1, rows[1] - row0).float()
    vertical = torch.lerp(upper, lower, rows[2].view(1, -1, 1, 1)).transpose(1, 2).contiguous()
    left_px = vertical.index_select(1, cols[0] - col0)
    right_px = vertical.index_select(1, cols[1] - col0)
    out = torch.lerp(left_px, right_px, cols[2].view(1, -1, 1, 1))  # T x crop(x) x crop(y) x C
    return out.add_(0.5).to(torch.uint8).permute(3, 0, 2, 1).contiguous()  # +0.5 then truncate: round (x >= 0)


def random_short_side_crop(clip, crop, jitter, flip=True, generator=None):
    """Train: short side to round(uniform(jitter[0], jitter[1])), a random crop x crop square, flip with p 0.5.
    As the released code draws it: offsets in [0, L - crop) (the last position is never drawn) when L > crop."""
    _, h, w, _ = clip.shape
    uniform = float(jitter[0]) + (float(jitter[1]) - float(jitter[0])) * float(
        torch.rand((), dtype=torch.float64, generator=generator))
    size = max(int(round(uniform)), crop)
    new_h, new_w = resized_shape(h, w, size) or (h, w)
    top = int(torch.randint(0, new_h - crop, (1,), generator=generator)) if new_h > crop else 0
    left = int(torch.randint(0, new_w - crop, (1,), generator=generator)) if new_w > crop else 0
    frames = clip.permute(0, 3, 1, 2)  # a channels-last view: the layout the vectorised uint8 kernel wants
    if (new_h, new_w) != (h, w):
        frames = F.interpolate(frames, size=(new_h, new_w), mode="bilinear", align_corners=False, antialias=False)
    out = frames[:, :, top:top + crop, left:left + crop]
    if flip and float(torch.rand((), generator=generator)) < FLIP_PROBABILITY:
        out = out.flip(-1)
    return out.permute(1, 0, 2, 3).contiguous()


def crop_offsets(height, width, crop, position):
    """(top, left) of test crop `position` (0, 1, 2 = left, center, right; top, center, bottom when the frame is
    taller than wide): ceil((L - crop) / 2) for the center and along the other axis."""
    top, left = math.ceil((height - crop) / 2), math.ceil((width - crop) / 2)
    if height > width:
        top = [0, top, height - crop][position]
    else:
        left = [0, left, width - crop][position]
    return top, left


def test_crop(clip, crop, index, num_crops, resize=None):
    """Test: short side to `resize` (default `crop`), then crop `index` of `num_crops`: with 3, the left/center/right
    squares (top/center/bottom for portrait); with 1, the center square."""
    if num_crops not in (1, 3):
        raise ValueError(f"test crops must be 1 or 3, got {num_crops}")
    size = resize or crop
    _, h, w, _ = clip.shape
    new_h, new_w = resized_shape(h, w, size) or (h, w)
    top, left = crop_offsets(new_h, new_w, crop, index if num_crops == 3 else 1)
    return resize_crop(clip, size, top, left, crop)


def normalize_batch(x, mean=MEAN, std=STD):
    """uint8 B x C x T x H x W (on any device) -> float32 (x / 255 - mean) / std, per channel. Call on the device."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1, 1) * 255.0
    inv_std = 1.0 / (torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1, 1) * 255.0)
    return (x.float() - mean) * inv_std
