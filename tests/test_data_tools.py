"""tools/: check_dataset finds every broken file and writes a clean CSV; make_annotations and extract_frames
produce data sets that VideoDataset loads."""
import os
import sys

import pytest

from dataset import VideoDataset
from dataset.synthetic import CLASSES

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools"))
import check_dataset  # noqa: E402
import extract_frames  # noqa: E402
import make_annotations  # noqa: E402


def test_check_dataset_lists_every_bad_file(broken_data, tmp_path, capsys):
    with pytest.warns(UserWarning):  # the malformed CSV line
        bad = check_dataset.main([broken_data["root"], "--splits", "train", "--min-frames", "8",
                                  "--out", str(tmp_path), "--workers", "2"])
    printed = capsys.readouterr().out
    assert bad == len(broken_data["bad"])
    for rel in broken_data["bad"]:
        assert os.path.normpath(rel) in printed
    clean = VideoDataset(tmp_path, "train", frames=4, rate=2, train_crop=32, jitter=(40, 48))
    assert clean.num_videos == len(broken_data["good"])
    assert all(clean[i]["bad"] == 0 for i in range(len(clean)))


def test_make_annotations_from_tree_and_official(synthetic_data, tmp_path):
    make_annotations.main([synthetic_data["kinetics"], "--layout", "tree", "--splits", "train", "val",
                           "--out", str(tmp_path / "tree")])
    ds = VideoDataset(tmp_path / "tree", "val", frames=4, rate=2, train_crop=32, jitter=(40, 48))
    assert ds.layout == "csv" and ds.num_videos == ds.num_classes == len(CLASSES)
    reference = VideoDataset(synthetic_data["kinetics"], "val")
    pairs = {(os.path.basename(p), label) for p, label in zip(ds.video_paths, ds.labels)}
    assert pairs == {(os.path.basename(p), label) for p, label in zip(reference.video_paths, reference.labels)}
    make_annotations.main([synthetic_data["official"], "--splits", "train", "--out", str(tmp_path / "off")])
    ds = VideoDataset(tmp_path / "off", "train", frames=4, rate=2, train_crop=32, jitter=(40, 48))
    assert ds.num_videos == len(CLASSES) and ds[0]["clip"].shape == (3, 4, 32, 32)


def test_extract_frames_is_resumable(synthetic_data, tmp_path):
    out = tmp_path / "frames"
    failed = extract_frames.main([synthetic_data["kinetics"], str(out), "--splits", "val", "--short-side", "48",
                                  "--workers", "2"])
    assert failed == []
    ds = VideoDataset(out, "val", frames=4, rate=2, train_crop=32, jitter=(40, 48))
    assert ds.num_videos == len(CLASSES) and all(os.path.isdir(p) for p in ds.video_paths)
    first = sorted(n for n in os.listdir(ds.video_paths[0]) if not n.startswith("."))
    assert first[0] == "frame_00001.jpg" and len([n for n in first if n.endswith(".jpg")]) == 72
    assert ds[0]["clip"].shape == (3, 4, 32, 32)
    from dataset.video_io import read_jpeg
    assert read_jpeg(os.path.join(ds.video_paths[0], "frame_00001.jpg")).shape == (48, 64, 3)
    stamp = os.path.getmtime(os.path.join(ds.video_paths[0], "frame_00001.jpg"))
    extract_frames.main([synthetic_data["kinetics"], str(out), "--splits", "val", "--workers", "1"])
    assert os.path.getmtime(os.path.join(ds.video_paths[0], "frame_00001.jpg")) == stamp  # skipped: done
