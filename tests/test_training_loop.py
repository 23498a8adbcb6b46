"""The training loop's plumbing: the loader's batch stream, one pass for the whole run (engine.RunBatches), each
item's randomness from (seed, epoch, index) alone (engine.SeededClips), the start-up choice of memory format, and
the plot drawn out of the training process."""
import json
import os
import time
from types import SimpleNamespace

import torch

import engine
import training_plot
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
    assert list(engine.RunBatches(sampler, 0)) == [b for batches in reference for b in batches]
    assert sampler.epoch == 2
    resumed = list(engine.RunBatches(sampler, 1, skip=3))
    assert resumed == reference[1][3:] + [b for batches in reference[2:] for b in batches]
    capped = list(engine.RunBatches(sampler, 0, max_steps=2))
    assert capped == [b for batches in reference for b in batches[:2]]


class Draws(torch.utils.data.Dataset):
    def __len__(self):
        return 10

    def __getitem__(self, item):
        return torch.rand(3)


def test_seeded_clips_draw_what_torch_manual_seed_would():
    """The CPU generator is seeded alone (torch.manual_seed also queues seeds for other devices, slowly); the draws
    are those of torch.manual_seed with the same number, and the global RNG is left as it was."""
    clips = engine.SeededClips(Draws(), seed=5)
    torch.manual_seed(123)
    before = torch.get_rng_state()
    got = clips[ClipRequest(4, 8, 4, 32, epoch=7)]
    assert torch.equal(torch.get_rng_state(), before)
    torch.manual_seed(hash((5, 7, 4)) % 2 ** 63)
    assert torch.equal(got, torch.rand(3))
    assert not torch.equal(got, clips[ClipRequest(4, 8, 4, 32, epoch=8)])             # another epoch, another clip


def test_fastest_memory_format_times_both_layouts_on_a_copy():
    """The start-up choice of layout (used on accelerators; run here on the CPU): both layouts are timed on a copy,
    so the model's weights, BN statistics and layout are as they were."""
    import x3d
    model = x3d.generate_model("XS", n_classes=4, frames=4, train_crop=32)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    args = engine.build_parser(engine.Task()).parse_args([])
    name = engine.fastest_memory_format(model, (2, 3, 4, 32, 32), torch.device("cpu"), args, steps=1)
    assert name in engine.MEMORY_FORMATS
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert model.stem.conv_xy.weight.is_contiguous(memory_format=torch.channels_last_3d)
    assert all(p.grad is None for p in model.parameters())


def test_training_plot_draws_in_a_low_priority_child_and_never_blocks_training(tmp_path, monkeypatch):
    log = engine.RunLog(str(tmp_path), SimpleNamespace(), enabled=True)
    for step in range(1, 6):
        log.write(kind="step", step=step, epoch=step / 5, loss=2.0 / step, lr=0.1, batch=8, frames=4, crop=32,
                  clips_per_s=10.0, step_seconds=0.1, data_wait=0.0)
    log.write(kind="epoch", epoch=1, train_acc=50.0, val_top1=40.0)
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"kind": "step", "st')                        # a line cut short by a kill is left out, not fatal
    log.plot()                                      # within PLOT_INTERVAL_S of the start: the first epochs run alone
    assert log._drawing is None
    monkeypatch.setattr(engine, "PLOT_INTERVAL_S", 0.0)
    log.plot()
    child = log._drawing
    assert child is not None and child.pid != os.getpid()
    monkeypatch.setattr(engine, "PLOT_INTERVAL_S", 30.0)
    niceness, deadline = None, time.monotonic() + 10
    while child.poll() is None and time.monotonic() < deadline:   # it lowers its priority first, then imports
        with open(f"/proc/{child.pid}/stat") as f:
            niceness = int(f.read().rsplit(")", 1)[1].split()[16])
        if niceness > os.nice(0):
            break
    log.plot()                                                  # within PLOT_INTERVAL_S: returns at once
    assert log._drawing is child
    monkeypatch.setattr(engine, "PLOT_INTERVAL_S", 0.0)
    start = time.monotonic()
    if child.poll() is None:
        log.plot()                                              # the previous drawing still runs: skipped, no wait
        assert log._drawing is child and time.monotonic() - start < 0.5
    log.plot(force=True)                                        # the run's end: waits for it, then draws again
    log.wait()
    assert child.returncode == 0 and (tmp_path / "training.png").stat().st_size > 10000
    # seen while it drew: importing matplotlib alone takes tenths of a second
    assert niceness == min(os.nice(0) + training_plot.NICENESS, 19)
    assert not [p for p in os.listdir(tmp_path) if ".tmp" in p]
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["step"] == 1
