"""How a run gets its processes and devices, and how it stops.

Devices. `-gpu 0,1,2,3` starts one process per listed GPU (DDP over NCCL), `-npu 0,1` the same on Ascend NPUs
(hccl; every process imports torch_npu), neither the CPU (`--nproc N` gloo processes). Under torchrun the processes
are torchrun's: each takes its local rank's device from the list, which must give one device per process, or the
one device it sees where a scheduler binds each process to its own. Every decision is a plain function of the
flags, the environment and the device count, so tests cover each branch without a device.

How preemption works:
  1. A SIGTERM (a cluster preempting the job, `scancel`, torchrun stopping its workers) or a SIGINT (Ctrl-C)
     reaches the training processes and usually their data workers too (SLURM and a terminal signal them all).
  2. A data worker ignores SIGINT and a SIGTERM that does not come from its own training process
     (`leave_stop_signals_to_main`); a loader starts its workers with both signals blocked (`Loader`), so a worker
     thread never takes a signal meant for the training process and dies of it.
  3. A training process notes the first signal (`RunControl`). Every training step's one collective carries it, so
     all ranks agree on it and finish the same step; then rank 0 writes last.pt with every rank's RNG state.
  4. The processes exit 128 + the signal's number (143 for SIGTERM, 130 for Ctrl-C). A second Ctrl-C, a second or
     more after the first, leaves at once without saving. After training, during the test, a signal exits at once
     (`exit_on_stop_signal`): last.pt holds the finished run, and --resume runs the test.
  5. `spawn`, the launcher of -gpu / -npu / --nproc, passes SIGTERM and SIGINT on to its processes and their exit
     status up. torchrun does the same for its own.
"""
import contextlib
import copy
import math
import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from config import UsageError
from evaluation import autocast
from layers import set_bn_splits

BACKENDS = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}
DEVICE_FLAGS = {"cuda": "-gpu", "npu": "-npu"}
DEVICE_NAMES = {"cuda": "CUDA", "npu": "Ascend NPU"}
DETERMINISTIC_CUBLAS = ":4096:8"     # cuBLAS's deterministic workspace, as torch.use_deterministic_algorithms asks
MAX_WORKERS = 8                      # loader processes per device: the authors' DATA_LOADER.NUM_WORKERS
LAYOUTS = {"channels_last": torch.channels_last_3d, "contiguous": torch.contiguous_format}   # --memory-format
LAYOUT_TRIAL_STEPS = 3          # timed steps per shape and layout in --memory-format auto's trial
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)   # a cluster's preemption, a Ctrl-C: save and stop, exit 128 + N
REPEATED_SIGNAL_S = 1.0     # one Ctrl-C reaches a process twice within this (terminal and launcher): not a second


@dataclass(frozen=True)
class Devices:
    """The run's devices as the flags and the environment give them."""
    kind: str              # 'cuda' | 'npu' | 'cpu'
    ids: tuple             # the -gpu / -npu devices, or one slot per CPU process
    torchrun: bool         # the processes are torchrun's (LOCAL_RANK is set), not ours to start
    visible: int           # devices of `kind` this process sees (0 for the CPU)

    @property
    def flag(self):
        return DEVICE_FLAGS.get(self.kind, "--nproc")


def import_backend(kind):
    """torch_npu registers the 'npu' device with torch: every process needs it imported, spawned ones included
    (torch's backend autoload does it only from torch 2.5)."""
    if kind != "npu":
        return
    try:
        import torch_npu  # noqa: F401
    except ImportError:
        raise UsageError("-npu needs Ascend's torch_npu: install the torch_npu build matching your torch and "
                         "CANN (pip install torch_npu==<your torch version>), see Ascend's PyTorch docs") from None


def device_module(kind):
    """torch.cuda / torch.npu (after import_backend), None for the CPU."""
    return None if kind == "cpu" else getattr(torch, kind)


def device_count(kind):
    """Devices of `kind` this process sees (0 where the kind is unavailable)."""
    if kind == "cuda":
        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    module = getattr(torch, kind, None)
    return module.device_count() if module is not None and module.is_available() else 0


def parse_ids(flag, text):
    """'0,1,3' -> (0, 1, 3); anything else is the user's to fix."""
    try:
        ids = tuple(int(part) for part in str(text).split(","))
    except ValueError:
        raise UsageError(f"{flag} {text}: give device numbers separated by commas, e.g. {flag} 0,1") from None
    if len(set(ids)) != len(ids):
        raise UsageError(f"{flag} {text}: a device is listed twice (one process per device)")
    return ids


def check_ids(flag, text, ids, kind, count):
    """Every listed device exists among the `count` this process sees."""
    missing = [i for i in ids if not 0 <= i < count]
    if missing:
        raise UsageError(f"{flag} {text}: this machine has {count} {DEVICE_NAMES[kind]} device(s), numbered "
                         f"0..{count - 1}; there is no device {', '.join(map(str, missing))}")


def choose_devices(gpu, npu, nproc, environ, count=device_count):
    """-> (Devices, notes to print). `count(kind)` gives the devices this process sees; `environ` tells whether
    torchrun started it (LOCAL_RANK, LOCAL_WORLD_SIZE)."""
    if gpu and npu:
        raise UsageError("give -gpu or -npu, not both")
    torchrun = "LOCAL_RANK" in environ
    if gpu or npu:
        kind, text = ("npu", npu) if npu else ("cuda", gpu)
        flag = DEVICE_FLAGS[kind]
        ids = parse_ids(flag, text)
        import_backend(kind)
        visible = count(kind)
        if visible == 0:
            raise UsageError(f"{flag} {text}: {DEVICE_NAMES[kind]} is not available on this machine")
        if torchrun:
            local_world = int(environ.get("LOCAL_WORLD_SIZE", "1"))
            if visible > 1:           # one visible device per process (a scheduler's binding) needs no list check
                check_ids(flag, text, ids, kind, visible)
                if len(ids) != local_world:
                    raise UsageError(f"{flag} {text} lists {len(ids)} device(s) for the {local_world} processes "
                                     f"torchrun starts on this machine: list one device per process")
        else:
            check_ids(flag, text, ids, kind, visible)
        return Devices(kind, ids, torchrun, visible), []
    notes = []
    gpus = count("cuda")
    if gpus:
        notes.append(f"note: {gpus} CUDA device(s) visible but no -gpu given: training on the CPU "
                     f"(-gpu 0 trains on the first, -gpu {','.join(map(str, range(gpus)))} on all)")
    ids = (0,) if torchrun else tuple(range(max(1, nproc)))
    return Devices("cpu", ids, torchrun, 0), notes


def local_device_index(devices, local_rank):
    """The device index of the process with `local_rank` (None on the CPU): its entry of the list, or the only
    device a torchrun process sees."""
    if devices.kind == "cpu":
        return None
    if devices.torchrun and devices.visible == 1:
        return 0
    return devices.ids[local_rank]


def processes_per_machine(devices, environ):
    return int(environ.get("LOCAL_WORLD_SIZE", "1")) if devices.torchrun else len(devices.ids)


def machine_cores():
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def default_workers(cores, processes):
    """Loader processes per device process: the machine's cores shared among its processes, at most MAX_WORKERS (on
    a 2-core laptop, 2: the loader never warns of more workers than cores)."""
    return min(MAX_WORKERS, max(1, cores // max(1, processes)))


def free_memory(device):
    """Bytes free on `device`: the accelerator's own count; on the CPU, the memory Linux says is available (None
    where it does not say)."""
    if device.type != "cpu":
        return device_module(device.type).mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def needs_pinned_memory(device_type):
    """Page-locked batches let the copy to an accelerator run asynchronously; a CPU run has nothing to copy (and
    pinning would start a CUDA context in every process of a GPU machine)."""
    return device_type in ("cuda", "npu")


def deterministic_environment(environ):
    """What --deterministic adds to the environment before CUDA starts: cuBLAS's fixed workspace (without it the
    matrix products of a CUDA run are not reproducible, and torch says so at every one)."""
    return {} if "CUBLAS_WORKSPACE_CONFIG" in environ else {"CUBLAS_WORKSPACE_CONFIG": DETERMINISTIC_CUBLAS}


def setup_process(local_rank, args, devices):
    """This process's device, process group and determinism settings -> ctx (rank, world, device, rank0,
    distributed)."""
    import_backend(devices.kind)              # a spawned process starts without torch_npu
    if args.deterministic:
        os.environ.update(deterministic_environment(os.environ))
    if devices.torchrun:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    else:
        rank, world = local_rank, len(devices.ids)
    index = local_device_index(devices, local_rank)
    device = torch.device("cpu") if index is None else torch.device(devices.kind, index)
    if index is not None:
        device_module(devices.kind).set_device(device)
    if world > 1:
        dist.init_process_group(BACKENDS[devices.kind], rank=rank, world_size=world)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif devices.kind == "cuda":
        torch.backends.cudnn.benchmark = True
    return SimpleNamespace(rank=rank, world=world, device=device, rank0=rank == 0, distributed=world > 1)


def choose_memory_format(model, phase, args, ctx):
    """--memory-format: as given; auto: channels_last_3d on the CPU (benchmarks/bench_model.py) and for a test; on
    accelerators the faster of the two layouts in training steps at `phase`'s shapes and BN split counts, under
    --amp (rank 0 decides for all). A layout that fails there (out of memory, an op the backend lacks) loses."""
    if args.memory_format != "auto":
        return LAYOUTS[args.memory_format]
    if ctx.device.type == "cpu" or phase is None:
        return torch.channels_last_3d
    shapes = [(shape.per_device_batch, phase.frames, shape.crop, shape.num_splits) for shape in phase.shapes]
    seconds = time_layouts(model, shapes, ctx.device, args.amp)
    if ctx.rank0:
        print("memory format: " + ", ".join(f"{n} {s * 1000:.1f} ms" for n, s in seconds.items())
              + f" a rotation of phase {phase.index}'s shapes -> {min(seconds, key=seconds.get)}")
    if all(math.isinf(s) for s in seconds.values()):
        raise UsageError(f"neither layout trains phase {phase.index}'s shapes on {ctx.device} (out of memory or "
                         "unsupported): lower --batch-size")
    choice = torch.tensor(float(list(LAYOUTS).index(min(seconds, key=seconds.get))), device=ctx.device)
    if dist.is_initialized():
        dist.broadcast(choice, 0)
    return list(LAYOUTS.values())[int(choice)]


def time_layouts(model, shapes, device, amp, steps=LAYOUT_TRIAL_STEPS):
    """{layout: seconds of one training step at each of `shapes` ((batch, frames, crop, BN splits)), summed}, on a
    throwaway copy of `model`; a layout that raises counts as infinitely slow. The copy's memory is freed."""
    seconds = {}
    for name, layout in LAYOUTS.items():
        trial = None
        try:
            trial = copy.deepcopy(model).to(device, memory_format=layout).train()
            seconds[name] = sum(time_training_steps(trial, layout, shape, device, amp, steps) for shape in shapes)
        except (RuntimeError, NotImplementedError) as error:       # torch.OutOfMemoryError is a RuntimeError
            warnings.warn(f"memory format {name} failed on {device}: {type(error).__name__}: {error}")
            seconds[name] = math.inf
        finally:
            del trial
            empty_cache(device)
    return seconds


def time_training_steps(trial, layout, shape, device, amp, steps):
    """Median seconds of a forward+backward of `trial` at `shape` (batch, frames, crop, BN splits), after one
    untimed step."""
    batch, frames, crop, splits = shape
    set_bn_splits(trial, splits)
    x = torch.randn(batch, 3, frames, crop, crop, device=device).contiguous(memory_format=layout)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast(amp, device):
            trial(x).float().sum().backward()
        float(next(trial.parameters()).grad.sum())           # waits for the device
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def empty_cache(device):
    if device.type != "cpu":
        getattr(torch, device.type).empty_cache()


def all_reduce(tensor, op=None):
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


# ---------------------------------------------------------------------------------------------------------------
# Processes and signals

def spawn(fn, args, nprocs):
    """mp.spawn, with SIGTERM and SIGINT passed on to the processes (they save and stop at the same step; a
    Ctrl-C they also got from the terminal counts once) and their exit status passed up (a process that reported
    an error already said why)."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))
    context = mp.spawn(fn, args=args, nprocs=nprocs, join=False)

    def forward(signum, frame):
        for process in context.processes:
            if process.is_alive():
                os.kill(process.pid, signum)

    previous = {signum: signal.signal(signum, forward) for signum in STOP_SIGNALS}
    try:
        while not context.join():
            pass
    except mp.ProcessExitedException as error:
        code = error.exit_code
        raise SystemExit(code if code >= 0 else 128 - code) from None     # killed by signal N: 128 + N
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def seed_worker(worker_id):
    np.random.seed(torch.initial_seed() % 2 ** 32)     # DataLoader seeds torch and random per worker, not numpy
    leave_stop_signals_to_main()


def leave_stop_signals_to_main():
    """In a loader worker: a Ctrl-C (to the terminal's process group) and a cluster's SIGTERM (to every process of
    the job) reach the workers too, and a worker that died of one would end the run before it saves; the main
    process decides. SIGINT is ignored; SIGTERM ends the worker only when its parent sends it (multiprocessing ends
    its workers so when the process exits: a worker ignoring that would hang the exit). Loader starts the worker
    with both blocked, in every thread it has."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if hasattr(signal, "sigwaitinfo"):           # Linux (not macOS, Windows): the sender of a signal is known
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        threading.Thread(target=end_on_sigterm_from, args=(os.getppid(),), name="sigterm", daemon=True).start()
    elif hasattr(signal, "pthread_sigmask"):     # no sender to tell apart: SIGTERM ends the worker as by default
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})


def end_on_sigterm_from(parent):
    while signal.sigwaitinfo({signal.SIGTERM}).si_pid != parent:
        pass
    os._exit(0)


class Loader(torch.utils.data.DataLoader):
    """A DataLoader whose workers start with SIGINT and SIGTERM blocked: a thread a worker has before seed_worker
    runs (DDP processes' workers have one) would otherwise take a SIGTERM meant for the main process and die of it."""

    def __iter__(self):
        if not hasattr(signal, "pthread_sigmask"):
            return super().__iter__()
        previous = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)    # a fork keeps this thread's mask
        try:
            return super().__iter__()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous)


class RunControl:
    """When a run stops or checkpoints inside an epoch, decided the same on every rank: SIGTERM (a cluster
    preempting the job) or SIGINT (Ctrl-C) stops it after the current step; a second Ctrl-C raises
    KeyboardInterrupt at once. --checkpoint-minutes asks for last.pt every N minutes of rank 0's clock. The flags
    travel in the training step's one all-reduce (engine.read_step), or in `poll` between epochs."""

    def __init__(self, args, ctx):
        self.ctx = ctx
        self.interval = args.checkpoint_minutes * 60 if args.checkpoint_minutes else None
        self.last_save = time.monotonic()
        self.signum = self.stopping = 0          # the first stop signal received here; the one all ranks agreed on
        self._first_at = None
        self._previous = {s: signal.signal(s, self._on_signal) for s in STOP_SIGNALS}

    def _on_signal(self, signum, frame):
        if not self.signum:
            self.signum, self._first_at = signum, time.monotonic()
        elif signum == signal.SIGINT and time.monotonic() - self._first_at > REPEATED_SIGNAL_S:
            self._first_at = math.inf            # abort once: copies of this Ctrl-C must not interrupt the exit
            raise KeyboardInterrupt

    def saved(self):
        self.last_save = time.monotonic()

    def local_flags(self):
        """(stop signal received here or 0, checkpoint due on this rank's clock) before the ranks agree."""
        due = self.ctx.rank0 and self.interval is not None and time.monotonic() - self.last_save >= self.interval
        return self.signum, due

    def agreed(self, signum, due):
        """Record what all ranks agreed on (the maximum of their flags) -> (stop signal or 0, checkpoint now)."""
        self.stopping = int(signum)
        return self.stopping, bool(due)

    def poll(self):
        """-> (stop signal or 0, checkpoint now), agreed by all ranks in one all-reduce (a collective)."""
        flags = torch.tensor(self.local_flags(), dtype=torch.float32, device=self.ctx.device)
        if self.ctx.distributed:
            all_reduce(flags, dist.ReduceOp.MAX)
        return self.agreed(*flags.tolist())

    def close(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


@contextlib.contextmanager
def exit_on_stop_signal(pending, message):
    """After training: the test has nothing to save, so a stop signal (one received during the last epoch's end,
    `pending`, or one arriving now) exits 128 + N at once, printing `message` (if any), instead of the default
    death by the signal or a test that runs on past the cluster's grace period."""
    def leave(signum, frame=None):
        if message:
            print(message, flush=True)
        raise SystemExit(128 + signum)

    if pending:
        leave(pending)
    previous = {signum: signal.signal(signum, leave) for signum in STOP_SIGNALS}
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
