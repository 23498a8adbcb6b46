"""The prepared device run: what a GPU (or an Ascend NPU) settles that a CPU cannot, in one command, each section
under its own time limit, one table per section:

  versions   torch, CUDA / CANN, cuDNN, the device, bf16 support
  steps      X3D-S training steps (bf16) at the base shape and the coarsest shapes of the 8-GPU Kinetics schedule,
             per device, with their BN split counts, for {channels_last_3d, contiguous} x {split BN function, fold}:
             seconds, clips/s, peak memory against batching.py's estimate; X3D-M at its base shape (one GPU)
  auto       what --memory-format auto picks at the schedule's first shapes, against the table's fastest
  data       clips/s one loader worker makes at those shapes from a 340x256 H.264 video and from a JPEG folder,
             and the workers a device then needs for under 10% data wait
  resume     `-gpu 0 --amp bf16 --deterministic` on the synthetic set, SIGTERM mid-run and --resume, against an
             uninterrupted run: the same weights bit for bit?
  compile    --compile: graphs compiled over the split counts of the first phase, and the first step's cost

    python benchmarks/bench_gpu.py                 # on the device machine: under 8 minutes on one H200
    python benchmarks/bench_gpu.py --device npu    # an Ascend machine
    python benchmarks/bench_gpu.py --dry           # any machine: every section at tiny sizes on the CPU, < 2 min
    python benchmarks/bench_gpu.py --out DIR       # also write DIR/bench_gpu.md (the tables) and keep the runs
"""
import argparse
import contextlib
import copy
import math
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)  # run from anywhere
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import engine  # noqa: E402,F401  (before torch: it sets the training scripts' OpenMP defaults)
import torch  # noqa: E402

import batching  # noqa: E402
import config  # noqa: E402
import launch  # noqa: E402
import x3d  # noqa: E402
from evaluation import autocast  # noqa: E402
from layers import set_bn_fold, set_bn_splits  # noqa: E402
from multigrid import ClipRequest  # noqa: E402
from train_x3d_kinetics_multigrid import KineticsTask  # noqa: E402

SCRIPT = os.path.join(REPO, "train_x3d_kinetics_multigrid.py")
SECTION_SECONDS = {"versions": 30, "steps": 170, "auto": 40, "data": 60, "resume": 160, "compile": 120}
DATA_WAIT_TARGET = 0.10
GIB = 2 ** 30


class Section:
    """A section's table and its deadline: rows added after it are skipped, and the table says so."""

    def __init__(self, name, title, header, budget_s):
        self.name, self.title, self.header = name, title, header
        self.deadline, self.rows, self.notes = time.monotonic() + budget_s, [], []

    def expired(self):
        return time.monotonic() > self.deadline

    def markdown(self):
        lines = [f"### {self.title}", "", "| " + " | ".join(self.header) + " |",
                 "|" + "|".join("---" for _ in self.header) + "|"]
        lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in self.rows]
        return "\n".join(lines + [""] + [f"- {note}" for note in self.notes] + [""])


def synchronize(device):
    if device.type != "cpu":
        getattr(torch, device.type).synchronize()


def peak_memory(device):
    return None if device.type == "cpu" else getattr(torch, device.type).max_memory_allocated(device)


def reset_peak(device):
    if device.type != "cpu":
        launch.empty_cache(device)
        getattr(torch, device.type).reset_peak_memory_stats(device)


def gib(value):
    return "n/a" if value is None else f"{value / GIB:.2f}"


def versions(device, section):
    cuda = torch.version.cuda or "-"
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else "-"
    if device.type == "cpu":
        name, bf16 = f"CPU ({platform.processor() or platform.machine()}, {torch.backends.cpu.get_cpu_capability()})", \
            "autocast"
    else:
        module = getattr(torch, device.type)
        name = module.get_device_name(device)
        bf16 = module.is_bf16_supported() if hasattr(module, "is_bf16_supported") else "?"
    section.rows.append([torch.__version__, cuda, cudnn, name, bf16, launch.machine_cores()])


def kinetics_args(version, dry):
    """The Kinetics recipe's arguments for `version` (--dry: X3D-XS at 4 x 32 px, batch 16: seconds a step)."""
    argv = ["--data", "unused", "--version", "XS" if dry else version]
    if dry:
        argv += ["--frames", "4", "--crop", "32", "--batch-size", "16", "--jitter", "32", "40"]
    return config.resolve(KineticsTask(), argv)[0]


def schedule_shapes(args, world, dry):
    """The coarsest phase's shapes and the base shape of the schedule on `world` devices, per device: (batch,
    frames, crop, BN splits); --dry: the coarsest and the base."""
    phase = config.make_schedule(args, world).phases[0]
    coarse = [(s.per_device_batch, phase.frames, s.crop, s.num_splits) for s in phase.shapes]
    base_batch = max(1, args.batch_size // world)
    shapes = coarse + [(base_batch, args.frames, args.crop, max(1, base_batch // 8))]
    return [shapes[0], shapes[-1]] if dry else shapes


def time_step(model, optimizer, shape, layout, device, amp, warmup, steps, loss=None):
    """(median seconds of a training step, peak bytes) at `shape` in `layout`, random data; the loss is the
    classification loss, or with loss='mean' the output's mean (a part of the model)."""
    batch, frames, crop, splits = shape
    set_bn_splits(model, splits)
    x = torch.randn(batch, 3, frames, crop, crop, device=device).contiguous(memory_format=layout)
    labels = torch.randint(0, 400, (batch,), device=device)
    reset_peak(device)
    times = []
    for _ in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        with autocast(amp, device):
            out = model(x).float()
        value = out.mean() if loss == "mean" else torch.nn.functional.cross_entropy(out, labels)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        optimizer.step()
        synchronize(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[warmup:]), peak_memory(device)


def estimated_peak(version, shape, amp, dry):
    batch, frames, crop, _ = shape
    with torch.device("meta"):
        model = x3d.generate_model(version, frames=frames, train_crop=crop)
    return batching.estimate_memory(model, [(frames, crop)], amp, "sgd").peak(batch, frames, crop)


def steps_section(device, amp, dry, section, step_rates):
    """X3D-S at the schedule's shapes in the four layouts x split paths; X3D-M at its base shape."""
    warmup, steps = (0, 1) if dry else (2, 5)
    s_args = kinetics_args("S", dry)
    cases = [(s_args.version, shape, 8) for shape in schedule_shapes(s_args, 8, dry)]
    if not dry:           # the README's one-GPU line: X3D-M at the batch the plan gives this device
        m_args = kinetics_args("M", dry)
        m_args.amp, m_args.given_flags = amp, []
        plan, _, _ = batching.plan_run(m_args, 1, 234_619, launch.free_memory(device), "class", str(device))
        cases.append(("M", (plan.batch, m_args.frames, m_args.crop, max(1, plan.batch // 8)), 1))
    for version, shape, world in cases:
        model = x3d.generate_model(version, frames=shape[1], train_crop=shape[2]).to(device)
        estimate = estimated_peak(version, shape, amp, dry)
        for layout_name, layout in launch.LAYOUTS.items():
            for path, fold in (("function", False), ("fold", True)):
                if section.expired():
                    section.notes.append(f"X3D-{version} {shape} {layout_name}/{path}: skipped (time limit)")
                    continue
                trial = copy.deepcopy(model).to(memory_format=layout).train()
                set_bn_fold(trial, fold)
                optimizer = torch.optim.SGD(trial.parameters(), lr=0.01, momentum=0.9)
                try:
                    seconds, peak = time_step(trial, optimizer, shape, layout, device, amp, warmup, steps)
                    rate = shape[0] / seconds
                    step_rates.setdefault((version, shape), {})[(layout_name, path)] = rate
                    row = [f"{seconds * 1000:.1f}", f"{rate:.1f}", gib(peak), gib(estimate),
                           "n/a" if peak is None else f"{peak / estimate:.2f}"]
                except (RuntimeError, NotImplementedError) as error:
                    row = [f"failed: {type(error).__name__}", "", "", gib(estimate), ""]
                del trial, optimizer
                reset_peak(device)
                section.rows.append([f"X3D-{version}", f"{shape[0]}x{shape[1]}x{shape[2]}", shape[3],
                                     f"{world} GPU(s)", layout_name, path, *row])


def auto_section(device, amp, dry, section, step_rates):
    """--memory-format auto's pick at the first phase's shapes, against the steps table's fastest there."""
    args = kinetics_args("S", dry)
    version, shapes = args.version, schedule_shapes(args, 8, dry)
    model = x3d.generate_model(version, frames=args.frames, train_crop=args.crop).to(device)
    seconds = launch.time_layouts(model, shapes[:-1], device, amp, steps=1 if dry else 3)
    picked = min(seconds, key=seconds.get)
    fold = "function" if device.type == "cpu" else "fold"
    table = {}
    for shape in shapes[:-1]:
        for (layout, path), rate in step_rates.get((version, shape), {}).items():
            if path == fold:
                table[layout] = table.get(layout, 0.0) + shape[0] / rate
    fastest = min(table, key=table.get) if table else "n/a"
    section.rows.append([", ".join(f"{n} {s * 1000:.0f} ms" for n, s in seconds.items()), picked,
                         fastest, "yes" if picked == fastest else "no"])


def data_section(dry, section, step_rates):
    """One worker's clips/s from mp4 and JPEG folders at each shape, and the workers a device needs."""
    import bench_data
    from dataset import VideoDataset
    torch.set_num_threads(1)                      # a loader worker is one process, one thread
    args = kinetics_args("S", dry)
    version, shapes = args.version, schedule_shapes(args, 8, dry)
    with tempfile.TemporaryDirectory() as folder:
        bench_data.make_data(folder, 1 if dry else 2)
        kinds = {kind: VideoDataset(os.path.join(folder, kind), "train", frames=args.frames, rate=args.rate,
                                    train_crop=args.crop, jitter=args.jitter) for kind in ("mp4", "frames")}
        clips = 2 if dry else 12
        for shape in shapes:
            batch, frames, crop, _ = shape
            for kind, dataset in kinds.items():
                if section.expired():
                    section.notes.append(f"{shape} {kind}: skipped (time limit)")
                    continue
                dataset[ClipRequest(0, frames, args.rate, crop)]              # warm: imports, file cache
                start = time.perf_counter()
                for k in range(clips):
                    dataset[ClipRequest(k % len(dataset), frames, args.rate * max(1, args.frames // frames), crop,
                                        epoch=k)]
                worker_rate = clips / (time.perf_counter() - start)
                rates = step_rates.get((version, shape), {})
                step_rate = max(rates.values()) if rates else None
                workers = (math.ceil((1 - DATA_WAIT_TARGET) * step_rate / worker_rate) if step_rate else "n/a")
                section.rows.append([f"{batch}x{frames}x{crop}", kind, f"{worker_rate:.1f}",
                                     "n/a" if step_rate is None else f"{step_rate:.1f}", workers])
    torch.set_num_threads(launch.machine_cores())


def run_script(argv, out, timeout):
    os.makedirs(out, exist_ok=True)
    return subprocess.run([sys.executable, SCRIPT, *argv, "--output", os.path.join(out, "models"), "--log-dir",
                           os.path.join(out, "logs"), "--run-name", "run"], cwd=out, capture_output=True, text=True,
                          timeout=timeout)


def resume_section(device, dry, section, workdir):
    """SIGTERM mid-run and --resume against an uninterrupted run: the same weights bit for bit."""
    from dataset import ensure_synthetic
    data = ensure_synthetic(os.path.join(workdir, "synthetic"), seed=1, videos_per_class=6 if dry else 24,
                            val_per_class=1, charades=False, frames=False, official=False)["kinetics"]
    flags = ["--data", data, "--version", "XS", "--frames", "4", "--rate", "4", "--crop", "32", "--test-crop", "32",
             "--jitter", "32", "40", "--epochs", "1" if dry else "2", "--batch-size", "1" if dry else "4",
             "--lr", "0.05",
             "--deterministic", "--workers", "2", "--precise-bn-batches", "2", "--test-views", "1x1",
             "--no-flip", "--eval-every", "100", *(["--max-steps", "4"] if dry else [])]
    if device.type != "cpu":
        flags += [f"-{'gpu' if device.type == 'cuda' else 'npu'}", str(device.index or 0), "--amp", "bf16"]
    whole, stopped = os.path.join(workdir, "whole"), os.path.join(workdir, "stopped")
    result = run_script(flags, whole, timeout=max(10, section.deadline - time.monotonic()))
    if result.returncode != 0:
        section.rows.append(["uninterrupted run failed", result.stderr.strip().splitlines()[-1][:200], "", ""])
        return
    os.makedirs(stopped, exist_ok=True)
    command = [sys.executable, SCRIPT, *flags, "--output", os.path.join(stopped, "models"), "--log-dir",
               os.path.join(stopped, "logs"), "--run-name", "run"]
    process = subprocess.Popen(command, cwd=stopped, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    log = os.path.join(stopped, "logs", "run", "metrics.jsonl")
    # a step's record is written during the next step: signal while steps remain (--dry's run has 4)
    logged = 1 if dry else 3
    while process.poll() is None and not (os.path.exists(log) and open(log).read().count('"kind": "step"') >= logged):
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    stopped_code = process.wait(timeout=120)
    stopped_at = torch.load(os.path.join(stopped, "models", "run", "last.pt"), weights_only=True)["state"]
    resumed = run_script([*flags, "--resume"], stopped, timeout=max(10, section.deadline - time.monotonic()))
    a = torch.load(os.path.join(whole, "models", "run", "last.pt"), weights_only=True)
    b = torch.load(os.path.join(stopped, "models", "run", "last.pt"), weights_only=True)
    differ = [key for key, value in a["model"].items() if not torch.equal(value, b["model"][key])]
    section.rows.append([" ".join(flags[flags.index("--epochs"):]), stopped_code,
                         f"{stopped_at['global_step']} of {a['state']['global_step']}", resumed.returncode,
                         "yes" if not differ and a["state"] == b["state"] else f"no: {len(differ)} tensors differ"])


def compile_section(device, amp, dry, section):
    """torch.compile(dynamic=True) through the first phase's split counts: graphs compiled, first-step seconds.
    --dry compiles X3D's stem alone, with dynamo's eager backend (tracing the whole model on a CPU takes minutes)."""
    import torch._dynamo
    from torch._dynamo.utils import counters
    torch._dynamo.reset()
    counters.clear()
    args = kinetics_args("S", dry)
    version, shapes = args.version, schedule_shapes(args, 8, dry)
    model = x3d.generate_model(version, frames=args.frames, train_crop=args.crop).to(device).train()
    if dry:
        model = model.stem
    compiled = torch.compile(model, dynamic=True, backend="eager" if dry else "inductor")
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    for shape in shapes:
        if section.expired():
            section.notes.append(f"{shape}: skipped (time limit)")
            continue
        graphs_before = counters["stats"]["unique_graphs"]
        first, second = (time_step(compiled, optimizer, shape, torch.channels_last_3d, device, amp, 0, 1,
                                   loss=None if not dry else "mean")[0] for _ in range(2))
        section.rows.append([f"{shape[0]}x{shape[1]}x{shape[2]}", shape[3],
                             counters["stats"]["unique_graphs"] - graphs_before, f"{first:.2f}", f"{second:.3f}"])
    section.notes.append(f"backend: {'eager, the stem alone (--dry)' if dry else 'inductor'}; graphs counted by "
                         "torch._dynamo")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda", help="cuda or npu (the first device)")
    parser.add_argument("--dry", action="store_true", help="every section at tiny sizes on the CPU")
    parser.add_argument("--amp", default="bf16", choices=("bf16", "fp16", "none"))
    parser.add_argument("--out", default=None, help="write OUT/bench_gpu.md and keep the runs there")
    parser.add_argument("--sections", default=",".join(SECTION_SECONDS), help="comma-separated, of: "
                        + ", ".join(SECTION_SECONDS))
    bench = parser.parse_args(argv)
    if bench.dry:
        device = torch.device("cpu")
    else:
        launch.import_backend(bench.device)
        if not launch.device_count(bench.device):
            raise SystemExit(f"error: no {bench.device} device here (run with --dry to try the script on the CPU)")
        device = torch.device(bench.device, 0)
        launch.device_module(bench.device).set_device(device)
        torch.backends.cudnn.benchmark = True
    scale = 0.5 if bench.dry else 1.0
    titles = {"versions": ("Versions", ["torch", "CUDA", "cuDNN", "device", "bf16", "CPU cores"]),
              "steps": (f"Training steps ({bench.amp})", ["model", "per-device shape", "BN splits", "schedule",
                                                          "layout", "split BN", "ms/step", "clips/s", "peak GiB",
                                                          "estimate GiB", "peak / estimate"]),
              "auto": ("--memory-format auto at the first phase's shapes", ["trial", "auto picks",
                                                                             "table's fastest", "same"]),
              "data": ("Data: one loader worker against a device's step", ["shape", "source", "clips/s a worker",
                                                                            "clips/s a step", "workers for <10% wait"]),
              "resume": ("SIGTERM and --resume against an uninterrupted run", ["run", "stopped exit",
                                                                                "steps saved at the stop",
                                                                                "resume exit", "bit for bit"]),
              "compile": ("--compile over the split counts", ["shape", "BN splits", "graphs compiled",
                                                              "first step s", "next step s"])}
    wanted = bench.sections.split(",")
    sections, step_rates = [], {}
    workdir = bench.out or tempfile.mkdtemp(prefix="bench_gpu_")
    os.makedirs(workdir, exist_ok=True)
    started = time.monotonic()
    for name in SECTION_SECONDS:
        if name not in wanted:
            continue
        title, header = titles[name]
        section = Section(name, title, header, SECTION_SECONDS[name] * scale)
        print(f"[{time.monotonic() - started:.0f} s] {title} ...", flush=True)
        try:
            if name == "versions":
                versions(device, section)
            elif name == "steps":
                steps_section(device, bench.amp, bench.dry, section, step_rates)
            elif name == "auto":
                auto_section(device, bench.amp, bench.dry, section, step_rates)
            elif name == "data":
                data_section(bench.dry, section, step_rates)
            elif name == "resume":
                resume_section(device, bench.dry, section, workdir)
            elif name == "compile":
                compile_section(device, bench.amp, bench.dry, section)
        except Exception as error:                 # a section's failure is its result; the others still run
            section.notes.append(f"failed: {type(error).__name__}: {error}")
        sections.append(section)
        print(section.markdown(), flush=True)
    report = "\n".join(section.markdown() for section in sections)
    report += f"\n{'dry run on the CPU' if bench.dry else str(device)}, {time.monotonic() - started:.0f} s in all\n"
    if bench.out:
        with open(os.path.join(bench.out, "bench_gpu.md"), "w") as f:
            f.write(report)
    print(report.splitlines()[-1])


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
