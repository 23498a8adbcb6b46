"""The loaders of a run: one DataLoader pass over every training batch of the schedule (RunBatches), each item's
randomness a function of (seed, epoch, index) alone (SeededClips), the BN split count the schedule gave a batch
carried along with it as a plain int (collate_clips); the evaluation and precise-BN loaders, each rank its share of
the items (shard_batches). Workers start with the stop signals blocked (launch.Loader)."""
import copy
import time

import torch

from evaluation import precise_bn
from launch import Loader, needs_pinned_memory, seed_worker
from multigrid import ClipRequest


def make_loader(dataset, batches, args, ctx):
    """A DataLoader over precomputed batches (lists of ClipRequest), or a batch sampler, for this process."""
    # its own generator: the workers' base seed is drawn when an iterator starts; drawn from the global RNG it
    # would shift the main process's randomness by whatever point of the run that happens at
    return Loader(dataset, batch_sampler=batches, num_workers=args.workers, collate_fn=collate_clips,
                  pin_memory=needs_pinned_memory(ctx.device.type), worker_init_fn=seed_worker,
                  generator=torch.Generator().manual_seed(args.seed))


def collate_clips(items):
    """The items' tensors stacked; the BN split count their ClipRequests carry stays a Python int, read without a
    wait."""
    splits = {item.pop("bn_splits", 1) for item in items}
    batch = torch.utils.data.default_collate(items)
    batch["bn_splits"] = max(splits)
    return batch


def shard_batches(num_items, per_device_batch, shape, ctx, order=None):
    """Fixed-shape batches (lists of ClipRequest) over this rank's share of the items (every item once across
    ranks)."""
    items = list(order if order is not None else range(num_items))[ctx.rank::ctx.world]
    return [[ClipRequest(i, *shape) for i in items[s:s + per_device_batch]]
            for s in range(0, len(items), per_device_batch)]


def eval_loader(dataset, shape, args, ctx):
    """Every view of `dataset` once across ranks, --eval-batch-size (default: the train batch) a device."""
    per_device = args.eval_batch_size or max(1, args.batch_size // ctx.world)
    return make_loader(dataset, shard_batches(len(dataset), per_device, shape, ctx), args, ctx)


def recompute_bn_statistics(model, train_set, args, ctx):
    """Precise BN over --precise-bn-batches training batches at the train shape, in a random order drawn now."""
    if args.precise_bn_batches <= 0:
        return
    order = torch.randperm(len(train_set)).tolist()
    per_device = max(2, args.batch_size // ctx.world)
    batches = shard_batches(len(train_set), per_device, (args.frames, args.rate, args.crop), ctx, order)
    if batches:
        precise_bn(model, make_loader(train_set, batches[:args.precise_bn_batches], args, ctx), ctx.device, args.amp)


class SeededClips(torch.utils.data.Dataset):
    """Each training item's randomness (clip start, jitter, crop, flip, the stand-in for a bad file) is a pure
    function of (seed, epoch, index): the same clips on any number of devices, and again after a resume. Items are
    ClipRequests, which carry their epoch and their batch's BN split count (passed on in the item)."""

    def __init__(self, dataset, seed):
        self.dataset, self.seed = dataset, seed

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, request):
        with torch.random.fork_rng(devices=[]):
            # the CPU generator alone: torch.manual_seed also queues seeds for CUDA, MTIA and XPU, recording a stack
            # trace for each, which cost a third of a small clip's loading time
            torch.default_generator.manual_seed(hash((self.seed, request.epoch, int(request.index))) % 2 ** 63)
            item = self.dataset[request]
        item["bn_splits"] = request.splits
        return item


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
