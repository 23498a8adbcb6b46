"""Multigrid vs constant-shape training on the synthetic set: wall-clock seconds to reach the constant-shape run's
final accuracy (within 1 point), same epoch budget rules as the paper (multigrid: 1.5x the epochs, far fewer
iterations), everything else equal. Prints both curves and the speed-up ratio measured in this run.

    python benchmarks/bench_multigrid.py          # the demo's shape (X3D-XS, 8 x 40 px, batch 8, AdamW), 16 epochs
    python benchmarks/bench_multigrid.py --epochs 8 --optimizer sgd --lr 0.05
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "train_x3d_kinetics_multigrid.py")
TOLERANCE = 1.0        # accuracy points


def train(label, out, cycles, args):
    command = [sys.executable, SCRIPT, "--epochs", str(args.epochs), "--frames", str(args.frames), "--rate",
               str(args.rate), "--crop", str(args.crop), "--test-crop", str(args.crop), "--batch-size",
               str(args.batch_size), "--lr", str(args.lr), "--output", os.path.join(out, "models"), "--logs",
               os.path.join(out, "logs"), "--run-name", label, "--test-views", "1x1", "--seed", str(args.seed),
               "--optimizer", args.optimizer, "--no-flip", "--eval-every", "1", *cycles]
    print(f"[{label}] {' '.join(command[1:])}", flush=True)
    subprocess.run(command, cwd=REPO, check=True, stdout=subprocess.DEVNULL)
    with open(os.path.join(out, "logs", label, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f if '"kind": "epoch"' in line]
    return [(r["epoch"], r["elapsed"], r["val_top1"]) for r in records if r.get("val_top1") is not None]


def seconds_to_reach(curve, target):
    return next((elapsed for _, elapsed, accuracy in curve if accuracy >= target), None)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--epochs", type=int, default=16)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--rate", type=int, default=4)
    p.add_argument("--crop", type=int, default=40)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="adamw")
    p.add_argument("--lr", type=float, default=0.003)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as out:
        constant = train("constant", out, ["--no-long-cycle", "--no-short-cycle"], args)
        multigrid = train("multigrid", out, ["--long-cycle", "--short-cycle"], args)
    for label, curve in (("constant shape", constant), ("multigrid", multigrid)):
        print(f"\n{label}: epoch, wall seconds, val top-1")
        for epoch, elapsed, accuracy in curve:
            print(f"  {epoch:>3}  {elapsed:8.1f}  {accuracy:6.1f}")
    target = constant[-1][2] - TOLERANCE
    base_time = seconds_to_reach(constant, target)
    grid_time = seconds_to_reach(multigrid, target)
    print(f"\nconstant-shape final val top-1 {constant[-1][2]:.1f}; target {target:.1f} (within {TOLERANCE} point)")
    print(f"seconds to reach it: constant {base_time:.1f}, multigrid "
          + (f"{grid_time:.1f}" if grid_time is not None else "never (final "
             f"{multigrid[-1][2]:.1f} after {multigrid[-1][1]:.1f} s)"))
    if grid_time is not None:
        print(f"multigrid speed-up: {base_time / grid_time:.2f}x (target >= 2x)")
    print(f"whole runs: constant {constant[-1][1]:.1f} s, multigrid {multigrid[-1][1]:.1f} s "
          f"({constant[-1][1] / multigrid[-1][1]:.2f}x)")


if __name__ == "__main__":
    main()
