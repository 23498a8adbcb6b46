"""Spatial transforms on uint8 clips, T x H x W x C in, C x T x H x W out. Nothing here makes float: the clip stays
uint8 until `normalize_batch` runs on the device, once per batch (4x less memory through the DataLoader).

Training crops are cut from the original frame and only the crop is resized: the same pixels as "resize the short
side to S, then crop", at a fraction of the cost (one resize of crop x crop instead of a full frame).
"""
import torch
from torchvision.transforms.v2 import functional as TF

MEAN = (0.45, 0.45, 0.45)
STD = (0.225, 0.225, 0.225)
FLIP_PROBABILITY = 0.5


def _resize(clip_tchw, height, width):
    # uint8 bilinear with antialias has a vectorised CPU kernel; a THWC clip viewed as TCHW is channels-last,
    # the layout that kernel wants, so no copy happens before it.
    if clip_tchw.shape[-2:] == (height, width):
        return clip_tchw
    return TF.resize(clip_tchw, [height, width], antialias=True)


def _to_cthw(clip_tchw):
    return clip_tchw.permute(1, 0, 2, 3).contiguous()


def random_short_side_crop(clip, crop, jitter, flip=True, generator=None):
    """Train: short side to a random size in [jitter[0], jitter[1]], a random crop x crop square, flip with p 0.5."""
    t, h, w, _ = clip.shape
    short = int(torch.randint(int(jitter[0]), int(jitter[1]) + 1, (1,), generator=generator))
    short = max(short, crop)
    scale = short / min(h, w)
    new_h, new_w = round(h * scale), round(w * scale)
    y0 = int(torch.randint(0, new_h - crop + 1, (1,), generator=generator))
    x0 = int(torch.randint(0, new_w - crop + 1, (1,), generator=generator))
    # the same square in original pixels
    side = max(1, round(crop / scale))
    top = min(int(y0 / scale), h - side)
    left = min(int(x0 / scale), w - side)
    out = clip[:, top:top + side, left:left + side].permute(0, 3, 1, 2)
    out = _resize(out, crop, crop)
    if flip and float(torch.rand((1,), generator=generator)) < FLIP_PROBABILITY:
        out = out.flip(-1)
    return _to_cthw(out)


def short_side_resize(clip, short):
    """Resize so the short side is `short` (aspect kept); T x H x W x C in, T x C x H x W out."""
    t, h, w, _ = clip.shape
    scale = short / min(h, w)
    return _resize(clip.permute(0, 3, 1, 2), max(short, round(h * scale)), max(short, round(w * scale)))


def test_crop(clip, crop, index, num_crops, resize=None):
    """Test: short side to `resize` (default `crop`), then crop `index` of `num_crops`: with 3, the left/center/right
    squares (top/center/bottom for portrait); with 1, the center square."""
    resized = short_side_resize(clip, resize or crop)
    _, _, h, w = resized.shape
    if num_crops == 1:
        position = 1
    elif num_crops == 3:
        position = index
    else:
        raise ValueError(f"test crops must be 1 or 3, got {num_crops}")
    top, left = (h - crop) // 2, (w - crop) // 2
    if w >= h:
        left = [0, (w - crop) // 2, w - crop][position]
    else:
        top = [0, (h - crop) // 2, h - crop][position]
    return _to_cthw(resized[:, :, top:top + crop, left:left + crop])


def normalize_batch(x, mean=MEAN, std=STD):
    """uint8 B x C x T x H x W (on any device) -> float32 (x / 255 - mean) / std, per channel. Call on the device."""
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1, 1) * 255.0
    inv_std = 1.0 / (torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1, 1) * 255.0)
    return (x.float() - mean) * inv_std
