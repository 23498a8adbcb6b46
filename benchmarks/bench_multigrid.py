"""Time to accuracy: multigrid against constant-shape training, each run to the end of its schedule, on the same
data and settings (the demo's: X3D-XS on the synthetic set). The paper's rule: multigrid trains 1.5x the epochs of
the constant run, in far fewer iterations. Prints both runs' held-out top-1 over time, the seconds multigrid needs
to reach the constant run's final accuracy (within 1 point) against the constant run's own, and where the
multigrid run spent its time (per shape, per long-cycle stage, outside the steps).

    python benchmarks/bench_multigrid.py                  # 60 vs 90 epochs, the demo's budget: ~20-30 min on 2 cores
    python benchmarks/bench_multigrid.py --epochs 20      # a quicker look, further from convergence
    python benchmarks/bench_multigrid.py --out runs/mg; python benchmarks/bench_multigrid.py --report runs/mg

The clock is the training clock: wall seconds minus the held-out evaluations, which both runs make at the same
fractions of their schedules and which a real run makes far less often.
"""
import argparse
import collections
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from anywhere

from runlog import METRICS_FILE, read_records  # noqa: E402

SCRIPT = os.path.join(REPO, "train_x3d_kinetics_multigrid.py")
TOLERANCE = 1.0        # accuracy points
EVALUATIONS = 12       # held-out evaluations per run, at the same fractions of each schedule
TARGET_SPEEDUP = 2.0


def train(label, out, cycles, epochs_run, args):
    """One run of the real script; -> its metrics.jsonl records."""
    eval_every = max(1, round(epochs_run / EVALUATIONS))
    command = [sys.executable, SCRIPT, "--epochs", str(args.epochs), "--seed", str(args.seed), "--eval-every",
               str(eval_every), "--output", os.path.join(out, "models"), "--log-dir", os.path.join(out, "logs"),
               "--run-name", label, *cycles, *args.train_flags]
    print(f"[{label}] {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    return read_records(os.path.join(out, "logs", label))


def curve(records):
    """(epoch, optimizer steps, wall seconds, training-clock seconds, held-out top-1) at each evaluation."""
    points, evaluating, steps = [], 0.0, 0
    for r in records:
        steps += r["kind"] == "step"
        if r["kind"] == "epoch" and r.get("val_top1") is not None:
            evaluating += r["eval_seconds"]
            points.append((r["epoch"], steps, r["elapsed"], r["elapsed"] - evaluating, r["val_top1"]))
    return points


def first_reaching(points, target):
    """(training-clock seconds, steps) of the first evaluation at or above `target`, or (None, None)."""
    return next(((clock, steps) for _, steps, _, clock, accuracy in points if accuracy >= target), (None, None))


def where_time_went(records):
    """Seconds per shape and per long-cycle stage from the step records, and the rest of the run."""
    steps = [r for r in records if r["kind"] == "step"]
    epochs = {r["epoch"]: r for r in records if r["kind"] == "epoch"}
    shapes, stages = collections.defaultdict(lambda: [0, 0.0, 0.0]), collections.defaultdict(float)
    for r in steps:
        entry = shapes[f"{r['batch']}x{r['frames']}x{r['crop']}"]
        entry[0] += 1
        entry[1] += r["step_seconds"]
        entry[2] += r["data_wait"]
        stages[epochs[int(r["epoch"]) + 1]["phase"]] += r["step_seconds"]
    total = max(epochs.values(), key=lambda r: r["epoch"])["elapsed"]
    return shapes, stages, total - sum(r["step_seconds"] for r in steps)


def main():
    argv = sys.argv[1:]
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=60, help="constant-shape epochs (multigrid: 1.5x)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="keep both runs' logs and checkpoints here (default: a temp folder)")
    p.add_argument("--report", default=None, metavar="OUT",
                   help="train nothing: print the comparison of the runs an earlier --out OUT kept")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    args.train_flags = argv[argv.index("--") + 1:] if "--" in argv else []    # e.g. -- --workers 1

    if args.report:
        runs = []
        for label in ("constant", "multigrid"):
            folder = os.path.join(args.report, "logs", label)
            runs.append(read_records(folder))
            if not any(r["kind"] == "test" for r in runs[-1]):
                sys.exit(f"bench_multigrid: {os.path.join(folder, METRICS_FILE)}: no finished run there "
                         "(--report takes the folder an earlier run's --out named)")
        report(*runs)
        return
    with tempfile.TemporaryDirectory() as temp:
        out = args.out or temp
        constant = train("constant", out, ["--no-long-cycle", "--no-short-cycle"], args.epochs, args)
        multigrid = train("multigrid", out, ["--long-cycle", "--short-cycle"], round(1.5 * args.epochs), args)
    report(constant, multigrid)


def report(constant, multigrid):
    """Both runs' held-out accuracy over time, the speed-up to the constant run's accuracy, and where the time
    went; from their metrics.jsonl records."""
    curves = {"constant shape": curve(constant), "multigrid": curve(multigrid)}
    for label, points in curves.items():
        print(f"\n{label}: epoch, optimizer steps, wall s, training-clock s, held-out top-1")
        for epoch, steps, wall, clock, accuracy in points:
            print(f"  {epoch:>4} {steps:6d} {wall:8.1f} {clock:8.1f} {accuracy:7.2f}")
    for label, records in (("constant shape", constant), ("multigrid", multigrid)):
        test = next(r for r in records if r["kind"] == "test")
        print(f"{label}: final test top-1 {test['top1']:.2f} ({test['views']} views), whole run "
              f"{curves[label][-1][2]:.1f} s wall")

    target = curves["constant shape"][-1][4] - TOLERANCE
    (base_time, _), (grid_time, _) = (first_reaching(curves[k], target) for k in ("constant shape", "multigrid"))
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
    reached = curves["multigrid"][-1][4]
    (base_seconds, base_steps), (grid_seconds, grid_steps) = (first_reaching(curves[k], reached)
                                                              for k in ("constant shape", "multigrid"))
    if base_seconds is not None:
        print(f"to reach multigrid's final held-out top-1 {reached:.2f}: constant {base_seconds:.1f} s in "
              f"{base_steps} steps ({base_seconds / base_steps:.3f} s/step), multigrid {grid_seconds:.1f} s in "
              f"{grid_steps} steps ({grid_seconds / grid_steps:.3f} s/step)")

    shapes, stages, outside = where_time_went(multigrid)
    print("\nmultigrid run, where the time went: shape, steps, step s, s/step, data wait")
    for name, (count, seconds, wait) in sorted(shapes.items(), key=lambda kv: -kv[1][1]):
        print(f"  {name:>10} {count:6d} {seconds:8.1f} {seconds / count:7.3f} {100 * wait / seconds:6.1f}%")
    print("  per long-cycle phase (step s): " + ", ".join(f"{k}: {v:.0f}" for k, v in sorted(stages.items())))
    print(f"  outside the steps (evaluation, checkpoints, start-up): {outside:.1f} s")


if __name__ == "__main__":
    main()
