"""The training engine through the real Kinetics script, on real synthetic mp4s: cycles, DDP, resume, NaN, -npu."""
import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from types import SimpleNamespace

import config
import engine
import launch
from conftest import REPO
from dataset import VideoDataset
from multigrid import MultigridBatchSampler
from train_x3d_kinetics_multigrid import KineticsTask
import runlog

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
            "--log-dir", str(out / "logs"), "--run-name", "run", "--seed", "3", *extra]


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


def run_script(args, cwd=REPO, **kwargs):
    return subprocess.run([sys.executable, SCRIPT, *args], cwd=cwd, capture_output=True, text=True, timeout=600,
                          **kwargs)


def assert_one_error_line(result, *expected):
    """A user's mistake: exit status 1, `error: ...` naming the problem, no traceback."""
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and all(text in last for text in expected), last


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


def assert_same_weights(a, b):
    """Bit-identical model, optimizer step count and schedule position."""
    assert a["state"]["epoch"] == b["state"]["epoch"] and a["state"]["global_step"] == b["state"]["global_step"]
    different = [key for key, value in a["model"].items() if not torch.equal(value, b["model"][key])]
    assert not different, f"{len(different)} of {len(a['model'])} tensors differ, first: {different[:3]}"


class Watched:
    """A training subprocess whose output lines are collected as they come (for kills at a chosen moment)."""

    def __init__(self, command, **kwargs):
        self.process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                        text=True, bufsize=1, **kwargs)
        self.text = ""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for chunk in iter(lambda: self.process.stdout.read(1), ""):
            self.text += chunk

    def wait_for(self, condition, timeout=300):
        deadline = time.time() + timeout
        while not condition() and self.process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        assert self.process.poll() is None, f"the run ended before the kill point:\n{self.text[-3000:]}"
        assert condition(), "the kill point never came"

    def kill(self, sig=signal.SIGKILL, timeout=300, group=False):
        """`sig` to the process, or with `group` to its whole process group (start it with start_new_session=True),
        as a terminal's Ctrl-C or a SLURM job's cancellation reaches every process: data workers too."""
        if group:
            os.killpg(self.process.pid, sig)
        else:
            self.process.send_signal(sig)
        self.process.wait(timeout)
        self.reader.join(timeout)
        return self.process.returncode


def saved_state(path):
    return torch.load(path, weights_only=True)["state"] if path.exists() else None


def log_records(out):
    return runlog.read_records(out / "logs" / "run")


def assert_log_reads_as_one_run(interrupted, uninterrupted):
    """After kills and resumes, metrics.jsonl holds each step and epoch once, in order, as the uninterrupted run's."""
    def positions(out):
        records = log_records(out)
        return ([r["step"] for r in records if r["kind"] == "step"],
                [r["epoch"] for r in records if r["kind"] == "epoch"], [r["kind"] for r in records].count("test"))
    steps, epochs, tests = positions(interrupted)
    assert (steps, epochs, tests) == positions(uninterrupted), (steps, epochs, tests)
    assert steps == list(range(1, len(steps) + 1)) and epochs == list(range(1, len(epochs) + 1)) and tests == 1


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_exact_resume_with_workers_and_both_cycles_after_kills(kinetics_data, tmp_path, amp):
    """--workers 2 (persistent loader processes), both multigrid cycles, last.pt after every step
    (--checkpoint-minutes): SIGKILL mid-epoch, during an evaluation and right after a phase change (under
    --amp bf16, the CPU's AMP: mid-epoch, then once more with no timed checkpoints, when the log has steps beyond
    last.pt), each time --resume; the final weights equal an uninterrupted run's bit for bit, and metrics.jsonl
    reads as one run: a resume drops the records written after its checkpoint. (Persistent workers once drew
    their seed from the global RNG in whatever epoch the process started: 484 of 568 tensors differed.)"""
    # base batch 1 keeps the long cycle's coarse batches at 8-16 clips; 1 epoch is 2 after multigrid's rescaling
    common = ["--epochs", "1", "--batch-size", "1", "--deterministic", "--workers", "2", "--max-steps", "2",
              "--checkpoint-minutes", "0.00001", "--eval-batch-size", "1", "--precise-bn-batches", "1",
              "--test-views", "1x1", "--amp", amp]
    uninterrupted, interrupted = tmp_path / "a", tmp_path / "b"
    result = run_script(tiny_args(kinetics_data, uninterrupted, *common))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = interrupted / "models" / "run"
    checkpoint = run_dir / "last.pt"

    def log_ahead_of_checkpoint():       # steps logged that last.pt has not got: a resume must drop them
        steps = [r["step"] for r in log_records(interrupted) if r["kind"] == "step"]
        return "resumed" in watched.text and max(steps, default=0) > saved_state(checkpoint)["global_step"]

    kill_points = {
        "mid-epoch": ([], lambda: (saved_state(checkpoint) or {}).get("step_in_epoch", 0) >= 1),
        "evaluation": ([], lambda: "eval:" in watched.text),
        "phase change": ([], lambda: any(run_dir.glob("phase_*.pt"))),
    }
    if amp != "none":
        kill_points = {"mid-epoch": kill_points["mid-epoch"],
                       "log ahead": (["--checkpoint-minutes", "1000"], log_ahead_of_checkpoint)}
    for point, (flags, condition) in kill_points.items():
        resume = ["--resume", str(checkpoint)] if checkpoint.exists() else []
        watched = Watched([sys.executable, SCRIPT, *tiny_args(kinetics_data, interrupted, *common), *flags, *resume])
        watched.wait_for(condition)
        assert watched.kill() == -signal.SIGKILL, point
    state = saved_state(checkpoint)
    assert 0 < state["global_step"] and state["epoch"] < final_weights(uninterrupted)["state"]["epoch"]

    result = run_script(tiny_args(kinetics_data, interrupted, *common, "--resume", str(checkpoint)))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "resuming" in result.stdout and "resumed" in result.stdout
    assert_same_weights(final_weights(uninterrupted), final_weights(interrupted))
    assert_log_reads_as_one_run(interrupted, uninterrupted)


TWO_PROCESSES = ["--nproc", "2", "--workers", "1", "--epochs", "1", "--deterministic", "--no-long-cycle",
                 "--no-short-cycle", "--batch-size", "4", "--max-steps", "3", "--precise-bn-batches", "0",
                 "--test-views", "1x1"]


@pytest.fixture(scope="module")
def two_process_run(kinetics_data, tmp_path_factory):
    """An uninterrupted --nproc 2 run: what the stopped and resumed ones must end with."""
    out = tmp_path_factory.mktemp("two_processes")
    result = run_script(tiny_args(kinetics_data, out, *TWO_PROCESSES))
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def group_is_gone(pgid, timeout=30):
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=lambda sig: sig.name)
def test_a_signal_to_every_process_saves_at_the_same_step_and_resume_is_exact(kinetics_data, two_process_run,
                                                                              tmp_path, sig):
    """--nproc 2 (gloo), a data worker each: SIGTERM (a SLURM preemption or scancel signals every process of the
    job) or SIGINT (Ctrl-C in a terminal signals its process group) to the whole process group, data workers
    included: both training processes stop after the same step and last.pt is saved with both RNG states (exit
    status 143 / 130, no traceback: workers leave the signal to the main process, which counts the launcher's
    copy of the Ctrl-C once), every process ends, and --resume ends with the uninterrupted run's weights bit for bit
    (resumed after SIGTERM only: both signals save through the same path, and the suite's time is kept)."""
    watched = Watched([sys.executable, SCRIPT, *tiny_args(kinetics_data, tmp_path, *TWO_PROCESSES)],
                      start_new_session=True)
    watched.wait_for(lambda: sum(r["kind"] == "step" for r in log_records(tmp_path)) >= 1)
    assert watched.kill(sig, group=True) == 128 + sig, watched.text[-3000:]
    assert f"stopped by {sig.name}: saved" in watched.text and "Traceback" not in watched.text, watched.text[-3000:]
    assert group_is_gone(watched.process.pid), "data workers outlived the run"
    checkpoint = torch.load(tmp_path / "models" / "run" / "last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 0 and checkpoint["state"]["step_in_epoch"] > 0, checkpoint["state"]
    assert len(checkpoint["rng"]) == 2 and not torch.equal(checkpoint["rng"][0]["torch"], checkpoint["rng"][1]["torch"])
    if sig != signal.SIGTERM:
        return
    result = run_script(tiny_args(kinetics_data, tmp_path, *TWO_PROCESSES, "--resume"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(final_weights(two_process_run), final_weights(tmp_path))


def test_sigkill_to_every_process_then_resume_is_exact(kinetics_data, two_process_run, tmp_path):
    """--nproc 2 with a data worker each and a timed last.pt after every step (--checkpoint-minutes): SIGKILL to
    the whole process group mid-epoch (a node lost, a job killed without warning) leaves nothing running, and
    --resume from the last timed checkpoint ends with the uninterrupted run's weights bit for bit."""
    timed_saves = ["--checkpoint-minutes", "0.00001"]
    checkpoint = tmp_path / "models" / "run" / "last.pt"
    watched = Watched([sys.executable, SCRIPT, *tiny_args(kinetics_data, tmp_path, *TWO_PROCESSES, *timed_saves)],
                      start_new_session=True)
    watched.wait_for(lambda: (saved_state(checkpoint) or {}).get("step_in_epoch", 0) >= 1)
    assert watched.kill(signal.SIGKILL, group=True) == -signal.SIGKILL
    assert group_is_gone(watched.process.pid), "processes outlived the kill"
    assert saved_state(checkpoint)["epoch"] == 0

    result = run_script(tiny_args(kinetics_data, tmp_path, *TWO_PROCESSES, *timed_saves, "--resume"))
    assert result.returncode == 0, result.stderr[-3000:]
    assert_same_weights(final_weights(two_process_run), final_weights(tmp_path))


def torchrun_nodes(args, port):
    """Two node agents on this machine, one CPU process each, as `srun` starts one torchrun per node."""
    return [Watched([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                     "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port), SCRIPT,
                     *args]) for rank in (0, 1)]


def finish(nodes, timeout=600):
    for node in nodes:
        node.process.wait(timeout)
        node.reader.join(timeout)
        assert node.process.returncode == 0, node.text[-3000:]


def test_two_torchrun_nodes_train_as_one_process_and_resume_exactly(kinetics_data, tmp_path):
    """torchrun --nnodes 2 (gloo, one process per node) trains the weights of one process (as in
    test_two_cpu_processes_agree_with_one); SIGTERM to both node agents stops the job mid-epoch with last.pt, and
    the same torchrun command with --resume ends bit-identical to the uninterrupted two-node run."""
    common = ["--epochs", "1", "--no-long-cycle", "--short-cycle", "--batch-size", "16", "--max-steps", "3",
              "--dropout", "0", "--precise-bn-batches", "0", "--test-views", "1x1", "--deterministic"]
    one, nodes, stopped = tmp_path / "one", tmp_path / "nodes", tmp_path / "stopped"
    result = run_script(tiny_args(kinetics_data, one, *common))
    assert result.returncode == 0, result.stderr[-3000:]
    finish(torchrun_nodes(tiny_args(kinetics_data, nodes, *common), launch.free_port()))
    a, b = final_weights(one)["model"], final_weights(nodes)["model"]
    for key, value in a.items():
        if "running" not in key and "num_batches" not in key:     # per-rank BN buffers differ by design
            assert torch.allclose(value, b[key], atol=1e-5, rtol=1e-4), key

    port = launch.free_port()
    agents = torchrun_nodes(tiny_args(kinetics_data, stopped, *common), port)
    log = stopped / "logs" / "run" / "metrics.jsonl"
    agents[0].wait_for(lambda: log.exists() and log.read_text().count('"kind": "step"') >= 1)
    for agent in agents:
        agent.process.send_signal(signal.SIGTERM)
    for agent in agents:
        agent.process.wait(300)
        agent.reader.join(300)
    assert "stopped by SIGTERM: saved" in agents[0].text, agents[0].text[-3000:]
    state = saved_state(stopped / "models" / "run" / "last.pt")
    assert state["epoch"] == 0 and state["step_in_epoch"] > 0, state
    finish(torchrun_nodes(tiny_args(kinetics_data, stopped, *common, "--resume"), launch.free_port()))
    assert_same_weights(final_weights(nodes), final_weights(stopped))


def test_bare_resume_continues_the_run_it_finds_with_its_own_arguments(kinetics_data, tmp_path):
    """`--resume` alone, where a `--data ... --version XS --frames 4 ...` run left its checkpoint: the run's own data,
    version and recipe (a bare --resume once fell back to the synthetic demo's and loaded the weights into another
    model); a flag given now overrides its saved value and is reported; another version is refused."""
    recipe = ["--data", str(kinetics_data), "--version", "XS", "--frames", "4", "--rate", "4", "--crop", "32",
              "--test-crop", "32", "--jitter", "32", "40", "--batch-size", "2", "--workers", "0", "--max-steps", "1",
              "--no-long-cycle", "--no-short-cycle", "--precise-bn-batches", "0", "--test-views", "1x1",
              "--warmup-epochs", "0"]
    result = run_script([*recipe, "--epochs", "1"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    (run_dir,) = (tmp_path / "models").iterdir()

    result = run_script(["--resume", "--epochs", "2"], cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"resuming {os.path.join('models', run_dir.name, 'last.pt')} with its saved arguments; given now: " \
           "--epochs 2 (the run had 1)" in result.stdout
    assert "synthetic" not in result.stdout and not (tmp_path / "data").exists()
    checkpoint = torch.load(run_dir / "last.pt", weights_only=True)
    assert checkpoint["state"]["epoch"] == 2 and checkpoint["version"] == "XS"
    assert (checkpoint["args"]["data"], checkpoint["args"]["frames"], checkpoint["args"]["crop"]) == \
        (str(kinetics_data), 4, 32)
    assert len(list((tmp_path / "models").iterdir())) == 1          # the same run, not a new one

    assert_one_error_line(run_script(["--resume", "--version", "S"], cwd=tmp_path),
                          "--version S cannot resume", "--version XS")
    foreign = tmp_path / "weights_only.pt"
    torch.save(checkpoint["model"], foreign)
    assert_one_error_line(run_script(["--resume", str(foreign)], cwd=tmp_path), "not a training checkpoint")


def test_user_errors_are_one_line_without_traceback(kinetics_data, tmp_path):
    """A bad data root, a split with a label outside the classes, a missing --finetune file: `error: ...`."""
    assert_one_error_line(run_script(tiny_args(tmp_path / "nowhere", tmp_path)), "nowhere: dataset root is not")
    source = Path(kinetics_data)
    data = tmp_path / "data"
    data.mkdir()
    rows = [f"{source / path} {label}" for path, label in
            (row.split() for row in (source / "train.csv").read_text().splitlines())]
    rows[7] = rows[7].split()[0] + " 99"
    (data / "train.csv").write_text("\n".join(rows) + "\n")
    (data / "classes.txt").write_text((source / "classes.txt").read_text())
    assert_one_error_line(run_script(tiny_args(data, tmp_path)), f"{data / 'train.csv'}:8: label 99 is outside the")
    assert_one_error_line(run_script(tiny_args(kinetics_data, tmp_path, "--finetune", str(tmp_path / "no.pt"))),
                          "no.pt: no such checkpoint file")


def test_tensorboard_logs_the_metrics_and_the_shape_schedule(kinetics_data, tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is an optional dependency (pip install tensorboard)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    engine.main(KineticsTask(), tiny_args(kinetics_data, tmp_path, "--epochs", "1", "--max-steps", "3",
                                          "--no-long-cycle", "--short-cycle", "--batch-size", "4", "--tensorboard"))
    logs = tmp_path / "logs" / "run"
    records = [json.loads(line) for line in (logs / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if r["kind"] == "step"]
    (epoch,) = [r for r in records if r["kind"] == "epoch"]
    (test,) = [r for r in records if r["kind"] == "test"]
    events = EventAccumulator(str(logs / "tensorboard"))
    events.Reload()
    for key in ("loss", "lr", "batch", "frames", "crop"):
        assert [e.value for e in events.Scalars(f"step/{key}")] == pytest.approx([r[key] for r in steps]), key
        assert [e.step for e in events.Scalars(f"step/{key}")] == [r["step"] for r in steps]
    assert len({(r["batch"], r["frames"], r["crop"]) for r in steps}) > 1          # the short cycle's shapes
    assert events.Scalars("epoch/val_top1")[0].value == pytest.approx(epoch["val_top1"])
    assert events.Scalars("test/top1")[0].value == pytest.approx(test["top1"])


def test_tensorboard_missing_is_one_clear_error(kinetics_data, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)     # makes the import fail where installed
    with pytest.raises(SystemExit, match="error: --tensorboard needs the tensorboard package: pip install"):
        engine.main(KineticsTask(), tiny_args(kinetics_data, tmp_path, "--tensorboard"))


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


def spin_count_libgomp_took(script, user_env):
    """GOMP_SPINCOUNT as libgomp itself took it (OMP_DISPLAY_ENV prints it as it loads) in a process that imports
    `script` (its main does not run) with `user_env` added to an environment free of OpenMP wait settings."""
    env = {k: v for k, v in os.environ.items() if k not in ("GOMP_SPINCOUNT", "OMP_WAIT_POLICY")}
    env.update(user_env, OMP_DISPLAY_ENV="VERBOSE")
    probe = ("import importlib.util, sys; spec = importlib.util.spec_from_file_location('probe', sys.argv[1]); "
             "spec.loader.exec_module(importlib.util.module_from_spec(spec))")
    result = subprocess.run([sys.executable, "-c", probe, str(REPO / script)], cwd=REPO, env=env,
                            capture_output=True, text=True, check=True)
    taken = {line.split("=", 1)[1].strip().strip("'") for line in result.stderr.splitlines()
             if line.strip().startswith("GOMP_SPINCOUNT =")}
    assert taken, result.stderr[-500:]
    return taken


@pytest.mark.parametrize("script", ["train_x3d_kinetics_multigrid.py", "train_x3d_charades.py",
                                    "train_x3d_charades_loc.py", "benchmarks/bench_shapes.py"])
def test_scripts_give_openmp_its_short_spin_before_torch_loads_it(script):
    assert spin_count_libgomp_took(script, {}) == {engine.OPENMP_SPIN_COUNT}


def test_a_users_own_openmp_wait_settings_win():
    assert spin_count_libgomp_took("engine.py", {"GOMP_SPINCOUNT": "777"}) == {"777"}
    assert engine.OPENMP_SPIN_COUNT not in spin_count_libgomp_took("engine.py", {"OMP_WAIT_POLICY": "ACTIVE"})


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
    schedule = config.make_schedule(SimpleNamespace(batch_size=2, frames=4, crop=32, rate=4, steps=[0, 1],
                                                    epochs=2, long_cycle=True, short_cycle=True,
                                                    lr_policy="cosine", gamma=0.1, warmup_epochs=0,
                                                    warmup_start=0.025, optimizer="sgd", lr_scaling="auto"), 1)
    sampler = MultigridBatchSampler(VideoDataset(kinetics_data, "train").num_videos, schedule)
    expected = []
    for epoch in range(schedule.max_epoch):
        sampler.set_epoch(epoch)
        expected.append(len(sampler))
    assert [sum(1 for r in steps if int(r["epoch"]) == e) for e in range(schedule.max_epoch)] == expected
    assert len(epochs) == schedule.max_epoch and len({r["phase"] for r in epochs}) > 1
    assert all(0 <= r["data_wait"] <= r["step_seconds"] for r in steps)
    assert all(0 <= r["data_wait"] <= 1 for r in epochs)


HOST_READS = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__float__,
              torch.Tensor.__int__, torch.Tensor.__index__, torch.Tensor.numpy}


class HostReads(torch.overrides.TorchFunctionMode):
    """Counts tensor -> Python reads: on a GPU each one waits for the device to finish what was queued."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += func in HOST_READS
        return func(*args, **(kwargs or {}))


class ReadsPerStep(KineticsTask):
    """Notes the host reads so far at each step's loss."""

    def __init__(self, reads):
        self.reads, self.at_loss = reads, []

    def loss(self, logits, batch):
        self.at_loss.append(self.reads.count)
        return super().loss(logits, batch)


def test_a_training_step_waits_for_the_device_once(kinetics_data, tmp_path):
    """One host read a step: the non-finite flag, the stop signal and the checkpoint clock in one all-reduce, read
    with the loss, top-1 count and bad samples for the log (the loop read 6 values one by one, each a wait for the
    device: isfinite, the loss, the top-1 count, the bad samples and the stop poll's two flags). The data workers
    decode in their own processes, so what is counted is the training process's."""
    reads = HostReads()
    task = ReadsPerStep(reads)
    with reads:
        engine.main(task, tiny_args(kinetics_data, tmp_path, "--epochs", "1", "--max-steps", "6", "--workers", "2",
                                    "--no-long-cycle", "--no-short-cycle", "--eval-every", "100",
                                    "--precise-bn-batches", "0", "--checkpoint-minutes", "1000"))
    per_step = [after - before for before, after in zip(task.at_loss, task.at_loss[1:])]
    assert len(per_step) >= 5 and max(per_step) == 1, per_step


OOM_SCRIPT = """import sys
sys.path.insert(0, {repo!r})
import engine, torch
from train_x3d_kinetics_multigrid import KineticsTask


class OutOfMemoryAtStep4(KineticsTask):
    steps = 0

    def loss(self, logits, batch):
        OutOfMemoryAtStep4.steps += 1
        if OutOfMemoryAtStep4.steps == 4:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().loss(logits, batch)


engine.main(OutOfMemoryAtStep4())
"""


def test_out_of_memory_in_training_is_one_line_and_keeps_last_pt(kinetics_data, tmp_path):
    script = tmp_path / "oom.py"
    script.write_text(OOM_SCRIPT.format(repo=str(REPO)))
    result = subprocess.run([sys.executable, str(script), *tiny_args(kinetics_data, tmp_path, "--epochs", "1",
                                                                     "--no-long-cycle", "--no-short-cycle",
                                                                     "--checkpoint-minutes", "0.00001")],
                            cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert_one_error_line(result, "ran out of memory", "lower --batch-size", "last.pt is as last saved")
    assert final_weights(tmp_path)["state"]["global_step"] == 3          # the save after the last good step


def test_an_unreadable_test_video_is_counted_and_changes_no_other_videos_prediction(kinetics_data, tmp_path, capsys):
    """The held-out videos with a broken file among them, against the same videos without it (--test-only, the same
    weights, two data workers): the summary counts and lists the bad one, its row is marked, and every other
    video's top-5 ids and probabilities are those of the clean run (a view of it counted twice would show)."""
    from x3d import generate_model
    root = tmp_path / "data"
    root.mkdir()
    torch.manual_seed(0)
    model = generate_model("XS", n_classes=8)
    with torch.no_grad():
        model.head.fc.weight.normal_(0, 1.0)                 # logits that spread: probabilities far apart
    torch.save({"model_state": model.state_dict(), "epoch": 0}, tmp_path / "weights.pt")
    (root / "classes.txt").write_text((Path(kinetics_data) / "classes.txt").read_text())
    val = [line.split() for line in (Path(kinetics_data) / "val.csv").read_text().splitlines()]
    rows = [f"{Path(kinetics_data) / path} {label}" for path, label in val]
    good = open(rows[0].split()[0], "rb").read()
    (root / "broken.mp4").write_bytes(good[: len(good) // 3])              # cut short: its index is gone
    (root / "train.csv").write_text("\n".join(rows) + "\n")
    (root / "clean.csv").write_text("\n".join(rows) + "\n")
    (root / "withbad.csv").write_text("\n".join(rows[:4] + [f"{root / 'broken.mp4'} 3"] + rows[4:]) + "\n")
    predictions = {}
    for split in ("clean", "withbad"):
        engine.main(KineticsTask(), tiny_args(root, tmp_path, "--test-only", "--finetune", str(tmp_path / "weights.pt"),
                                              "--val-split", split, "--run-name", split, "--workers", "2"))
        with open(tmp_path / "logs" / split / "predictions_2x1.csv", newline="") as f:
            predictions[split] = {row["path"]: row for row in csv.DictReader(f)}
    printed = capsys.readouterr().out
    listed = tmp_path / "logs" / "withbad" / "unreadable_2x1.txt"
    assert f"1 of {len(rows) + 1} test videos unreadable, listed in {listed}" in printed
    assert printed.count("test videos unreadable") == 1                   # the clean run has none
    (line,) = listed.read_text().splitlines()
    assert line.startswith(f"{root / 'broken.mp4'}\t2\t") and "broken.mp4" in line.split("\t")[2]
    bad = predictions["withbad"].pop(str(root / "broken.mp4"))
    assert (bad["unreadable_views"], bad["views"], bad["top5_ids"]) == ("2", "0", "")
    assert predictions["withbad"].keys() == predictions["clean"].keys()
    for path, row in predictions["clean"].items():
        other = predictions["withbad"][path]
        assert (other["views"], other["unreadable_views"], other["top5_ids"]) == (row["views"], "0", row["top5_ids"])
        assert [float(p) for p in other["top5_probs"].split()] == pytest.approx(
            [float(p) for p in row["top5_probs"].split()], abs=2e-6), path
