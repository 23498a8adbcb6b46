"""What each shape of a multigrid schedule costs on the clock: a few real training steps at every (batch, frames,
crop) the schedule uses, through the real data loader, model, optimizer and thread settings of the training
engine. Prints per shape the median step time, its share spent waiting for data, clips/s, pixels/s relative to
the base shape, and the shape's multiply-adds relative to the base shape's. Multigrid's promise is that every shape
costs about what the base shape costs; at small crops the network's padding makes the coarse shapes do more work
than their pixel count says (the MACs column), the rest of a gap is the implementation's.

    python benchmarks/bench_shapes.py                     # the demo's schedule (X3D-XS, synthetic set), ~3 min
    python benchmarks/bench_shapes.py --shapes 128x2x20   # one shape against the base
    python benchmarks/bench_shapes.py --rounds 5 -- --workers 1     # flags after -- go to the training script
"""
import argparse
import copy
import itertools
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import engine  # noqa: E402  (before torch: it sets the training scripts' OpenMP defaults)
import config  # noqa: E402
import launch  # noqa: E402
import loader  # noqa: E402
import torch  # noqa: E402
import x3d  # noqa: E402
from multigrid import ClipRequest, MultigridBatchSampler  # noqa: E402
from train_x3d_kinetics_multigrid import KineticsTask  # noqa: E402

TARGET_STEP_RATIO = 1.5     # every shape's median step within this factor of the base shape's
TARGET_DATA_WAIT = 0.10     # share of the step spent waiting for the loader
PREFETCH_FACTOR = 2         # torch.utils.data.DataLoader's default: batches each worker prepares ahead


def schedule_shapes(schedule, num_samples):
    """Distinct (phase, per-device batch, frames, crop) in the order training meets them."""
    sampler, seen = MultigridBatchSampler(num_samples, schedule), {}
    for phase in schedule.phases:
        sampler.set_epoch(phase.start_epoch)
        for batch in sampler:
            seen.setdefault((len(batch), batch[0].frames, batch[0].crop), phase)
    return [(phase, *shape) for shape, phase in seen.items()]


def time_shape(phase, batch_size, frames, crop, dataset, model, optimizer, scaler, task, args, ctx, steps,
               warmup):
    """Per timed step: (seconds, seconds waiting for data). A fresh loader per shape; warm-up steps absorb its
    start-up, which training pays once per run (one loader pass serves all its epochs). The loader has batches
    beyond the last timed step, so that its workers decode all through the timed steps, as they do in training:
    their CPU time is part of a step's cost on a machine whose cores they share. Sampling rates are drawn as the
    phase draws them."""
    order = torch.randperm(len(dataset)).tolist()
    ahead = max(args.workers, 1) * PREFETCH_FACTOR
    splits = phase.splits_for(batch_size)
    requests = [[ClipRequest(order[(s * batch_size + j) % len(order)], frames, rate, crop, 0, splits)
                 for j, rate in enumerate(phase.draw_rates(batch_size))] for s in range(warmup + steps + ahead)]
    batches = loader.make_loader(loader.SeededClips(dataset, args.seed), requests, args, ctx)
    timings, tick = [], time.perf_counter()
    batch_stream = loader.timed(batches)
    for batch, wait in itertools.islice(batch_stream, warmup + steps):
        _, _, loss = engine.forward_backward(model, model, batch, task, optimizer, scaler, args.amp, ctx.device)
        float(loss.detach())                                     # wait for the device, as the training loop does
        scaler.step(optimizer)
        scaler.update()
        now = time.perf_counter()
        timings.append((now - tick, wait))
        tick = now
    batch_stream.close()                                         # stops the workers
    return timings[warmup:]


def main():
    argv = sys.argv[1:]
    train_flags = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=4, help="timed steps per shape and round")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps per shape and round (loader start-up)")
    p.add_argument("--rounds", type=int, default=3, help="rounds through all shapes (x base: the median of the "
                   "rounds' ratios)")
    p.add_argument("--shapes", default=None, help="only these BxTxS shapes, comma-separated (the base is always "
                   "timed), e.g. 128x2x20")
    bench = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)

    task = KineticsTask()
    args, _ = config.resolve(task, train_flags)
    args.workers = args.workers if args.workers is not None else launch.default_workers(launch.machine_cores(), 1)
    ctx = launch.setup_process(0, args, launch.Devices("cpu", (0,), torchrun=False, visible=0))
    engine.seed_everything(args.seed)
    dataset = task.datasets(args)["train"]
    model = engine.build_model(task, args, dataset.num_classes, verbose=False)
    optimizer, scaler = engine.make_optimizer(model, args), torch.amp.GradScaler("cpu", enabled=args.amp == "fp16")
    schedule = config.make_schedule(args, 1)
    print(f"X3D-{args.version}, base {args.batch_size} x {args.frames} x {args.crop}px, {args.workers} workers, "
          f"{torch.get_num_threads()} intra-op threads, {os.cpu_count()} cores; "
          f"{bench.rounds} rounds x {bench.steps} timed steps a shape")

    meta_model = copy.deepcopy(model)      # count_multiply_adds moves the model it counts to the meta device
    wanted = set(bench.shapes.split(",")) | {f"{args.batch_size}x{args.frames}x{args.crop}"} if bench.shapes else None
    shapes = [s for s in schedule_shapes(schedule, len(dataset))
              if wanted is None or f"{s[1]}x{s[2]}x{s[3]}" in wanted]
    timings = {shape[1:]: [] for shape in shapes}   # per shape, per round: [(step s, data wait s)]
    for round_index in range(bench.rounds):     # rounds through every shape: a drift of the machine hits them alike
        for phase, batch_size, frames, crop in shapes:
            timings[(batch_size, frames, crop)].append(time_shape(
                phase, batch_size, frames, crop, dataset, model, optimizer, scaler, task, args, ctx,
                bench.steps, bench.warmup))
        print(f"  round {round_index + 1} of {bench.rounds} measured", flush=True)
    base_key = (args.batch_size, args.frames, args.crop)
    base_rounds = [statistics.median(t for t, _ in steps) for steps in timings[base_key]]
    rows = []
    for (batch_size, frames, crop), rounds in timings.items():
        every_step = [step for steps in rounds for step in steps]
        step = statistics.median(t for t, _ in every_step)
        # the ratio within each round (the base timed minutes, not an hour, apart), then its median over rounds
        ratio = statistics.median(statistics.median(t for t, _ in steps) / base
                                  for steps, base in zip(rounds, base_rounds))
        wait = sum(w for _, w in every_step) / sum(t for t, _ in every_step)
        macs = batch_size * x3d.count_multiply_adds(meta_model, (1, 3, frames, crop, crop))
        rows.append((f"{batch_size}x{frames}x{crop}", batch_size * frames * crop * crop, step, ratio, wait,
                     batch_size, macs))

    base = next(r for r in rows if r[0] == f"{args.batch_size}x{args.frames}x{args.crop}")
    print(f"\n{'shape':>12} {'step s':>8} {'x base':>7} {'data wait':>10} {'clips/s':>8} {'px/s vs base':>13} "
          f"{'MACs x base':>12} {'s/MAC x base':>13}")
    for name, pixels, step, ratio, wait, batch_size, macs in rows:
        print(f"{name:>12} {step:8.3f} {ratio:7.2f} {100 * wait:9.1f}% {batch_size / step:8.1f} "
              f"{(pixels / base[1]) / ratio:13.2f} {macs / base[6]:12.2f} {ratio / (macs / base[6]):13.2f}")
    worst_step = max(rows, key=lambda r: r[3])
    worst_wait = max(rows, key=lambda r: r[4])
    print(f"\nslowest shape {worst_step[0]}: {worst_step[3]:.2f}x the base step (median of the {bench.rounds} "
          f"rounds' ratios; target <= {TARGET_STEP_RATIO}x: "
          f"{'met' if worst_step[3] <= TARGET_STEP_RATIO else 'missed'}); "
          f"its multiply-adds are {worst_step[6] / base[6]:.2f}x the base shape's")
    print(f"most data wait {worst_wait[0]}: {100 * worst_wait[4]:.1f}% of its steps (target < "
          f"{100 * TARGET_DATA_WAIT:.0f}%: {'met' if worst_wait[4] < TARGET_DATA_WAIT else 'missed'})")


if __name__ == "__main__":
    main()
