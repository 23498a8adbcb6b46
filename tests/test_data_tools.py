"""tools/: check_dataset finds every broken file and writes a clean CSV; make_annotations and extract_frames
produce data sets that VideoDataset loads."""
import os
import re
import subprocess
import sys

from conftest import REPO
from dataset import VideoDataset
from dataset.synthetic import CLASSES

TOOLS = REPO / "tools"
sys.path.insert(0, str(TOOLS))
import check_dataset  # noqa: E402
import extract_frames  # noqa: E402
import make_annotations  # noqa: E402


def test_check_dataset_lists_every_bad_file(broken_data, tmp_path, capsys):
    bad = check_dataset.main([broken_data["root"], "--splits", "train", "--min-frames", "8",
                              "--out", str(tmp_path), "--workers", "2"])
    printed = capsys.readouterr().out
    assert bad == len(broken_data["bad"]) + 1          # the bad videos and the malformed CSV line
    for rel in broken_data["bad"]:
        assert os.path.normpath(rel) in printed
    assert re.search(r"BAD ENTRY .*train\.csv:\d+: bad line", printed)
    clean = VideoDataset(tmp_path, "train", frames=4, rate=2, train_crop=32, jitter=(40, 48))
    assert clean.num_videos == len(broken_data["good"])
    assert all(clean[i]["bad"] == 0 for i in range(len(clean)))


def test_check_dataset_cli_lists_bad_labels_and_lines_keeps_checking(synthetic_data, tmp_path):
    """A split with labels outside the classes and a malformed line: every one listed with file:line, the good
    rows checked and written to the cleaned CSV, exit status 1 (the tool once died at the first bad label)."""
    source = synthetic_data["kinetics"]
    rows = open(os.path.join(source, "val.csv")).read().splitlines()
    split = tmp_path / "data"
    split.mkdir()
    prefix = os.path.relpath(source, split)
    lines = [f"{prefix}/{row}" for row in rows]
    bad = {2: f"{lines[1].split()[0]} {len(CLASSES) + 5}", 4: "just_one_token", 6: f"{lines[3].split()[0]} -1"}
    for line_no, text in sorted(bad.items()):
        lines.insert(line_no - 1, text)
    (split / "val.csv").write_text("\n".join(lines) + "\n")
    (split / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    result = subprocess.run([sys.executable, str(TOOLS / "check_dataset.py"), str(split), "--splits", "val",
                             "--out", str(tmp_path / "clean"), "--workers", "1", "--quick"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    csv_path = split / "val.csv"
    assert f"{csv_path}:2: label {len(CLASSES) + 5} is outside the {len(CLASSES)} classes" in result.stdout
    assert f"{csv_path}:4: bad line 'just_one_token'" in result.stdout
    assert f"{csv_path}:6: label -1 is outside" in result.stdout
    assert f"val: {len(rows)} good, 0 bad of {len(rows)} videos, 3 bad entries left out" in result.stdout
    clean = VideoDataset(tmp_path / "clean", "val", frames=4, rate=2, train_crop=32, jitter=(40, 48))
    assert clean.num_videos == len(rows) and clean.num_classes == len(CLASSES)


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
