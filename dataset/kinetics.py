"""Kinetics-style single-label video classification in every layout users have, one class for all of them:

  'csv'       <root>/<split>.csv with `path label` lines (paths relative to the CSV's folder or `path_prefix`);
              a path may be a video file or a JPEG frame folder; mmaction's `path num_frames label` also reads
  'official'  <root>/<split>.csv with header label,youtube_id,time_start,time_end,split; files
              <youtube_id>_<start:06d>_<end:06d>.mp4 (or <youtube_id>.mp4) under <root>/<split>/<label>/ or flat
  'tree'      <root>/<split>/<class_name>/<video file>, classes sorted by folder name
  'frames'    <root>/[<split>/]<class_name>/<video_id>/frame_00001.jpg (or img_00001.jpg, 000001.jpg)

A class-name file in root (classes.txt, labels.txt, classInd.txt; or `class_names=`) fixes the label ids.
"""
import csv
import os
import warnings

import torch

from transforms import (TARGET_FPS, clip_size, clip_start, frame_folder_clip, pts_window, random_short_side_crop,
                        sample_span, test_crop, whole_video_indices, window_positions)

from .base import ClipDataset
from .video_io import VideoReadError, frame_folder_pattern, is_video_file, read_frames, read_video_windows

# Frame folders do not say their frame rate; Kinetics frames are usually extracted at the videos' 30 fps.
FRAMES_FPS = 30
CLASS_FILES = ("classes.txt", "labels.txt", "classInd.txt")
SPLIT_ALIASES = {"train": ("train", "training"), "val": ("val", "validate", "validation", "valid"),
                 "test": ("test", "testing")}
OFFICIAL_HEADER = ("label", "youtube_id", "time_start", "time_end")
LAYOUTS = ("auto", "csv", "official", "tree", "frames")


class BadCSVLineWarning(UserWarning):
    """A CSV line that could not be parsed; the message names the file and line number."""


def _aliases(split):
    return SPLIT_ALIASES.get(split, (split,))


def normalize_class_name(name):
    """Folder names write spaces as underscores and sometimes drop quotes; compare names in one spelling."""
    return name.strip().strip('"').replace("_", " ").lower()


def read_class_names(path):
    """One class a line; a leading index (`1 ApplyEyeMakeup`, UCF's classInd.txt) is dropped if every line has one."""
    with open(path, encoding="utf-8") as f:
        lines = [line.strip() for line in f if line.strip()]
    if not lines:
        raise ValueError(f"{path}: class-name file is empty")
    split = [line.split(None, 1) for line in lines]
    if all(len(s) == 2 and s[0].isdigit() for s in split):
        lines = [s[1] for s in split]
    if len(set(lines)) != len(lines):
        raise ValueError(f"{path}: class names repeat")
    return lines


def find_class_file(root):
    for name in CLASS_FILES:
        if os.path.isfile(os.path.join(root, name)):
            return os.path.join(root, name)
    return None


def find_split_csv(root, split):
    for alias in _aliases(split):
        for name in (f"{alias}.csv", f"kinetics_400_{alias}.csv", f"kinetics400_{alias}.csv"):
            if os.path.isfile(os.path.join(root, name)):
                return os.path.join(root, name)
    return None


def find_split_dir(root, split):
    for alias in _aliases(split):
        if os.path.isdir(os.path.join(root, alias)):
            return os.path.join(root, alias)
    return None


def is_official_csv(path):
    with open(path, encoding="utf-8") as f:
        header = f.readline().strip().lower().replace(" ", "")
    return header.startswith(",".join(OFFICIAL_HEADER[:2]))


def detect_layout(root, split):
    csv_path = find_split_csv(root, split)
    if csv_path:
        return "official" if is_official_csv(csv_path) else "csv"
    split_dir = find_split_dir(root, split) or root
    for class_dir in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if class_dir.is_dir():
            for entry in sorted(os.scandir(class_dir.path), key=lambda e: e.name):
                if entry.is_dir():
                    return "frames"
                if is_video_file(entry.name):
                    return "tree"
    raise ValueError(f"{root}: cannot tell the layout of split {split!r}: no {split}.csv and no "
                     f"{split}/<class>/<video or frame folder>")


# ----------------------------------------------------------------------------------------------------------------
# Layout readers: each returns (paths, labels as class names or ints, class names it implies or None)

def read_path_label_csv(csv_path, prefix, strict=False):
    """`path label` lines. A malformed line is reported (file:line) and skipped, or raised with strict=True."""
    paths, labels = [], []
    with open(csv_path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            tokens = line.split()
            if len(tokens) == 1 and line.count(",") == 1:
                tokens = line.split(",")
            if len(tokens) == 3 and tokens[1].isdigit():  # mmaction rawframes: path num_frames label
                tokens = [tokens[0], tokens[2]]
            if len(tokens) != 2 or not tokens[1].lstrip("-").isdigit():
                message = f"{csv_path}:{line_no}: bad line {line!r} (expected 'path label', label an integer)"
                if strict:
                    raise ValueError(message)
                warnings.warn(message, BadCSVLineWarning, stacklevel=2)
                continue
            path = tokens[0] if os.path.isabs(tokens[0]) else os.path.join(prefix, tokens[0])
            paths.append(path)
            labels.append((int(tokens[1]), f"{csv_path}:{line_no}"))
    return paths, labels


def _index_videos(folder):
    """stem -> path of every video file under folder (one walk, instead of one stat per CSV row)."""
    found = {}
    for dirpath, _, names in os.walk(folder):
        for name in names:
            if is_video_file(name):
                found.setdefault(os.path.splitext(name)[0], os.path.join(dirpath, name))
    return found


def official_class_names(root):
    """Sorted label names over every official CSV in root (train, val, ...), so all splits agree on ids."""
    names = set()
    for entry in os.scandir(root):
        if entry.name.endswith(".csv") and is_official_csv(entry.path):
            with open(entry.path, encoding="utf-8") as f:
                names.update(row["label"].strip() for row in csv.DictReader(f) if row.get("label"))
    return sorted(names)


def read_official_csv(csv_path, root, split, strict=False):
    split_dir = find_split_dir(root, split) or root
    index = _index_videos(split_dir)
    paths, labels = [], []
    with open(csv_path, encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        for line_no, row in enumerate(reader, 2):
            try:
                youtube_id = row["youtube_id"].strip()
                start, end = int(float(row["time_start"])), int(float(row["time_end"]))
            except (KeyError, TypeError, ValueError, AttributeError):
                message = f"{csv_path}:{line_no}: bad row {row!r} (expected label,youtube_id,time_start,time_end)"
                if strict:
                    raise ValueError(message) from None
                warnings.warn(message, BadCSVLineWarning, stacklevel=2)
                continue
            label = (row.get("label") or "").strip()
            stem = f"{youtube_id}_{start:06d}_{end:06d}"
            path = index.get(stem) or index.get(youtube_id)
            if path is None:  # keep it: reported as missing (and replaced) when loaded; check_dataset lists it
                path = os.path.join(split_dir, label.replace(" ", "_"), stem + ".mp4")
            paths.append(path)
            labels.append((label, f"{csv_path}:{line_no}"))
    return paths, labels


def read_tree(split_dir, want_folders):
    """<split_dir>/<class>/<video file> (want_folders=False) or <split_dir>/<class>/<frame folder> (True)."""
    paths, labels, classes = [], [], []
    for class_dir in sorted((e for e in os.scandir(split_dir) if e.is_dir()), key=lambda e: e.name):
        classes.append(class_dir.name)
        for entry in sorted(os.scandir(class_dir.path), key=lambda e: e.name):
            if want_folders and entry.is_dir():
                paths.append(entry.path)
            elif not want_folders and is_video_file(entry.name):
                paths.append(entry.path)
            else:
                continue
            labels.append((class_dir.name, class_dir.path))
    return paths, labels, classes


# ----------------------------------------------------------------------------------------------------------------
# Clips, as the authors' released loader picks them (transforms.temporal has the arithmetic)

def clip_windows(meta, frames, rate, views, num_views, target_fps=TARGET_FPS):
    """(start_pts, end_pts, positions) for read_video_windows of the clips `views` (temporal indices of
    `num_views` test views; None: a random training clip). With the header's frame count and duration: the
    released window. Without them (mkv, webm): the released code decodes the whole video and samples it directly;
    the same frames here come from the packet scan's time stamps, without decoding it all."""
    fps = meta["fps"]
    per = target_fps or fps
    size, span = clip_size(frames, rate, fps, per), sample_span(frames, rate, fps, per)
    n = meta["num_frames"]
    windows = []
    for view in views:
        if meta["frame_pts"] is None:
            start_pts, end_pts = pts_window(clip_start(n, size, view, num_views), size, meta["duration_pts"], n)
            windows.append((start_pts, end_pts, window_positions(frames, span).tolist()))
        else:
            index = whole_video_indices(n, frames, span, clip_start(n, span, view, num_views))
            first, last = int(index[0]), int(index[-1])
            windows.append((meta["frame_pts"][first], meta["frame_pts"][last], (index - first).tolist()))
    return windows


def read_clips(path, frames, rate, views, num_views=1, target_fps=TARGET_FPS, frames_fps=FRAMES_FPS,
               min_frames=1, pattern=None, threads=1, min_short_side=None):
    """uint8 T x H x W x 3 clips `views` (temporal indices of `num_views` test views; None: a random training
    clip) of a video file or a JPEG frame folder (at `frames_fps`; `pattern` from frame_folder_pattern if known),
    all from one decoding pass. A video shorter than `min_frames` raises VideoReadError. `min_short_side`: JPEG
    frames may be decoded at a reduced scale that keeps the short side at least this long (read_frames)."""
    if os.path.isdir(path):
        pattern = pattern or frame_folder_pattern(path)
        _check_length(path, pattern[2], min_frames)
        return [read_frames(path, frame_folder_clip(pattern[2], frames, rate, frames_fps, view, num_views,
                                                   target_fps or frames_fps).tolist(), pattern, min_short_side)
                for view in views]
    def plan(meta):
        _check_length(path, meta["num_frames"], min_frames)
        return clip_windows(meta, frames, rate, views, num_views, target_fps)

    clips, _ = read_video_windows(path, plan, threads=threads)
    return clips


def _check_length(path, source_frames, min_frames):
    if source_frames < min_frames:
        raise VideoReadError(f"{path}: too short ({source_frames} frames, need {min_frames})")


def read_test_views(path, frames, rate, crop, temporal_views, spatial_crops, resize, frames_fps=FRAMES_FPS,
                    target_fps=TARGET_FPS, threads=1):
    """uint8 (views, 3, frames, crop, crop) test views of one video file or frame folder, temporal-major (view
    t * spatial_crops + s), the same as VideoDataset's test items; all clips from one decoding pass."""
    clips = read_clips(path, frames, rate, range(temporal_views), temporal_views, target_fps, frames_fps,
                       threads=threads)
    return torch.stack([test_crop(clip, crop, s, spatial_crops, resize) for clip in clips
                        for s in range(spatial_crops)])


class VideoDataset(ClipDataset):
    """Single-label clips from video files or frame folders. See the module docstring for layouts.

    ds[i] or ds[ClipRequest(i, frames, rate, crop)]
        -> {'clip': uint8 (3, T, H, W), 'label', 'video_index', 'view', 'bad', 'unreadable'}.
    Train mode: len = number of videos, one random clip with short-side jitter, random crop and (unless flip=False)
    horizontal flip. Val mode: the same draw, seeded per video (dataset.base).
    Test mode: len = videos * temporal_views * spatial_crops, evenly spaced clips x 1 or 3 crops; a view that cannot
    be read is a zero clip with 'unreadable' 1 (see dataset.base).
    """

    def __init__(self, root, split="train", layout="auto", mode="train", frames=13, rate=6, train_crop=160,
                 jitter=(182, 228), test_crop=182, temporal_views=10, spatial_crops=3, class_names=None,
                 target_fps=TARGET_FPS, max_retries=10, path_prefix=None, frames_fps=FRAMES_FPS,
                 min_video_frames=None, decode_threads=1, strict_csv=False, flip=True, skip_bad_labels=False):
        super().__init__(mode, frames, rate, train_crop, jitter, test_crop, temporal_views, spatial_crops,
                         max_retries, flip)
        if layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
        root = os.fspath(root)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{root}: dataset root is not a folder")
        self.root, self.split = root, split
        self.layout = detect_layout(root, split) if layout == "auto" else layout
        self.target_fps, self.frames_fps = target_fps, frames_fps
        self.min_video_frames = frames if min_video_frames is None else min_video_frames
        self.decode_threads = decode_threads

        paths, labels, implied_classes = list_entries(root, split, self.layout, path_prefix, strict_csv)
        self.class_names, names_from = choose_class_names(class_names, root, self.layout, implied_classes, labels)
        self.num_classes = len(self.class_names)
        paths, self.labels, self.bad_labels = label_ids(paths, labels, self.class_names, names_from, self.mode,
                                                        self.layout, skip_bad_labels)
        self.video_paths = [os.path.normpath(p) for p in paths]
        self.num_videos = len(self.video_paths)
        if self.num_videos == 0:
            raise ValueError(f"{root}: split {split!r} ({self.layout} layout) lists no videos")

    def sample_path(self, video):
        return self.video_paths[video]

    def read_clip(self, path, view, frames, rate, min_short_side=None):
        """uint8 T x H x W x 3 of one clip (before spatial transforms); `min_short_side`: see read_clips."""
        temporal = None if self.random_clips else view // self.spatial_crops
        pattern = self.folder_pattern(path) if os.path.isdir(path) else None
        return read_clips(path, frames, rate, [temporal], self.temporal_views, self.target_fps, self.frames_fps,
                          self.min_video_frames, pattern, self.decode_threads, min_short_side)[0]

    def _load(self, video, view, frames, rate, crop):
        path = self.video_paths[video]
        clip = self.read_clip(path, view, frames, rate, self.reduced_decode_side(crop))
        if self.random_clips:
            clip = random_short_side_crop(clip, crop, self.scaled_jitter(crop), self.flip)
        else:
            clip = test_crop(clip, crop, view % self.spatial_crops, self.spatial_crops, self.test_resize(crop))
        return {"clip": clip, "label": self.labels[video]}

    def unreadable_targets(self, video, frames):
        return {"label": self.labels[video]}


def list_entries(root, split, layout, path_prefix, strict_csv):
    """The files of a split and their labels (names or ints, each with where it was read), as the layout lists
    them -> (paths, [(label, where)], the class names the layout implies or None)."""
    if layout in ("csv", "official"):
        csv_path = find_split_csv(root, split)
        if csv_path is None:
            raise FileNotFoundError(f"{root}: no CSV for split {split!r} (looked for "
                                    f"{', '.join(a + '.csv' for a in _aliases(split))})")
        if layout == "csv":
            paths, labels = read_path_label_csv(csv_path, path_prefix or os.path.dirname(csv_path), strict_csv)
            return paths, labels, None
        paths, labels = read_official_csv(csv_path, root, split, strict_csv)
        return paths, labels, official_class_names(root)
    split_dir = find_split_dir(root, split) or root
    paths, labels, _ = read_tree(split_dir, want_folders=layout == "frames")
    # ids come from the train split's folders so that val/test agree even if they lack a class
    train_dir = find_split_dir(root, "train") or split_dir
    return paths, labels, sorted(e.name for e in os.scandir(train_dir) if e.is_dir())


def choose_class_names(class_names, root, layout, implied_classes, labels):
    """Given > a class file in root > implied by the layout > numbered from the integer labels -> (names, where
    they came from)."""
    names_from = "the class_names argument"
    if isinstance(class_names, (str, os.PathLike)):
        names_from = os.fspath(class_names)
        class_names = read_class_names(class_names)
    elif class_names is None and find_class_file(root):
        names_from = find_class_file(root)
        class_names = read_class_names(names_from)
    elif class_names is None:
        names_from = f"the {layout} layout"
        class_names = implied_classes
    if class_names is None:
        class_names = [str(i) for i in range(max((label for label, _ in labels), default=-1) + 1)]
    return list(class_names), names_from


def label_ids(paths, labels, class_names, names_from, mode, layout, skip_bad_labels):
    """Labels to ids -> (the paths kept, their ids, the problems left out). An unknown class is a configuration
    error, not bad data (skip_bad_labels: the entry is left out and its problem kept, for tools/check_dataset.py)."""
    ids = {normalize_class_name(name): i for i, name in enumerate(class_names)}
    kept, kept_ids, bad_labels = [], [], []
    for path, (label, where) in zip(paths, labels):
        problem = None
        if isinstance(label, int):
            if not 0 <= label < len(class_names):
                problem = f"{where}: label {label} is outside the {len(class_names)} classes"
            else:
                kept_ids.append(label)
        elif mode == "test" and label == "" and layout == "official":
            kept_ids.append(-1)  # the official test split ships without labels
        elif normalize_class_name(label) in ids:
            kept_ids.append(ids[normalize_class_name(label)])
        else:
            problem = (f"{where}: unknown class name {label!r} (not among the {len(class_names)} classes of "
                       f"{names_from})")
        if problem is None:
            kept.append(path)
        elif skip_bad_labels:
            bad_labels.append(problem)
        else:
            raise ValueError(problem)
    return kept, kept_ids, bad_labels
