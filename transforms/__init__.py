"""Clip transforms on uint8 tensors: temporal (which frames) and spatial (which pixels); normalization on device."""
from .spatial import MEAN, STD, normalize_batch, random_short_side_crop, short_side_resize, test_crop
from .temporal import clip_indices, clip_span, random_clip, uniform_clip

__all__ = ["MEAN", "STD", "normalize_batch", "random_short_side_crop", "short_side_resize", "test_crop",
           "clip_indices", "clip_span", "random_clip", "uniform_clip"]
