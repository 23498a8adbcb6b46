"""Temporal and spatial transforms on uint8 tensors (T x H x W x C in, C x T x H x W out)."""
import pytest
import torch

from transforms import (clip_size, clip_start, frame_folder_clip, normalize_batch, pts_window, random_short_side_crop,
                        resized_shape, sample_span, window_positions)
from transforms.spatial import test_crop as make_test_crop  # renamed: pytest would collect test_crop


def test_clip_arithmetic_follows_the_released_loader():
    # X3D-S (13 x 6): 78 source frames at 30 fps, 65 at 25; window offsets as DATA.md lists them
    assert clip_size(13, 6, 30.0) == 78.0 and clip_size(13, 6, 25.0) == 65.0
    assert window_positions(13, sample_span(13, 6, 30.0)).tolist() == [0, 6, 12, 19, 25, 32, 38, 44, 51, 57, 64, 70,
                                                                      77]
    assert [clip_start(300, 78.0, i, 10) for i in (0, 1, 9)] == [0.0, 22.2, 222 * 9 / 10]
    assert pts_window(22.2, 78.0, 300 * 512, 300) == (int(22.2 * 512), int(99.2 * 512))
    # a folder of 100 frames at 30 fps, 3 views: delta 22, view 1 starts at 7.33 -> frames 8..84 and the next, 85
    assert frame_folder_clip(100, 13, 6, 30, 1, 3).tolist() == [8 + o for o in
                                                                [0, 6, 12, 19, 25, 32, 38, 44, 51, 57, 64, 70, 77]]
    assert frame_folder_clip(40, 13, 6, 30, 0, 3).tolist()[-3:] == [39, 39, 39]  # too short: clamped


def test_random_clip_stays_inside():
    g = torch.Generator().manual_seed(0)
    starts = [clip_start(100, 32.0, generator=g) for _ in range(300)]
    assert min(starts) >= 0 and max(starts) <= 100 - 32 and len(set(starts)) == 300


def _ramp(t=4, h=60, w=100):
    x = torch.arange(w, dtype=torch.uint8).view(1, 1, w, 1).expand(t, h, w, 3).clone()
    x[..., 1] = torch.arange(h, dtype=torch.uint8).view(1, h, 1)
    return x


def test_random_crop_shape_dtype_and_flip():
    clip = _ramp()
    out = random_short_side_crop(clip, 32, (40, 50), flip=False)
    assert out.shape == (3, 4, 32, 32) and out.dtype == torch.uint8 and out.is_contiguous()
    assert (out[0, :, :, -1].float() > out[0, :, :, 0].float()).all()  # red grows to the right, no flip
    flips = 0
    for _ in range(40):
        o = random_short_side_crop(clip, 32, (40, 50))
        flips += bool((o[0, 0, 0, 0] > o[0, 0, 0, -1]).item())
    assert 5 < flips < 35


def test_three_test_crops_are_left_center_right_and_top_center_bottom():
    clip = _ramp()
    crops = [make_test_crop(clip, 30, i, 3) for i in range(3)]  # 60x100 -> short side 30 -> 30x50
    assert all(c.shape == (3, 4, 30, 30) for c in crops)
    left = [c[0].float().mean() for c in crops]
    assert left[0] < left[1] < left[2]
    portrait = clip.transpose(1, 2).contiguous()  # 100 x 60: now green varies along x, red along y
    crops = [make_test_crop(portrait, 30, i, 3) for i in range(3)]
    tops = [c[0].float().mean() for c in crops]
    assert tops[0] < tops[1] < tops[2]
    center = make_test_crop(clip, 30, 0, 1, resize=36)
    assert center.shape == (3, 4, 30, 30)
    assert resized_shape(60, 100, 30) == (30, 50) and resized_shape(60, 100, 60) is None


def test_normalize_batch():
    x = torch.full((2, 3, 1, 2, 2), 255, dtype=torch.uint8)
    y = normalize_batch(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, torch.full_like(y, (1 - 0.45) / 0.225))
    y = normalize_batch(torch.zeros_like(x), mean=(0.5, 0.0, 0.25), std=(0.5, 1.0, 0.25))
    assert y[0, :, 0, 0, 0].tolist() == pytest.approx([-1.0, 0.0, -1.0])
