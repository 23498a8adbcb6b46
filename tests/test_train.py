"""The training engine through the real Kinetics script, on real synthetic mp4s: cycles, DDP, resume, NaN, -npu."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from types import SimpleNamespace

import engine
from conftest import REPO
from dataset import VideoDataset
from multigrid import MultigridBatchSampler
from train_x3d_kinetics_multigrid import KineticsTask

SCRIPT = str(REPO / "train_x3d_kinetics_multigrid.py")


@pytest.fixture(scope="module")
def kinetics_data(tmp_path_factory):
    """120 train / 10 val real mp4s (12 / 1 per class): room for a short cycle's 64 + 32 + 16 clips."""
    from dataset import ensure_synthetic
    root = tmp_path_factory.mktemp("train_data")
    return ensure_synthetic(root, seed=1, videos_per_class=12, val_per_class=1, charades=False, frames=False,
                            official=False)["kinetics"]


def tiny_args(data, out, *extra):
    """X3D-XS at 4 x 32 px: a real network, small enough for a few CPU steps per second."""
    return ["--data", str(data), "--version", "XS", "--frames", "4", "--rate", "4", "--crop", "32",
            "--test-crop", "32", "--jitter", "32", "40", "--batch-size", "2", "--lr", "0.05", "--warmup-epochs", "0",
            "--workers", "0", "--precise-bn-batches", "2", "--test-views", "2x1", "--output", str(out / "models"),
            "--logs", str(out / "logs"), "--run-name", "run", "--seed", "3", *extra]


def final_weights(out, name="run"):
    return torch.load(out / "models" / name / "last.pt", weights_only=True)


@pytest.mark.parametrize("cycles", [("--long-cycle", "--short-cycle"), ("--long-cycle", "--no-short-cycle"),
                                    ("--no-long-cycle", "--short-cycle"), ("--no-long-cycle", "--no-short-cycle")])
def test_training_steps_with_each_cycle_option(kinetics_data, tmp_path, cycles):
    engine.main(KineticsTask(), tiny_args(kinetics_data, tmp_path, "--epochs", "1", "--max-steps", "2", *cycles))
    checkpoint = final_weights(tmp_path)
    assert checkpoint["state"]["global_step"] >= 2
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    logs = tmp_path / "logs" / "run"
    steps = [line for line in (logs / "metrics.jsonl").read_text().splitlines() if '"kind": "step"' in line]
    assert len(steps) >= 2 and (logs / "training.png").stat().st_size > 0 and (logs / "args.json").exists()
    assert (logs / "predictions_2x1.csv").read_text().startswith("video,path,label,label_name,views,top5_ids")


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_trains_on_cpu(kinetics_data, tmp_path, amp):
    """--amp with multigrid's split BN and the CPU depthwise backward (bf16 once crashed there: autocast does not
    cover a custom backward); fp16 keeps its GradScaler state in the checkpoint."""
    engine.main(KineticsTask(), tiny_args(kinetics_data, tmp_path, "--epochs", "1", "--max-steps", "2",
                                          "--amp", amp))
    checkpoint = final_weights(tmp_path)
    assert checkpoint["state"]["global_step"] >= 2
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())
    assert all(v.dtype != torch.bfloat16 and v.dtype != torch.float16 for v in checkpoint["model"].values())
    if amp == "fp16":
        assert checkpoint["scaler"]["scale"] > 0


def test_adamw_option_trains_without_decay_on_bn(kinetics_data, tmp_path):
    engine.main(KineticsTask(), tiny_args(kinetics_data, tmp_path, "--epochs", "1", "--max-steps", "2",
                                          "--optimizer", "adamw", "--lr", "0.001", "--no-flip"))
    checkpoint = final_weights(tmp_path)
    groups = checkpoint["optimizer"]["param_groups"]
    assert "amsgrad" in groups[0] and [g["weight_decay"] for g in groups] == [5e-5, 0.0]   # AdamW's state
    assert checkpoint["state"]["global_step"] >= 2


def run_script(args, **kwargs):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          **kwargs)


def test_two_cpu_processes_agree_with_one(kinetics_data, tmp_path):
    """gloo DDP: rank r takes samples r, r + 2, ... of each global batch, exactly sub-batch norm's sample-i-mod-k
    grouping, so with the short cycle's 64 / 32 / 16 clips (8 / 4 / 2 BN splits in one process, 4 / 2 / 1 per rank
    in two) both runs normalize the same groups and must train the same weights."""
    common = ["--epochs", "1", "--no-long-cycle", "--short-cycle", "--batch-size", "16", "--max-steps", "3",
              "--dropout", "0", "--precise-bn-batches", "0", "--eval-every", "100"]
    one, two = tmp_path / "one", tmp_path / "two"
    result = run_script(tiny_args(kinetics_data, one, *common))
    assert result.returncode == 0, result.stderr[-3000:]
    result = run_script(tiny_args(kinetics_data, two, *common, "--nproc", "2"))
    assert result.returncode == 0, result.stderr[-3000:]
    a, b = final_weights(one)["model"], final_weights(two)["model"]
    compared = 0
    for key, value in a.items():
        if "running" in key or "num_batches" in key:   # per-rank BN buffers differ by design
            continue
        assert torch.allclose(value, b[key], atol=1e-5, rtol=1e-4), key
        compared += 1
    assert compared > 100 and not torch.equal(a["head.fc.weight"], torch.zeros_like(a["head.fc.weight"]))


def test_resume_after_kill_ends_with_the_same_weights(kinetics_data, tmp_path):
    args = ["--epochs", "2", "--deterministic", "--no-short-cycle", "--steps", "0", "1"]
    uninterrupted, interrupted = tmp_path / "a", tmp_path / "b"
    result = run_script(tiny_args(kinetics_data, uninterrupted, *args))
    assert result.returncode == 0, result.stderr[-3000:]

    process = subprocess.Popen([sys.executable, SCRIPT, *tiny_args(kinetics_data, interrupted, *args)], cwd=REPO,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoint = interrupted / "models" / "run" / "last.pt"
    deadline = time.time() + 300
    while not checkpoint.exists() and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)            # no chance to save anything: the last epoch's file must do
    process.wait()
    assert process.returncode == -signal.SIGKILL, "the run ended before it could be interrupted"
    resumed_from = torch.load(checkpoint, weights_only=True)["state"]["epoch"]
    final_epoch = final_weights(uninterrupted)["state"]["epoch"]
    assert 0 < resumed_from < final_epoch

    result = run_script(tiny_args(kinetics_data, interrupted, *args, "--resume", str(checkpoint)))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "resumed" in result.stdout
    a, b = final_weights(uninterrupted), final_weights(interrupted)
    assert a["state"]["epoch"] == b["state"]["epoch"] and a["state"]["global_step"] == b["state"]["global_step"]
    for key, value in a["model"].items():
        assert torch.equal(value, b["model"][key]), key


class NaNAfterTwoSteps(KineticsTask):
    def __init__(self):
        self.calls = 0

    def loss(self, logits, batch):
        self.calls += 1
        loss = super().loss(logits, batch)
        return loss if self.calls <= 2 else loss * float("nan")


def test_non_finite_losses_are_skipped_then_the_run_stops_with_good_weights(kinetics_data, tmp_path, capsys):
    with pytest.warns(UserWarning, match="non-finite loss"):
        with pytest.raises(SystemExit) as stop:
            engine.main(NaNAfterTwoSteps(), tiny_args(kinetics_data, tmp_path, "--epochs", "40", "--no-long-cycle",
                                                      "--no-short-cycle", "--eval-every", "100"))
    assert stop.value.code == 3
    assert f"{engine.MAX_BAD_STEPS} non-finite losses in a row" in capsys.readouterr().out
    checkpoint = final_weights(tmp_path)
    assert checkpoint["state"]["global_step"] == 2
    assert all(torch.isfinite(v).all() for v in checkpoint["model"].values() if v.is_floating_point())


def test_npu_without_torch_npu_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch_npu", None)      # makes `import torch_npu` fail even where installed
    with pytest.raises(SystemExit, match="torch_npu.*install"):
        engine.main(KineticsTask(), ["-npu", "0"])


def test_i3d_trains_and_reloads_through_the_same_script(kinetics_data, tmp_path):
    engine.main(KineticsTask(), tiny_args(kinetics_data, tmp_path, "--arch", "i3d_r50", "--epochs", "1",
                                          "--max-steps", "2", "--no-long-cycle", "--no-short-cycle"))
    checkpoint = final_weights(tmp_path)
    assert checkpoint["arch"] == "i3d_r50" and checkpoint["state"]["global_step"] == 2
    assert "layer4.2.conv3.weight" in checkpoint["model"]
    engine.main(KineticsTask(), tiny_args(kinetics_data, tmp_path, "--arch", "i3d_r50", "--test-only",
                                          "--finetune", str(tmp_path / "models" / "run" / "last.pt"),
                                          "--run-name", "reload"))
    assert (tmp_path / "logs" / "reload" / "predictions_2x1.csv").read_text().count("\n") > 1


def test_one_loader_pass_serves_every_epoch_and_logs_the_data_wait(kinetics_data, tmp_path):
    """Worker processes over several epochs and phases (one loader pass for the whole run): every epoch takes its
    own number of steps, and every step records how long it waited for data."""
    engine.main(KineticsTask(), tiny_args(kinetics_data, tmp_path, "--epochs", "2", "--workers", "2",
                                          "--steps", "0", "1", "--eval-every", "100"))
    records = [json.loads(line) for line in (tmp_path / "logs" / "run" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    epochs = [r for r in records if r["kind"] == "epoch"]
    schedule = engine.make_schedule(SimpleNamespace(batch_size=2, frames=4, crop=32, rate=4, steps=[0, 1],
                                                    epochs=2, long_cycle=True, short_cycle=True,
                                                    lr_policy="cosine", gamma=0.1, warmup_epochs=0,
                                                    warmup_start=0.025, optimizer="sgd"), 1)
    sampler = MultigridBatchSampler(VideoDataset(kinetics_data, "train").num_videos, schedule)
    expected = []
    for epoch in range(schedule.max_epoch):
        sampler.set_epoch(epoch)
        expected.append(len(sampler))
    assert [sum(1 for r in steps if int(r["epoch"]) == e) for e in range(schedule.max_epoch)] == expected
    assert len(epochs) == schedule.max_epoch and len({r["phase"] for r in epochs}) > 1
    assert all(0 <= r["data_wait"] <= r["step_seconds"] for r in steps)
    assert all(0 <= r["data_wait"] <= 1 for r in epochs)
