"""What every training script shares: flags, devices (-gpu / -npu / CPU, DDP, torchrun), the Multigrid training loop,
AMP, precise BN, multi-view evaluation, atomic checkpoints and exact resume, logs, plots and the progress bar.

A task script (train_x3d_kinetics_multigrid.py, train_x3d_charades.py, ...) defines a `Task`: its datasets, loss,
scores and metrics. Everything else happens here, in this order:

    main(task) -> parse flags -> launch one process per device -> run():
        build_run        data sets, model (fine-tuning weights), logs
        start_training   schedule, optimizer, AMP scaler, --resume, DDP / compile, the run's loader
        train            for each epoch: begin_epoch -> train_one_epoch ->
                         end_epoch (precise BN, evaluate 1 view per video, checkpoints, log, plot)
        test             precise BN -> evaluate with all test views -> predictions file
"""
import argparse
import contextlib
import copy
import dataclasses
import datetime
import glob
import itertools
import json
import math
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import warnings
from types import SimpleNamespace

# Set before torch loads libgomp, which reads it once (the training scripts import engine before torch). After each
# parallel region libgomp's idle threads spin ~300,000 rounds before sleeping, on cores the data workers need: a
# short spin made the demo's training steps cheaper on 2 cores (README: bench_shapes). A user's own OMP_WAIT_POLICY
# or GOMP_SPINCOUNT wins.
OPENMP_SPIN_COUNT = "3000"
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tqdm import tqdm  # noqa: E402

import x3d  # noqa: E402
from evaluation import (accumulate_views, add_softmax, autocast, reduce_views, to_device,  # noqa: E402
                        write_unreadable_list, write_video_predictions)
from metrics import VideoAggregator, parse_views, topk_correct  # noqa: E402
from multigrid import LR_SCALINGS, ClipRequest, MultigridBatchSampler, MultigridSchedule  # noqa: E402
from recipe import I3D_ARCH, checkpoint_recipe, choose_recipe, model_spec, resolve_recipe  # noqa: E402
from training_plot import METRICS_FILE, read_records  # noqa: E402
from transforms import normalize_batch  # noqa: E402

MAX_BAD_STEPS = 20              # consecutive non-finite losses before the run stops
PRECISE_BN_BATCHES = 200
PLOT_INTERVAL_S = 30            # draw training.png at most this often, the first time this long after the start:
                                # a drawing takes CPU from training (most from the short first epochs of multigrid)
PLOT_SCRIPT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "training_plot.py")
ARCHS = ("x3d", I3D_ARCH)
MEMORY_FORMATS = {"channels_last": torch.channels_last_3d, "contiguous": torch.contiguous_format}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)   # a cluster's preemption, a Ctrl-C: save and stop, exit 128 + N
REPEATED_SIGNAL_S = 1.0     # one Ctrl-C reaches a process twice within this (terminal and launcher): not a second
# what a resumed run does not take from its checkpoint: this invocation's own requests and derived values
NOT_RESTORED = ("resume", "finetune", "test_only", "given_flags", "temporal_views", "spatial_crops", "run_name")
# flags that decide the model's shape: a resumed run cannot change them
FIXED_ON_RESUME = ("arch", "version")
RECIPE_FLAGS = {"frames": "frames", "rate": "rate", "crop": "train_crop", "test_crop": "test_crop",
                "jitter": "jitter"}   # flag -> ClipRecipe field


class UsageError(Exception):
    """A problem with what the user gave (data, checkpoint, flags): one `error: ...` line and exit status 1, no
    traceback. Anything else keeps its traceback."""


@contextlib.contextmanager
def user_input():
    """Errors raised while reading the user's data and checkpoints are theirs to fix: report them as UsageError."""
    try:
        yield
    except (ValueError, OSError, x3d.CheckpointError) as error:
        raise UsageError(str(error)) from None


# ---------------------------------------------------------------------------------------------------------------
# Tasks

class Task:
    """Kinetics-style single-label classification; other tasks override what differs."""
    name = "kinetics"
    model_task = "class"          # x3d.generate_model(task=...)
    combine = "mean"              # how a video's views are combined
    main_metric = "top1"          # decides the best checkpoint (higher is better)
    defaults = {}                 # flag defaults of this task (argparse dest -> value)
    predictions_file = "predictions_{views}.csv"   # the final test's output in the run's log folder

    def add_arguments(self, parser):
        pass

    def configure(self, args):
        """Fill in what depends on other flags (e.g. the demo data set); runs once, before the processes start."""

    def datasets(self, args):
        """-> dict(train=..., val=... (1 view per video), test=... (the test views)); each has num_classes."""
        raise NotImplementedError

    def prepare_model(self, model, args):
        """Adjust the freshly built model (before any weights are loaded); runs in every process."""

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float(), batch["label"])

    def train_correct(self, logits, batch):
        return topk_correct(logits.detach(), batch["label"], ks=(1,))[1]

    def aggregator(self, dataset):
        return VideoAggregator(dataset.num_videos, dataset.num_classes, self.combine)

    def add_views(self, aggregator, logits, batch):
        add_softmax(aggregator, logits, batch)

    def metrics(self, scores, dataset):
        from metrics import video_topk
        top = video_topk(scores, dataset.labels, ks=(1, 5))
        return {"top1": top[1], "top5": top[5]}

    def metrics_note(self, dataset):
        """A few words the final test line adds after the metrics (how they were counted), or ''."""
        return ""

    def write_predictions(self, path, scores, dataset, unreadable=None):
        write_video_predictions(path, scores, dataset.labels, video_paths=dataset.video_paths,
                                class_names=dataset.class_names, unreadable=unreadable)


# ---------------------------------------------------------------------------------------------------------------
# Flags

def build_parser(task):
    p = argparse.ArgumentParser(description=(sys.modules["__main__"].__doc__ or "").split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("-gpu", "--gpu", default=None, help="CUDA devices, e.g. 0,1,2,3: one process each (DDP)")
    p.add_argument("-npu", "--npu", default=None, help="Ascend NPUs, e.g. 0,1 (needs torch_npu; hccl backend)")
    p.add_argument("--nproc", type=int, default=1, help="CPU processes (gloo DDP) when no -gpu/-npu is given")
    p.add_argument("--arch", choices=ARCHS, default="x3d")
    p.add_argument("--version", default="S", help="X3D version: XS, S, M, L, XL")
    p.add_argument("--data", default=None, help="data root (or CSV); none: the built-in synthetic set")
    p.add_argument("--frames", type=int, default=None, help="clip frames (default: the version's)")
    p.add_argument("--rate", type=int, default=None, help="sampling rate at 30 fps (default: the version's)")
    p.add_argument("--crop", type=int, default=None, help="train crop (default: the version's)")
    p.add_argument("--test-crop", type=int, default=None, help="test crop (default: the version's)")
    p.add_argument("--jitter", type=int, nargs=2, default=None, help="train short-side range (default: version's)")
    p.add_argument("--flip", action=argparse.BooleanOptionalAction, default=True,
                   help="random horizontal flips in training (off where a mirror changes the class: left/right)")
    p.add_argument("--epochs", type=int, default=300, help="epoch budget (multigrid rescales it, see the table)")
    p.add_argument("--batch-size", type=int, default=256, help="global batch at the base shape (all devices)")
    p.add_argument("--lr", type=float, default=0.4, help="base LR for --batch-size")
    p.add_argument("--lr-policy", choices=("step", "cosine"), default="cosine")
    p.add_argument("--steps", type=int, nargs="*", default=[], help="LR stage boundaries in epochs, e.g. 0 94 154 196")
    p.add_argument("--gamma", type=float, default=0.1, help="step policy decay")
    p.add_argument("--warmup-epochs", type=float, default=35.0)
    p.add_argument("--warmup-start", type=float, default=0.025, help="warm-up start LR relative to --lr")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="sgd: Nesterov momentum, the X3D recipe; adamw: converges in fewer steps on small data "
                        "(multigrid then scales the LR by the square root of the relative batch)")
    p.add_argument("--lr-scaling", choices=("auto",) + LR_SCALINGS, default="auto",
                   help="how multigrid scales the LR with the relative batch; auto: linear for sgd, sqrt for adamw")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=5e-5, help="not applied to BN parameters")
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--long-cycle", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--short-cycle", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--workers", type=int, default=4, help="data loading processes per device")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--memory-format", choices=("auto",) + tuple(MEMORY_FORMATS), default="auto",
                   help="activation layout; auto: channels_last on the CPU, on accelerators the faster of the two "
                        "in a few timed training steps at start")
    p.add_argument("--shifted-depthwise", action="store_true",
                   help="depthwise convs from ordinary ops (backends without grouped Conv3d, e.g. older Ascend)")
    p.add_argument("--output", default="models", help="checkpoints go to OUTPUT/<run>/")
    # --log-dir, not --logs alone: torchrun's parser reads its own abbreviations in the script's arguments too, and
    # --logs is ambiguous there (--logs-specs / --logs_specs); --logs stays for plain runs
    p.add_argument("--log-dir", "--logs", dest="logs", default="logs", help="logs and plots go to LOG_DIR/<run>/")
    p.add_argument("--run-name", default=None)
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="checkpoint to continue with its saved arguments (no value: OUTPUT/RUN_NAME/last.pt, or the "
                        "newest last.pt of this task); flags given now override the saved ones")
    p.add_argument("--finetune", default=None, help="initial weights, any format load_pretrained reads")
    p.add_argument("--test-only", action="store_true", help="evaluate --finetune/--resume weights and exit")
    p.add_argument("--test-views", default="10x3", help="temporal x spatial views of the final test")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between clip-level evaluations")
    p.add_argument("--eval-batch-size", type=int, default=None, help="per device (default: the train batch)")
    p.add_argument("--precise-bn-batches", type=int, default=PRECISE_BN_BATCHES)
    p.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (smoke tests)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume)")
    p.add_argument("--checkpoint-minutes", type=float, default=None,
                   help="also write last.pt every N minutes inside an epoch (resuming from it is exact)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log the metrics and the shape schedule for TensorBoard (LOGS/<run>/tensorboard/)")
    task.add_arguments(p)
    p.set_defaults(**task.defaults)
    return p


def clip_recipe(args):
    """The run's clips: the architecture's recipe (x3d.VERSIONS, i3d.RECIPE) with the flags' overrides; a task's
    data sets take it as `clip_recipe(args).dataset_args()`."""
    return resolve_recipe(model_spec(args.arch, args.version), frames=args.frames, rate=args.rate,
                          train_crop=args.crop, test_crop=args.test_crop, jitter=args.jitter)


def latest_checkpoint(task, args):
    """A bare --resume: OUTPUT/<--run-name>/last.pt, or the newest OUTPUT/<task>_*/last.pt."""
    pattern = os.path.join(args.output, args.run_name or f"{task.name}_*", "last.pt")
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise UsageError(f"--resume: no {pattern} to continue")
    return found[-1]


def say(message):
    """Print once per job: in the launching process or on global rank 0 under torchrun."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message)


def restore_run(task, args):
    """--resume: the run continues with its own saved arguments; a flag given now overrides its saved value (and is
    reported where it differs), except the architecture and version, which the weights fix."""
    if args.resume == "latest":
        args.resume = latest_checkpoint(task, args)
    with user_input():
        checkpoint = x3d.read_checkpoint(args.resume)
    saved = checkpoint.get("args") if isinstance(checkpoint, dict) else None
    if not isinstance(saved, dict) or "model" not in checkpoint:
        raise UsageError(f"{args.resume}: not a training checkpoint of this project (no saved run); "
                         "start from its weights with --finetune instead")
    for key in FIXED_ON_RESUME:
        if key in args.given_flags and str(getattr(args, key)).upper() != str(saved.get(key)).upper():
            raise UsageError(f"--{key} {getattr(args, key)} cannot resume {args.resume}: that run trains "
                             f"--{key} {saved.get(key)} (leave --{key} out, or start a new run)")
    changed = []
    for key, value in saved.items():
        if key in NOT_RESTORED or not hasattr(args, key):
            continue
        if key not in args.given_flags:
            setattr(args, key, value)
        elif getattr(args, key) != value:
            changed.append(f"--{key.replace('_', '-')} {getattr(args, key)} (the run had {value})")
    say(f"resuming {args.resume} with its saved arguments"
        + (f"; given now: {', '.join(changed)}" if changed else ""))
    return checkpoint


def adopt_finetune_recipe(args):
    """--finetune from a checkpoint of this project: its architecture, version and clip recipe, unless a flag says
    otherwise (a contradicting --arch / --version is an error: the weights would not fit)."""
    with user_input():
        found = checkpoint_recipe(x3d.read_checkpoint(args.finetune), args.finetune)
        if found is None:
            return
        x3d_version_given = "version" in args.given_flags and found.arch != I3D_ARCH   # I3D has no versions
        choose_recipe(found, args.version if x3d_version_given else None,
                      args.arch if "arch" in args.given_flags else None)
    args.arch, args.version = found.arch, found.version or args.version
    for flag, field in RECIPE_FLAGS.items():
        if flag not in args.given_flags:
            value = getattr(found.spec, field)
            setattr(args, flag, list(value) if isinstance(value, tuple) else value)
    # the checkpoint's recipe counts as given: a task's demo settings do not replace it
    args.given_flags = sorted(set(args.given_flags) | {"arch", "version", *RECIPE_FLAGS})
    say(f"--finetune {args.finetune}: {found.name}, {args.frames} frames x rate {args.rate}, crop {args.crop} "
        f"(test {args.test_crop}), as the checkpoint was trained")


def resolve_args(task, args):
    clips = clip_recipe(args)
    args.frames, args.rate, args.crop, args.test_crop = clips.frames, clips.rate, clips.train_crop, clips.test_crop
    args.jitter = list(clips.jitter)
    try:
        args.temporal_views, args.spatial_crops = parse_views(args.test_views)
    except ValueError as error:
        raise UsageError(f"--test-views: {error}") from None
    if args.tensorboard:
        tensorboard_writer_class()          # missing: say so now, not after the data set is built
    if args.resume == "latest":
        args.resume = latest_checkpoint(task, args)
    if args.resume:
        args.run_name = os.path.basename(os.path.dirname(os.path.abspath(args.resume)))
    if not args.run_name:
        tag = args.version.upper() if args.arch == "x3d" else args.arch
        args.run_name = f"{task.name}_{tag}_{datetime.datetime.now():%Y%m%d-%H%M%S}"
    return args


# ---------------------------------------------------------------------------------------------------------------
# Devices and processes

def device_list(args):
    if args.gpu and args.npu:
        raise UsageError("give -gpu or -npu, not both")
    if args.npu:
        try:
            import torch_npu  # noqa: F401  (registers the 'npu' device with torch)
        except ImportError:
            raise UsageError("-npu needs Ascend's torch_npu: install the torch_npu build matching your torch and "
                             "CANN (pip install torch_npu==<your torch version>), see Ascend's PyTorch docs") from None
        return "npu", [int(i) for i in args.npu.split(",")]
    if args.gpu:
        if not torch.cuda.is_available():
            raise UsageError(f"-gpu {args.gpu}: CUDA is not available on this machine")
        return "cuda", [int(i) for i in args.gpu.split(",")]
    return "cpu", list(range(args.nproc))


def given_flags(task, argv=None):
    """The destinations of the flags given on the command line (a value equal to the default counts as given)."""
    not_given = object()                  # not a str: argparse would run a str default through the flag's type
    parser = build_parser(task)
    parser.set_defaults(**{action.dest: not_given for action in parser._actions})
    return sorted(k for k, v in vars(parser.parse_args(argv)).items() if v is not not_given)


def use_demo_settings(args, demo):
    """The demo's values for every flag the user did not give."""
    for key, value in demo.items():
        if key not in args.given_flags:
            setattr(args, key, value)


def main(task, argv=None):
    args = build_parser(task).parse_args(argv)
    args.given_flags = given_flags(task, argv)
    try:
        if args.resume:
            restore_run(task, args)
        elif args.finetune:
            adopt_finetune_recipe(args)
        kind, ids = device_list(args)
        task.configure(args)
        resolve_args(task, args)
        if "LOCAL_RANK" in os.environ:                    # started by torchrun: it made the processes
            run(int(os.environ["LOCAL_RANK"]), task, args, kind, ids, from_torchrun=True)
        elif len(ids) > 1:
            spawn(run, (task, args, kind, ids), len(ids))
        else:
            run(0, task, args, kind, ids)
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None


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


def setup_process(local_rank, args, kind, ids, from_torchrun):
    if from_torchrun:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    else:
        rank, world = local_rank, len(ids)
    if kind == "cpu":
        device = torch.device("cpu")
    else:
        device = torch.device(kind, ids[local_rank % len(ids)])
        getattr(torch, kind).set_device(device)
    if world > 1:
        backend = {"cuda": "nccl", "npu": "hccl", "cpu": "gloo"}[kind]
        dist.init_process_group(backend, rank=rank, world_size=world)
    if args.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False
    elif kind == "cuda":
        torch.backends.cudnn.benchmark = True
    return SimpleNamespace(rank=rank, world=world, device=device, main=rank == 0, distributed=world > 1)


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


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


def all_reduce(tensor, op=None):
    if dist.is_initialized():
        dist.all_reduce(tensor, op=op or dist.ReduceOp.SUM)
    return tensor


# ---------------------------------------------------------------------------------------------------------------
# Model and optimizer

def build_model(args, num_classes, model_task):
    kwargs = dict(n_classes=num_classes, dropout=args.dropout, task=model_task, frames=args.frames,
                  train_crop=args.crop)
    if args.arch == "i3d_r50":
        import i3d
        return i3d.generate_model(**kwargs), i3d.load_pretrained
    return x3d.generate_model(args.version, **kwargs), x3d.load_pretrained


def choose_memory_format(model, args, ctx):
    """The memory format to train in: the flag's, channels_last_3d on the CPU (benchmarks/bench_model.py), and on
    accelerators the faster of the two layouts as timed on the device (rank 0 decides for all)."""
    if args.memory_format != "auto":
        return MEMORY_FORMATS[args.memory_format]
    if ctx.device.type == "cpu":
        return torch.channels_last_3d
    shape = (max(1, args.batch_size // ctx.world), 3, args.frames, args.crop, args.crop)
    name = fastest_memory_format(model, shape, ctx.device, args, verbose=ctx.main)
    choice = torch.tensor(float(list(MEMORY_FORMATS).index(name)), device=ctx.device)
    if dist.is_initialized():
        dist.broadcast(choice, 0)
    return list(MEMORY_FORMATS.values())[int(choice)]


def fastest_memory_format(model, input_shape, device, args, steps=3, verbose=False):
    """The name of the faster layout for training `model` on `device` at `input_shape`. The depthwise convolutions
    of the two go to different kernels (on CUDA, contiguous: PyTorch's native depthwise kernel; channels_last_3d:
    cuDNN), whose speed depends on the device and library version, so both are timed."""
    seconds = {name: time_training_steps(model, memory_format, input_shape, device, args, steps)
               for name, memory_format in MEMORY_FORMATS.items()}
    name = min(seconds, key=seconds.get)
    if verbose:
        print("memory format: " + ", ".join(f"{n} {s * 1000:.1f} ms/step" for n, s in seconds.items()) + f" -> {name}")
    return name


def time_training_steps(model, memory_format, input_shape, device, args, steps):
    """Median seconds of a forward+backward of a throwaway copy of `model` (its weights and BN statistics stay as
    they are) in `memory_format`, after one untimed step."""
    trial = copy.deepcopy(model).to(device, memory_format=memory_format).train()
    x = torch.randn(input_shape, device=device).contiguous(memory_format=memory_format)
    times = []
    for _ in range(steps + 1):
        start = time.perf_counter()
        with autocast(args.amp, device):
            trial(x).float().sum().backward()
        float(next(trial.parameters()).grad.sum())           # waits for the device
        times.append(time.perf_counter() - start)
    return sorted(times[1:])[len(times[1:]) // 2]


def make_optimizer(model, args):
    """SGD with Nesterov momentum (the X3D recipe) or AdamW; no weight decay on BN parameters."""
    bn_params = {id(p) for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)
                 for p in m.parameters(recurse=False)}
    decay = [p for p in model.parameters() if id(p) not in bn_params]
    no_decay = [p for p in model.parameters() if id(p) in bn_params]
    groups = [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if args.optimizer == "adamw":
        return torch.optim.AdamW(groups, lr=args.lr)
    return torch.optim.SGD(groups, lr=args.lr, momentum=args.momentum, nesterov=args.momentum > 0)


def make_schedule(args, world):
    return MultigridSchedule(base_batch=args.batch_size, base_frames=args.frames, base_crop=args.crop,
                             base_rate=args.rate, steps=args.steps or [0], max_epoch=args.epochs, num_devices=world,
                             long_cycle=args.long_cycle, short_cycle=args.short_cycle, lr_policy=args.lr_policy,
                             gamma=args.gamma, warmup_epochs=args.warmup_epochs, warmup_start=args.warmup_start,
                             lr_scaling=lr_scaling(args))


def lr_scaling(args):
    """--lr-scaling, with auto resolved by the optimizer (a resumed run from before the flag gets auto)."""
    if args.lr_scaling != "auto":
        return args.lr_scaling
    return "linear" if args.optimizer == "sgd" else "sqrt"


def sync_groups(schedule, ctx):
    """Process groups for the phases that synchronize BN across devices (every rank must create every group)."""
    groups = {}
    for size in sorted({p.sync_devices for p in schedule.phases if p.bn_kind == "sync_batchnorm"}):
        for start in range(0, ctx.world, size):
            group = dist.new_group(list(range(start, start + size)))
            if start <= ctx.rank < start + size:
                groups[size] = group
    return groups


# ---------------------------------------------------------------------------------------------------------------
# Checkpoints

def save_checkpoint(path, state):
    """Atomic: write a temporary file next to the target, then rename it over; a crash never leaves half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def rng_state():
    python = random.getstate()
    numpy = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [python[0], list(python[1]), python[2]],
             "numpy": [numpy[0], torch.from_numpy(numpy[1].astype(np.int64)), numpy[2], numpy[3], numpy[4]]}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng_states(ctx):
    """Every rank's RNG state, in rank order (a collective: all ranks call it together)."""
    if not ctx.distributed:
        return [rng_state()]
    states = [None] * ctx.world
    dist.all_gather_object(states, rng_state())
    return states


def rank_rng_state(saved, rank):
    """A checkpoint's RNG state for `rank` (mid-epoch checkpoints hold one per rank; others rank 0's)."""
    return saved[rank] if isinstance(saved, list) else saved


class RunControl:
    """When a run stops or checkpoints inside an epoch, decided the same on every rank: SIGTERM (a cluster
    preempting the job) or SIGINT (Ctrl-C) stops it after the current step; a second Ctrl-C raises
    KeyboardInterrupt at once. --checkpoint-minutes asks for last.pt every N minutes of rank 0's clock. One small
    all-reduce per step makes the ranks agree."""

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

    def poll(self):
        """-> (stop signal or 0, checkpoint now), agreed by all ranks (SIGTERM where ranks got different ones)."""
        due = self.ctx.main and self.interval is not None and time.monotonic() - self.last_save >= self.interval
        flags = torch.tensor([float(self.signum), float(due)], device=self.ctx.device)
        if self.ctx.distributed:
            all_reduce(flags, dist.ReduceOp.MAX)
        self.stopping = int(flags[0])
        return self.stopping, bool(flags[1])

    def close(self):
        for signum, previous in self._previous.items():
            signal.signal(signum, previous if previous is not None else signal.SIG_DFL)


# ---------------------------------------------------------------------------------------------------------------
# Logs

def tensorboard_writer_class():
    """torch's SummaryWriter; tensorboard is an optional dependency, so its absence is the user's to fix."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


class RunLog:
    """logs/<run>/: args.json, metrics.jsonl (one line per step and per epoch), training.png redrawn after an epoch
    (at most every PLOT_INTERVAL_S, and at the end), and with --tensorboard the same numbers as TensorBoard scalars
    in logs/<run>/tensorboard/ (steps: loss, lr, clips/s and the shape schedule; epochs and the test: every number
    of their record). training_plot.py draws, in a child process at low priority."""

    def __init__(self, folder, args, enabled):
        self.folder, self.enabled = folder, enabled
        self.path = os.path.join(folder, METRICS_FILE)
        self._drawing, self._drawn_at = None, time.monotonic()
        self.tensorboard = None
        if enabled:
            os.makedirs(folder, exist_ok=True)
            with open(os.path.join(folder, "args.json"), "w") as f:
                json.dump(vars(args), f, indent=1, default=str)
            if getattr(args, "tensorboard", False):
                self.tensorboard = tensorboard_writer_class()(os.path.join(folder, "tensorboard"))

    def write(self, **record):
        if self.enabled:
            with open(self.path, "a") as f:
                f.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            self._add_scalars(record)

    def _add_scalars(self, record):
        kind = record.get("kind")
        position = {"step": record.get("step"), "epoch": record.get("epoch")}.get(kind, 0)
        for key, value in record.items():
            if key not in ("kind", "step") and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.tensorboard.add_scalar(f"{kind}/{key}", value, position)

    def records(self):
        return read_records(self.folder)

    def rewind(self, global_step, epoch):
        """A resumed run goes on from its checkpoint: the records written after it (steps beyond its global step,
        epochs beyond its epoch, a test) are dropped, so the file reads as one run."""
        if not self.enabled:
            return
        kept = [r for r in self.records() if r.get("kind") == "step" and r.get("step", math.inf) <= global_step
                or r.get("kind") == "epoch" and r.get("epoch", math.inf) <= epoch]
        tmp = f"{self.path}.tmp{os.getpid()}"
        with open(tmp, "w") as f:
            f.writelines(json.dumps(record) + "\n" for record in kept)
        os.replace(tmp, self.path)

    def plot(self, force=False):
        """Start redrawing training.png (training_plot.py, a child process at low priority); unless `force`, only if
        the last drawing (or the run) started PLOT_INTERVAL_S ago and is done (short multigrid epochs end every few
        seconds)."""
        if not self.enabled:
            return
        if not force and (time.monotonic() - self._drawn_at < PLOT_INTERVAL_S
                          or self._drawing is not None and self._drawing.poll() is None):
            return
        self.wait()
        self._drawn_at = time.monotonic()
        self._drawing = subprocess.Popen([sys.executable, PLOT_SCRIPT, self.folder], stdin=subprocess.DEVNULL)

    def wait(self):
        """Block until the latest drawing (and the TensorBoard events so far) are on disk."""
        if self._drawing is not None:
            self._drawing.wait()
            self._drawing = None
        if self.tensorboard is not None:
            self.tensorboard.flush()


# ---------------------------------------------------------------------------------------------------------------
# Loops

def make_loader(dataset, batches, args):
    """A DataLoader over precomputed batches (lists of ClipRequest), or a batch sampler."""
    # its own generator: the workers' base seed is drawn when an iterator starts; drawn from the global RNG it
    # would shift the main process's randomness by whatever point of the run that happens at
    return Loader(dataset, batch_sampler=batches, num_workers=args.workers, pin_memory=torch.cuda.is_available(),
                  worker_init_fn=seed_worker, generator=torch.Generator().manual_seed(args.seed))


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


def shard_batches(num_items, per_device_batch, shape, ctx, order=None):
    """Fixed-shape batches (lists of ClipRequest) over this rank's share of the items (every item once across
    ranks)."""
    items = list(order if order is not None else range(num_items))[ctx.rank::ctx.world]
    return [[ClipRequest(i, *shape) for i in items[s:s + per_device_batch]]
            for s in range(0, len(items), per_device_batch)]


class SeededClips(torch.utils.data.Dataset):
    """Each training item's randomness (clip start, jitter, crop, flip, the stand-in for a bad file) is a pure
    function of (seed, epoch, index): the same clips on any number of devices, and again after a resume. Items are
    ClipRequests, which carry their epoch, so workers kept across epochs need no update."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, request):
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed also queues seeds for CUDA, MTIA and XPU, recording a stack
            # trace for each, which cost a third of a small clip's loading time
            torch.default_generator.manual_seed(hash((self.seed, request.epoch, int(request.index))) % 2 ** 63)
            return self.dataset[request]


class RunBatches(torch.utils.data.Sampler):
    """Every batch of the run from step `skip` of `start_epoch` to the end of the schedule (at most `max_steps` per
    epoch). One pass of the loader serves the whole run, so the workers prepare the next epoch's first batches
    while this one ends, instead of the loop waiting a whole batch at every epoch start (short multigrid epochs
    have 5 steps; see benchmarks/bench_shapes.py). A resume mid-epoch continues with the same deterministic
    batches."""

    def __init__(self, sampler, start_epoch, skip=0, max_steps=None):
        self.sampler = copy.copy(sampler)          # its own epoch: the loader runs ahead of the training loop
        self.start_epoch, self.skip, self.max_steps = start_epoch, skip, max_steps

    def __iter__(self):
        for epoch in range(self.start_epoch, self.sampler.schedule.max_epoch):
            self.sampler.set_epoch(epoch)
            for i, batch in enumerate(self.sampler):
                if self.max_steps is not None and i >= self.max_steps:
                    break
                if epoch > self.start_epoch or i >= self.skip:
                    yield batch


@torch.no_grad()
def precise_bn(model, dataset, shape, per_device_batch, num_batches, args, ctx):
    """Recompute BN statistics as true averages over `num_batches` training batches at the evaluation shape:
    multigrid's coarse phases leave running averages that do not fit it."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns or num_batches <= 0:
        return
    per_device_batch = max(2, per_device_batch)
    order = torch.randperm(len(dataset)).tolist()
    batches = shard_batches(len(dataset), per_device_batch, shape, ctx, order)[:num_batches]
    if not batches:
        return
    saved = [(m.momentum, getattr(m, "num_splits", 1)) for m in bns]
    sums = [(torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)) for m in bns]
    for m in bns:
        m.momentum = 1.0                     # each forward leaves exactly this batch's statistics in the buffers
        if hasattr(m, "num_splits"):
            m.num_splits = 1
    was_training = model.training
    model.train()
    count = 0
    for batch in make_loader(dataset, batches, args):
        with autocast(args.amp, ctx.device):
            model(normalize_batch(batch["clip"].to(ctx.device, non_blocking=True)))
        for (mean, var), m in zip(sums, bns):
            mean += m.running_mean
            var += m.running_var
        count += 1
    counts = all_reduce(torch.tensor(float(count), device=ctx.device))
    for (mean, var), m, (momentum, splits) in zip(sums, bns, saved):
        m.running_mean.copy_(all_reduce(mean) / counts)
        m.running_var.copy_(all_reduce(var) / counts)
        m.momentum = momentum
        if hasattr(m, "num_splits"):
            m.num_splits = splits
    model.train(was_training)


@torch.no_grad()
def evaluate(model, dataset, task, shape, args, ctx, desc="eval"):
    """Every view of `dataset` once across ranks; views combined per video; returns (metrics, scores, unreadable
    views per video)."""
    model.eval()
    per_device = args.eval_batch_size or max(1, args.batch_size // ctx.world)
    aggregator = task.aggregator(dataset)
    loader = make_loader(dataset, shard_batches(len(dataset), per_device, shape, ctx), args)
    accumulate_views(model, loader, task.add_views, aggregator, ctx.device, args.amp, progress=ctx.main, desc=desc)
    scores = reduce_views(aggregator, ctx.device).scores()
    return task.metrics(scores, dataset), scores, aggregator.unreadable


def timed(loader):
    """(batch, seconds the loop waited for it): the wait shows when training is input-bound."""
    batches = iter(loader)
    while True:
        tick = time.perf_counter()
        try:
            batch = next(batches)
        except StopIteration:
            return
        yield batch, time.perf_counter() - tick


def forward_loss(model, raw_model, batch, num_splits, task, args, ctx):
    """Batch to the device, normalized, through the model with `num_splits` BN groups -> (batch, logits, loss)."""
    batch = to_device(batch, ctx.device)
    x3d.set_bn_splits(raw_model, num_splits)
    with autocast(args.amp, ctx.device):
        logits = model(normalize_batch(batch["clip"]))
    return batch, logits, task.loss(logits, batch)


def backward_step(loss, optimizer, scaler):
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()


class EpochMeter:
    """An epoch's running sums, its progress bar and its per-step log lines; `close()` sums them over ranks."""

    def __init__(self, run, epoch, steps, start_step):
        self.run, self.epoch = run, epoch
        self.loss = self.wait = self.seconds = 0.0
        self.correct = self.seen = self.bad = self.skipped = 0
        self.has_accuracy = False
        self.bar = tqdm(total=steps, initial=start_step, desc=f"epoch {epoch + 1}/{run.schedule.max_epoch}",
                        disable=not run.ctx.main, dynamic_ncols=True)
        self.tick = time.perf_counter()

    def step(self, position, lr, shape, loss_value, correct, data_wait):
        """One finished step at `position` (epochs, fractional): sums, a metrics.jsonl line, the bar's postfix."""
        batch_size, frames, crop = shape
        self.loss += loss_value * batch_size
        self.seen += batch_size
        if correct is not None:
            self.correct += correct
            self.has_accuracy = True
        now = time.perf_counter()
        step_seconds = max(now - self.tick, 1e-9)           # data wait included: the step as the clock sees it
        self.tick = now
        self.wait += data_wait
        self.seconds += step_seconds
        clips_per_s = batch_size * self.run.ctx.world / step_seconds
        self.run.log.write(kind="step", step=self.run.state.global_step, epoch=position, loss=loss_value, lr=lr,
                           batch=batch_size, frames=frames, crop=crop, clips_per_s=clips_per_s,
                           step_seconds=step_seconds, data_wait=data_wait)
        postfix = {"loss": f"{loss_value:.3f}", "lr": f"{lr:.3g}", "shape": f"{batch_size}x{frames}x{crop}",
                   "clips/s": f"{clips_per_s:.1f}", "data wait": f"{100 * self.wait / self.seconds:.0f}%"}
        if correct is not None:
            postfix["acc"] = f"{100 * self.correct / self.seen:.1f}"
        self.bar.set_postfix(postfix)
        self.bar.update(1)

    def close(self):
        """-> the epoch record's training fields, summed over ranks (a collective)."""
        self.bar.close()
        device = self.run.ctx.device
        loss, correct, seen, bad, skipped = (float(all_reduce(torch.tensor(float(v), device=device))) for v in
                                             (self.loss, self.correct, self.seen, self.bad, self.skipped))
        seen = max(seen, 1)
        return {"train_loss": loss / seen, "train_acc": 100 * correct / seen if self.has_accuracy else None,
                "bad_samples": int(bad), "skipped_steps": int(skipped),
                "phase": self.run.schedule.phase(self.epoch).index, "data_wait": self.wait / max(self.seconds, 1e-9)}


def train_one_epoch(run, epoch):
    """Steps `run.state.step_in_epoch` on of `epoch` (at most --max-steps), taking (batch, data wait) pairs from the
    run's loader; a stop signal (checkpoint_if_due) can end it early. -> the epoch's training statistics."""
    args, ctx, state, schedule = run.args, run.ctx, run.state, run.schedule
    run.model.train()
    total_steps = len(run.sampler)
    steps = min(total_steps, args.max_steps if args.max_steps is not None else total_steps)
    start_step = state.step_in_epoch
    meter = EpochMeter(run, epoch, steps, start_step)
    for i, (batch, data_wait) in enumerate(itertools.islice(run.batches, max(0, steps - start_step)),
                                           start=start_step):
        lr = args.lr * schedule.lr(epoch + i / total_steps)      # phase and LR from the same counter
        for group in run.optimizer.param_groups:
            group["lr"] = lr
        meter.bad += int(batch["bad"].sum())
        batch_size, _, frames, crop = batch["clip"].shape[:4]
        batch, logits, loss = forward_loss(run.model, run.raw_model, batch, run.sampler.num_splits_for(batch_size),
                                           run.task, args, ctx)
        not_finite = all_reduce(torch.tensor(float(not torch.isfinite(loss)), device=ctx.device),
                                dist.ReduceOp.MAX if ctx.distributed else None)
        if not_finite:               # every rank skips together, or DDP's gradient all-reduce would hang
            state.bad_steps += 1
            meter.skipped += 1
            run.optimizer.zero_grad(set_to_none=True)
            warnings.warn(f"non-finite loss at epoch {epoch + 1} step {i + 1}: step skipped "
                          f"({state.bad_steps} in a row)")
            if state.bad_steps >= MAX_BAD_STEPS:
                raise FloatingPointError(f"{MAX_BAD_STEPS} non-finite losses in a row")
            continue
        state.bad_steps = 0
        backward_step(loss, run.optimizer, run.scaler)
        state.global_step += 1
        state.step_in_epoch = i + 1
        meter.step(epoch + i / total_steps, lr, (batch_size, frames, crop), float(loss.detach()),
                   run.task.train_correct(logits, batch), data_wait)
        if checkpoint_if_due(run):
            break
    return meter.close()


# ---------------------------------------------------------------------------------------------------------------
# The run: build_run -> start_training (resume) -> train (train_one_epoch, end_epoch per epoch) -> test

@dataclasses.dataclass
class RunState:
    """Where a run stands: saved in every checkpoint (as a dict) and continued from on --resume."""
    epoch: int = 0                 # epochs finished
    step_in_epoch: int = 0         # steps finished in the current epoch
    global_step: int = 0
    best: float = -math.inf        # the best validation value of the task's main metric so far
    bad_steps: int = 0             # non-finite losses in a row


@dataclasses.dataclass
class Run:
    """One process's run: what build_run and start_training make, and what every later step reads."""
    task: Task
    args: argparse.Namespace
    ctx: SimpleNamespace
    data: dict                     # {'train', 'val', 'test'} datasets
    model: torch.nn.Module         # as it runs: DDP- and compile-wrapped once training starts
    raw_model: torch.nn.Module     # the model itself: BN settings, precise BN, weights for checkpoints
    load_weights: object           # x3d.load_pretrained or i3d.load_pretrained
    log: RunLog
    checkpoint_dir: str
    state: RunState = dataclasses.field(default_factory=RunState)
    schedule: MultigridSchedule = None
    optimizer: torch.optim.Optimizer = None
    scaler: torch.amp.GradScaler = None
    sampler: MultigridBatchSampler = None
    batches: object = None         # (batch, data wait) pairs of the whole run (RunBatches through one loader)
    sync_groups: dict = None       # SyncBatchNorm process groups by their size
    control: RunControl = None
    resumed_rng: object = None     # a --resume checkpoint's RNG states: a mid-epoch resume continues them

    @property
    def num_classes(self):
        return self.data["train"].num_classes

    @property
    def train_shape(self):
        return (self.args.frames, self.args.rate, self.args.crop)

    def checkpoint(self, rng=None):
        args = self.args
        return {"model": self.raw_model.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.scaler.state_dict(), "state": dataclasses.asdict(self.state),
                "rng": rng or rng_state(), "args": dict(vars(args)), "arch": args.arch, "version": args.version,
                "num_classes": self.num_classes, "class_names": list(getattr(self.data["train"], "class_names", []))}

    def save(self, name, rng=None):
        """checkpoint_dir/name from global rank 0 (the others return at once)."""
        if self.ctx.main:
            save_checkpoint(os.path.join(self.checkpoint_dir, name), self.checkpoint(rng))

    def recompute_bn_statistics(self):
        """Precise BN over --precise-bn-batches training batches at the train shape (a collective)."""
        args, ctx = self.args, self.ctx
        precise_bn(self.raw_model, self.data["train"], self.train_shape, max(1, args.batch_size // ctx.world),
                   args.precise_bn_batches, args, ctx)


def run(local_rank, task, args, kind, ids, from_torchrun=False):
    ctx = setup_process(local_rank, args, kind, ids, from_torchrun)
    try:
        _run(task, args, ctx)
    except UsageError as error:     # every rank meets the same problem; rank 0 says it
        raise SystemExit(f"error: {error}" if ctx.main else 1) from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def _run(task, args, ctx):
    run = build_run(task, args, ctx)
    if args.test_only:
        if args.resume:
            with user_input():
                run.load_weights(run.model, args.resume, verbose=ctx.main)
        test(run)
        return None
    start_training(run)
    train(run)
    run.log.wait()
    final = test(run, recompute_bn=True)
    if ctx.main:
        print(f"done. checkpoints: {run.checkpoint_dir}/(last|best).pt  logs and plots: {run.log.folder}/")
    return final


def build_run(task, args, ctx):
    """The data sets, the model (fine-tuning weights loaded, on the device in its memory format) and the logs."""
    seed_everything(args.seed + ctx.rank)
    with user_input():
        data = task.datasets(args)
    model, load_weights = build_model(args, data["train"].num_classes, task.model_task)
    task.prepare_model(model, args)
    if args.finetune:
        if ctx.main:
            print(f"fine-tuning from {args.finetune}")
        with user_input():
            load_weights(model, args.finetune, verbose=ctx.main)
    if args.shifted_depthwise:
        x3d.use_shifted_depthwise(model)
    model.to(ctx.device, memory_format=choose_memory_format(model, args, ctx))
    log = RunLog(os.path.join(args.logs, args.run_name), args, ctx.main)
    return Run(task, args, ctx, data, model, model, load_weights, log, os.path.join(args.output, args.run_name))


def start_training(run):
    """Schedule, optimizer and AMP scaler; with --resume their saved states and the run's position; then the
    distributed and compiled model and the loader that serves the whole run from that position."""
    args, ctx = run.args, run.ctx
    run.schedule = make_schedule(args, ctx.world)
    run.optimizer = make_optimizer(run.model, args)
    run.scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.amp == "fp16")
    if args.resume:
        restore(run)
    if ctx.main:
        print(run.schedule.table())
        print(f"checkpoints: {run.checkpoint_dir}   logs: {run.log.folder}")
    run.sync_groups = sync_groups(run.schedule, ctx) if ctx.distributed else {}
    if ctx.distributed:
        run.model = torch.nn.parallel.DistributedDataParallel(
            run.model, device_ids=[ctx.device] if ctx.device.type != "cpu" else None)
    if args.compile:
        run.model = torch.compile(run.model, dynamic=True)
    run.sampler = MultigridBatchSampler(len(run.data["train"]), run.schedule, rank=ctx.rank, world_size=ctx.world,
                                        seed=args.seed)
    run_batches = RunBatches(run.sampler, run.state.epoch, run.state.step_in_epoch, args.max_steps)
    run.batches = timed(make_loader(SeededClips(run.data["train"], args.seed), run_batches, args))


def restore(run):
    """--resume: the checkpoint's weights, optimizer, scaler, position and RNG states (same class count only)."""
    args = run.args
    with user_input():
        checkpoint = x3d.read_checkpoint(args.resume)
    if checkpoint.get("num_classes", run.num_classes) != run.num_classes:
        raise UsageError(f"{args.resume} has {checkpoint['num_classes']} classes, {args.data} "
                         f"{run.num_classes}: a run cannot continue on another class count (use --finetune)")
    run.model.load_state_dict(checkpoint["model"])
    run.optimizer.load_state_dict(checkpoint["optimizer"])
    run.scaler.load_state_dict(checkpoint["scaler"])
    run.state = RunState(**checkpoint["state"])
    run.resumed_rng = checkpoint["rng"]
    run.log.rewind(run.state.global_step, run.state.epoch)
    if run.ctx.main:
        print(f"resumed {args.resume}: epoch {run.state.epoch + 1}, step {run.state.step_in_epoch}")


def train(run):
    """The epoch loop from the run's position to the schedule's end. SIGTERM / Ctrl-C: every rank stops after the
    same step, last.pt, exit 143 / 130 (a second Ctrl-C: out at once, without saving); MAX_BAD_STEPS non-finite
    losses in a row: last.pt if the weights are finite, exit 3."""
    args, ctx, state = run.args, run.ctx, run.state
    run.control = RunControl(args, ctx)
    run_start = time.time()
    try:
        while state.epoch < run.schedule.max_epoch:
            epoch = state.epoch
            phase = begin_epoch(run, epoch)
            tick = time.time()
            epoch_stats = train_one_epoch(run, epoch)
            if run.control.stopping:
                stop_run(run)
            state.epoch, state.step_in_epoch = epoch + 1, 0
            record = {"kind": "epoch", "epoch": state.epoch, "seconds": time.time() - tick, **epoch_stats}
            end_epoch(run, phase, record, run_start)
    except KeyboardInterrupt:                      # a second Ctrl-C: out at once, last.pt as last written
        if ctx.main:
            print(f"\ninterrupted again: stopped without saving; {run.checkpoint_dir}/last.pt holds the last save")
        raise SystemExit(128 + signal.SIGINT)
    except FloatingPointError as error:
        if ctx.main:
            # skipped steps leave the weights as they were: if those are finite, they are the last good state;
            # otherwise the previous epoch's last.pt is, and it is left untouched
            finite = all(torch.isfinite(p).all() for p in run.raw_model.parameters())
            if finite:
                run.save("last.pt")
            print(f"stopping: {error}; the last good state is in {run.checkpoint_dir}/last.pt"
                  + ("" if finite else " (from the end of the previous epoch)"))
        raise SystemExit(3)
    finally:
        run.control.close()


def begin_epoch(run, epoch):
    """Each epoch's randomness from its number (or a mid-epoch checkpoint's RNG states), the phase's banner, its BN
    synchronization group and the sampler's epoch. -> the epoch's phase."""
    args, ctx, state = run.args, run.ctx, run.state
    phase = run.schedule.phase(epoch)
    if state.step_in_epoch == 0:
        seed_everything(args.seed + 1000 * epoch + ctx.rank)
    else:
        set_rng_state(rank_rng_state(run.resumed_rng, ctx.rank))
    if ctx.main and phase.start_epoch == epoch and state.step_in_epoch == 0:
        print(f"phase {phase.index}: {phase.global_batch} clips x {phase.frames} frames (rate {phase.rate_range}) "
              f"x {phase.crop}px, BN {phase.bn_kind}")
    synchronized = phase.bn_kind == "sync_batchnorm"
    x3d.set_bn_sync_group(run.raw_model, run.sync_groups.get(phase.sync_devices) if synchronized else None)
    if synchronized and ctx.device.type == "cpu" and ctx.main:
        warnings.warn("synchronized BN needs accelerators; on CPU this phase normalizes per process")
    run.sampler.set_epoch(epoch)
    return phase


def checkpoint_if_due(run):
    """After each step: last.pt on SIGTERM / SIGINT or when --checkpoint-minutes have passed; True stops the
    epoch."""
    stop, due = run.control.poll()
    if stop or due:
        states = gather_rng_states(run.ctx)        # every rank's: a mid-epoch resume continues each one's RNG
        run.save("last.pt", rng=states)
        run.control.saved()
    return stop


def stop_run(run):
    """Out after the signal all ranks agreed on (run.control.stopping); last.pt is written."""
    signum = run.control.stopping
    if run.ctx.main:
        print(f"\nstopped by {signal.Signals(signum).name}: saved {run.checkpoint_dir}/last.pt at epoch "
              f"{run.state.epoch + 1}, step {run.state.step_in_epoch} (continue with --resume)")
    raise SystemExit(128 + signum)        # the shell's status of a process ended by that signal


def end_epoch(run, phase, record, run_start):
    """After epoch `run.state.epoch`: every --eval-every epochs (and the last) precise BN and the validation
    metrics (best.pt on a better main metric); last.pt, phase_NN.pt at a phase change, the log, the plot."""
    args, ctx, state, task = run.args, run.ctx, run.state, run.task
    epoch = state.epoch
    last = epoch == run.schedule.max_epoch
    if epoch % args.eval_every == 0 or last:
        eval_start = time.time()
        run.recompute_bn_statistics()
        metrics, _, _ = evaluate(run.model, run.data["val"], task, run.train_shape, args, ctx)
        record.update({f"val_{k}": v for k, v in metrics.items()}, eval_seconds=time.time() - eval_start)
        if metrics[task.main_metric] > state.best:
            state.best = metrics[task.main_metric]
            run.save("best.pt")
    record["elapsed"] = time.time() - run_start        # wall clock since start, evaluation included
    if ctx.main:
        run.log.write(**record)          # before last.pt: a resume drops what is logged beyond its checkpoint
    run.save("last.pt")
    if not last and run.schedule.phase(epoch).index != phase.index:
        run.save(f"phase_{phase.index:02d}.pt")
    if ctx.main:
        run.log.plot(force=last)
        shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in record.items() if k != "kind"}
        print(f"epoch {epoch}: " + ", ".join(f"{k} {v}" for k, v in shown.items() if v is not None))
        if record["bad_samples"]:
            print(f"  {record['bad_samples']} unreadable samples were replaced this epoch")
    run.control.saved()
    if not last and run.control.poll()[0]:     # a signal during evaluation: last.pt is already written
        stop_run(run)


def test(run, recompute_bn=False):
    """The final multi-view evaluation at the test crop (after precise BN at the train shape when `recompute_bn`:
    it draws other training batches than the last epoch's, so it is not the same statistics twice)."""
    args, ctx, task, dataset = run.args, run.ctx, run.task, run.data["test"]
    if recompute_bn:
        run.recompute_bn_statistics()
    views = f"{args.temporal_views}x{args.spatial_crops}"
    metrics, scores, unreadable = evaluate(run.model, dataset, task, (args.frames, args.rate, args.test_crop), args,
                                           ctx, desc=f"test {views} views")
    if ctx.main:
        os.makedirs(run.log.folder, exist_ok=True)
        predictions = os.path.join(run.log.folder, task.predictions_file.format(views=views))
        task.write_predictions(predictions, scores, dataset, unreadable)
        run.log.write(kind="test", views=views, unreadable_videos=int((unreadable > 0).sum()), **metrics)
        run.log.wait()
        note = task.metrics_note(dataset)
        print(f"test ({views} views, {dataset.num_videos} videos): "
              + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) + (f" ({note})" if note else "")
              + f"   predictions: {predictions}")
        if unreadable.any():
            listed = os.path.join(run.log.folder, f"unreadable_{views}.txt")
            print(f"{write_unreadable_list(listed, dataset, unreadable)} of {dataset.num_videos} test videos "
                  f"unreadable, listed in {listed}")
    return metrics
