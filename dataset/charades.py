"""Charades v1: multi-label clips from JPEG frames `Charades_v1_rgb/<id>/<id>-000001.jpg` (24 fps, 1-based).

A clip's `target` is the union (multi-hot) of the actions that overlap its time span; `frame_targets` (C x T) says
which actions are going on at each sampled frame, for localization. Clips follow the authors' released Charades
loader on the folder's own 24 fps frame line (transforms.charades_clip): frames start + i * rate.
"""
import csv
import os
import warnings

import torch

from metrics import localization_times
from transforms import charades_clip, random_short_side_crop, test_crop

from .base import ClipDataset
from .kinetics import BadCSVLineWarning
from .video_io import VideoReadError, frame_folder_pattern, read_frames

CHARADES_FPS = 24
FRAMES_DIR = "Charades_v1_rgb"
CLASS_FILE = "Charades_v1_classes.txt"


def read_charades_classes(path):
    """`c000 Holding some clothes` lines -> (codes, names)."""
    codes, names = [], []
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(None, 1)
            if len(parts) != 2 or not parts[0].startswith("c"):
                raise ValueError(f"{path}:{line_no}: bad class line {line.strip()!r} (expected 'c000 name')")
            codes.append(parts[0])
            names.append(parts[1])
    if not codes:
        raise ValueError(f"{path}: class file is empty")
    return codes, names


def read_charades_csv(path, class_ids):
    """Rows of Charades_v1_<split>.csv -> list of (id, length_s, [(class, start_s, end_s), ...]). A malformed
    action is reported (file:line) and dropped; an unknown class code is an error naming it."""
    videos = []
    with open(path, encoding="utf-8", newline="") as f:
        for line_no, row in enumerate(csv.DictReader(f), 2):
            video_id = (row.get("id") or "").strip()
            if not video_id:
                warnings.warn(f"{path}:{line_no}: row without an id, skipped", BadCSVLineWarning, stacklevel=2)
                continue
            try:
                length = float(row.get("length") or 0.0)
            except ValueError:
                warnings.warn(f"{path}:{line_no}: bad length {row.get('length')!r}", BadCSVLineWarning, stacklevel=2)
                length = 0.0
            actions = []
            for item in (row.get("actions") or "").split(";"):
                if not item.strip():
                    continue
                parts = item.split()
                try:
                    code, start, end = parts[0], float(parts[1]), float(parts[2])
                except (IndexError, ValueError):
                    warnings.warn(f"{path}:{line_no}: bad action {item!r} (expected 'c000 start end')",
                                  BadCSVLineWarning, stacklevel=2)
                    continue
                if code not in class_ids:
                    raise ValueError(f"{path}:{line_no}: unknown class {code!r} (not in the class file)")
                actions.append((class_ids[code], start, end))
            videos.append((video_id, length, actions))
    return videos


class CharadesDataset(ClipDataset):
    """cds[i] / cds[ClipRequest(i, frames, rate, crop)] -> {'clip' uint8 (3,T,H,W), 'target' (C,),
    'frame_targets' (C,T), 'frame_times' (T,), 'video_index', 'view', 'bad', 'unreadable'}."""

    def __init__(self, root, split="train", mode="train", frames=16, rate=8, train_crop=224, jitter=(256, 320),
                 test_crop=256, temporal_views=10, spatial_crops=3, fps=CHARADES_FPS, max_retries=10,
                 min_video_frames=None, frames_dir=FRAMES_DIR, flip=True):
        super().__init__(mode, frames, rate, train_crop, jitter, test_crop, temporal_views, spatial_crops,
                         max_retries, flip)
        root = os.fspath(root)
        class_file = os.path.join(root, CLASS_FILE)
        csv_path = os.path.join(root, f"Charades_v1_{split}.csv")
        for needed in (class_file, csv_path):
            if not os.path.isfile(needed):
                raise FileNotFoundError(f"{needed}: missing (Charades layout: Charades_v1_train.csv, "
                                        f"Charades_v1_test.csv, {CLASS_FILE}, {frames_dir}/<id>/<id>-000001.jpg)")
        self.root, self.split, self.fps = root, split, fps
        self.frames_root = os.path.join(root, frames_dir)
        self.class_codes, self.class_names = read_charades_classes(class_file)
        self.num_classes = len(self.class_names)
        videos = read_charades_csv(csv_path, {code: i for i, code in enumerate(self.class_codes)})
        if not videos:
            raise ValueError(f"{csv_path}: split {split!r} lists no videos")
        self.video_ids = [v[0] for v in videos]
        self.video_lengths = [v[1] for v in videos]
        self.actions = [v[2] for v in videos]
        self.video_paths = [os.path.join(self.frames_root, v) for v in self.video_ids]
        self.num_videos = len(videos)
        self.min_video_frames = frames if min_video_frames is None else min_video_frames

    def sample_path(self, video):
        return self.video_paths[video]

    def targets_at(self, video, times):
        """(C, len(times)) 0/1: which actions are going on at each time (seconds)."""
        out = torch.zeros(self.num_classes, len(times))
        for cls, start, end in self.actions[video]:
            out[cls] = torch.maximum(out[cls], ((times >= start) & (times <= end)).float())
        return out

    def _load(self, video, view, frames, rate, crop):
        path = self.video_paths[video]
        pattern = self.folder_pattern(path)
        num_frames = pattern[2]
        if num_frames < self.min_video_frames:
            raise VideoReadError(f"{path}: too short ({num_frames} frames, need {self.min_video_frames})")
        temporal = None if self.random_clips else view // self.spatial_crops
        idx = charades_clip(num_frames, frames, rate, temporal, self.temporal_views)
        clip = read_frames(path, idx.tolist(), pattern, self.reduced_decode_side(crop))
        if self.random_clips:
            clip = random_short_side_crop(clip, crop, self.scaled_jitter(crop), self.flip)
        else:
            clip = test_crop(clip, crop, view % self.spatial_crops, self.spatial_crops, self.test_resize(crop))
        times = idx.double() / self.fps  # frame k (0-based) is shown at k / fps
        target = torch.zeros(self.num_classes)
        for cls, start, end in self.actions[video]:
            if start <= float(times[-1]) and end >= float(times[0]):  # overlaps the clip's span
                target[cls] = 1.0
        return {"clip": clip, "target": target, "frame_targets": self.targets_at(video, times),
                "frame_times": times.float()}

    def unreadable_targets(self, video, frames):
        return {"target": torch.zeros(self.num_classes), "frame_targets": torch.zeros(self.num_classes, frames),
                "frame_times": torch.zeros(frames)}


# targets of a whole split, for scoring: the training scripts' metrics and tools/charades_random_baseline.py

def video_targets(dataset):
    """(videos, classes) 0/1: a video's full label set, the union of all its actions."""
    targets = torch.zeros(dataset.num_videos, dataset.num_classes)
    for video, actions in enumerate(dataset.actions):
        for cls, _, _ in actions:
            targets[video, cls] = 1.0
    return targets


def video_lengths(dataset):
    """Seconds per video: the CSV's `length`, or the frame count / fps where the CSV has none."""
    return [length if length > 0 else frame_folder_pattern(dataset.video_paths[v])[2] / dataset.fps
            for v, length in enumerate(dataset.video_lengths)]


def point_targets(dataset, lengths):
    """(videos * 25, classes) 0/1: the actions going on at each official time point (metrics.localization_times)."""
    rows = [dataset.targets_at(v, torch.as_tensor(localization_times(length))).T for v, length in enumerate(lengths)]
    return torch.cat(rows) if rows else torch.zeros(0, dataset.num_classes)
