"""predict.py on real files (good, broken, missing), ONNX export parity, PyTorch vs ONNX Runtime evaluation parity.
Small on purpose: X3D-XS at 4 x 64 x 64 with a few views."""
import csv
import json
import re

import pytest
import torch

import engine
import evaluate
import export_onnx
import predict
from conftest import failing_once
from dataset import ensure_synthetic
from dataset.synthetic import CLASSES, render_video, write_jpegs, write_mp4
from x3d import generate_model

FRAMES, CROP = 4, 64
SMALL = ["--version", "XS", "--frames", str(FRAMES), "--crop", str(CROP)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """Random XS weights with a classifier scaled up, so logits spread and top-k has no near-ties."""
    torch.manual_seed(0)
    model = generate_model("XS", n_classes=len(CLASSES))
    with torch.no_grad():
        model.head.fc.weight.normal_(0, 1.0)
    path = tmp_path_factory.mktemp("weights") / "xs_10.pt"
    torch.save({"model_state": model.state_dict(), "epoch": 0}, path)
    return path


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("inputs")
    frames = render_video(1, [("move_right", 0.0, 1.5)], 80, 60, 30, 1.5)
    write_mp4(str(root / "good.mp4"), frames, 30)
    write_jpegs(str(root / "frames_dir"), frames, "frame_{:05d}.jpg")
    data = (root / "good.mp4").read_bytes()
    (root / "broken.mp4").write_bytes(data[: len(data) // 3])      # cut short: the index at the end is gone
    (root / "garbage.webm").write_bytes(b"\x00not a video" * 200)
    return root


def _run_predict(args, capsys):
    code = predict.main(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_predict_real_h264_video(fixtures_dir, capsys):
    video = fixtures_dir / "bigbuckbunny.mp4"
    code, out, err = _run_predict([str(video), "--weights", str(fixtures_dir / "x3d_xs_slowfast_format.pyth"),
                                   "--views", "2x1", *SMALL], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[1].startswith(str(video)) and "2 views" in lines[1]
    ranked = [re.match(r"\s+(\d)\.\s+([\d.]+)%\s+(.+)", line) for line in lines[2:7]]
    assert all(ranked) and [int(m.group(1)) for m in ranked] == [1, 2, 3, 4, 5]
    names = open(predict.DEFAULT_LABELS).read().splitlines()
    assert all(m.group(3) in names for m in ranked)             # Kinetics-400 names by default
    probs = [float(m.group(2)) for m in ranked]
    assert probs == sorted(probs, reverse=True) and sum(probs) <= 100.01


def test_kinetics_labels_file():
    names = open(predict.DEFAULT_LABELS).read().splitlines()
    assert len(names) == len(set(names)) == 400 and names == sorted(names)
    assert names[0] == "abseiling" and names[-1] == "zumba"


def test_predict_good_broken_and_missing_together(inputs, checkpoint, capsys, tmp_path):
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(CLASSES) + "\n")
    paths = [inputs / "good.mp4", inputs / "broken.mp4", inputs / "missing.mp4", inputs / "frames_dir",
             inputs / "garbage.webm"]
    code, out, err = _run_predict([*map(str, paths), "--weights", str(checkpoint), "--labels", str(labels),
                                   "--views", "3x3", "--json", *SMALL], capsys)
    assert code == 1
    report = json.loads(out)
    by_path = {r["path"]: r for r in report["results"]}
    assert [r["path"] for r in report["results"]] == list(map(str, paths))
    for good in ("good.mp4", "frames_dir"):
        result = by_path[str(inputs / good)]
        assert result["ok"] and result["views"] == 9 and len(result["top"]) == 5
        assert all(entry["class"] in CLASSES for entry in result["top"])
    # the mp4 and the frame folder hold the same frames: the same top class
    top_class = {name: by_path[str(inputs / name)]["top"][0]["class"] for name in ("good.mp4", "frames_dir")}
    assert top_class["good.mp4"] == top_class["frames_dir"]
    for bad in ("broken.mp4", "missing.mp4", "garbage.webm"):
        result = by_path[str(inputs / bad)]
        assert not result["ok"] and str(inputs / bad) in result["error"]
        assert str(inputs / bad) in err
    assert "3 of 5 inputs failed" in err


def test_predict_reads_an_input_again_after_a_passing_error(inputs, checkpoint, monkeypatch, capsys):
    """As the datasets' test views: a read that fails once (a network file system's hiccup) is tried again."""
    failures = []
    monkeypatch.setattr(predict, "read_test_views", failing_once(predict.read_test_views, failures))
    code, out, err = _run_predict([str(inputs / "good.mp4"), "--weights", str(checkpoint), "--views", "2x1",
                                   *SMALL], capsys)
    assert code == 0 and failures == [str(inputs / "good.mp4")] and "2 views" in out, err


def test_predict_without_weights_warns(inputs, capsys):
    code, out, err = _run_predict([str(inputs / "good.mp4"), "--views", "1", *SMALL], capsys)
    assert code == 0 and "RANDOM weights" in err and "1 views" in out


def test_predict_bad_weights_is_a_clear_error(inputs, tmp_path, capsys):
    code, _, err = _run_predict([str(inputs / "good.mp4"), "--weights", str(tmp_path / "nope.pyth"), *SMALL], capsys)
    assert code == 2 and "nope.pyth" in err


@pytest.fixture(scope="module")
def onnx_model(checkpoint, tmp_path_factory):
    path = tmp_path_factory.mktemp("onnx") / "xs.onnx"
    assert export_onnx.main(["--weights", str(checkpoint), "--out", str(path), "--no-check", *SMALL]) == 0
    return path


def test_export_parity_dynamic_batch(checkpoint, onnx_model, capsys):
    from inference import load_model
    model = load_model("XS", str(checkpoint), verbose=False)
    difference = export_onnx.check_parity(model, str(onnx_model), FRAMES, CROP, batches=(1, 3))
    print(f"export parity: max abs logits difference {difference:.3g}")
    assert difference <= 1e-4
    import onnxruntime as ort
    session = ort.InferenceSession(str(onnx_model), providers=["CPUExecutionProvider"])
    assert session.get_inputs()[0].shape[0] == "batch"
    assert session.get_modelmeta().custom_metadata_map["x3d_version"] == "XS"


def test_export_cli_fp16_from_authors_checkpoint(fixtures_dir, tmp_path, capsys):
    """Weights in the authors' SlowFast format, float16 export; the CLI checks and prints the parity number."""
    out_path = tmp_path / "xs_fp16.onnx"
    assert export_onnx.main(["--weights", str(fixtures_dir / "x3d_xs_slowfast_format.pyth"), "--out", str(out_path),
                             "--fp16", *SMALL]) == 0
    match = re.search(r"max abs logits difference (\S+) .* OK", capsys.readouterr().out)
    assert match and float(match.group(1)) <= export_onnx.PARITY_TOLERANCE_FP16


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return ensure_synthetic(tmp_path_factory.mktemp("synthetic") / "set", videos_per_class=0, val_per_class=1,
                            charades=False, frames=False, official=False, workers=2)


def test_evaluation_parity_pytorch_vs_onnxruntime(synthetic, checkpoint, onnx_model, capsys, tmp_path):
    from inference import make_predictor
    root = synthetic["kinetics"]
    dataset, loader = evaluate.build_loader(root, "val", FRAMES, 12, CROP, (64, 80), (3, 1), 8, 0)
    results = {}
    for backend in ("pytorch", "onnxruntime"):
        predictor = make_predictor(backend, version="XS", weights=str(checkpoint), onnx=str(onnx_model),
                                   verbose=False)
        results[backend] = evaluate.evaluate_views(predictor, loader, dataset.num_videos, dataset.num_classes)
    a, b = results["pytorch"], results["onnxruntime"]
    assert (a["views"] == 3).all() and a["clips"] == 3 * dataset.num_videos
    assert (a["top1"], a["top5"]) == (b["top1"], b["top5"])
    assert torch.equal(a["labels"], b["labels"])
    assert (a["scores"] - b["scores"]).abs().max() <= 1e-5
    assert torch.equal(a["scores"].argmax(1), b["scores"].argmax(1))

    # the CLI prints the same numbers (here with the ONNX model) and writes a per-video CSV
    csv_path = tmp_path / "predictions.csv"
    code = evaluate.main(["--data", root, "--backend", "onnxruntime", "--onnx", str(onnx_model), "--views", "3",
                          "--workers", "0", "--out", str(csv_path), *SMALL])
    out = capsys.readouterr().out
    assert code == 0, out
    printed = re.search(r"video top-1 ([\d.]+)%\s+top-5 ([\d.]+)%", out).groups()
    assert printed == (f"{a['top1']:.2f}", f"{a['top5']:.2f}")
    rows = csv_path.read_text().splitlines()
    assert len(rows) == 1 + dataset.num_videos and rows[0].startswith("video,path,label")


def test_parse_views():
    assert evaluate.parse_views("10x3") == (10, 3) and evaluate.parse_views("30") == (10, 3)
    assert evaluate.parse_views(1) == (1, 1) and evaluate.parse_views("3") == (3, 1)
    with pytest.raises(ValueError):
        evaluate.parse_views("10x2")


# --- checkpoints of the training scripts describe themselves ---------------------------------------------------------

@pytest.fixture(scope="module")
def labelled_set(tmp_path_factory):
    """1 train / 1 val real mp4 per class: enough for one training step and a test over every class."""
    return ensure_synthetic(tmp_path_factory.mktemp("labelled") / "set", videos_per_class=1, val_per_class=1,
                            charades=False, frames=False, official=False, workers=2)["kinetics"]


def read_predictions(path):
    """video path -> (top-5 ids, top-5 probabilities) of a per-video predictions CSV."""
    with open(path, newline="") as f:
        return {row["path"]: ([int(i) for i in row["top5_ids"].split()], [float(p) for p in row["top5_probs"].split()])
                for row in csv.DictReader(f)}


def assert_same_predictions(expected, got, tolerance=1e-5):
    assert expected.keys() == got.keys()
    for path, (ids, probs) in expected.items():
        assert max(abs(a - b) for a, b in zip(probs, got[path][1])) <= tolerance, path
        if probs[0] - probs[1] > tolerance:                     # a clear winner: the same class
            assert ids[0] == got[path][0][0], path


@pytest.mark.parametrize("arch,version,other", [("x3d", "XS", "S"), ("x3d", "S", "XS"), ("x3d", "M", "S"),
                                                ("x3d", "L", "XL"), ("x3d", "XL", "L"), ("i3d_r50", None, "S")])
def test_training_checkpoint_gives_model_recipe_and_classes(labelled_set, tmp_path, capsys, arch, version, other):
    """A checkpoint of the training script (each X3D version, and I3D) through evaluate.py, predict.py and
    export_onnx.py with no --version, --frames, --crop or --labels: evaluate.py reproduces the training script's
    own final test video by video, predict names the checkpoint's classes and samples its clips (predict once built
    X3D-S at 13 frames x 182 px from a demo XS checkpoint), the ONNX file carries the recipe, and a contradicting
    --version is an error."""
    from test_train import tiny_args
    from train_x3d_kinetics_multigrid import KineticsTask
    model_flags = ["--arch", arch] + (["--version", version] if version else [])
    engine.main(KineticsTask(), tiny_args(labelled_set, tmp_path, "--epochs", "1", "--max-steps", "1",
                                          "--no-long-cycle", "--no-short-cycle", "--precise-bn-batches", "0",
                                          "--test-views", "1x1", "--frames", "6", "--rate", "3", "--test-crop", "40",
                                          *model_flags))
    weights = str(tmp_path / "models" / "run" / "last.pt")
    name = f"X3D-{version}" if version else "I3D-R50"
    trained = read_predictions(tmp_path / "logs" / "run" / "predictions_1x1.csv")
    capsys.readouterr()

    out_csv = tmp_path / "evaluate.csv"
    assert evaluate.main(["--data", str(labelled_set), "--weights", weights, "--views", "1x1", "--workers", "0",
                          "--out", str(out_csv)]) == 0
    assert f"evaluating {name} (pytorch-channels_last) on {len(CLASSES)} videos x 1x1 views, clips 6 x 40 px, " \
           "rate 3" in capsys.readouterr().out
    assert_same_predictions(trained, read_predictions(out_csv))

    video = next(iter(trained))
    code, out, err = _run_predict([video, "--weights", weights, "--views", "1x1", "--json"], capsys)
    assert code == 0, err
    report = json.loads(out)
    assert report["model"] == name and report["clip"] == {"frames": 6, "rate": 3, "crop": 40}
    assert {entry["class"] for entry in report["results"][0]["top"]} <= set(CLASSES)
    code, _, err = _run_predict([video, "--weights", weights, "--version", other], capsys)
    assert code == 2 and "contradicts" in err and name in err

    onnx_path = tmp_path / "run.onnx"
    assert export_onnx.main(["--weights", weights, "--out", str(onnx_path), "--no-check"]) == 0
    assert f"exported {name} to {onnx_path}" in capsys.readouterr().out
    import onnxruntime as ort
    metadata = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"]).get_modelmeta()
    metadata = metadata.custom_metadata_map
    assert (metadata["arch"], metadata.get("x3d_version"), metadata["frames"], metadata["rate"], metadata["crop"]) \
        == (arch, version, "6", "3", "40")
    assert metadata["classes"].split("\n") == list(CLASSES)
    code, out, err = _run_predict([video, "--onnx", str(onnx_path), "--views", "1x1", "--json"], capsys)
    assert code == 0, err
    from_onnx = json.loads(out)
    assert from_onnx["clip"] == report["clip"] and from_onnx["model"] == name
    for a, b in zip(report["results"][0]["top"], from_onnx["results"][0]["top"]):
        assert abs(a["probability"] - b["probability"]) <= 1e-4
