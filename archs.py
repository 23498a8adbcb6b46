"""The architecture table, above both model files: for each architecture the scripts train, predict with or export,
how to build it, how to load weights into it, and the clip recipe it is trained with; and the recipe a checkpoint of
this project carries. x3d.py and i3d.py know nothing of each other or of this table.

    archs.build_model("x3d", "S", n_classes=400)       # generate_model of x3d.py or i3d.py
"""
import i3d
import x3d
from recipe import DEFAULT_VERSION, I3D_ARCH, Recipe, resolve_recipe

ARCHS = ("x3d", I3D_ARCH)


def default_recipe(arch, version):
    """The architecture's own clip recipe: x3d.VERSIONS[version], or i3d.RECIPE."""
    if arch == I3D_ARCH:
        return i3d.RECIPE
    return resolve_recipe(x3d.get_version(version))


def build_model(arch, version, **kwargs):
    """X3D of `version` or I3D-R50; `kwargs` are generate_model's (n_classes, dropout, task, frames, train_crop)."""
    if arch == I3D_ARCH:
        return i3d.generate_model(**kwargs)
    return x3d.generate_model(version, **kwargs)


def load_pretrained(model, arch, path_or_state, verbose=True):
    """Weights in any format the architecture's load_pretrained reads, into `model`."""
    return (i3d if arch == I3D_ARCH else x3d).load_pretrained(model, path_or_state, verbose=verbose)


def checkpoint_recipe(checkpoint, source=""):
    """The recipe a training checkpoint of this project carries (its arch, version and resolved flags), or None for
    any other checkpoint (SlowFast .pyth, PyTorchVideo, x3d-multigrid, a bare state dict)."""
    if not (isinstance(checkpoint, dict) and "arch" in checkpoint and isinstance(checkpoint.get("args"), dict)):
        return None
    flags, arch = checkpoint["args"], checkpoint["arch"]
    version = str(checkpoint.get("version") or DEFAULT_VERSION).upper() if arch != I3D_ARCH else None
    spec = resolve_recipe(default_recipe(arch, version), frames=flags.get("frames"), rate=flags.get("rate"),
                          train_crop=flags.get("crop"), test_crop=flags.get("test_crop"), jitter=flags.get("jitter"))
    return Recipe(arch, version, spec, tuple(checkpoint.get("class_names") or ()) or None, source)


def choose_recipe(found, version=None, arch=None):
    """`found` (a checkpoint's or ONNX file's recipe, or None) unless it is absent; a --version or --arch that
    contradicts it is a ValueError. Without one: the flags' arch and version (default X3D-S)."""
    if found is None:
        arch = arch or "x3d"
        version = None if arch == I3D_ARCH else str(version or DEFAULT_VERSION).upper()
        return Recipe(arch, version, default_recipe(arch, version))
    if arch and arch != found.arch:
        raise ValueError(f"--arch {arch} contradicts {found.source}, which holds {found.name}")
    if version and (found.arch == I3D_ARCH or str(version).upper() != found.version):
        raise ValueError(f"--version {version} contradicts {found.source}, which holds {found.name} "
                         "(leave --version out: the checkpoint says what it is)")
    return found
