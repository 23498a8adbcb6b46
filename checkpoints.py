"""Checkpoint I/O for both models (x3d.py, i3d.py): safe reading, the X3D formats (SlowFast .pyth, PyTorchVideo
hub .pyth, x3d-multigrid .pt, this project's .pt) and their renaming, the fit check and report of a load; and
writing a training checkpoint: the atomic save and the random generators' states."""
import math
import os
import random
import re
from dataclasses import asdict, dataclass

import numpy as np
import torch


class CheckpointError(RuntimeError):
    pass


def read_checkpoint(path):
    """torch.load with weights_only=True: tensors and plain containers only, no pickled code ever runs."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such checkpoint file") from None
    except Exception as error:  # UnpicklingError for pickled objects, RuntimeError for a corrupt zip, ...
        raise CheckpointError(
            f"{path}: refused or unreadable. Only tensors and plain containers are loaded (weights_only=True); a file "
            f"carrying pickled Python objects is refused and nothing of it runs. Details: {error}") from None


def extract_state_dict(checkpoint):
    for key in ("model_state", "model_state_dict", "model", "state_dict"):
        if isinstance(checkpoint, dict) and isinstance(checkpoint.get(key), dict):
            return checkpoint[key]
    return checkpoint


def read_state_dict(path_or_state):
    """(name for messages, state dict) of a checkpoint path, a loaded checkpoint or a state dict."""
    source = path_or_state if isinstance(path_or_state, str) else "<state dict>"
    checkpoint = read_checkpoint(path_or_state) if isinstance(path_or_state, str) else path_or_state
    return source, extract_state_dict(checkpoint)


def strip_module_prefix(state):
    """Drop the `module.` that DataParallel / DDP put before every key."""
    return {(k[len("module."):] if k.startswith("module.") else k): v for k, v in state.items()}


def fill_batch_counters(state, own):
    for key in own:  # older checkpoints may lack the BN batch counter; it carries no information we need
        weight_key = key.replace("num_batches_tracked", "weight")
        if key.endswith("num_batches_tracked") and key not in state and weight_key in state:
            state[key] = own[key].clone()


def raise_unless_fits(source, what, missing, unexpected, wrong_shape, hint=""):
    """CheckpointError listing (up to 20 of) each kind of mismatch, when there is any."""
    if missing or unexpected or wrong_shape:
        problems = [("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong_shape)]
        raise CheckpointError(f"{source} ({what}) does not fit this model:\n" + "\n".join(
            f"  {label} ({len(keys)}): {', '.join(keys[:20])}{' ...' if len(keys) > 20 else ''}"
            for label, keys in problems if keys) + hint)


def load_checked(model, state, source, format_name, what, classifier_prefix, unknown=(), hint="", verbose=True):
    """Load `state` (already in the model's names) into `model`. A classifier (the keys under `classifier_prefix`)
    with another class count is left at its fresh initialization (the fine-tune path) and reported; any other
    mismatch, `unknown` keys included, is an error listing the keys. Returns a report dict: format, loaded,
    reinitialized."""
    own = model.state_dict()
    fill_batch_counters(state, own)
    reinitialized = []
    classifier = [k for k in own if k.startswith(classifier_prefix)]
    if all(k in state for k in classifier) and any(state[k].shape != own[k].shape for k in classifier):
        reinitialized = classifier
        state = {k: v for k, v in state.items() if k not in classifier}
    missing = [k for k in own if k not in state and k not in reinitialized]
    unexpected = list(unknown) + [k for k in state if k not in own]
    wrong_shape = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                   for k, v in state.items() if k in own and v.shape != own[k].shape]
    raise_unless_fits(source, what, missing, unexpected, wrong_shape, hint)
    model.load_state_dict(state, strict=not reinitialized)
    if verbose:
        classes = own[f"{classifier_prefix}weight"].shape[0]
        note = f"; classifier re-initialized for {classes} classes" if reinitialized else ""
        print(f"loaded {len(state)} tensors from {source} ({what}){note}")
    return {"format": format_name, "loaded": len(state), "reinitialized": reinitialized}


# ---------------------------------------------------------------------------------------------------------------
# The X3D formats: the authors' SlowFast .pyth, PyTorchVideo hub .pyth, x3d-multigrid .pt and this project's.

SLOWFAST_RENAMES = [  # regex on the module path -> our module path
    (r"^s1\.pathway0_stem\.conv_xy$", "stem.conv_xy"),
    (r"^s1\.pathway0_stem\.conv$", "stem.conv_t"),
    (r"^s1\.pathway0_stem\.bn$", "stem.bn"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch1$", r"stages.{s}.\2.shortcut_conv"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch1_bn$", r"stages.{s}.\2.shortcut_bn"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch2\.([abc])$", r"stages.{s}.\2.conv_\3"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch2\.([abc])_bn$", r"stages.{s}.\2.bn_\3"),
    (r"^s(\d)\.pathway0_res(\d+)\.branch2\.se\.(fc[12])$", r"stages.{s}.\2.se.\3"),
    (r"^head\.conv_5$", "head.conv_5"),
    (r"^head\.conv_5_bn$", "head.bn_5"),
    (r"^head\.lin_5$", "head.lin_5"),
    (r"^head\.projection$", "head.fc"),
]
PYTORCHVIDEO_RENAMES = [
    (r"^blocks\.0\.conv\.conv_t$", "stem.conv_xy"),     # PyTorchVideo's names are swapped, the order is right
    (r"^blocks\.0\.conv\.conv_xy$", "stem.conv_t"),
    (r"^blocks\.0\.norm$", "stem.bn"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch1_conv$", r"stages.{s}.\2.shortcut_conv"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch1_norm$", r"stages.{s}.\2.shortcut_bn"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.conv_([abc])$", r"stages.{s}.\2.conv_\3"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_([ac])$", r"stages.{s}.\2.bn_\3"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_b(\.0)?$", r"stages.{s}.\2.bn_b"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_b\.1\.block\.0$", r"stages.{s}.\2.se.fc1"),
    (r"^blocks\.(\d)\.res_blocks\.(\d+)\.branch2\.norm_b\.1\.block\.2$", r"stages.{s}.\2.se.fc2"),
    (r"^blocks\.5\.pool\.pre_conv$", "head.conv_5"),
    (r"^blocks\.5\.pool\.pre_norm$", "head.bn_5"),
    (r"^blocks\.5\.pool\.post_conv$", "head.lin_5"),
    (r"^blocks\.5\.proj$", "head.fc"),
]
PORT_RENAMES = [  # x3d-multigrid; its sub-BN keeps eval statistics under `<bn>.bn.*` and split ones under `.split_bn.*`
    (r"^conv1_s$", "stem.conv_xy"),
    (r"^conv1_t$", "stem.conv_t"),
    (r"^bn1(\.bn)?$", "stem.bn"),
    (r"^layer(\d)\.(\d+)\.conv([123])$", r"stages.{s}.\2.conv_{abc}"),
    (r"^layer(\d)\.(\d+)\.bn([123])(\.bn)?$", r"stages.{s}.\2.bn_{abc}"),
    (r"^layer(\d)\.(\d+)\.(fc[12])$", r"stages.{s}.\2.se.\3"),
    (r"^layer(\d)\.(\d+)\.downsample\.0$", r"stages.{s}.\2.shortcut_conv"),
    (r"^layer(\d)\.(\d+)\.downsample\.1(\.bn)?$", r"stages.{s}.\2.shortcut_bn"),
    (r"^conv5$", "head.conv_5"),
    (r"^bn5(\.bn)?$", "head.bn_5"),
    (r"^fc1$", "head.lin_5"),
    (r"^fc2$", "head.fc"),
]
FORMATS = {  # name -> (a key prefix that identifies it, renames, index of its first residual stage)
    "slowfast": ("s1.pathway0_stem.", SLOWFAST_RENAMES, 2),
    "pytorchvideo": ("blocks.0.", PYTORCHVIDEO_RENAMES, 1),
    "x3d-multigrid": ("conv1_s.", PORT_RENAMES, 1),
    "x3d-project": ("stem.", None, None),
}


def detect_format(state_dict):
    keys = [k[len("module."):] if k.startswith("module.") else k for k in state_dict]
    for name, (prefix, _, _) in FORMATS.items():
        if any(k.startswith(prefix) for k in keys):
            return name
    raise CheckpointError("unrecognized checkpoint: none of the SlowFast, PyTorchVideo, x3d-multigrid or X3D project "
                          f"key patterns found (first keys: {keys[:5]})")


def _rename(module_path, renames, first_stage):
    for pattern, target in renames:
        match = re.match(pattern, module_path)
        if match:
            stage = int(match.group(1)) - first_stage if "{s}" in target else None
            name = match.expand(target.replace("{s}", str(stage)))
            if "{abc}" in name:
                name = name.replace("{abc}", "abc"[int(match.group(3)) - 1])
            return name
    return None


def convert_state_dict(state_dict, source_format):
    """Rename `state_dict` from `source_format` to x3d.py's names. Returns (converted, dropped unknown keys)."""
    _, renames, first_stage = FORMATS[source_format]
    converted, unknown = {}, []
    for key, value in strip_module_prefix(state_dict).items():
        if renames is None:
            converted[key] = value
            continue
        module_path, param = key.rsplit(".", 1)
        if ".split_bn" in module_path:         # per-split statistics: shape depends on the split count; not needed
            continue
        target = _rename(module_path, renames, first_stage)
        if target is None:
            unknown.append(key)
        else:
            converted[f"{target}.{param}"] = value
    return converted, unknown


# ---------------------------------------------------------------------------------------------------------------
# Training checkpoints: atomic writes and the random generators' states.

def save_atomically(path, state):
    """Write a temporary file next to the target, then rename it over: a crash never leaves half a file."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def _device_rng_module(device, module):
    return module if module is not None else None if device.type == "cpu" else getattr(torch, device.type)


def capture_rng(device, module=None):
    """This process's generators: Python's, NumPy's, torch's CPU one and that of the run's own device (an
    accelerator's generator lives in `module`, torch.cuda or torch.npu by default), as plain containers and
    tensors that a weights_only load reads back."""
    python, numpy = random.getstate(), np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": [python[0], list(python[1]), python[2]],
             "numpy": [numpy[0], torch.from_numpy(numpy[1].astype(np.int64)), numpy[2], numpy[3], numpy[4]]}
    module = _device_rng_module(device, module)
    if module is not None:
        state["device"] = {"type": device.type, "state": module.get_rng_state(device)}
    return state


def restore_rng(state, device, module=None):
    """Continue the generators `capture_rng` saved; the device's only on a device of the same type (a run resumed
    on another kind of device continues its CPU generators)."""
    torch.set_rng_state(state["torch"])
    random.setstate((state["python"][0], tuple(state["python"][1]), state["python"][2]))
    n = state["numpy"]
    np.random.set_state((n[0], n[1].numpy().astype(np.uint32), n[2], n[3], n[4]))
    module = _device_rng_module(device, module)
    saved = state.get("device")
    if module is not None and saved is not None and saved["type"] == device.type:
        module.set_rng_state(saved["state"], device)


@dataclass
class TrainingState:
    """Where a run stands: saved in every training checkpoint and continued from on --resume."""
    epoch: int = 0                 # epochs finished
    step_in_epoch: int = 0         # steps finished in the current epoch
    global_step: int = 0
    best: float = -math.inf        # the best validation value of the task's main metric so far
    bad_steps: int = 0             # non-finite losses in a row


def training_checkpoint(model, optimizer, scaler, state, rng, identity):
    """What last.pt / best.pt / phase_NN.pt hold: the weights (plain BN names), optimizer, GradScaler, position,
    RNG states (one per rank mid-epoch), and `identity`: the run's arguments, architecture, version, class count
    and names, enough to rebuild its model and continue it."""
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict(),
            "state": asdict(state), "rng": rng, **identity}


def restore_training(checkpoint, model, optimizer, scaler, num_classes, source):
    """A training checkpoint's weights, optimizer, scaler into the run's own -> (TrainingState, its RNG states).
    Another class count is refused (that is a fine-tuning: --finetune)."""
    if checkpoint.get("num_classes", num_classes) != num_classes:
        raise CheckpointError(f"{source} has {checkpoint['num_classes']} classes, the data {num_classes}: a run "
                              "cannot continue on another class count (use --finetune)")
    model.load_state_dict(checkpoint["model"])
    optimizer.load_state_dict(checkpoint["optimizer"])
    scaler.load_state_dict(checkpoint["scaler"])
    return TrainingState(**checkpoint["state"]), checkpoint["rng"]


def rank_rng_state(saved, rank):
    """A checkpoint's RNG state for `rank` (mid-epoch checkpoints hold one per rank; others rank 0's)."""
    return saved[rank] if isinstance(saved, list) else saved
