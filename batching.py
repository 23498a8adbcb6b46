"""The run's batch: how many clips a step, decided once from the recipe, the data set, the devices and their memory.

--batch-size is the global batch at the base shape, all devices together. Not given, it is the recipe's (the X3D
recipe's 256, or a task's or the demo's own), halved until
  * the schedule's dearest shape fits every device's memory by the estimate below, and
  * every phase makes at least MIN_STEPS_PER_EPOCH steps an epoch on the training set (multigrid's coarse phases
    take up to about 16 base batches a step: at 256, a 200-video set's coarse epochs would have no step at all).
Given, it is kept; one that does not fit, or leaves a phase without a step, is an error before training starts.
The LR follows the batch by the schedule's rule (linear for SGD, square root for AdamW) from the batch it is stated
for (the recipe's), unless --lr and --batch-size are both given.

The memory estimate, per device: what autograd keeps for the backward, measured per clip at each (frames, crop) of
the schedule by a forward on the meta device (shapes only: no memory, no arithmetic) in the run's precision, each
storage once, plus twice the largest kept tensor (the gradients the backward holds beside it) and the clip itself
(uint8, then normalized float32), times the per-device batch; plus the weights, their gradients and the optimizer's
state. It gives the per-clip numbers a saved-tensor hook measures on real tensors (X3D-M at 16 x 224: 811 MiB float32,
406 MiB bf16); benchmarks/bench_gpu.py sets it beside a GPU's measured peak.
"""
import math
from dataclasses import dataclass

import torch
import torch.nn as nn

import archs
from config import UsageError, lr_scaling, make_schedule
from layers import SubBatchNorm3d, use_shifted_depthwise
from multigrid import MultigridBatchSampler

MIN_STEPS_PER_EPOCH = 4        # "several": the demo's coarsest phase makes 4
MEMORY_SHARE = 0.9             # of a device's free memory a plan may fill: allocator rounding, cuDNN workspaces
INPUT_BYTES_PER_VALUE = 1 + 4  # a clip comes as uint8 and is normalized to float32 on the device
OPTIMIZER_STATES = {"sgd": 1, "adamw": 2}   # float32 copies of the weights each optimizer keeps
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
GIB = 2 ** 30


@dataclass(frozen=True)
class MemoryEstimate:
    per_clip: dict                 # (frames, crop) -> bytes a training step holds per clip at that shape
    fixed: int                     # weights, gradients, optimizer state (and autocast's half copies of the weights)

    def peak(self, per_device_batch, frames, crop):
        return self.fixed + per_device_batch * self.per_clip[(frames, crop)]


class _KeptLikeBatchNorm(nn.Module):
    """Stands in for a batch norm in the estimate: keeps its input for the backward as batch norm does, at a
    fraction of the meta device's cost for batch norm (a Python decomposition, 40x a multiply's)."""

    def __init__(self, bn):
        super().__init__()
        self.weight = bn.weight

    def forward(self, x):
        return x * self.weight.view(1, -1, *(1,) * (x.dim() - 2))


def _with_stand_in_batch_norms(model):
    for parent in list(model.modules()):
        for name, child in parent.named_children():
            if isinstance(child, SubBatchNorm3d):
                setattr(parent, name, _KeptLikeBatchNorm(child))
    return model


def _kept_bytes(model, shape, dtype, own):
    """(bytes autograd keeps, the largest kept storage) for a training forward of `shape`, `own` storages (the
    weights) left out."""
    kept = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage._cdata not in own:
            kept[storage._cdata] = storage.nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model(torch.empty(shape, device="meta", dtype=dtype))
    return sum(kept.values()), max(kept.values(), default=0)


def estimate_memory(meta_model, frames_crops, amp, optimizer):
    """The MemoryEstimate of training `meta_model` (a throwaway model on the meta device; its batch norms are
    replaced) at every (frames, crop) of `frames_crops`, under --amp `amp` (a half model stands for autocast: the
    activations it keeps are half), with `optimizer` ('sgd' | 'adamw')."""
    dtype = AMP_DTYPES.get(amp, torch.float32)
    model = _with_stand_in_batch_norms(meta_model).to(dtype).train()
    own = {p.untyped_storage()._cdata for p in model.parameters()}
    per_clip = {}
    for frames, crop in sorted(set(frames_crops)):
        batch = 2                                          # per clip from two: a batch norm needs two values
        kept, largest = _kept_bytes(model, (batch, 3, frames, crop, crop), dtype, own)
        per_clip[(frames, crop)] = (kept + 2 * largest) // batch + 3 * frames * crop * crop * INPUT_BYTES_PER_VALUE
    weights = sum(p.numel() for p in model.parameters())
    fixed = weights * 4 * (2 + OPTIMIZER_STATES[optimizer]) + (weights * 2 if dtype != torch.float32 else 0)
    return MemoryEstimate(per_clip, fixed)


def schedule_shapes(schedule):
    """(per-device batch, frames, crop, phase) of each iteration shape of the phases that train."""
    return [(shape.per_device_batch, phase.frames, shape.crop, phase)
            for phase in schedule.phases if phase.epochs > 0 for shape in phase.shapes]


def steps_per_epoch(schedule, num_samples):
    """[(phase, optimizer steps an epoch)] of the phases that train, on `num_samples` training items."""
    sampler = MultigridBatchSampler(num_samples, schedule, world_size=schedule.num_devices)
    steps = []
    for phase in schedule.phases:
        if phase.epochs > 0:
            sampler.set_epoch(phase.start_epoch)
            steps.append((phase, len(sampler)))
    return steps


def scaled_lr(lr, stated_batch, batch, scaling):
    """`lr`, stated for `stated_batch`, at `batch`: by the batch ratio ('linear') or its square root ('sqrt')."""
    ratio = batch / stated_batch
    return lr * (ratio if scaling == "linear" else math.sqrt(ratio))


@dataclass(frozen=True)
class Option:
    """One global batch and what it gives: its schedule's dearest shape and its phases' steps an epoch."""
    batch: int
    schedule: object
    peak: int                      # estimated bytes per device at the dearest shape
    dearest: tuple                 # (per-device batch, frames, crop, phase) of that shape
    phase_steps: tuple             # (phase, steps an epoch) of every phase that trains
    fits: bool

    @property
    def fewest(self):
        """(phase, steps an epoch) of the phase with the fewest."""
        return min(self.phase_steps, key=lambda item: item[1])


def consider(batch, schedule, num_samples, memory, free):
    shapes = schedule_shapes(schedule)
    peak, dearest = max(((memory.peak(b, t, s), (b, t, s, phase)) for b, t, s, phase in shapes),
                        key=lambda item: item[0])
    return Option(batch, schedule, peak, dearest, tuple(steps_per_epoch(schedule, num_samples)),
                  free is None or peak <= MEMORY_SHARE * free)


def halvings(batch, world):
    """batch, batch // 2, ... down to one clip a device."""
    out = []
    while batch >= world:
        out.append(batch)
        batch //= 2
    return out or [world]


@dataclass(frozen=True)
class BatchPlan(Option):
    free: int = None               # bytes free on a device (None: unknown)
    why: str = ""                  # how the batch was chosen

    def total_steps(self, max_steps=None):
        """The run's optimizer steps (at most `max_steps` an epoch)."""
        return sum(phase.epochs * (steps if max_steps is None else min(steps, max_steps))
                   for phase, steps in self.phase_steps)


def plan_batch(recipe_batch, given_batch, world, num_samples, schedule_for, memory, free, where):
    """The run's global batch (BatchPlan): `given_batch` checked, or the largest halving of `recipe_batch` that fits
    `free` bytes per device (None: unknown) and gives every phase MIN_STEPS_PER_EPOCH steps an epoch (or the most
    it can). `schedule_for(batch)` builds the schedule, `memory` estimates it, `where` names the device. A batch
    that cannot train is a UsageError."""
    candidates = [given_batch] if given_batch else halvings(recipe_batch, world)
    options = []
    for batch in candidates:
        options.append(consider(batch, schedule_for(batch), num_samples, memory, free))
        if options[-1].fits and options[-1].fewest[1] >= MIN_STEPS_PER_EPOCH:
            break
    fitting = [option for option in options if option.fits]
    if not fitting:
        raise UsageError(memory_error(options[-1], free, where, given_batch, world, schedule_for, num_samples, memory))
    enough = [option for option in fitting if option.fewest[1] >= MIN_STEPS_PER_EPOCH]
    choice = enough[0] if enough else fitting[-1]
    if choice.fewest[1] == 0:
        raise UsageError(no_step_error(choice, num_samples, world, schedule_for, given_batch is not None))
    if given_batch:
        why = "as given"
    elif choice.batch == recipe_batch:
        why = "the recipe's"
    else:
        reasons = ["to fit the devices' memory"] if not options[0].fits else []
        if choice is not fitting[0]:
            reasons.append(f"for {MIN_STEPS_PER_EPOCH} steps an epoch in every phase on {num_samples} training videos")
        why = f"the recipe's {recipe_batch}, halved {' and '.join(reasons)}"
    return BatchPlan(choice.batch, choice.schedule, choice.peak, choice.dearest, choice.phase_steps, choice.fits,
                     free, why)


def plan_run(args, world, num_samples, free, model_task, where):
    """plan_batch for a run's arguments on `world` devices with `free` bytes each -> (BatchPlan, the LR at its
    batch, the batch the LR was stated for)."""
    given = args.batch_size if "batch_size" in args.given_flags else None
    frames_crops = [(t, s) for _, t, s, _ in schedule_shapes(make_schedule(args, world))]
    with torch.device("meta"):
        meta_model = archs.build_model(args.arch, args.version, n_classes=1, dropout=0.0, task=model_task,
                                       frames=args.frames, train_crop=args.crop)
    if args.shifted_depthwise:
        use_shifted_depthwise(meta_model)
    memory = estimate_memory(meta_model, frames_crops, args.amp, args.optimizer)
    plan = plan_batch(args.recipe["batch_size"] if given is None else given, given, world, num_samples,
                      lambda batch: make_schedule(args, world, batch), memory, free, where)
    stated = args.batch_size if {"lr", "batch_size"} <= set(args.given_flags) else args.recipe["batch_size"]
    return plan, scaled_lr(args.lr, stated, plan.batch, lr_scaling(args)), stated


def memory_error(option, free, where, given_batch, world, schedule_for, num_samples, memory):
    b, t, s, phase = option.dearest
    problem = (f"the estimated peak of {option.peak / GIB:.1f} GiB per device at --batch-size {option.batch} "
               f"(its dearest shape: {b} clips x {t} frames x {s} px, phase {phase.index}) is more than "
               f"{MEMORY_SHARE:.0%} of the {free / GIB:.1f} GiB free on {where}")
    if given_batch:
        smaller = [batch for batch in halvings(given_batch // 2, world)
                   if consider(batch, schedule_for(batch), num_samples, memory, free).fits]
        hint = f"at most {smaller[0]} fits" if smaller else "none fits at this clip shape"
        return f"{problem}: lower --batch-size ({hint})"
    return f"{problem}: even one clip a device does not fit; lower --crop / --frames, or train with --amp bf16"


def no_step_error(option, num_samples, world, schedule_for, given):
    phase, _ = option.fewest
    clips = max(shape.per_device_batch for shape in phase.shapes) * world
    largest = next((batch for batch in halvings(option.batch // 2, world)
                    if min(steps for _, steps in steps_per_epoch(schedule_for(batch), num_samples)) > 0), None)
    fix = (f"lower --batch-size (at most {largest} gives every phase a step)" if largest and given
           else "use more training videos")
    return (f"phase {phase.index} (epochs {phase.start_epoch}-{phase.end_epoch}) makes no step an epoch: its steps "
            f"take up to {clips} clips ({phase.per_device_batch} a device at the phase's own {phase.frames} frames x "
            f"{phase.crop} px, more at its short-cycle crops) and the training set has {num_samples}; {fix}, or "
            "train without the cycles that make the big batches (--no-long-cycle --no-short-cycle)")


def few_steps_warning(plan):
    """A warning where a phase makes fewer than MIN_STEPS_PER_EPOCH steps an epoch, else None."""
    phase, steps = plan.fewest
    if steps >= MIN_STEPS_PER_EPOCH:
        return None
    return (f"phase {phase.index} makes {steps} step(s) an epoch (its batches are big for the training set): its "
            f"{phase.epochs} epoch(s) train little; a smaller --batch-size gives it more")


def report(plan, args, lr, stated_batch, scaling, world, where):
    """The start-up lines: the batch and why, the LR, the warm-up, the memory estimate against the free memory, the
    steps an epoch and in all."""
    b, t, s, phase = plan.dearest
    if stated_batch == plan.batch:
        lr_note = "as given" if "lr" in args.given_flags else "the recipe's"
    else:
        how = "linearly" if scaling == "linear" else "by the square root"
        lr_note = f"the recipe's {args.lr:g} at batch {stated_batch}, scaled {how}"
    free = f"of {plan.free / GIB:.1f} GiB free on {where}" if plan.free else f"on {where} (free memory unknown)"
    fewest_phase, fewest = plan.fewest
    lines = [f"batch: {plan.batch} clips a step at the base shape, {max(1, plan.batch // world)} a device on {world} "
             f"device(s) ({plan.why}); LR {lr:.4g} ({lr_note})",
             f"warm-up: {args.warmup_epochs:g} of the schedule's {plan.schedule.max_epoch} epochs; steps: "
             f"{plan.total_steps(args.max_steps)} in all, at least {fewest} an epoch (phase {fewest_phase.index})",
             f"memory: estimated peak {plan.peak / GIB:.2f} GiB a device, at {b} clips x {t} frames x {s} px "
             f"(phase {phase.index}), {free}"]
    if args.finetune and "lr" not in args.given_flags:
        lines.append("fine-tuning with the recipe's LR, which is for training from scratch: a lower --lr (often 10x) "
                     "keeps more of the pretrained weights")
    return "\n".join(lines)
