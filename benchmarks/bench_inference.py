"""Inference throughput (clips/s) of X3D at its test shape on the CPU: PyTorch eager fp32, channels_last_3d and
bf16 autocast, and ONNX Runtime, measured alternately (each round runs every backend once, in rotating order, so
thermal or background drift hits all of them alike). Prints one table row per (batch, backend) with the ratio to
eager fp32; the fastest backend per batch is marked.

    python benchmarks/bench_inference.py                        # X3D-S, 13 x 182 x 182, batches up to 32
    python benchmarks/bench_inference.py --budget 0 --rounds 3  # the whole grid, whatever it costs
    python benchmarks/bench_inference.py --version XS --batches 1 8 --onnx x3d_xs.onnx

Weights do not change the speed: the model is randomly initialized and nothing is downloaded. Without --onnx the
model is exported to a temporary file first (export_onnx.py). A clip of X3D-S takes about a second on one CPU
core, so `--budget` (seconds, default 270) skips the batch sizes that would not fit and says so.
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from export_onnx import export  # noqa: E402
from inference import OnnxPredictor, TorchPredictor  # noqa: E402
from archs import default_recipe  # noqa: E402
from recipe import resolve_recipe  # noqa: E402
from x3d import generate_model  # noqa: E402

BACKENDS = ("eager-fp32", "channels_last_3d", "bf16-autocast", "onnxruntime")


def build(backends, version, frames, crop, onnx_path, threads):
    model = generate_model(version, channels_last=False).eval()
    runners = {}
    for name in backends:
        if name == "onnxruntime":
            if onnx_path is None:
                onnx_path = os.path.join(tempfile.mkdtemp(prefix="bench_inference_"), f"x3d_{version}.onnx")
                export(generate_model(version, channels_last=False).eval(), onnx_path, frames, crop)
            runners[name] = OnnxPredictor(onnx_path, threads=threads)
        else:
            mode = {"eager-fp32": "fp32", "channels_last_3d": "channels_last", "bf16-autocast": "bf16"}[name]
            copy = generate_model(version, channels_last=False).eval()
            copy.load_state_dict(model.state_dict())
            runners[name] = TorchPredictor(copy, "cpu", mode)
    return runners


def time_once(runner, x):
    started = time.perf_counter()
    runner(x)
    return time.perf_counter() - started


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default="S")
    parser.add_argument("--frames", type=int, help="default: the version's")
    parser.add_argument("--crop", type=int, help="default: the version's test crop")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--backends", nargs="+", default=list(BACKENDS), choices=BACKENDS)
    parser.add_argument("--rounds", type=int, default=1, help="timed forward passes per (batch, backend)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads(),
                        help="intra-op threads for both PyTorch and ONNX Runtime (default: torch's)")
    parser.add_argument("--onnx", help="an exported model at the same shape (default: export one now)")
    parser.add_argument("--budget", type=float, default=270.0,
                        help="seconds for the measurements; batch sizes that would not fit are skipped (0: no limit)")
    args = parser.parse_args(argv)

    clips = resolve_recipe(default_recipe("x3d", args.version), frames=args.frames, test_crop=args.crop,
                           jitter_follows="test_crop")
    frames, crop = clips.frames, clips.test_crop
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    runners = build(args.backends, args.version, frames, crop, args.onnx, args.threads)
    print(f"X3D-{args.version.upper()} inference, input (batch, 3, {frames}, {crop}, {crop}), {args.threads} threads, "
          f"torch {torch.__version__} ({torch.backends.cpu.get_cpu_capability()}), "
          f"onnxruntime {__import__('onnxruntime').__version__}, {args.rounds} timed round(s), alternating",
          flush=True)

    # warm-up: one small pass each (oneDNN / ORT build their kernels on first use); gives the per-clip estimate
    warm = torch.randn(1, 3, frames, crop, crop)
    per_clip = {name: time_once(runner, warm) for name, runner in runners.items()}
    started = time.perf_counter()
    results, skipped = {}, []
    for batch in sorted(args.batches):
        cost = batch * args.rounds * sum(per_clip.values())
        spent = time.perf_counter() - started
        if args.budget and spent + cost > args.budget:
            skipped.append(batch)
            continue
        x = torch.randn(batch, 3, frames, crop, crop)
        times = {name: [] for name in runners}
        order = list(runners)
        for round_ in range(args.rounds):
            for name in order[round_ % len(order):] + order[:round_ % len(order)]:
                times[name].append(time_once(runners[name], x))
        for name, measured in times.items():
            seconds = statistics.median(measured)
            results[(batch, name)] = batch / seconds
            per_clip[name] = seconds / batch  # a better estimate for the next batch size
        print(f"  batch {batch:>2} done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)

    print("\n| batch | backend | clips/s | vs eager fp32 |\n|---:|---|---:|---:|")
    for batch in sorted({b for b, _ in results}):
        base = results.get((batch, "eager-fp32"))
        best = max((results[(batch, name)], name) for name in runners)[1]
        for name in runners:
            rate = results[(batch, name)]
            ratio = f"{rate / base:.2f}x" if base else "-"
            mark = " (fastest)" if name == best else ""
            print(f"| {batch} | {name}{mark} | {rate:.2f} | {ratio} |")
    if skipped:
        print(f"\nskipped batch {', '.join(map(str, skipped))}: over the --budget of {args.budget:.0f} s "
              f"(about {sum(per_clip.values()):.1f} s per clip for all backends; --budget 0 runs them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
