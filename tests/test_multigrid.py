"""Tests for multigrid.py: the released code's outputs, every cycle/LR-policy combination, the sampler, the CLI."""
import itertools
import json
import math
import subprocess
import sys

import pytest
import torch
from torch.utils.data import BatchSampler, DistributedSampler

from conftest import REPO
from multigrid import (BN_BASE_SIZE, LONG_CYCLE_FACTORS, SHORT_CYCLE_FACTORS, MultigridBatchSampler,
                       MultigridSchedule, main)

REFERENCE = "reference/multigrid_reference.json"
KINETICS = dict(base_batch=64, base_frames=32, base_crop=224, steps=[0, 94, 154, 196], max_epoch=239, num_devices=8)
COMBOS = list(itertools.product([True, False], [True, False], ["step", "cosine"]))   # long, short, policy


def reference_cases(shared_dir):
    return json.loads((shared_dir / REFERENCE).read_text())


def from_input(inp, **kw):
    return MultigridSchedule(base_batch=inp["base_batch"], base_frames=inp["base_frames"], base_crop=inp["base_crop"],
                             steps=inp["steps"], max_epoch=inp["max_epoch"], num_devices=inp["num_gpus"],
                             long_cycle=inp["long_cycle"], short_cycle=inp["short_cycle"], gamma=inp["gamma"],
                             epoch_factor=inp["epoch_factor"], bn_base_size=inp["bn_base_size"], **kw)


def assert_matches_reference(ours, ref):
    assert ours["schedule"] == ref["schedule"]
    assert ours["steps"] == ref["steps"]
    assert ours["max_epoch"] == ref["max_epoch"]
    assert ours["relative_lrs"] == pytest.approx(ref["relative_lrs"], rel=1e-9)
    key = "per_epoch_batch_frames_crop_bn_splits_sync"
    rows, ref_rows = ours[key], ref[key]
    assert len(rows) == len(ref_rows)
    for epoch, (row, want) in enumerate(zip(rows, ref_rows)):
        assert row[:4] == want[:4], f"epoch {epoch}"                     # batch, frames, crop, BN kind
        if want[3] == "sub_batchnorm":                                    # the released code leaves stale values
            assert row[4] == want[4], f"epoch {epoch}: num_splits"        # in the other columns (see its note)
        if want[3] == "sync_batchnorm":
            assert row[5] == want[5], f"epoch {epoch}: sync devices"


# --- the released code's outputs ------------------------------------------------------------------------------------

def test_reference_json_both_cases(shared_dir):
    cases = reference_cases(shared_dir)
    assert len(cases) == 2
    for case in cases:
        inp = case["input"]
        assert [x for f in inp["long_cycle_factors"] for x in f] == pytest.approx(sum(LONG_CYCLE_FACTORS, ()))
        assert inp["short_cycle_factors"] == pytest.approx(SHORT_CYCLE_FACTORS)
        assert_matches_reference(from_input(inp).reference_json(), case["output"])


def test_cli_json_equals_reference(shared_dir, capsys):
    # in-process through main(): the same argument parsing and printing as `python multigrid.py ... --json`
    # (one real subprocess run is in test_cli_subprocess; interpreter + torch start-up costs seconds each)
    for case in reference_cases(shared_dir):
        inp = case["input"]
        main(["--steps", *map(str, inp["steps"]), "--max-epoch", str(inp["max_epoch"]),
              "--base-batch", str(inp["base_batch"]), "--frames", str(inp["base_frames"]),
              "--crop", str(inp["base_crop"]), "--devices", str(inp["num_gpus"]), "--json"])
        assert_matches_reference(json.loads(capsys.readouterr().out), case["output"])


# --- every combination ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("long_cycle,short_cycle,policy", COMBOS)
@pytest.mark.parametrize("devices,base_batch", [(8, 64), (4, 16), (1, 8), (3, 24), (2, 6)])
def test_every_combination_is_sane(long_cycle, short_cycle, policy, devices, base_batch):
    s = MultigridSchedule(base_batch=base_batch, base_frames=32, base_crop=224, steps=[0, 94, 154, 196],
                          max_epoch=239, num_devices=devices, long_cycle=long_cycle, short_cycle=short_cycle,
                          lr_policy=policy, warmup_epochs=5.0)
    assert s.max_epoch >= 239 and s.phases[0].start_epoch == 0 and s.phases[-1].end_epoch == s.max_epoch
    if not long_cycle:
        assert s.max_epoch == (int(239 * 1.5) if short_cycle else 239)
    for a, b in zip(s.phases, s.phases[1:]):
        assert a.end_epoch == b.start_epoch and a.end_epoch >= a.start_epoch
    last = s.phases[-1]
    assert (last.frames, last.crop, last.relative_batch, last.rate) == (32, 224, 1, 2)    # ends at the base shape
    for p in s.phases:
        assert p.bn_kind in ("sub_batchnorm", "batchnorm", "sync_batchnorm")
        assert p.rate == 2 * 32 // p.frames and p.frames * p.rate == 64                    # up to the same span
        assert p.min_rate == 2 and p.rate_range == ("2" if p.frames == 32 else f"2-{p.rate}")
        assert p.global_batch == p.per_device_batch * devices
        assert len(p.shapes) == (3 if short_cycle else 1) and p.shapes[-1].crop == p.crop
        for shape in p.shapes:
            assert shape.per_device_batch >= 1 and shape.per_device_batch % shape.num_splits == 0
            assert p.splits_for(shape.per_device_batch) == shape.num_splits
            if shape.num_splits > 1:
                assert shape.per_device_batch // shape.num_splits >= BN_BASE_SIZE
        if p.bn_kind == "sync_batchnorm":
            assert devices > 1 and p.per_device_batch < BN_BASE_SIZE and devices % p.sync_devices == 0
        if not (long_cycle or short_cycle):
            assert p.bn_kind == "batchnorm" and p.per_device_batch == base_batch // devices   # plain training
    rows = s.reference_json()["per_epoch_batch_frames_crop_bn_splits_sync"]
    assert len(rows) == s.max_epoch
    lrs = [s.lr(e / 4) for e in range(4 * s.max_epoch + 1)]
    assert all(math.isfinite(x) and x >= 0 for x in lrs)
    s.table()


# --- learning rate --------------------------------------------------------------------------------------------------

def test_lr_and_phase_from_the_same_counter():
    s = MultigridSchedule(**KINETICS)
    for p in s.phases:
        if p.epochs == 0:
            continue
        for e in (p.start_epoch, p.start_epoch + 0.999, p.end_epoch - 1e-6):
            assert s.phase(e) is p
            ratio = s.lr(e) / p.relative_batch                     # the envelope: a power of gamma
            assert math.isclose(math.log(ratio, 0.1), round(math.log(ratio, 0.1)), abs_tol=1e-9)
    # at each boundary the LR jumps exactly with the batch: 8 -> 4 -> 2 -> 1 -> 0.8 ...
    assert [s.lr(p.start_epoch) for p in s.phases[:5]] == pytest.approx([8, 4, 2, 1, 0.8])
    assert s.lr(342.99) == pytest.approx(0.01) and s.lr(343) == pytest.approx(0.001)   # the fine-tuning split
    assert s.phase(10_000) is s.phases[-1] and s.lr(10_000) == pytest.approx(0.001)


def test_step_lr_with_long_cycle_alone_and_short_cycle_alone():
    s = MultigridSchedule(**{**KINETICS, "short_cycle": False})            # the released code: IndexError
    assert [p.relative_batch for p in s.phases[:4]] == [8, 4, 2, 1] and s.max_epoch == 358
    s = MultigridSchedule(**{**KINETICS, "long_cycle": False})
    assert s.lr_steps == (0, 141, 231, 294) and s.max_epoch == 358
    assert [s.lr(e) for e in (0, 141, 231, 294)] == pytest.approx([1, 0.1, 0.01, 0.001])


@pytest.mark.parametrize("long_cycle,short_cycle", list(itertools.product([True, False], repeat=2)))
def test_cosine_policy(long_cycle, short_cycle):
    s = MultigridSchedule(**KINETICS, long_cycle=long_cycle, short_cycle=short_cycle, lr_policy="cosine",
                          warmup_epochs=10.0, warmup_start=0.01)
    envelope = [s.lr(e / 10) / s.phase(e / 10).relative_batch for e in range(10 * s.max_epoch + 1)]
    warm, rest = envelope[:101], envelope[100:]
    assert warm[0] == pytest.approx(0.01)                                   # warm-up ramp: linear, increasing
    assert all(b > a for a, b in zip(warm, warm[1:]))
    assert all(b <= a + 1e-12 for a, b in zip(rest, rest[1:]))               # then a monotone decay ...
    assert envelope[-1] == pytest.approx(0.0, abs=1e-9) and rest[0] > 0.99   # ... from ~1 to 0 at the end
    assert s.lr(s.max_epoch - 0.5) < 1e-4
    if long_cycle:
        p = s.phases[1]                                      # linear scaling: the LR follows the phase's batch
        jump = s.lr(p.start_epoch) / s.lr(p.start_epoch - 1e-9)
        assert jump == pytest.approx(p.relative_batch / s.phases[0].relative_batch, rel=1e-6)


def test_sqrt_lr_scaling_for_adaptive_optimizers():
    linear = MultigridSchedule(**KINETICS, lr_policy="cosine")
    sqrt = MultigridSchedule(**KINETICS, lr_policy="cosine", lr_scaling="sqrt")
    assert [p.relative_batch for p in sqrt.phases] == [p.relative_batch for p in linear.phases]  # same layout
    for epoch in (0.5, 30.0, 120.25, linear.max_epoch - 1.0):
        rel = linear.phase(epoch).relative_batch
        assert sqrt.lr(epoch) == pytest.approx(linear.lr(epoch) / rel * math.sqrt(rel))
    assert "sqrt of the relative batch" in sqrt.table()
    with pytest.raises(ValueError, match="lr_scaling"):
        MultigridSchedule(**KINETICS, lr_scaling="log")


@pytest.mark.parametrize("flags, expected", [([], "linear"), (["--optimizer", "adamw"], "sqrt"),
                                             (["--optimizer", "adamw", "--lr-scaling", "linear"], "linear"),
                                             (["--lr-scaling", "sqrt"], "sqrt")])
def test_lr_scaling_follows_the_optimizer_unless_given(flags, expected):
    import config
    from train_x3d_kinetics_multigrid import KineticsTask
    args = config.build_parser(KineticsTask()).parse_args(["--data", "x", *flags])
    args.frames, args.rate, args.crop = 16, 5, 160
    assert config.make_schedule(args, 1).lr_scaling == expected


def test_cosine_without_steps_uses_equal_stages():
    s = MultigridSchedule(base_batch=64, base_frames=16, base_crop=224, steps=[0], max_epoch=300, num_devices=8,
                          lr_policy="cosine", warmup_epochs=35)
    assert len(s.phases) == 3 * 4 + 1 and [p.stage for p in s.phases[-2:]] == [2, 3]


def test_step_warmup_ramps_to_the_first_phase():
    s = MultigridSchedule(**KINETICS, warmup_epochs=4.0, warmup_start=0.1)
    assert s.lr(0) == pytest.approx(0.1 * 8) and s.lr(2) == pytest.approx(0.55 * 8) and s.lr(4) == pytest.approx(8)


def test_bad_inputs_raise():
    with pytest.raises(ValueError):
        MultigridSchedule(**{**KINETICS, "steps": [0, 94, 94]})
    with pytest.raises(ValueError):
        MultigridSchedule(**{**KINETICS, "lr_policy": "poly"})
    with pytest.raises(ValueError):
        MultigridBatchSampler(100, MultigridSchedule(**KINETICS), rank=0, world_size=4)


def test_rounding_never_breaks_a_split():
    # 20 per device: 2 splits of 10; 3 per device on 6 devices: SyncBN over 2 devices (a divisor of 6)
    s = MultigridSchedule(base_batch=20, base_frames=32, base_crop=224, steps=[0, 10], max_epoch=20, num_devices=1)
    assert [(sh.per_device_batch, sh.num_splits) for sh in s.phases[-1].shapes] == [(80, 10), (40, 5), (20, 2)]
    s = MultigridSchedule(base_batch=18, base_frames=32, base_crop=224, steps=[0, 10], max_epoch=20, num_devices=6)
    p = s.phases[-1]
    assert (p.per_device_batch, p.bn_kind, p.sync_devices, p.global_batch) == (3, "sync_batchnorm", 2, 18)
    s = MultigridSchedule(base_batch=25, base_frames=32, base_crop=224, steps=[0, 10], max_epoch=20, num_devices=1,
                          long_cycle=False)
    assert (s.phases[0].per_device_batch, s.phases[0].num_splits) == (24, 3)


# --- sampler --------------------------------------------------------------------------------------------------------

def all_ranks(n, sched, epoch, seed=0, drop_last=True):
    out = []
    for rank in range(sched.num_devices):
        sampler = MultigridBatchSampler(n, sched, rank=rank, world_size=sched.num_devices, seed=seed,
                                        drop_last=drop_last)
        sampler.set_epoch(epoch)
        batches = list(sampler)
        assert len(batches) == len(sampler)
        out.append((sampler, batches))
    return out


@pytest.mark.parametrize("long_cycle,short_cycle", list(itertools.product([True, False], repeat=2)))
@pytest.mark.parametrize("epoch", [0, 75, 150])
def test_sampler_shards_and_shapes(long_cycle, short_cycle, epoch):
    sched = MultigridSchedule(**{**KINETICS, "num_devices": 4, "base_batch": 32}, long_cycle=long_cycle,
                              short_cycle=short_cycle)
    n = 5000
    ranks = all_ranks(n, sched, epoch)
    lengths = {len(b) for _, b in ranks}
    assert len(lengths) == 1 and lengths.pop() > 0                          # every rank: same number of batches
    phase = sched.phase(epoch)
    seen = []
    for sampler, batches in ranks:
        for j, batch in enumerate(batches):
            shapes = {(item.frames, item.crop) for item in batch}
            assert len(shapes) == 1                                         # one shape per batch
            frames, crop = shapes.pop()
            want = phase.shapes[j % len(phase.shapes)]                      # short cycle rotates per iteration
            assert (frames, crop, len(batch)) == (phase.frames, want.crop, want.per_device_batch)
            assert all(phase.min_rate <= item.rate <= phase.rate for item in batch)
            assert len({item.splits for item in batch}) == 1 and len(batch) % batch[0].splits == 0
            seen += [item.index for item in batch]
    assert len(seen) == len(set(seen)) and all(0 <= i < n for i in seen)    # disjoint shards of one permutation
    for j in range(len(ranks[0][1])):                                       # ranks agree on every iteration's shape
        assert len({(b[j][0].frames, b[j][0].crop, len(b[j])) for _, b in ranks}) == 1


def test_sampler_draws_each_clips_rate_like_the_released_code():
    # fewer frames than the base: rates uniform in [base rate, base rate * base frames // frames], a pure function
    # of (seed, epoch) and of the clip's place in the global batch, whatever the number of devices
    def rates(world, epoch, seed=0):
        sched = MultigridSchedule(base_batch=16, base_frames=16, base_crop=160, base_rate=4, steps=[0],
                                  max_epoch=10, num_devices=world)
        assert sched.phase(epoch).rate_range == "4-16"                        # 4 frames: up to the base span
        return {item.index: item.rate for _, batches in all_ranks(4096, sched, epoch, seed)
                for b in batches for item in b}
    one, two = rates(1, 0), rates(2, 0)
    assert one == two and len(one) > 3000
    counts = torch.bincount(torch.tensor(list(one.values())), minlength=17)
    assert counts[:4].sum() == 0 and (counts[4:] > 0.8 * len(one) / 13).all()   # all of 4..16, about evenly
    assert one != rates(1, 1) and one != rates(1, 0, seed=1)


def test_sampler_is_deterministic_per_seed_and_epoch():
    sched = MultigridSchedule(**KINETICS)
    a, b = all_ranks(3000, sched, 3), all_ranks(3000, sched, 3)
    assert [x for _, x in a] == [x for _, x in b]
    assert [x for _, x in a] != [x for _, x in all_ranks(3000, sched, 4)]
    assert [x for _, x in a] != [x for _, x in all_ranks(3000, sched, 3, seed=1)]


@pytest.mark.parametrize("world", [1, 3])
def test_sampler_without_cycles_is_plain_distributed_batching(world):
    n, batch, epoch, seed = 1003, 24, 5, 7
    sched = MultigridSchedule(base_batch=batch, base_frames=32, base_crop=224, steps=[0, 10], max_epoch=20,
                              num_devices=world, long_cycle=False, short_cycle=False)
    for rank in range(world):
        ours = MultigridBatchSampler(n, sched, rank=rank, world_size=world, seed=seed)
        ours.set_epoch(epoch)
        dist = DistributedSampler(range(n), num_replicas=world, rank=rank, shuffle=True, seed=seed, drop_last=True)
        dist.set_epoch(epoch)
        plain = list(BatchSampler(dist, batch // world, drop_last=True))
        assert [[item.index for item in b] for b in ours] == plain and len(ours) == len(plain)
        items = [item for b in ours for item in b]
        assert all(item.shape == (32, 2, 224) and item.splits == 1 for item in items)


def test_sampler_without_drop_last_pads_a_full_last_batch():
    sched = MultigridSchedule(**{**KINETICS, "num_devices": 2, "base_batch": 16})
    ranks = all_ranks(1001, sched, 0, drop_last=False)
    seen = {item.index for _, batches in ranks for b in batches for item in b}
    assert seen == set(range(1001))                                         # nothing dropped
    assert len({len(b) for _, b in ranks}) == 1


# --- command line ---------------------------------------------------------------------------------------------------

def test_cli_subprocess():
    out = subprocess.run([sys.executable, "multigrid.py", "--steps", "0", "94", "154", "196", "--max-epoch", "239",
                          "--base-batch", "64", "--frames", "32", "--crop", "224", "--devices", "8"],
                         cwd=REPO, capture_output=True, text=True, check=True, timeout=120).stdout
    assert "358 epochs" in out and "phase" in out and "112:128 158:64 158:64" in out and "0.01 -> 0.001" in out


def test_cli_options(capsys):
    main(["--no-long-cycle", "--no-short-cycle", "--lr-policy", "cosine", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["max_epoch"] == 239 and out["steps"] == [0, 94, 154, 196]
    main(["--no-short-cycle", "--lr-policy", "cosine", "--warmup-epochs", "10"])
    assert "cosine LR, long cycle," in capsys.readouterr().out
    main(["--no-long-cycle", "--devices", "1", "--base-batch", "8"])
    assert "short cycle, 1 device" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--max-epoch", "60"], "the default --steps 0 94 154 196 (the Kinetics recipe's) pass --max-epoch 60: give "
                            "--steps too, e.g. --steps 0"),
    (["--steps", "0", "30", "20", "--max-epoch", "60"], "steps must increase from 0 and stay <= max_epoch (60), "
                                                        "got [0, 30, 20]"),
])
def test_cli_bad_schedule_is_one_error_line_not_a_traceback(argv, message):
    result = subprocess.run([sys.executable, "multigrid.py", *argv], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1] == f"multigrid.py: error: {message}"


def test_sampler_length_is_the_number_of_batches_it_yields():
    """len() counts whole short-cycle rotations arithmetically (the batch plan asks it for every phase of every
    candidate batch on data sets of 10^5 videos): the same count as walking the batches."""
    import random
    rng = random.Random(0)
    for _ in range(200):
        schedule = MultigridSchedule(base_batch=rng.choice([1, 2, 3, 8, 64]), base_frames=rng.choice([4, 8, 13, 16]),
                                     base_crop=rng.choice([32, 40, 160, 224]), base_rate=4,
                                     max_epoch=rng.choice([2, 10, 60]), num_devices=rng.choice([1, 2, 3, 8]),
                                     long_cycle=rng.random() < 0.7, short_cycle=rng.random() < 0.7)
        sampler = MultigridBatchSampler(rng.randint(1, 5000), schedule, world_size=schedule.num_devices)
        for phase in schedule.phases:
            sampler.set_epoch(phase.start_epoch)
            assert len(sampler) == len(list(sampler))
