"""
The Multigrid training schedule (Wu et al., "A Multigrid Method for Efficiently Training Video Models", CVPR 2020),
as pure functions of its inputs and the epoch number, plus the batch sampler that realizes it.

This file knows nothing about data or models: it imports only the standard library and torch (for the Sampler
base class and torch.Generator). The training engine asks it three things, all from the SAME epoch counter:

    sched.phase(epoch)        which input shape, batch and batch-norm layout to use this epoch
    sched.lr(epoch + i / n)   the relative learning rate at iteration i of n (multiply by the base LR)
    MultigridBatchSampler     which sample indices, at which (frames, rate, crop), each rank gets per iteration

Because every answer is a pure function of (inputs, epoch, seed), resuming is just restarting from an epoch number,
and long-cycle phase and LR milestone can never drift apart (the third-party port counted prefetched batches).

The algorithm
-------------
Train on a schedule of shapes (batch B, frames T, crop S) that keeps B x T x S^2 roughly constant: coarse shapes
with big batches first, the base shape last. Same data passes, far fewer iterations.

Long cycle. Four shapes per cycle, factors (T, S) = (1/4, sqrt 1/2), (1/2, sqrt 1/2), (1/2, 1), (1, 1) of the base
(frames t = round(T * tf), crop s = round(S * sf), relative batch B_rel = round(T S^2 / (t s^2)) = 8, 4, 2, 1).
One full cycle runs inside every LR stage (the user's `steps`); the epochs of a stage are split among the four
shapes in proportion to their average batch (coarse shapes get more epochs but still far fewer iterations).
The iteration saving of the cycles is measured, a fine-tuning phase at the base shape is appended for the user's
last stage (as long as that saving implies), and everything is rescaled so the total is max_epoch * 1.5
(EPOCH_FACTOR); cumulative phase ends are rounded to whole epochs. This is the released code's arithmetic, kept
operation for operation so that `reference_json()` reproduces its outputs exactly.

Short cycle. Inside every long-cycle phase, iterations rotate through three crops: round(S * 1/2),
round(S * sqrt 1/2) and the phase's own crop, each with the batch that keeps B x T x S^2 constant.

Batch norm. Statistics are taken over groups of BN_BASE_SIZE = 8 samples whatever the batch: a per-device batch b
uses sub-batch norm with num_splits = b // 8 groups (sample i goes to group i mod num_splits). When the per-device
batch falls below 8 on several devices, the phase uses synchronized BN (torch.nn.SyncBatchNorm) over groups of
`sync_devices` consecutive ranks instead. Plain training (both cycles off) keeps plain BN, untouched.
A phase's bn_kind / num_splits describe its own (long-cycle) shape, as the released code reports them; the
short cycle's bigger batches use more splits in the same phase (e.g. 16/8/8), so the split count of an
iteration is its IterShape's (1 under SyncBN), carried by every ClipRequest of the batch: groups stay at 8
samples, not 32.

Learning rate. Linear scaling rule: the LR is multiplied by the relative batch B_rel of the current long-cycle
phase (as the authors do; short-cycle iterations keep the phase's LR). lr_scaling='sqrt' multiplies by sqrt(B_rel)
instead, the usual rule for adaptive optimizers such as AdamW, whose step size does not grow with the gradient's.

Sampling rate. A phase with fewer frames draws each clip's rate uniformly from [base_rate, base_rate * base_frames
// frames], as the released code does: at the top of the range the clip spans the base clip's time, at the bottom
its frames are as far apart as the base shape's, which is what the temporal kernels carry over to the base shape.
(Every clip at the top rate learnt less in the demo's multigrid run.) The sampler draws the rates from its
seeded generator, so they too are a pure function of (seed, epoch) and do not depend on the number of devices.

Choices where the released code is inconsistent or crashes
-----------------------------------------------------------
- Short-cycle rule. The released code sizes its short-cycle batches from the current long-cycle crop but crops
  from the base S. Here one rule serves both: the short-cycle crops are round(S * f) of the BASE crop S (as the
  released code crops), and every iteration shape's relative batch comes from the crop actually used, with the
  same formula as the long cycle: B_rel = round(T S^2 / (t s^2)). The schedule's average batch and the sampler's
  batches are the same numbers. (With S = 224 and the phase crop 158, the middle short crop equals the phase crop,
  exactly as in the released code, so those phases rotate through two distinct crops.) This reproduces the
  reference outputs.
- Long cycle without short cycle (the released code raises IndexError): the average batch of a shape is its B_rel.
- Cosine LR policy with long cycle (the released code crashes): the long cycle is laid out over the user's `steps`
  exactly as for the step policy, so both policies have the same phases. (With fewer than two steps, as the X3D
  cosine recipe has, the long cycle's stages default to DEFAULT_STAGES equal parts of max_epoch, the last one
  the base-shape fine-tuning; this holds for the step policy too.) The LR is one cosine over the whole
  rescaled schedule, cos_end + (1 - cos_end) * (1 + cos(pi * e / max_epoch)) / 2, times the phase's B_rel, so
  its envelope (LR / B_rel) decays monotonically to cos_end at the end.
- Warm-up (either policy): the envelope ramps linearly from `warmup_start` to its value at `warmup_epochs`, and is
  then scaled by the current phase's B_rel like everywhere else. `warmup_epochs` counts epochs of this schedule.
- Short cycle alone: like the released code, LR steps and max_epoch are scaled by EPOCH_FACTOR (int()).
- BN names: 'sub_batchnorm' only when num_splits > 1 (the released code also calls 9..15 per device "sub" with
  one split), 'batchnorm' otherwise; 'sync_batchnorm' needs several devices (nothing to sync on one).
- Rounding, so no batch ever crashes a split: a shape's per-device batch is floor(B_rel * base_batch / devices),
  at least 1, then rounded down to a multiple of its split count (e.g. 20 -> 2 splits of 10; batches of powers of
  two are never changed). sync_devices is the largest divisor of the device count <= 8 // per-device batch, so
  the devices split into whole sync groups.
- The third-party port's faults do not arise: phase and LR are computed from one epoch number by pure functions;
  phases and shapes are immutable (frozen dataclasses, tuples), so nothing is aliased or mutated between phases.

Sampler
-------
Every rank draws the same per-epoch permutation (torch.Generator seeded with seed + epoch, like
DistributedSampler) and walks the same sequence of global batches; rank r takes every world_size-th index of a
global batch, starting at r. So shards are disjoint, all ranks yield the same number of batches, and with both
cycles off the result is exactly DistributedSampler(shuffle=True, drop_last=True) + BatchSampler(drop_last=True).
Each yielded batch is a list of ClipRequest(index, frames, rate, crop, epoch, splits), the one item type every
dataset of this project reads; `splits` is the BN split count of the batch it belongs to, computed once, by the
schedule.

Run `python multigrid.py --help` to preview any schedule as a table, or as JSON (`--json`) in the form of the
released code's outputs.
"""

import argparse
import bisect
import json
import math
import sys
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch.utils.data import Sampler

# -----------------------------------------------------------------------------
# constants of the method (the released code's defaults)

BN_BASE_SIZE = 8                     # samples per batch-norm group
EPOCH_FACTOR = 1.5                   # multigrid trains 1.5x the epochs (still far fewer iterations)
LONG_CYCLE_FACTORS = ((0.25, math.sqrt(0.5)), (0.5, math.sqrt(0.5)), (0.5, 1), (1, 1))   # (frames, crop)
SHORT_CYCLE_FACTORS = (0.5, math.sqrt(0.5))                                             # crop, of the base S
DEFAULT_STAGES = 4                   # equal stages of max_epoch when no steps are given (last = fine-tuning)
LR_SCALINGS = ("linear", "sqrt")
LR_POLICIES = ("step", "cosine")
BN_KINDS = ("sub_batchnorm", "batchnorm", "sync_batchnorm")

# -----------------------------------------------------------------------------
# the schedule


@dataclass(frozen=True)
class IterShape:
    """One iteration's input shape inside a phase (the short cycle rotates through these)."""
    crop: int
    relative_batch: int              # B_rel of this shape (global batch = B_rel * base_batch, before rounding)
    per_device_batch: int            # always a multiple of num_splits
    num_splits: int                  # sub-batch-norm groups for a per-device batch of this size


@dataclass(frozen=True)
class Phase:
    """A long-cycle phase: a contiguous range of epochs [start_epoch, end_epoch) trained at one base shape."""
    index: int
    stage: int                       # LR stage (index into the user's steps; len(steps) - 1 = fine-tuning)
    relative_batch: int              # B_rel: the LR is scaled by this (linear scaling rule)
    global_batch: int                # per_device_batch * num_devices
    per_device_batch: int
    frames: int
    crop: int
    rate: int                        # top of the clips' sampling-rate range: base_rate * base_frames // frames
    min_rate: int                    # bottom of the range: the base rate (each clip's rate is drawn in between)
    start_epoch: int
    end_epoch: int
    bn_kind: str                     # 'sub_batchnorm' | 'batchnorm' | 'sync_batchnorm'
    num_splits: int                  # sub-BN groups at the phase's own shape (1 unless 'sub_batchnorm')
    sync_devices: int                # SyncBatchNorm group size (1 unless 'sync_batchnorm')
    shapes: tuple                    # IterShape per iteration, in rotation order (one entry without short cycle)
    split_bn: bool                   # sub-batch norm applies (False under plain training or synchronized BN)
    bn_base_size: int = BN_BASE_SIZE

    @property
    def epochs(self):
        return self.end_epoch - self.start_epoch

    @property
    def rate_range(self):
        """The clips' sampling rates as text: '4-16', or '4' where there is one."""
        return str(self.rate) if self.min_rate == self.rate else f"{self.min_rate}-{self.rate}"

    def draw_rates(self, count, generator=None):
        """Sampling rates for `count` clips of this phase, uniform in [min_rate, rate] (nothing drawn where the
        range is one rate)."""
        if self.min_rate == self.rate:
            return [self.rate] * count
        return torch.randint(self.min_rate, self.rate + 1, (count,), generator=generator).tolist()

    def splits_for(self, per_device_batch):
        """BN split count for a per-device batch of this size in this phase (1 under plain or synchronized BN)."""
        if not self.split_bn:
            return 1
        rounded, splits = split_batch(per_device_batch, self.bn_base_size)
        if rounded != per_device_batch:
            raise ValueError(f"a batch of {per_device_batch} does not divide into {splits} BN groups; the schedule "
                             f"makes batches of {rounded}")
        return splits


def split_batch(per_device_batch, bn_base_size=BN_BASE_SIZE):
    """Sub-batch norm of a per-device batch: (the batch rounded down to a multiple of its split count, the split
    count), groups of about bn_base_size samples (at least one group, so no batch can crash a split)."""
    splits = max(1, per_device_batch // bn_base_size)
    return per_device_batch - per_device_batch % splits, splits


def _relative_batch(base_frames, base_crop, frames, crop):
    # keep B x T x S^2 constant; Python's round() as in the released code
    return int(round(float(base_frames * base_crop ** 2) / (frames * crop * crop)))


class MultigridSchedule:
    """The whole schedule, computed once in the constructor; see the module docstring for the rules."""

    def __init__(self, base_batch, base_frames, base_crop, base_rate=2, steps=(0,), max_epoch=1, num_devices=1,
                 long_cycle=True, short_cycle=True, lr_policy="step", gamma=0.1, warmup_epochs=0.0,
                 warmup_start=0.1, epoch_factor=EPOCH_FACTOR, bn_base_size=BN_BASE_SIZE, cosine_end=0.0,
                 lr_scaling="linear"):
        if lr_policy not in LR_POLICIES:
            raise ValueError(f"lr_policy must be one of {LR_POLICIES}, got {lr_policy!r}")
        if lr_scaling not in LR_SCALINGS:
            raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {lr_scaling!r}")
        self.lr_scaling = lr_scaling
        if min(base_batch, base_frames, base_crop, base_rate, num_devices, bn_base_size) < 1:
            raise ValueError("base_batch, base_frames, base_crop, base_rate, num_devices, bn_base_size must be >= 1")
        steps = [int(s) for s in steps]
        if not steps or steps[0] != 0:
            steps = [0] + steps                      # the first LR stage always starts at epoch 0
        if any(b <= a for a, b in zip(steps, steps[1:])) or steps[-1] > max_epoch:
            raise ValueError(f"steps must increase from 0 and stay <= max_epoch ({max_epoch}), got {steps}")
        self.base_batch, self.base_frames, self.base_crop = base_batch, base_frames, base_crop
        self.base_rate = base_rate
        self.num_devices, self.long_cycle, self.short_cycle = num_devices, bool(long_cycle), bool(short_cycle)
        self.lr_policy, self.gamma, self.cosine_end = lr_policy, gamma, cosine_end
        self.warmup_epochs, self.warmup_start = float(warmup_epochs), warmup_start
        self.epoch_factor, self.bn_base_size = epoch_factor, bn_base_size
        self.plain = not (self.long_cycle or self.short_cycle)

        # (stage, frames, crop, end_epoch) per phase; then the step LR table: boundaries and envelope stages
        if self.long_cycle:
            segments, self.max_epoch = self._long_cycle_segments(list(steps), int(max_epoch))
            ends = [end for _, _, _, end in segments]
            lr_steps = [0] + ends
            lr_stages = [stage for stage, _, _, _ in segments]
            # the fine-tuning phase is split in half: first half at the previous stage's LR, second at the next decay
            lr_steps[-1] = (lr_steps[-2] + lr_steps[-1]) // 2
            lr_stages = lr_stages[:-1] + [lr_stages[-1] - 1, lr_stages[-1]]
        else:
            factor = epoch_factor if self.short_cycle else 1    # short cycle alone: 1.5x epochs, like the released code
            lr_steps = [int(s * factor) for s in steps]
            self.max_epoch = int(max_epoch * factor)
            ends = lr_steps[1:] + [self.max_epoch]
            segments = [(i, base_frames, base_crop, end) for i, end in enumerate(ends)]
            lr_stages = list(range(len(lr_steps)))
        self.lr_steps, self.lr_stages = tuple(lr_steps), tuple(lr_stages)

        phases, start = [], 0
        for index, (stage, frames, crop, end) in enumerate(segments):
            phases.append(self._make_phase(index, stage, frames, crop, start, end))
            start = end
        self.phases = tuple(phases)
        self._phase_ends = [p.end_epoch for p in self.phases]

    # --- layout -------------------------------------------------------------

    def _short_cycle_crops(self, crop):
        if not self.short_cycle:
            return (crop,)
        return tuple(int(round(self.base_crop * f)) for f in SHORT_CYCLE_FACTORS) + (crop,)

    def _long_cycle_segments(self, steps, max_epoch):
        """The released code's long-cycle arithmetic (same operations, same order, so the same roundings)."""
        if len(steps) < 2:   # no stages given: equal stages, the last one the fine-tuning (see module docstring)
            steps = [int(round(max_epoch * i / DEFAULT_STAGES)) for i in range(DEFAULT_STAGES)]
        T, S = self.base_frames, self.base_crop
        shapes, avg_bs = [], []
        for tf, sf in LONG_CYCLE_FACTORS:
            t, s = max(1, int(round(T * tf))), max(1, int(round(S * sf)))
            batches = [_relative_batch(T, S, t, c) for c in self._short_cycle_crops(s)]
            shapes.append((t, s))
            avg_bs.append(sum(batches) / len(batches))
        total_iters, raw = 0.0, []
        for stage in range(len(steps) - 1):
            stage_epochs = steps[stage + 1] - steps[stage]
            for k, (t, s) in enumerate(shapes):
                epochs = stage_epochs * avg_bs[k] / sum(avg_bs)     # coarse shapes get more epochs ...
                total_iters += epochs / avg_bs[k]                    # ... but fewer iterations
                raw.append((stage, t, s, epochs))
        iter_saving = steps[-1] / total_iters
        # the fine-tuning phase (the user's last stage) gets the same iteration saving as the rest
        ft_epochs = (max_epoch - steps[-1]) / iter_saving * avg_bs[-1]
        raw.append((len(steps) - 1, shapes[-1][0], shapes[-1][1], ft_epochs))
        scale = max_epoch * self.epoch_factor / sum(r[-1] for r in raw)
        segments, total = [], 0.0
        for stage, t, s, epochs in raw:
            total += epochs * scale
            segments.append((stage, t, s, int(round(total))))
        return segments, segments[-1][-1]

    def _make_phase(self, index, stage, frames, crop, start, end):
        rel = _relative_batch(self.base_frames, self.base_crop, frames, crop)
        rate = max(1, self.base_rate * self.base_frames // frames)    # up to the same time span with fewer frames
        per_device = max(1, rel * self.base_batch // self.num_devices)
        bn_kind, sync = "batchnorm", 1
        if not self.plain and per_device < self.bn_base_size and self.num_devices > 1:
            want = max(1, self.bn_base_size // per_device)
            sync = max(d for d in range(1, self.num_devices + 1) if self.num_devices % d == 0 and d <= want)
            bn_kind = "sync_batchnorm" if sync > 1 else "batchnorm"
        split_bn = not self.plain and bn_kind != "sync_batchnorm"
        shapes = []
        for c in self._short_cycle_crops(crop):
            r = _relative_batch(self.base_frames, self.base_crop, frames, c)
            b = max(1, r * self.base_batch // self.num_devices)
            b, k = split_batch(b, self.bn_base_size) if split_bn else (b, 1)
            shapes.append(IterShape(crop=c, relative_batch=r, per_device_batch=b, num_splits=k))
        own = shapes[-1]                                   # the phase's own shape is last in the rotation
        if own.num_splits > 1:
            bn_kind = "sub_batchnorm"
        return Phase(index=index, stage=stage, relative_batch=rel, global_batch=own.per_device_batch * self.num_devices,
                     per_device_batch=own.per_device_batch, frames=frames, crop=crop, rate=rate,
                     min_rate=min(self.base_rate, rate), start_epoch=start, end_epoch=end, bn_kind=bn_kind,
                     num_splits=own.num_splits, sync_devices=sync,
                     shapes=tuple(shapes), split_bn=split_bn, bn_base_size=self.bn_base_size)

    # --- queries (pure functions of the epoch) ----------------------------------

    def phase(self, epoch):
        """The phase active at `epoch` (fractions are floored; past the end: the last phase)."""
        epoch = math.floor(epoch)
        if epoch < 0:
            raise ValueError(f"epoch must be >= 0, got {epoch}")
        i = bisect.bisect_right(self._phase_ends, epoch)      # first phase whose end is > epoch (skips empty ones)
        return self.phases[min(i, len(self.phases) - 1)]

    def _envelope(self, epoch):
        # the LR at the base batch, before linear scaling
        if self.lr_policy == "step":
            i = max(0, bisect.bisect_right(self.lr_steps, epoch) - 1)
            return self.gamma ** self.lr_stages[i]
        progress = min(max(epoch, 0.0), self.max_epoch) / self.max_epoch
        return self.cosine_end + (1.0 - self.cosine_end) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def lr(self, epoch):
        """Relative LR at a fractional epoch (warm-up and linear scaling included); multiply by the base LR."""
        if epoch < self.warmup_epochs:
            end = self._envelope(self.warmup_epochs)
            envelope = self.warmup_start + (end - self.warmup_start) * epoch / self.warmup_epochs
        else:
            envelope = self._envelope(epoch)
        return envelope * self.batch_lr_factor(self.phase(epoch).relative_batch)

    def batch_lr_factor(self, relative_batch):
        return relative_batch if self.lr_scaling == "linear" else math.sqrt(relative_batch)

    def relative_lrs(self):
        """One LR per entry of the LR step table (lr_steps), as the released code lists them."""
        if self.lr_policy == "step":
            return [self.gamma ** stage * self.batch_lr_factor(self.phase(start).relative_batch)
                    for start, stage in zip(self.lr_steps, self.lr_stages)]
        return [self.lr(s) for s in self.lr_steps]

    # --- reports ----------------------------------------------------------------

    def reference_json(self):
        """The schedule in the form of the reference file's "output" (the released code's outputs)."""
        return {
            "schedule": [[p.stage, [p.relative_batch, p.frames, p.crop], p.end_epoch] for p in self.phases],
            "steps": list(self.lr_steps),
            "relative_lrs": self.relative_lrs(),
            "max_epoch": self.max_epoch,
            "per_epoch_batch_frames_crop_bn_splits_sync": [
                [p.global_batch, p.frames, p.crop, p.bn_kind, p.num_splits, p.sync_devices]
                for p in (self.phase(e) for e in range(self.max_epoch))],
        }

    def table(self):
        """A printable table of the phases: epochs, batch, frames, rate, crop(s), BN layout, relative LR."""
        cycles = " + ".join(n for n, on in (("long cycle", self.long_cycle), ("short cycle", self.short_cycle)) if on)
        lines = [
            f"Multigrid schedule: {self.max_epoch} epochs, {self.lr_policy} LR, {cycles or 'no cycles (plain)'}, "
            f"{self.num_devices} device(s)",
            f"base: batch {self.base_batch} x {self.base_frames} frames x {self.base_crop} px, rate {self.base_rate}; "
            f"LR steps at {list(self.lr_steps)}",
            "  crop:batch/dev lists the short-cycle rotation; LR is relative to the base LR "
            f"(x {'relative batch' if self.lr_scaling == 'linear' else 'sqrt of the relative batch'})",
        ]
        header = ("phase", "stage", "epochs", "batch", "/dev", "frames", "rate", "crop", "crop:batch/dev", "BN",
                  "splits", "LR")
        rows = []
        for p in self.phases:
            rotation = " ".join(f"{s.crop}:{s.per_device_batch}" for s in p.shapes)
            bn = {"sub_batchnorm": "sub-BN", "batchnorm": "BN", "sync_batchnorm": f"syncBN/{p.sync_devices}"}[p.bn_kind]
            splits = "/".join(str(s.num_splits) for s in p.shapes)
            if p.epochs > 0:
                first, last = self.lr(p.start_epoch), self.lr(p.end_epoch - 1e-9)
                lr = f"{first:.4g}" if math.isclose(first, last) else f"{first:.4g} -> {last:.4g}"
            else:
                lr = "-"
            rows.append((str(p.index), str(p.stage), f"{p.start_epoch}-{p.end_epoch}", str(p.global_batch),
                         str(p.per_device_batch), str(p.frames), p.rate_range, str(p.crop), rotation, bn, splits, lr))
        widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
        fmt = lambda r: "  ".join(c.rjust(w) if i < 8 else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
        lines += [fmt(r).rstrip() for r in [header] + rows]
        return "\n".join(lines)

# -----------------------------------------------------------------------------
# the batch sampler


class ClipRequest(NamedTuple):
    """What a batch sampler asks a dataset for: sample `index` at (frames, rate, crop), drawn in `epoch` (the
    epoch seeds the clip's randomness, so it travels with the item), in a batch normalized in `splits` BN groups
    (the schedule's count for the batch, carried to the training loop with it). A dataset given a plain int uses
    its own default shape."""
    index: int
    frames: int
    rate: int
    crop: int
    epoch: int = 0
    splits: int = 1

    @property
    def shape(self):
        return (self.frames, self.rate, self.crop)


class MultigridBatchSampler(Sampler):
    """Yields one per-device batch per iteration: a list of ClipRequest, all of one shape and of the sampler's epoch.

    Every rank computes the same per-epoch permutation and the same sequence of global batches; rank r takes
    positions r, r + world_size, ... of each global batch. With drop_last=False the last, partial global batch is
    filled up with indices from the start of the permutation (as DistributedSampler pads), so it too has a valid
    shape and split count on every rank.
    """

    def __init__(self, num_samples, schedule, rank=0, world_size=1, seed=0, drop_last=True):
        if world_size != schedule.num_devices:
            raise ValueError(f"world_size {world_size} != schedule.num_devices {schedule.num_devices}: the batch "
                             f"sizes and BN layout were computed for {schedule.num_devices} device(s)")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is not in [0, {world_size})")
        self.num_samples, self.schedule = int(num_samples), schedule
        self.rank, self.world_size, self.seed, self.drop_last = rank, world_size, seed, drop_last
        self.epoch = 0

    def set_epoch(self, epoch):
        self.epoch = int(epoch)

    @property
    def phase(self):
        return self.schedule.phase(self.epoch)

    def _global_batches(self):
        # (start position in the permutation, iteration shape) of every global batch this epoch
        shapes, pos, j, out = self.phase.shapes, 0, 0, []
        while pos < self.num_samples:
            shape = shapes[j % len(shapes)]                  # the short cycle restarts every epoch, like the authors'
            size = shape.per_device_batch * self.world_size
            if pos + size > self.num_samples and (self.drop_last or pos + size - self.num_samples > self.num_samples):
                break                                        # dropped; or too few samples to pad from
            out.append((pos, shape))
            pos, j = pos + size, j + 1
        return out

    def __len__(self):
        if not self.drop_last:
            return len(self._global_batches())
        # whole rotations of the short cycle, then the steps of a partial one that fit (as _global_batches walks)
        sizes = [shape.per_device_batch * self.world_size for shape in self.phase.shapes]
        rotations, left = divmod(self.num_samples, sum(sizes))
        steps = rotations * len(sizes)
        for size in sizes:
            if size > left:
                break
            left, steps = left - size, steps + 1
        return steps

    def __iter__(self):
        g = torch.Generator()
        g.manual_seed(self.seed + self.epoch)                # the same permutation on every rank, new each epoch
        perm = torch.randperm(self.num_samples, generator=g).tolist()
        perm = perm + perm                                   # room to pad the last batch when drop_last=False
        phase = self.phase
        for pos, shape in self._global_batches():
            size = shape.per_device_batch * self.world_size
            rates = phase.draw_rates(size, g)                # every rank draws the whole global batch's rates
            own = slice(self.rank, size, self.world_size)
            yield [ClipRequest(i, phase.frames, rate, shape.crop, self.epoch, shape.num_splits)
                   for i, rate in zip(perm[pos:pos + size][own], rates[own])]

# -----------------------------------------------------------------------------
# preview from the command line


KINETICS_STEPS = [0, 94, 154, 196]     # the SlowFast Kinetics multigrid recipe's LR stages, for --max-epoch 239


def main(argv=None):
    ap = argparse.ArgumentParser(description="Preview a Multigrid schedule (no training).")
    ap.add_argument("--steps", type=int, nargs="+", default=None,
                    help=f"LR stage boundaries (epochs); default {' '.join(map(str, KINETICS_STEPS))}, the Kinetics "
                         "recipe's")
    ap.add_argument("--max-epoch", type=int, default=239)
    ap.add_argument("--base-batch", type=int, default=64, help="global batch (all devices) at the base shape")
    ap.add_argument("--frames", type=int, default=32, help="base frames T")
    ap.add_argument("--crop", type=int, default=224, help="base crop S")
    ap.add_argument("--rate", type=int, default=2, help="base temporal sampling rate")
    ap.add_argument("--devices", type=int, default=8)
    ap.add_argument("--no-long-cycle", dest="long_cycle", action="store_false")
    ap.add_argument("--no-short-cycle", dest="short_cycle", action="store_false")
    ap.add_argument("--lr-policy", choices=LR_POLICIES, default="step")
    ap.add_argument("--lr-scaling", choices=LR_SCALINGS, default="linear",
                    help="LR x relative batch (SGD) or x its square root (AdamW)")
    ap.add_argument("--gamma", type=float, default=0.1)
    ap.add_argument("--warmup-epochs", type=float, default=0.0)
    ap.add_argument("--warmup-start", type=float, default=0.1, help="warm-up start LR, relative to the base LR")
    ap.add_argument("--epoch-factor", type=float, default=EPOCH_FACTOR)
    ap.add_argument("--bn-base-size", type=int, default=BN_BASE_SIZE)
    ap.add_argument("--json", action="store_true", help="print the reference file's 'output' form instead")
    args = ap.parse_args(argv)
    if args.steps is None:
        if KINETICS_STEPS[-1] > args.max_epoch:
            ap.error(f"the default --steps {' '.join(map(str, KINETICS_STEPS))} (the Kinetics recipe's) pass "
                     f"--max-epoch {args.max_epoch}: give --steps too, e.g. --steps 0")
        args.steps = KINETICS_STEPS
    try:
        sched = MultigridSchedule(base_batch=args.base_batch, base_frames=args.frames, base_crop=args.crop,
                                  base_rate=args.rate, steps=args.steps, max_epoch=args.max_epoch,
                                  num_devices=args.devices, long_cycle=args.long_cycle, short_cycle=args.short_cycle,
                                  lr_policy=args.lr_policy,
                                  gamma=args.gamma, warmup_epochs=args.warmup_epochs, warmup_start=args.warmup_start,
                                  epoch_factor=args.epoch_factor, bn_base_size=args.bn_base_size,
                                  lr_scaling=args.lr_scaling)
    except ValueError as e:
        ap.error(str(e))
    print(json.dumps(sched.reference_json()) if args.json else sched.table())


if __name__ == "__main__":
    sys.exit(main())
