"""The training loop's plumbing: the loader's batch stream, one pass for the whole run (engine.RunBatches), each
item's randomness from (seed, epoch, index) alone (engine.SeededClips), and the start-up choice of memory format."""

import torch

import engine
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
