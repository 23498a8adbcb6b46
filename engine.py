"""The training engine: a `Task` (what a training script describes) and `fit`, the loop every script runs, read top to
bottom in the order it happens:

    main(task) -> config.resolve (the flags' layers) -> launch (one process per device) -> fit:
        data, model, the batch (batching.py), restore, layout, DDP
        for epoch: phase, BN group, randomness
            for step: LR -> BN splits -> forward -> backward -> the step's one read -> skip or update -> log -> save
            precise BN -> evaluation -> checkpoints -> log, plot
        precise BN -> test (every test view) -> predictions

The rooms beside it: config.py (flags), launch.py (devices, processes, signals), batching.py (the batch),
checkpoints.py (checkpoint files), runlog.py (logs), evaluation.py (the multi-view loop, precise BN).
"""
import itertools
import os
import random
import signal
import time
import warnings
from typing import NamedTuple

# Set before torch loads libgomp, which reads it once (the training scripts import engine before torch). After each
# parallel region libgomp's idle threads spin ~300,000 rounds before sleeping, on cores the data workers need: a
# short spin made the demo's training steps cheaper on 2 cores (benchmarks/README.md: bench_shapes). A user's own
# OMP_WAIT_POLICY or GOMP_SPINCOUNT wins.
OPENMP_SPIN_COUNT = "3000"
if "OMP_WAIT_POLICY" not in os.environ:
    os.environ.setdefault("GOMP_SPINCOUNT", OPENMP_SPIN_COUNT)

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402
import torch.nn.functional as F  # noqa: E402

import archs  # noqa: E402
import batching  # noqa: E402
from checkpoints import (TrainingState, capture_rng, rank_rng_state, read_checkpoint, restore_rng,  # noqa: E402
                         restore_training, save_atomically, training_checkpoint)
from config import UsageError, lr_scaling, resolve, say, tensorboard_writer_class, user_input  # noqa: E402
from evaluation import (add_softmax, autocast, evaluate, to_device, write_unreadable_list,  # noqa: E402
                        write_video_predictions)
from launch import (RunControl, all_reduce, choose_devices, choose_memory_format, default_workers,  # noqa: E402
                    exit_on_stop_signal, free_memory, machine_cores, processes_per_machine, setup_process, spawn)
from loader import RunBatches, SeededClips, eval_loader, make_loader, recompute_bn_statistics, timed  # noqa: E402
from layers import set_bn_splits, set_bn_sync_group, use_shifted_depthwise  # noqa: E402
from metrics import VideoAggregator, video_topk  # noqa: E402
from multigrid import MultigridBatchSampler  # noqa: E402
from runlog import EpochMeter, RunLog  # noqa: E402
from transforms import normalize_batch  # noqa: E402

MAX_BAD_STEPS = 20              # consecutive non-finite losses before the run stops


class Task:
    """Kinetics-style single-label classification; other tasks override what differs."""
    name = "kinetics"
    model_task = "class"          # the model's task: 'class', or per-frame 'loc'
    combine = "mean"              # how a video's views are combined
    main_metric = "top1"          # decides the best checkpoint (higher is better)
    defaults = {}                 # flag defaults of this task (argparse dest -> value)
    demo = {}                     # flag values of the demo, the run without --data (the command line's win)
    demo_data_root = None         # where demo_data() writes the demo's data set
    predictions_file = "predictions_{views}.csv"   # the final test's output in the run's log folder

    def add_arguments(self, parser):
        pass

    def demo_data(self):
        """The demo's --data: a built-in data set, written once."""
        raise NotImplementedError(f"{self.name} has no demo: give --data")

    def datasets(self, args):
        """-> dict(train=..., val=... (1 view per video), test=... (the test views)); each has num_classes."""
        raise NotImplementedError

    def prepare_model(self, model, args):
        """Adjust the freshly built model (before any weights are loaded); runs in every process."""

    def loss(self, logits, batch):
        return F.cross_entropy(logits.float(), batch["label"])

    def train_correct(self, logits, batch):
        """Top-1 hits of the batch, a tensor on the device (read with the step's loss), or None."""
        return (logits.detach().argmax(1) == batch["label"]).sum()

    def aggregator(self, dataset):
        return VideoAggregator(dataset.num_videos, dataset.num_classes, self.combine)

    def add_views(self, aggregator, logits, batch):
        add_softmax(aggregator, logits, batch)

    def metrics(self, scores, dataset):
        top = video_topk(scores, dataset.labels, ks=(1, 5))
        return {"top1": top[1], "top5": top[5]}

    def metrics_note(self, dataset):
        """A few words the final test line adds after the metrics (how they were counted), or ''."""
        return ""

    def write_predictions(self, path, scores, dataset, unreadable=None):
        write_video_predictions(path, scores, dataset.labels, video_paths=dataset.video_paths,
                                class_names=dataset.class_names, unreadable=unreadable)


def main(task, argv=None):
    """A training script's entry: the run's arguments, its processes (one per device), `fit` in each."""
    try:
        args, checkpoint = resolve(task, argv)
        devices, notes = choose_devices(args.gpu, args.npu, args.nproc, os.environ)
        for note in notes:
            say(note)
        if args.workers is None:
            args.workers = default_workers(machine_cores(), processes_per_machine(devices, os.environ))
        if devices.torchrun:                          # torchrun made the processes
            run(int(os.environ["LOCAL_RANK"]), task, args, devices, checkpoint)
        elif len(devices.ids) > 1:                    # each process reads the checkpoint itself
            spawn(run, (task, args, devices), len(devices.ids))
        else:
            run(0, task, args, devices, checkpoint)
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None


def run(local_rank, task, args, devices, checkpoint=None):
    """One process: its device and process group, then `fit`; the user's problems as one `error:` line."""
    try:
        ctx = setup_process(local_rank, args, devices)
    except UsageError as error:
        raise SystemExit(f"error: {error}") from None
    try:
        return fit(task, args, ctx, checkpoint)
    except UsageError as error:     # every rank meets the same problem; rank 0 says it
        raise SystemExit(f"error: {error}" if ctx.rank0 else 1) from None
    except (torch.OutOfMemoryError, RuntimeError) as error:
        if not is_out_of_memory(error):
            raise
        raise SystemExit(f"error: {ctx.device} ran out of memory at --batch-size {args.batch_size} "
                         f"({max(1, args.batch_size // ctx.world)} clips a device at the base shape): lower "
                         f"--batch-size; {os.path.join(args.output, args.run_name, 'last.pt')} is as last "
                         "saved") from None
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def fit(task, args, ctx, checkpoint=None):
    """Train as `args` say on this process's device, then test -> the test's metrics (see the module docstring)."""
    # data and model (fine-tuning weights loaded)
    seed_everything(args.seed + ctx.rank)
    with user_input():
        data = task.datasets(args)
    train_set, rank0 = data["train"], ctx.rank0
    model = build_model(task, args, train_set.num_classes, ctx.rank0)
    run_dir = os.path.join(args.output, args.run_name)
    if args.test_only:
        if args.resume:
            with user_input():
                archs.load_pretrained(model, args.arch, args.resume, verbose=rank0)
        model.to(ctx.device, memory_format=choose_memory_format(model, None, args, ctx))
        log = RunLog(os.path.join(args.logs, args.run_name), args, rank0)
        return test(model, task, data["test"], args, ctx, log)

    # the batch: the recipe's, capped by the devices' memory and the data (batching.py); the LR follows it
    plan = plan_run_batch(args, ctx, len(train_set), task.model_task)
    schedule = plan.schedule
    log = RunLog(os.path.join(args.logs, args.run_name), args, rank0,
                 tensorboard_writer_class() if args.tensorboard else None)

    # layout (timed at the run's first shapes on accelerators), optimizer, AMP scaler; with --resume the run's state
    first_epoch = checkpoint["state"]["epoch"] if checkpoint else 0
    model.to(ctx.device, memory_format=choose_memory_format(model, schedule.phase(first_epoch), args, ctx))
    optimizer = make_optimizer(model, args)
    scaler = torch.amp.GradScaler(ctx.device.type, enabled=args.amp == "fp16")
    state, resumed_rng = TrainingState(), None
    if args.resume:
        with user_input():
            state, resumed_rng = restore_training(checkpoint or read_checkpoint(args.resume), model, optimizer,
                                                  scaler, train_set.num_classes, args.resume)
        log.rewind(state.global_step, state.epoch)
        say(f"resumed {args.resume}: epoch {state.epoch + 1}, step {state.step_in_epoch}")
    identity = run_identity(args, train_set)
    if rank0:
        print(schedule.table())
        print(f"checkpoints: {run_dir}   logs: {log.folder}")
    groups = sync_groups(schedule, ctx) if ctx.distributed else {}
    trained = wrap_model(model, args, ctx)          # DDP, torch.compile: `model` stays the weights and BN settings

    def save(name, rng=None):                       # rank 0 writes; every rank's RNG states where given
        if rank0:
            save_atomically(os.path.join(run_dir, name), training_checkpoint(
                model, optimizer, scaler, state, rng or capture_rng(ctx.device), identity))

    # one loader pass serves the whole run, from the run's position
    sampler = MultigridBatchSampler(len(train_set), schedule, rank=ctx.rank, world_size=ctx.world, seed=args.seed)
    batches = timed(make_loader(SeededClips(train_set, args.seed),
                                RunBatches(sampler, state.epoch, state.step_in_epoch, args.max_steps), args, ctx))
    control = RunControl(args, ctx)
    run_start = time.time()
    try:
        for epoch in range(state.epoch, schedule.max_epoch):
            # the epoch's phase, its BN synchronization group, and its randomness (a mid-epoch checkpoint's RNG)
            phase = schedule.phase(epoch)
            if rank0 and phase.start_epoch == epoch and state.step_in_epoch == 0:
                print(f"phase {phase.index}: {phase.global_batch} clips x {phase.frames} frames (rate "
                      f"{phase.rate_range}) x {phase.crop}px, BN {phase.bn_kind}")
            set_bn_sync_group(model, groups.get(phase.sync_devices) if phase.bn_kind == "sync_batchnorm" else None)
            if state.step_in_epoch == 0:
                seed_everything(args.seed + 1000 * epoch + ctx.rank)
            else:
                restore_rng(rank_rng_state(resumed_rng, ctx.rank), ctx.device)
            sampler.set_epoch(epoch)
            total = len(sampler)
            steps = min(total, args.max_steps if args.max_steps is not None else total)
            meter = EpochMeter(log, epoch, schedule.max_epoch, steps, state.step_in_epoch, ctx.world, rank0)
            trained.train()
            tick = time.time()
            for i, (batch, data_wait) in enumerate(itertools.islice(batches, max(0, steps - state.step_in_epoch)),
                                                   start=state.step_in_epoch):
                # LR from the same counter as the phase
                lr = set_lr(optimizer, args.lr * schedule.lr(epoch + i / total))
                shape = tuple(batch["clip"].shape[dim] for dim in (0, 2, 3))       # batch, frames, crop
                # forward, backward, with the BN split count the batch carries (the schedule's)
                batch, logits, loss = forward_backward(trained, model, batch, task, optimizer, scaler, args.amp,
                                                       ctx.device)
                # the step's one wait for the device: every rank's non-finite flag and stop signal, with the log's
                step = read_step(loss, task.train_correct(logits, batch), batch["bad"], control, ctx)
                meter.bad += step.bad
                if step.not_finite:        # every rank skips together, or DDP's gradient all-reduce would hang
                    state.bad_steps = skip_step(optimizer, state.bad_steps, epoch, i)
                    meter.skipped += 1
                    continue
                state.bad_steps = 0
                scaler.step(optimizer)
                scaler.update()
                state.global_step += 1
                state.step_in_epoch = i + 1
                meter.step(state.global_step, epoch + i / total, lr, shape, step.loss, step.correct, data_wait)
                # SIGTERM / Ctrl-C (all ranks stop after this step) or --checkpoint-minutes: last.pt, every rank's RNG
                stop, due = control.agreed(step.signum, step.checkpoint_due)
                if stop or due:
                    save("last.pt", rng=gather_rng_states(ctx))
                    control.saved()
                if stop:
                    stop_run(stop, run_dir, state, rank0)

            # end of the epoch: precise BN and evaluation (best.pt), last.pt, phase_NN.pt at a phase change, log, plot
            state.epoch, state.step_in_epoch = epoch + 1, 0
            record = {"kind": "epoch", "epoch": state.epoch, "seconds": time.time() - tick,
                      **meter.close(ctx.device), "phase": phase.index}
            last = state.epoch == schedule.max_epoch
            if state.epoch % args.eval_every == 0 or last:
                eval_start = time.time()
                recompute_bn_statistics(model, train_set, args, ctx)
                metrics, _, _ = evaluate(trained, eval_loader(data["val"], (args.frames, args.rate, args.crop), args,
                                                           ctx), task, data["val"], ctx.device, args.amp, rank0)
                record.update({f"val_{k}": v for k, v in metrics.items()}, eval_seconds=time.time() - eval_start)
                if metrics[task.main_metric] > state.best:
                    state.best = metrics[task.main_metric]
                    save("best.pt")
            record["elapsed"] = time.time() - run_start        # wall clock since start, evaluation included
            if rank0:
                log.write(**record)          # before last.pt: a resume drops what is logged beyond its checkpoint
            save("last.pt")
            if not last and schedule.phase(state.epoch).index != phase.index:
                save(f"phase_{phase.index:02d}.pt")
            if rank0:
                log.plot(force=last)
                print_epoch(record)
            control.saved()
            if not last and control.poll()[0]:     # a signal during evaluation: last.pt is already written
                stop_run(control.stopping, run_dir, state, rank0)
    except KeyboardInterrupt:                      # a second Ctrl-C: out at once, last.pt as last written
        if rank0:
            print(f"\ninterrupted again: stopped without saving; {run_dir}/last.pt holds the last save")
        raise SystemExit(128 + signal.SIGINT)
    except FloatingPointError as error:
        # skipped steps leave the weights as they were: if those are finite, they are the last good state;
        # otherwise the previous epoch's last.pt is, and it is left untouched
        finite = all(torch.isfinite(p).all() for p in model.parameters())
        if finite:
            save("last.pt")
        if rank0:
            print(f"stopping: {error}; the last good state is in {run_dir}/last.pt"
                  + ("" if finite else " (from the end of the previous epoch)"))
        raise SystemExit(3)
    finally:
        control.close()

    # the test: precise BN at the train shape (other batches than the last epoch's), every test view; a stop signal
    # now ends the run at once (the trained run is in last.pt; --resume runs the test)
    stopped = f"stopped before the test: {run_dir}/last.pt holds the trained run; --resume runs the test"
    with exit_on_stop_signal(control.signum, stopped if rank0 else None):
        log.wait()
        recompute_bn_statistics(model, train_set, args, ctx)
        final = test(trained, task, data["test"], args, ctx, log)
    say(f"done: {state.global_step} optimizer steps in {schedule.max_epoch} epochs. checkpoints: "
        f"{run_dir}/(last|best).pt  logs and plots: {log.folder}/")
    return final


# ---------------------------------------------------------------------------------------------------------------
# The model, its batch and layout, the optimizer

def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2 ** 32)
    torch.manual_seed(seed)


def build_model(task, args, num_classes, verbose):
    """The run's architecture at its train shape, as the task adjusts it, with --finetune weights and
    --shifted-depthwise."""
    model = archs.build_model(args.arch, args.version, n_classes=num_classes, dropout=args.dropout,
                              task=task.model_task, frames=args.frames, train_crop=args.crop)
    task.prepare_model(model, args)
    if args.finetune:
        if verbose:
            print(f"fine-tuning from {args.finetune}")
        with user_input():
            archs.load_pretrained(model, args.arch, args.finetune, verbose=verbose)
    if args.shifted_depthwise:
        use_shifted_depthwise(model)
    return model


def plan_run_batch(args, ctx, num_samples, model_task):
    """batching.plan_run on this process's device (the smallest free memory of all ranks); prints the start-up
    lines, sets args.batch_size and args.lr to the plan's."""
    free = free_memory(ctx.device)
    if free is not None and ctx.device.type == "cpu":
        free //= ctx.world                             # a CPU run's processes share the machine's memory
    if ctx.distributed:
        free = int(all_reduce(torch.tensor(float(free or 0), device=ctx.device), dist.ReduceOp.MIN)) or None
    plan, lr, stated = batching.plan_run(args, ctx.world, num_samples, free, model_task, str(ctx.device))
    say(batching.report(plan, args, lr, stated, lr_scaling(args), ctx.world, str(ctx.device)))
    warning = batching.few_steps_warning(plan)
    if warning and ctx.rank0:
        warnings.warn(warning)
    args.batch_size, args.lr = plan.batch, lr
    return plan


def wrap_model(model, args, ctx):
    """The model as the loop runs it: DDP across processes, torch.compile with --compile."""
    if ctx.distributed:
        model = torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[ctx.device] if ctx.device.type != "cpu" else None)
    return torch.compile(model, dynamic=True) if args.compile else model


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


def set_lr(optimizer, lr):
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def sync_groups(schedule, ctx):
    """Process groups for the phases that synchronize BN across devices (every rank must create every group)."""
    groups = {}
    for size in sorted({p.sync_devices for p in schedule.phases if p.bn_kind == "sync_batchnorm"}):
        for start in range(0, ctx.world, size):
            group = dist.new_group(list(range(start, start + size)))
            if start <= ctx.rank < start + size:
                groups[size] = group
    return groups


def run_identity(args, train_set):
    """What a checkpoint carries to rebuild its model and continue its run."""
    return {"args": dict(vars(args)), "arch": args.arch, "version": args.version, "num_classes": train_set.num_classes,
            "class_names": list(getattr(train_set, "class_names", []))}


def gather_rng_states(ctx):
    """Every rank's RNG state, in rank order (a collective: all ranks call it together)."""
    if not ctx.distributed:
        return [capture_rng(ctx.device)]
    states = [None] * ctx.world
    dist.all_gather_object(states, capture_rng(ctx.device))
    return states


def is_out_of_memory(error):
    """torch.OutOfMemoryError (CUDA), or an accelerator library's RuntimeError saying so (Ascend's)."""
    return isinstance(error, torch.OutOfMemoryError) or "out of memory" in str(error).lower()


# ---------------------------------------------------------------------------------------------------------------
# A step's outcome, an epoch's end, the test

def forward_backward(trained, model, batch, task, optimizer, scaler, amp, device):
    """A training step's forward and backward: the batch to the device, normalized, through `trained` (the model,
    maybe DDP- or compile-wrapped) with `model`'s BN split count set to the batch's -> (batch, logits, loss)."""
    set_bn_splits(model, batch.pop("bn_splits"))
    batch = to_device(batch, device)
    with autocast(amp, device):
        logits = trained(normalize_batch(batch["clip"]))
    loss = task.loss(logits, batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    return batch, logits, loss


class StepReport(NamedTuple):
    """What a training step tells the host, read in one go after its backward."""
    not_finite: bool               # the loss was NaN or infinite on some rank
    signum: int                    # a stop signal some rank received (0: none)
    checkpoint_due: bool           # rank 0's --checkpoint-minutes clock ran out
    loss: float
    correct: float                 # None where the task has no accuracy
    bad: int                       # replaced (unreadable) samples in the batch


def read_step(loss, correct, bad, control, ctx):
    """The training step's one wait for the device: every rank's non-finite flag, stop signal and checkpoint clock
    in one all-reduce (the maximum), read together with the loss, accuracy and bad-sample count for the log. Host
    values enter as fill kernels (torch.full), not as copies from host memory, which would wait for the device."""
    signum, due = control.local_flags()
    flags = torch.stack((torch.isfinite(loss.detach()).logical_not().float(),
                         torch.full((), float(signum), device=loss.device),
                         torch.full((), float(due), device=loss.device)))
    if ctx.distributed:
        all_reduce(flags, dist.ReduceOp.MAX)
    logged = [loss.detach().float(), bad.sum().float()] + ([] if correct is None else [correct.float()])
    values = torch.cat((flags, torch.stack(logged))).tolist()
    return StepReport(bool(values[0]), int(values[1]), bool(values[2]), values[3],
                      values[5] if correct is not None else None, int(values[4]))


def skip_step(optimizer, bad_steps, epoch, step):
    """A non-finite loss: no update (its gradients dropped) -> non-finite steps in a row; MAX_BAD_STEPS of them
    stop the run (FloatingPointError)."""
    optimizer.zero_grad(set_to_none=True)
    bad_steps += 1
    warnings.warn(f"non-finite loss at epoch {epoch + 1} step {step + 1}: step skipped ({bad_steps} in a row)")
    if bad_steps >= MAX_BAD_STEPS:
        raise FloatingPointError(f"{MAX_BAD_STEPS} non-finite losses in a row")
    return bad_steps


def stop_run(signum, run_dir, state, rank0):
    """Out after the stop signal all ranks agreed on; last.pt is written."""
    if rank0:
        print(f"\nstopped by {signal.Signals(signum).name}: saved {run_dir}/last.pt at epoch {state.epoch + 1}, step "
              f"{state.step_in_epoch} (continue with --resume)")
    raise SystemExit(128 + signum)        # the shell's status of a process ended by that signal


def print_epoch(record):
    shown = {k: round(v, 2) if isinstance(v, float) else v for k, v in record.items() if k != "kind"}
    print(f"epoch {record['epoch']}: " + ", ".join(f"{k} {v}" for k, v in shown.items() if v is not None))
    if record["bad_samples"]:
        print(f"  {record['bad_samples']} unreadable samples were replaced this epoch")


def test(model, task, dataset, args, ctx, log):
    """The final multi-view evaluation at the test crop; the task's predictions file in the run's log folder, and
    the list of the test videos that could not be read."""
    views = f"{args.temporal_views}x{args.spatial_crops}"
    loader = eval_loader(dataset, (args.frames, args.rate, args.test_crop), args, ctx)
    metrics, scores, unreadable = evaluate(model, loader, task, dataset, ctx.device, args.amp, ctx.rank0,
                                           desc=f"test {views} views")
    if ctx.rank0:
        os.makedirs(log.folder, exist_ok=True)
        predictions = os.path.join(log.folder, task.predictions_file.format(views=views))
        task.write_predictions(predictions, scores, dataset, unreadable)
        log.write(kind="test", views=views, unreadable_videos=int((unreadable > 0).sum()), **metrics)
        log.wait()
        note = task.metrics_note(dataset)
        print(f"test ({views} views, {dataset.num_videos} videos): "
              + ", ".join(f"{k} {v:.2f}" for k, v in metrics.items()) + (f" ({note})" if note else "")
              + f"   predictions: {predictions}")
        if unreadable.any():
            listed = os.path.join(log.folder, f"unreadable_{views}.txt")
            print(f"{write_unreadable_list(listed, dataset, unreadable)} of {dataset.num_videos} test videos "
                  f"unreadable, listed in {listed}")
    return metrics
