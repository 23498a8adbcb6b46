"""Time to accuracy on the metric papers report: multigrid against constant-shape training, each run to the end of
its schedule, on the same data and settings (the demo's: X3D-XS on the synthetic set). Both are judged by the
video-level multi-view top-1 on the held-out videos (the demo's 3-view test, the metric of the paper's and the
model zoo's tables), at the same intervals of the training clock. Prints both runs' accuracy over time, the
training-clock seconds multigrid needs to reach the constant run's final accuracy (within 1 point) against the
constant run's own, and where the multigrid run spent its time (per shape, per long-cycle phase, outside the steps).

    python benchmarks/bench_multigrid.py                  # 60 vs 90 epochs, the demo's budget: ~25-35 min on 2 cores
    python benchmarks/bench_multigrid.py --epochs 20      # a quicker look, further from convergence
    python benchmarks/bench_multigrid.py --out runs/mg; python benchmarks/bench_multigrid.py --report runs/mg

The training clock is the seconds a run spends in its steps (data waits included). The runs evaluate nothing while
they train: at the first epoch end after every INTERVAL_S of its clock the script keeps a copy of the run's last.pt,
and evaluates the copies afterwards the way the run's own final test does (precise BN over training batches, then
every test view of every held-out video).
"""
import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from anywhere

import engine  # noqa: E402  (before torch: it sets the training scripts' OpenMP defaults)

import launch  # noqa: E402
import loader  # noqa: E402
from checkpoints import read_checkpoint  # noqa: E402
from evaluation import evaluate  # noqa: E402
from runlog import read_records  # noqa: E402
from train_x3d_kinetics_multigrid import KineticsTask  # noqa: E402

SCRIPT = os.path.join(REPO, "train_x3d_kinetics_multigrid.py")
TOLERANCE = 1.0        # accuracy points
INTERVAL_S = 20.0      # training-clock seconds between the snapshots evaluated
TARGET_SPEEDUP = 2.0
RESULTS = "evaluations.json"
LABELS = ("constant", "multigrid")


def training_clock(records, global_step):
    """Seconds of the steps up to `global_step`."""
    return sum(r["step_seconds"] for r in records if r["kind"] == "step" and r["step"] <= global_step)


def train(label, out, cycles, args):
    """One run of the real script, its last.pt copied every INTERVAL_S of its training clock -> [(clock, global
    step, snapshot path)], the final weights last."""
    folder = os.path.join(out, "snapshots", label)
    os.makedirs(folder, exist_ok=True)
    command = [sys.executable, SCRIPT, "--epochs", str(args.epochs), "--seed", str(args.seed), "--eval-every",
               "1000000", "--output", os.path.join(out, "models"), "--log-dir", os.path.join(out, "logs"),
               "--run-name", label, *cycles, *args.train_flags]
    print(f"[{label}] {' '.join(command[1:])}", flush=True)
    last = os.path.join(out, "models", label, "last.pt")
    logs = os.path.join(out, "logs", label)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL)
    snapshots, seen, next_mark = [], None, INTERVAL_S
    while True:
        finished = process.poll() is not None
        if os.path.exists(last) and os.path.getmtime(last) != seen:
            seen = os.path.getmtime(last)
            copy = os.path.join(folder, f"{len(snapshots):03d}.pt")
            shutil.copyfile(last, copy)                 # last.pt is replaced atomically: the copy is whole
            step = read_checkpoint(copy)["state"]["global_step"]
            clock = training_clock(read_records(logs), step)
            if clock >= next_mark or finished:
                snapshots.append((clock, step, copy))
                next_mark = clock + INTERVAL_S
            else:
                os.remove(copy)
        if finished:
            break
        time.sleep(0.2)
    if process.returncode != 0:
        raise SystemExit(f"bench_multigrid: the {label} run failed (exit {process.returncode})")
    if snapshots[-1][1] != read_checkpoint(last)["state"]["global_step"]:
        shutil.copyfile(last, os.path.join(folder, "final.pt"))
        step = read_checkpoint(last)["state"]["global_step"]
        snapshots.append((training_clock(read_records(logs), step), step, os.path.join(folder, "final.pt")))
    return snapshots


def held_out_top1(path):
    """The multi-view held-out top-1 of a snapshot, as the run's own final test counts it: precise BN over training
    batches at the train shape, then every test view of every held-out video."""
    checkpoint = read_checkpoint(path)
    args = argparse.Namespace(**checkpoint["args"])
    args.workers = launch.default_workers(launch.machine_cores(), 1)
    args.data = os.path.join(REPO, args.data)             # the runs ran in the repository (the demo's data/)
    ctx = launch.setup_process(0, args, launch.Devices("cpu", (0,), torchrun=False, visible=0))
    task = KineticsTask()
    engine.seed_everything(args.seed)
    data = task.datasets(args)
    model = engine.build_model(task, argparse.Namespace(**{**vars(args), "finetune": None}),
                               data["train"].num_classes, verbose=False)
    model.load_state_dict(checkpoint["model"])
    loader.recompute_bn_statistics(model, data["train"], args, ctx)
    test = loader.eval_loader(data["test"], (args.frames, args.rate, args.test_crop), args, ctx)
    metrics, _, _ = evaluate(model, test, task, data["test"], ctx.device, args.amp)
    return metrics["top1"]


def main():
    argv = sys.argv[1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=60, help="constant-shape epochs (multigrid: 1.5x)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="keep both runs' logs, snapshots and evaluations here")
    p.add_argument("--report", default=None, metavar="OUT",
                   help="train nothing: print the comparison of the runs an earlier --out OUT kept")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.train_flags = argv[argv.index("--") + 1:] if "--" in argv else []    # e.g. -- --workers 1

    if args.report:
        results = os.path.join(args.report, RESULTS)
        if not os.path.exists(results):
            sys.exit(f"bench_multigrid: {results}: no finished comparison there (--report takes the folder an "
                     "earlier run's --out named)")
        with open(results) as f:
            curves = json.load(f)
        report(curves, {label: read_records(os.path.join(args.report, "logs", label)) for label in LABELS})
        return
    with tempfile.TemporaryDirectory() as temp:
        out = args.out or temp
        snapshots = {"constant": train("constant", out, ["--no-long-cycle", "--no-short-cycle"], args),
                     "multigrid": train("multigrid", out, ["--long-cycle", "--short-cycle"], args)}
        curves = {}
        for label, points in snapshots.items():
            print(f"[{label}] evaluating {len(points)} snapshots", flush=True)
            curves[label] = [(clock, step, held_out_top1(path)) for clock, step, path in points]
        with open(os.path.join(out, RESULTS), "w") as f:
            json.dump(curves, f)
        report(curves, {label: read_records(os.path.join(out, "logs", label)) for label in LABELS})


def first_reaching(points, target):
    """(training-clock seconds, steps) of the first evaluation at or above `target`, or (None, None)."""
    return next(((clock, steps) for clock, steps, accuracy in points if accuracy >= target), (None, None))


def where_time_went(records):
    """Seconds per shape and per long-cycle phase from the step records, and the run's time outside its steps."""
    steps = [r for r in records if r["kind"] == "step"]
    epochs = {r["epoch"]: r for r in records if r["kind"] == "epoch"}
    shapes, phases = collections.defaultdict(lambda: [0, 0.0, 0.0]), collections.defaultdict(float)
    for r in steps:
        entry = shapes[f"{r['batch']}x{r['frames']}x{r['crop']}"]
        entry[0] += 1
        entry[1] += r["step_seconds"]
        entry[2] += r["data_wait"]
        phases[epochs[int(r["epoch"]) + 1]["phase"]] += r["step_seconds"]
    total = max(epochs.values(), key=lambda r: r["epoch"])["elapsed"]
    return shapes, phases, total - sum(r["step_seconds"] for r in steps)


def report(curves, records):
    """Both runs' held-out accuracy over their training clocks, multigrid's speed-up to the constant run's final
    accuracy, and where its time went."""
    for label in LABELS:
        print(f"\n{label}: training-clock s, optimizer steps, held-out top-1 ({views(records[label])} views)")
        for clock, steps, accuracy in curves[label]:
            print(f"  {clock:8.1f} {steps:6d} {accuracy:7.2f}")
        whole = max(r["elapsed"] for r in records[label] if r["kind"] == "epoch")
        print(f"  whole run {whole:.1f} s wall, {curves[label][-1][0]:.1f} s training clock")
    target = curves["constant"][-1][2] - TOLERANCE
    (base_time, _), (grid_time, _) = (first_reaching(curves[label], target) for label in LABELS)
    print(f"\ntarget: the constant run's final held-out top-1 {target + TOLERANCE:.2f} within {TOLERANCE} point")
    print(f"training-clock seconds to reach it: constant {base_time:.1f}, multigrid "
          + (f"{grid_time:.1f}" if grid_time is not None else "never"))
    if grid_time is not None:
        speedup = base_time / grid_time
        print(f"multigrid speed-up to accuracy: {speedup:.2f}x (target >= {TARGET_SPEEDUP}x: "
              f"{'met' if speedup >= TARGET_SPEEDUP else 'missed'})")
    # Where a miss comes from: the cost of a step or what a step achieves. Multigrid pays off when its big coarse
    # batches make progress in proportion to their size (SGD with the linear scaling rule on large data); where
    # progress is counted in steps whatever the batch, its fewer steps reach less.
    reached = curves["multigrid"][-1][2]
    (base_seconds, base_steps), (grid_seconds, grid_steps) = (first_reaching(curves[label], reached)
                                                              for label in LABELS)
    if base_seconds is not None and base_steps and grid_steps:
        print(f"to reach multigrid's final held-out top-1 {reached:.2f}: constant {base_seconds:.1f} s in "
              f"{base_steps} steps ({base_seconds / base_steps:.3f} s/step), multigrid {grid_seconds:.1f} s in "
              f"{grid_steps} steps ({grid_seconds / grid_steps:.3f} s/step)")
    shapes, phases, outside = where_time_went(records["multigrid"])
    print("\nmultigrid run, where the time went: shape, steps, step s, s/step, data wait")
    for name, (count, seconds, wait) in sorted(shapes.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:>10} {count:6d} {seconds:8.1f} {seconds / count:7.3f} {100 * wait / seconds:6.1f}%")
    print("  per long-cycle phase (step s): " + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(phases.items())))
    print(f"  outside the steps (start-up, checkpoints, the final test): {outside:.1f} s")


def views(records):
    return next((r["views"] for r in records if r["kind"] == "test"), "?")


if __name__ == "__main__":
    main()
