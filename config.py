"""The run's configuration: its flags, and one `resolve` that layers them, each layer over the ones before:

    defaults  <  the task's defaults  <  the demo (no --data)  <  the fine-tune checkpoint's recipe
              <  the resumed run's saved arguments  <  the command line

then fills in what the layers leave open: the clip recipe (frames, rate, crops, jitter), the test views, the run's
name, and a warm-up or LR steps fitted to the run's epochs. What the layers below the command line give is the
run's recipe (args.recipe): the batch its LR is stated for and the epochs its warm-up is a share of. The batch
itself is decided once the data and the devices are known (batching.py).
"""
import argparse
import contextlib
import datetime
import glob
import os
import sys

from checkpoints import CheckpointError, read_checkpoint
from multigrid import LR_SCALINGS, MultigridSchedule
from archs import ARCHS, checkpoint_recipe, choose_recipe, default_recipe
from metrics import parse_views
from recipe import I3D_ARCH, resolve_recipe
MEMORY_FORMATS = ("channels_last", "contiguous")
PRECISE_BN_BATCHES = 200
# what a resumed run does not take from its checkpoint: this invocation's own requests, derived values, and the
# machine's own settings
NOT_RESTORED = ("resume", "finetune", "test_only", "given_flags", "temporal_views", "spatial_crops", "run_name",
                "workers")
FIXED_ON_RESUME = ("arch", "version")              # flags that decide the model's shape: a resumed run keeps them
DECIDED_AT_START = ("batch_size", "lr", "warmup_epochs", "steps")   # a resumed run keeps what its start decided
RECIPE_FLAGS = {"frames": "frames", "rate": "rate", "crop": "train_crop", "test_crop": "test_crop",
                "jitter": "jitter"}   # flag -> ClipRecipe field
RECIPE_KEYS = ("batch_size", "lr", "epochs", "warmup_epochs", "steps")
WARMUP_MAX_SHARE = 0.5      # a recipe's warm-up longer than this share of the run is scaled to the run


class UsageError(Exception):
    """A problem with what the user gave (data, checkpoint, flags, a batch the devices cannot hold): one
    `error: ...` line and exit status 1, no traceback. Anything else keeps its traceback."""


@contextlib.contextmanager
def user_input():
    """Errors raised while reading the user's data and checkpoints are theirs to fix: report them as UsageError."""
    try:
        yield
    except (ValueError, OSError, CheckpointError) as error:
        raise UsageError(str(error)) from None


def say(message):
    """Print once per job: in the launching process or on global rank 0 under torchrun."""
    if int(os.environ.get("RANK", "0")) == 0:
        print(message)


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Each flag's default, where it has one its help does not already tell."""
    def _get_help_string(self, action):
        if action.default is None or "default" in (action.help or ""):
            return action.help
        return super()._get_help_string(action)


def build_parser(task):
    p = argparse.ArgumentParser(description=(sys.modules["__main__"].__doc__ or "").split("\n\n")[0],
                                formatter_class=HelpFormatter)
    p.add_argument("-gpu", "--gpu", default=None, help="CUDA devices, e.g. 0,1,2,3: one process each (DDP)")
    p.add_argument("-npu", "--npu", default=None, help="Ascend NPUs, e.g. 0,1 (needs torch_npu; hccl backend)")
    p.add_argument("--nproc", type=int, default=1, help="CPU processes (gloo DDP) when no -gpu/-npu is given")
    p.add_argument("--arch", choices=ARCHS, default="x3d", help="model family")
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
    p.add_argument("--batch-size", type=int, default=256,
                   help="global batch at the base shape (all devices); not given: this one, halved until it fits "
                        "the devices' memory and every phase has several steps an epoch on the data")
    p.add_argument("--lr", type=float, default=0.4,
                   help="LR at the recipe's --batch-size; it follows the batch (linear for sgd, sqrt for adamw) "
                        "unless --lr and --batch-size are both given")
    p.add_argument("--lr-policy", choices=("step", "cosine"), default="cosine", help="after the warm-up")
    p.add_argument("--steps", type=int, nargs="*", default=[], help="LR stage boundaries in epochs, e.g. 0 94 154 196")
    p.add_argument("--gamma", type=float, default=0.1, help="step policy decay")
    p.add_argument("--warmup-epochs", type=float, default=35.0,
                   help="in epochs of the schedule; the recipe's, where longer than half the run, is scaled to it")
    p.add_argument("--warmup-start", type=float, default=0.025, help="warm-up start LR relative to --lr")
    p.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd",
                   help="sgd: Nesterov momentum, the X3D recipe; adamw: converges in fewer steps on small data "
                        "(multigrid then scales the LR by the square root of the relative batch)")
    p.add_argument("--lr-scaling", choices=("auto",) + LR_SCALINGS, default="auto",
                   help="how the LR follows the batch (the relative batch of multigrid's phases, and a batch other "
                        "than the LR's own); auto: linear for sgd, sqrt for adamw")
    p.add_argument("--momentum", type=float, default=0.9, help="SGD momentum")
    p.add_argument("--weight-decay", type=float, default=5e-5, help="not applied to BN parameters")
    p.add_argument("--dropout", type=float, default=0.5, help="before the classifier")
    p.add_argument("--long-cycle", action=argparse.BooleanOptionalAction, default=True,
                   help="multigrid's coarse-to-fine phases of (batch, frames, crop)")
    p.add_argument("--short-cycle", action=argparse.BooleanOptionalAction, default=True,
                   help="multigrid's rotation of crops from step to step")
    p.add_argument("--workers", type=int, default=None,
                   help="data loading processes per device (default: the machine's cores per device process, at "
                        "most 8)")
    p.add_argument("--amp", choices=("none", "bf16", "fp16"), default="none", help="autocast dtype")
    p.add_argument("--compile", action="store_true", help="torch.compile the model")
    p.add_argument("--memory-format", choices=("auto",) + MEMORY_FORMATS, default="auto",
                   help="activation layout; auto: channels_last on the CPU, on accelerators the faster of the two "
                        "in a few timed training steps at the first shapes")
    p.add_argument("--shifted-depthwise", action="store_true",
                   help="depthwise convs from ordinary ops (backends without grouped Conv3d, e.g. older Ascend)")
    add_run_flags(p)
    task.add_arguments(p)
    p.set_defaults(**task.defaults)
    return p


def add_run_flags(p):
    """Where the run writes, what it continues or only tests, how often it evaluates and saves."""
    p.add_argument("--output", default="models", help="checkpoints go to OUTPUT/<run>/")
    # --log-dir, not --logs alone: torchrun's parser reads its own abbreviations in the script's arguments too, and
    # --logs is ambiguous there (--logs-specs / --logs_specs); --logs stays for plain runs
    p.add_argument("--log-dir", "--logs", dest="logs", default="logs", help="logs and plots go to LOG_DIR/<run>/")
    p.add_argument("--run-name", default=None,
                   help="folder name under OUTPUT and LOG_DIR (default: <task>_<version>_<time>)")
    p.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="checkpoint to continue with its saved arguments (no value: OUTPUT/RUN_NAME/last.pt, or the "
                        "newest last.pt of this task); flags given now override the saved ones")
    p.add_argument("--finetune", default=None, help="initial weights, any format load_pretrained reads")
    p.add_argument("--test-only", action="store_true", help="evaluate --finetune/--resume weights and exit")
    p.add_argument("--test-views", default="10x3", help="temporal x spatial views of the final test")
    p.add_argument("--eval-every", type=int, default=1, help="epochs between clip-level evaluations")
    p.add_argument("--eval-batch-size", type=int, default=None, help="per device (default: the train batch)")
    p.add_argument("--precise-bn-batches", type=int, default=PRECISE_BN_BATCHES,
                   help="training batches that recompute BN statistics before each evaluation")
    p.add_argument("--max-steps", type=int, default=None, help="stop each epoch after this many steps (smoke tests)")
    p.add_argument("--seed", type=int, default=0, help="every clip's randomness is a function of (seed, epoch, video)")
    p.add_argument("--deterministic", action="store_true", help="deterministic algorithms (exact resume)")
    p.add_argument("--checkpoint-minutes", type=float, default=None,
                   help="also write last.pt every N minutes inside an epoch (resuming from it is exact)")
    p.add_argument("--tensorboard", action="store_true",
                   help="also log the metrics and the shape schedule for TensorBoard (LOGS/<run>/tensorboard/)")


def parse(parser, argv=None):
    """-> (the defaults, as a dict; the flags given on the command line, dest -> value). The second parse, every
    default a marker, names what was given: a flag given with its default's value still counts as given."""
    parser.parse_args(argv)                             # errors and --help here, with the real defaults
    defaults = {action.dest: parser.get_default(action.dest) for action in parser._actions if action.dest != "help"}
    not_given = object()                  # not a str: argparse would run a str default through the flag's type
    parser.set_defaults(**{dest: not_given for dest in defaults})
    given = {k: v for k, v in vars(parser.parse_args(argv)).items() if v is not not_given}
    parser.set_defaults(**defaults)
    return defaults, given


def resolve(task, argv=None):
    """The run's arguments, layered as the module docstring says -> (args, the resumed checkpoint or None)."""
    parser = build_parser(task)
    values, given = parse(parser, argv)
    args = argparse.Namespace(**{**values, **given})
    checkpoint = None
    if args.resume:
        checkpoint = read_resumed(task, args)
        given["resume"] = args.resume                    # a bare --resume: the checkpoint it found
        values.update(resumed_layer(checkpoint, args, given))
    else:
        if args.data is None:
            say(f"no --data: using the built-in synthetic data set ({task.demo_data_root})")
            values.update(task.demo, data=task.demo_data())
        if args.finetune:
            values.update(finetune_layer(args.finetune, args, given))
    args = argparse.Namespace(**{**values, **given})
    args.recipe = {key: values[key] for key in RECIPE_KEYS}
    args.given_flags = sorted(set(given) | (set(DECIDED_AT_START) if checkpoint is not None else set()))
    fill_in(task, args)
    return args, checkpoint


def read_resumed(task, args):
    """The --resume checkpoint (bare --resume: the newest of this task, or of --run-name), read once."""
    if args.resume == "latest":
        args.resume = latest_checkpoint(task, args)
    with user_input():
        checkpoint = read_checkpoint(args.resume)
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("args"), dict) or "model" not in checkpoint:
        raise UsageError(f"{args.resume}: not a training checkpoint of this project (no saved run); "
                         "start from its weights with --finetune instead")
    return checkpoint


def resumed_layer(checkpoint, args, given):
    """A resumed run's saved arguments; a flag given now overrides its saved value (and is reported where it
    differs), except the architecture and version, which the weights fix."""
    saved = checkpoint["args"]
    for key in FIXED_ON_RESUME:
        if key in given and str(given[key]).upper() != str(saved.get(key)).upper():
            raise UsageError(f"--{key} {given[key]} cannot resume {args.resume}: that run trains "
                             f"--{key} {saved.get(key)} (leave --{key} out, or start a new run)")
    restored = {key: value for key, value in saved.items() if key not in NOT_RESTORED and hasattr(args, key)}
    changed = [f"--{key.replace('_', '-')} {given[key]} (the run had {value})" for key, value in restored.items()
               if key in given and given[key] != value]
    say(f"resuming {args.resume} with its saved arguments" + (f"; given now: {', '.join(changed)}" if changed else ""))
    return restored


def finetune_layer(path, args, given):
    """--finetune from a checkpoint of this project: its architecture, version and clip recipe (a contradicting
    --arch / --version is an error: the weights would not fit). Other checkpoints say nothing of their recipe."""
    with user_input():
        found = checkpoint_recipe(read_checkpoint(path), path)
        if found is None:
            return {}
        x3d_version_given = "version" in given and found.arch != I3D_ARCH   # I3D has no versions
        choose_recipe(found, given["version"] if x3d_version_given else None, given.get("arch"))
    layer = {"arch": found.arch, "version": found.version or args.version}
    for flag, field in RECIPE_FLAGS.items():
        value = getattr(found.spec, field)
        layer[flag] = list(value) if isinstance(value, tuple) else value
    shown = {**layer, **{k: v for k, v in given.items() if k in layer}}
    say(f"--finetune {path}: {found.name}, {shown['frames']} frames x rate {shown['rate']}, crop {shown['crop']} "
        f"(test {shown['test_crop']}), as the checkpoint was trained")
    return layer


def latest_checkpoint(task, args):
    """A bare --resume: OUTPUT/<--run-name>/last.pt, or the newest OUTPUT/<task>_*/last.pt."""
    pattern = os.path.join(args.output, args.run_name or f"{task.name}_*", "last.pt")
    found = sorted(glob.glob(pattern), key=os.path.getmtime)
    if not found:
        raise UsageError(f"--resume: no {pattern} to continue")
    return found[-1]


def clip_recipe(args):
    """The run's clips: the architecture's recipe (x3d.VERSIONS, i3d.RECIPE) with the flags' overrides; a task's
    data sets take it as `clip_recipe(args).dataset_args()`."""
    return resolve_recipe(default_recipe(args.arch, args.version), frames=args.frames, rate=args.rate,
                          train_crop=args.crop, test_crop=args.test_crop, jitter=args.jitter)


def fill_in(task, args):
    """What the layers leave open: the clip recipe, the test views, the run's name, the schedule's fit to the run."""
    clips = clip_recipe(args)
    args.frames, args.rate, args.crop, args.test_crop = clips.frames, clips.rate, clips.train_crop, clips.test_crop
    args.jitter = list(clips.jitter)
    try:
        args.temporal_views, args.spatial_crops = parse_views(args.test_views)
    except ValueError as error:
        raise UsageError(f"--test-views: {error}") from None
    if args.tensorboard:
        tensorboard_writer_class()          # missing: say so now, not after the data set is built
    if args.resume:
        args.run_name = os.path.basename(os.path.dirname(os.path.abspath(args.resume)))
    if not args.run_name:
        tag = args.version.upper() if args.arch == "x3d" else args.arch
        args.run_name = f"{task.name}_{tag}_{datetime.datetime.now():%Y%m%d-%H%M%S}"
    if not args.test_only:
        fit_schedule(args)


def tensorboard_writer_class():
    """torch's SummaryWriter; tensorboard is an optional dependency, so its absence is the user's to fix."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UsageError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter


# ---------------------------------------------------------------------------------------------------------------
# The schedule the flags describe, and its fit to the run's epochs

def lr_scaling(args):
    """--lr-scaling, with auto resolved by the optimizer (a resumed run from before the flag gets auto)."""
    if args.lr_scaling != "auto":
        return args.lr_scaling
    return "linear" if args.optimizer == "sgd" else "sqrt"


def make_schedule(args, world, batch_size=None):
    """The multigrid schedule of the flags, on `world` devices, at `batch_size` (default --batch-size)."""
    return MultigridSchedule(base_batch=batch_size or args.batch_size, base_frames=args.frames, base_crop=args.crop,
                             base_rate=args.rate, steps=args.steps or [0], max_epoch=args.epochs, num_devices=world,
                             long_cycle=args.long_cycle, short_cycle=args.short_cycle, lr_policy=args.lr_policy,
                             gamma=args.gamma, warmup_epochs=args.warmup_epochs, warmup_start=args.warmup_start,
                             lr_scaling=lr_scaling(args))


def fit_schedule(args):
    """LR steps and a warm-up that fit the run's epochs. The recipe's are scaled to the run where they do not
    (its share of the recipe's epochs: 35 of 300 warm-up epochs become 0.23 of a 2-epoch run, instead of a run that
    never leaves its warm-up), and the start says so; the user's own are refused where they leave the run."""
    recipe_epochs = args.recipe["epochs"]
    if args.steps and args.steps[-1] > args.epochs:
        if "steps" in args.given_flags:
            raise UsageError(f"--steps {' '.join(map(str, args.steps))}: the last LR stage starts after the run's "
                             f"{args.epochs} epochs (--epochs)")
        scaled = sorted({round(s * args.epochs / recipe_epochs) for s in args.steps})
        say(f"LR steps: the recipe's {args.steps} of {recipe_epochs} epochs, scaled to this run's {args.epochs}: "
            f"{scaled}")
        args.steps = scaled
    try:
        run_epochs = make_schedule(args, 1, batch_size=1).max_epoch
    except ValueError as error:
        raise UsageError(str(error)) from None
    if args.warmup_epochs <= WARMUP_MAX_SHARE * run_epochs:
        return
    if "warmup_epochs" in args.given_flags:
        if args.warmup_epochs >= run_epochs:
            raise UsageError(f"--warmup-epochs {args.warmup_epochs:g} is the whole run: the schedule has "
                             f"{run_epochs} epochs (warm-up counts epochs of the schedule, multigrid's 1.5x included)")
        return
    scaled = args.warmup_epochs * args.epochs / recipe_epochs
    say(f"warm-up: the recipe's {args.warmup_epochs:g} of {recipe_epochs} epochs, scaled to this run's "
        f"{args.epochs}: {scaled:.3g} of the schedule's {run_epochs} epochs")
    args.warmup_epochs = scaled
