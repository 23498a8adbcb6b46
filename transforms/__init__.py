"""Clip transforms on uint8 tensors: temporal (which frames) and spatial (which pixels); normalization on device."""
from .spatial import (MEAN, STD, crop_offsets, normalize_batch, random_short_side_crop, resize_crop, resized_shape,
                      test_crop)
from .temporal import (TARGET_FPS, charades_clip, clip_size, clip_start, frame_folder_clip, pts_window, sample_span,
                       whole_video_indices, window_positions)

__all__ = ["MEAN", "STD", "crop_offsets", "normalize_batch", "random_short_side_crop", "resize_crop",
           "resized_shape", "test_crop", "TARGET_FPS", "charades_clip", "clip_size", "clip_start",
           "frame_folder_clip", "pts_window", "sample_span", "whole_video_indices", "window_positions"]
