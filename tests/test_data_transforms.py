"""Temporal and spatial transforms on uint8 tensors (T x H x W x C in, C x T x H x W out)."""
import pytest
import torch

from transforms import clip_indices, normalize_batch, random_clip, random_short_side_crop, short_side_resize, uniform_clip
from transforms.spatial import test_crop as make_test_crop  # renamed: pytest would collect test_crop


def test_clip_indices_formula():
    # linspace(start, start + span - 1, frames), clamped, rounded down (DATA.md)
    assert clip_indices(100, 4, 5, 10).tolist() == [10, 16, 22, 29]
    assert clip_indices(10, 4, 5, 0).tolist() == [0, 6, 9, 9]  # too short: clamped to the last frame


def test_uniform_views_follow_the_authors_formulas():
    n, frames, rate = 300, 13, 6  # span 78, delta 222
    kinetics = [int(uniform_clip(n, frames, rate, i, 10, "kinetics")[0]) for i in range(10)]
    assert kinetics == [int(222 * i / 10) for i in range(10)]
    charades = [int(uniform_clip(n, frames, rate, i, 10, "charades")[0]) for i in range(10)]
    assert charades == [round(222 * i / 9) for i in range(10)]
    assert charades[-1] + 77 == n - 1  # the last Charades view ends at the last frame


def test_random_clip_stays_inside():
    g = torch.Generator().manual_seed(0)
    starts = {int(random_clip(100, 8, 4, generator=g)[0]) for _ in range(300)}
    assert min(starts) >= 0 and max(starts) <= 100 - 32 and len(starts) > 30


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
    assert short_side_resize(clip, 30).shape == (4, 3, 30, 50)


def test_normalize_batch():
    x = torch.full((2, 3, 1, 2, 2), 255, dtype=torch.uint8)
    y = normalize_batch(x)
    assert y.dtype == torch.float32
    assert torch.allclose(y, torch.full_like(y, (1 - 0.45) / 0.225))
    y = normalize_batch(torch.zeros_like(x), mean=(0.5, 0.0, 0.25), std=(0.5, 1.0, 0.25))
    assert y[0, :, 0, 0, 0].tolist() == pytest.approx([-1.0, 0.0, -1.0])
