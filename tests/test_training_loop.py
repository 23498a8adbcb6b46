"""The training loop's plumbing: the loader's batch stream, one pass for the whole run (loader.RunBatches), each
item's randomness from (seed, epoch, index) alone (loader.SeededClips) and its batch's BN split count carried to the
loop, the start-up choice of memory format at the run's first shapes, and the plot drawn out of the training
process."""
import json
import math
import os
import time
from types import SimpleNamespace

import pytest
import torch

import config
import launch
import layers
import loader
import runlog
import x3d
from multigrid import ClipRequest, MultigridBatchSampler, MultigridSchedule


def small_schedule():
    return MultigridSchedule(base_batch=4, base_frames=8, base_crop=32, base_rate=4, max_epoch=4, steps=[0])


def per_epoch_batches(schedule, num_samples, epochs):
    """What a fresh sampler gives epoch by epoch: the reference the run-long stream must equal."""
    sampler = MultigridBatchSampler(num_samples, schedule)
    out = []
    for epoch in epochs:
        sampler.set_epoch(epoch)
        out.append(list(sampler))
    return out


def test_run_batches_are_every_epochs_batches_in_order_and_resume_mid_epoch():
    schedule = small_schedule()
    epochs = range(schedule.max_epoch)
    reference = per_epoch_batches(schedule, 200, epochs)
    assert len({len(batches) for batches in reference}) > 1           # the phases differ in batches per epoch
    sampler = MultigridBatchSampler(200, schedule)
    sampler.set_epoch(2)                                               # the training loop's own epoch, untouched
    assert list(loader.RunBatches(sampler, 0)) == [b for batches in reference for b in batches]
    assert sampler.epoch == 2
    resumed = list(loader.RunBatches(sampler, 1, skip=3))
    assert resumed == reference[1][3:] + [b for batches in reference[2:] for b in batches]
    capped = list(loader.RunBatches(sampler, 0, max_steps=2))
    assert capped == [b for batches in reference for b in batches[:2]]


class Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, item):
        return {"x": torch.rand(3)}


def test_seeded_clips_draw_what_torch_manual_seed_would():
    """The CPU generator is seeded alone (torch.manual_seed also queues seeds for other devices, slowly); the draws
    are those of torch.manual_seed with the same number, and the global RNG is left as it was."""
    clips = loader.SeededClips(Draws(), seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    got = clips[ClipRequest(4, 8, 4, 32, epoch=7, splits=2)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(hash((5, 7, 4)) % 2 ** 63)
    assert torch.equal(got["x"], torch.rand(3)) and got["bn_splits"] == 2
    assert not torch.equal(got["x"], clips[ClipRequest(4, 8, 4, 32, epoch=8)]["x"])   # another epoch, another clip


def test_the_loader_carries_each_batchs_bn_split_count_as_the_schedule_made_it():
    """The split count is computed once, by the schedule, and reaches the loop with the batch (a Python int: no
    wait to read it), where it was computed again from the tensor's shape by a second sampler."""
    schedule = MultigridSchedule(base_batch=8, base_frames=8, base_crop=32, base_rate=4, max_epoch=4, steps=[0])
    sampler = MultigridBatchSampler(300, schedule)
    args = SimpleNamespace(workers=0, seed=0)
    batches = loader.make_loader(loader.SeededClips(Draws300(), 0), loader.RunBatches(sampler, 0), args,
                                SimpleNamespace(device=torch.device("cpu")))
    seen = set()
    for batch, requests in zip(batches, loader.RunBatches(sampler, 0)):
        assert isinstance(batch["bn_splits"], int) and batch["bn_splits"] == requests[0].splits
        assert batch["x"].shape[0] % batch["bn_splits"] == 0
        seen.add((batch["x"].shape[0], batch["bn_splits"]))
    assert {splits for _, splits in seen} > {1}                  # the coarse shapes' batches use several splits


class Draws300(Draws):
    def __len__(self):
        return 300


class SplitsSeen(torch.nn.Module):
    """Records (input shape, BN split count, memory format) of each training forward of `model`; fails in one
    layout, as a layout can on an accelerator (out of memory, an op the backend lacks)."""

    def __init__(self, model, failing_layout=None):
        super().__init__()
        self.model, self.failing_layout, self.seen = model, failing_layout, []

    def forward(self, x):
        bn = next(m for m in self.model.modules() if isinstance(m, layers.SubBatchNorm3d))
        layout = "channels_last" if x.is_contiguous(memory_format=torch.channels_last_3d) else "contiguous"
        self.seen.append((tuple(x.shape), bn.num_splits, layout))
        if layout == self.failing_layout:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 9.00 GiB")
        return self.model(x)


def test_memory_format_trial_times_the_first_phases_shapes_with_their_splits_and_survives_a_failing_layout():
    """The trial timed the base shape with one BN split while training starts at the coarse shapes with split BN;
    a layout that raised ended the run. Here: every shape of the phase, each with its split count, in both
    layouts, on a copy (the model's weights, statistics and layout stay); the failing layout loses."""
    model = x3d.generate_model("XS", n_classes=4, frames=4, train_crop=32)
    schedule = MultigridSchedule(base_batch=4, base_frames=4, base_crop=32, base_rate=4, max_epoch=4, steps=[0])
    phase = schedule.phase(0)
    shapes = [(shape.per_device_batch, phase.frames, shape.crop, shape.num_splits) for shape in phase.shapes]
    assert len(shapes) == 3 and max(splits for *_, splits in shapes) > 1
    before = {k: v.clone() for k, v in model.state_dict().items()}
    wrapped = SplitsSeen(model, failing_layout="channels_last")
    with pytest.warns(UserWarning, match="memory format channels_last failed on cpu: OutOfMemoryError"):
        seconds = launch.time_layouts(wrapped, shapes, torch.device("cpu"), "none", steps=1)
    assert math.isinf(seconds["channels_last"]) and math.isfinite(seconds["contiguous"])
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.stem.conv_xy.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert all(p.grad is None for p in model.parameters())


def test_memory_format_trial_records_what_it_timed():
    model = x3d.generate_model("XS", n_classes=4, frames=4, train_crop=32)
    shapes = [(8, 1, 16, 2), (4, 1, 23, 1)]
    trial = SplitsSeen(model)
    for shape in shapes:
        launch.time_training_steps(trial, torch.contiguous_format, shape, torch.device("cpu"), "bf16", steps=1)
    assert {(seen[0][0], seen[0][3], seen[1]) for seen in trial.seen} == {(8, 16, 2), (4, 23, 1)}
    assert {seen[2] for seen in trial.seen} == {"contiguous"}


def test_no_layout_trial_for_a_test_or_on_the_cpu(monkeypatch):
    monkeypatch.setattr(launch, "time_layouts", lambda *a, **k: pytest.fail("a trial ran"))
    args = SimpleNamespace(memory_format="auto", amp="none")
    phase = MultigridSchedule(base_batch=4, base_frames=4, base_crop=32, base_rate=4, max_epoch=4).phase(0)
    accelerator = SimpleNamespace(device=torch.device("meta"), rank0=True)      # any device but the CPU
    assert launch.choose_memory_format(None, None, args, accelerator) == torch.channels_last_3d   # --test-only
    cpu = SimpleNamespace(device=torch.device("cpu"), rank0=True)
    assert launch.choose_memory_format(None, phase, args, cpu) == torch.channels_last_3d
    monkeypatch.setattr(launch, "time_layouts", lambda *a, **k: {"channels_last": math.inf, "contiguous": math.inf})
    with pytest.raises(config.UsageError, match="neither layout trains phase 0.*lower --batch-size"):
        launch.choose_memory_format(None, phase, args, accelerator)


def test_training_plot_draws_in_a_low_priority_child_and_never_blocks_training(tmp_path, monkeypatch):
    log = runlog.RunLog(str(tmp_path), SimpleNamespace(), enabled=True)
    for step in range(1, 6):
        log.write(kind="step", step=step, epoch=step / 5, loss=2.0 / step, lr=0.1, batch=8, frames=4, crop=32,
                  clips_per_s=10.0, step_seconds=0.1, data_wait=0.0)
    log.write(kind="epoch", epoch=1, train_acc=50.0, val_top1=40.0)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "st')                        # a line cut short by a kill is left out, not fatal
    log.plot()                                      # within PLOT_INTERVAL_S of the start: the first epochs run alone
    assert log._drawing is None
    monkeypatch.setattr(runlog, "PLOT_INTERVAL_S", 0.0)
    log.plot()
    child = log._drawing
    assert child is not None and child.pid != os.getpid()
    monkeypatch.setattr(runlog, "PLOT_INTERVAL_S", 30.0)
    niceness, deadline = None, time.monotonic() + 10
    while child.poll() is None and time.monotonic() < deadline:   # it lowers its priority first, then imports
        with open(f"/proc/{child.pid}/stat") as f:
            niceness = int(f.read().rsplit(")", 1)[1].split()[16])
        if niceness > os.nice(0):
            break
    log.plot()                                                  # within PLOT_INTERVAL_S: returns at once
    assert log._drawing is child
    monkeypatch.setattr(runlog, "PLOT_INTERVAL_S", 0.0)
    start = time.monotonic()
    if child.poll() is None:
        log.plot()                                              # the previous drawing still runs: skipped, no wait
        assert log._drawing is child and time.monotonic() - start < 0.5
    log.plot(force=True)                                        # the run's end: waits for it, then draws again
    log.wait()
    assert child.returncode == 0 and (tmp_path / "training.png").stat().st_size > 10000
    # seen while it drew: importing matplotlib alone takes tenths of a second
    assert niceness == min(os.nice(0) + runlog.NICENESS, 19)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
