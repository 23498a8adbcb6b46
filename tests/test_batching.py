"""The run's batch (batching.py): the memory estimate against what autograd really keeps, the README's GPU lines on
an 80 GB card, the recipe's batch capped by memory and by the data, a given batch checked, the LR that follows, and
the warm-up and LR steps fitted to the run's epochs (config.fit_schedule)."""
import re
import shlex

import pytest
import torch

import batching
import config
import x3d
from conftest import REPO
from train_x3d_charades import CharadesTask
from train_x3d_kinetics_multigrid import KineticsTask

MIB, GIB = 2 ** 20, 2 ** 30
CARD_80GB_FREE = 79 * GIB          # what an 80 GB card has free once a CUDA context holds its share
KINETICS_TRAIN_VIDEOS = 234_619
CHARADES_TRAIN_VIDEOS = 7_985


def real_kept_bytes(model, x):
    """What autograd keeps for the backward of a real CPU forward, each storage once, weights left out."""
    own = {p.untyped_storage().data_ptr() for p in model.parameters()}
    kept = {}

    def pack(tensor):
        if tensor.untyped_storage().data_ptr() not in own:
            kept[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        model.train()(x)
    return sum(kept.values())


@pytest.mark.parametrize("amp", ["none", "bf16"])
def test_the_meta_estimate_keeps_what_a_real_forward_keeps(amp):
    """Per clip (what 4 clips keep beyond 2: autocast's half copies of the weights are the same for any batch), the
    meta device's count with the batch norms stood in for, against real tensors on the CPU: within 3%."""
    torch.manual_seed(0)
    model = x3d.generate_model("XS", n_classes=5, frames=4, train_crop=48)
    with torch.device("meta"):
        meta = x3d.generate_model("XS", n_classes=5, frames=4, train_crop=48)
    dtype = batching.AMP_DTYPES.get(amp, torch.float32)
    meta = batching._with_stand_in_batch_norms(meta).to(dtype)
    own = {p.untyped_storage()._cdata for p in meta.parameters()}
    real, estimated = [], []
    for batch in (2, 4):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp == "bf16"):
            real.append(real_kept_bytes(model, torch.randn(batch, 3, 4, 48, 48)))
        estimated.append(batching._kept_bytes(meta, (batch, 3, 4, 48, 48), dtype, own)[0])
    per_clip_real, per_clip_estimated = (real[1] - real[0]) / 2, (estimated[1] - estimated[0]) / 2
    assert abs(per_clip_estimated - per_clip_real) / per_clip_real < 0.03, (per_clip_estimated, per_clip_real)


def test_x3d_m_per_clip_memory_is_the_measured_one():
    """X3D-M at 16 x 224 keeps 804 MiB a clip in float32 and 407 MiB in bf16 by a saved-tensor hook on real
    tensors: at the recipe's 256 clips on one device, 141 GiB in bf16 (more than an 80 GB card)."""
    with torch.device("meta"):
        model = x3d.generate_model("M")
    for amp, measured in (("none", 804), ("bf16", 407)):
        with torch.device("meta"):
            model = x3d.generate_model("M")
        estimate = batching.estimate_memory(model, [(16, 224)], amp, "sgd")
        kept = estimate.per_clip[(16, 224)] - 3 * 16 * 224 * 224 * batching.INPUT_BYTES_PER_VALUE
        assert measured * 0.97 < kept / MIB < measured * 1.2, (amp, kept / MIB)
    assert estimate.peak(256, 16, 224) > CARD_80GB_FREE


def readme_gpu_lines():
    """The README's training command lines that name GPUs or NPUs."""
    text = (REPO / "README.md").read_text()
    return [line.split("#")[0].strip() for line in text.splitlines()
            if line.startswith("python train_x3d_") and re.search(r" -[gn]pu ", line)]


def plan_for_line(line, free):
    words = shlex.split(line)
    script, argv = words[1], words[2:]
    if "--finetune" in argv:                    # foreign weights (the authors'): they do not change the recipe
        del argv[argv.index("--finetune"):argv.index("--finetune") + 2]
    task = CharadesTask() if "charades" in script else KineticsTask()
    args, _ = config.resolve(task, argv)
    ids = (args.gpu or args.npu).split(",")
    videos = CHARADES_TRAIN_VIDEOS if "charades" in script else KINETICS_TRAIN_VIDEOS
    return batching.plan_run(args, len(ids), videos, free, task.model_task, "cuda:0"), args


def test_every_readme_gpu_line_fits_an_80gb_card_by_the_estimate():
    lines = readme_gpu_lines()
    assert len(lines) >= 3, lines
    for line in lines:
        (plan, lr, stated), args = plan_for_line(line, CARD_80GB_FREE)
        assert plan.peak <= batching.MEMORY_SHARE * CARD_80GB_FREE, line
        assert plan.fewest[1] >= batching.MIN_STEPS_PER_EPOCH, line
        if "--version M -gpu 0 " in line + " ":          # one GPU at the recipe's 256 clips does not fit
            assert plan.batch == 128 and lr == pytest.approx(args.lr / 2) and "memory" in plan.why, line
        if "kinetics" in line and "-gpu 0,1,2,3,4,5,6,7" in line:     # 32 a GPU: the recipe as it is
            assert plan.batch == 256 and lr == args.lr and plan.why == "the recipe's", line


XS_TWO_EPOCHS = ["--data", "x", "--version", "XS", "--epochs", "2"]     # the README's fine-tune line's schedule


def tiny_schedule_for(batch):
    args, _ = config.resolve(KineticsTask(), XS_TWO_EPOCHS)
    return config.make_schedule(args, 1, batch)


def xs_memory():
    with torch.device("meta"):
        model = x3d.generate_model("XS", n_classes=4)
    shapes = [(t, s) for _, t, s, _ in batching.schedule_shapes(tiny_schedule_for(256))]
    return batching.estimate_memory(model, shapes, "none", "sgd")


def test_the_recipes_batch_is_halved_until_every_phase_has_several_steps_on_a_small_data_set():
    """200 videos at the recipe's 256 clips: multigrid's coarse phases take 4096 clips a step, so no epoch had a
    single step. The plan halves to the largest batch whose every phase makes MIN_STEPS_PER_EPOCH steps."""
    plan = batching.plan_batch(256, None, 1, 200, tiny_schedule_for, xs_memory(), None, "cpu")
    assert plan.fewest[1] >= batching.MIN_STEPS_PER_EPOCH and "steps an epoch" in plan.why
    bigger = batching.consider(plan.batch * 2, tiny_schedule_for(plan.batch * 2), 200, xs_memory(), None)
    assert bigger.fewest[1] < batching.MIN_STEPS_PER_EPOCH
    assert plan.total_steps() == sum(phase.epochs * steps for phase, steps in plan.phase_steps) > 0


def test_the_recipes_batch_is_halved_to_fit_the_devices_memory():
    memory = xs_memory()
    full = batching.consider(256, tiny_schedule_for(256), 10 ** 6, memory, None)
    free = int(full.peak / batching.MEMORY_SHARE / 3)                 # room for about a third of it
    plan = batching.plan_batch(256, None, 1, 10 ** 6, tiny_schedule_for, memory, free, "cuda:0")
    assert plan.batch == 64 and plan.peak <= batching.MEMORY_SHARE * free and "memory" in plan.why


def test_a_given_batch_is_kept_or_refused_in_one_line():
    memory = xs_memory()
    plan = batching.plan_batch(256, 16, 1, 10 ** 6, tiny_schedule_for, memory, None, "cpu")
    assert plan.batch == 16 and plan.why == "as given"
    free = int(batching.consider(64, tiny_schedule_for(64), 10 ** 6, memory, None).peak / batching.MEMORY_SHARE)
    with pytest.raises(config.UsageError, match=r"estimated peak of .* GiB per device at --batch-size 256 .* "
                                                r"free on cuda:0: lower --batch-size \(at most 64 fits\)"):
        batching.plan_batch(256, 256, 1, 10 ** 6, tiny_schedule_for, memory, free, "cuda:0")
    with pytest.raises(config.UsageError, match=r"phase \d+ .* makes no step an epoch: .* the training set has "
                                                r"200; lower --batch-size \(at most 8 gives every phase a step\)"):
        batching.plan_batch(256, 64, 1, 200, tiny_schedule_for, memory, None, "cpu")


def test_the_lr_follows_the_batch_by_the_schedules_rule():
    assert batching.scaled_lr(0.4, 256, 64, "linear") == pytest.approx(0.1)
    assert batching.scaled_lr(0.004, 256, 64, "sqrt") == pytest.approx(0.002)
    args, _ = config.resolve(KineticsTask(), ["--data", "x", "--batch-size", "64"])
    assert batching.plan_run(args, 1, 10 ** 6, None, "class", "cpu")[1:] == (pytest.approx(0.1), 256)
    args, _ = config.resolve(KineticsTask(), ["--data", "x", "--batch-size", "64", "--lr", "0.3"])
    assert batching.plan_run(args, 1, 10 ** 6, None, "class", "cpu")[1:] == (0.3, 64)    # both given: as is


def test_a_recipes_warmup_and_lr_steps_are_fitted_to_a_short_run(capsys):
    """35 of 300 warm-up epochs inside a 2-epoch run (3 multigrid epochs) left the whole run warming up."""
    args, _ = config.resolve(KineticsTask(), ["--data", "x", "--epochs", "2"])
    assert args.warmup_epochs == pytest.approx(35 * 2 / 300)
    assert "warm-up: the recipe's 35 of 300 epochs, scaled to this run's 2: 0.233" in capsys.readouterr().out
    args, _ = config.resolve(KineticsTask(), ["--data", "x", "--epochs", "200"])
    assert args.warmup_epochs == 35                                   # fits: the recipe's own
    with pytest.raises(config.UsageError, match="--warmup-epochs 10 is the whole run: the schedule has 3 epochs"):
        config.resolve(KineticsTask(), ["--data", "x", "--epochs", "2", "--warmup-epochs", "10"])
    args, _ = config.resolve(CharadesTask(), ["--data", "x", "--epochs", "19"])
    assert args.steps == [0, 14, 16]                                  # the recipe's 0 41 49 of 57 epochs
    with pytest.raises(config.UsageError, match="--steps 0 30: the last LR stage starts after the run's 19 epochs"):
        config.resolve(CharadesTask(), ["--data", "x", "--epochs", "19", "--steps", "0", "30"])


def test_a_phase_with_few_steps_an_epoch_is_warned_of():
    memory = xs_memory()
    few = batching.plan_batch(256, 8, 1, 200, tiny_schedule_for, memory, None, "cpu")
    phase, steps = few.fewest
    assert 0 < steps < batching.MIN_STEPS_PER_EPOCH
    assert batching.few_steps_warning(few).startswith(f"phase {phase.index} makes {steps} step(s) an epoch")
    assert batching.few_steps_warning(batching.plan_batch(256, 2, 1, 200, tiny_schedule_for, memory, None,
                                                          "cpu")) is None


def test_help_shows_every_default_as_its_value(capsys):
    """The flags' defaults are swapped for a marker only in the second parse; --help shows the real ones."""
    with pytest.raises(SystemExit):
        config.resolve(KineticsTask(), ["--help"])
    shown = capsys.readouterr().out
    assert "object at" not in shown
    for flag, default in (("--epochs", "300"), ("--batch-size", "256"), ("--optimizer", "sgd"), ("--seed", "0")):
        assert re.search(re.escape(flag) + r"[^-]*?\(default: " + re.escape(default) + r"\)", shown, re.S), flag
    args, _ = config.resolve(KineticsTask(), ["--data", "x", "--epochs", "300"])
    assert "epochs" in args.given_flags and "seed" not in args.given_flags      # given at its default: still given
