"""The clip recipe: what a model is fed (frames, sampling rate, train / test crop, train-time short-side jitter),
resolved in one place from an architecture's defaults (archs.default_recipe: x3d.VERSIONS, i3d.RECIPE) and overrides
(flags, a checkpoint's saved flags, an ONNX file's metadata). The training engine, the task scripts' data sets,
predict.py, evaluate.py and export_onnx.py all take their clips from here. Imports no model: the architecture table
(archs.py) stands above both models and this file.
"""
from dataclasses import dataclass

DEFAULT_VERSION = "S"         # the X3D version of a checkpoint that does not say (foreign formats)
I3D_ARCH = "i3d_r50"


@dataclass(frozen=True)
class ClipRecipe:
    frames: int            # clip length at the train shape
    rate: int              # temporal sampling stride, in frames at 30 fps
    train_crop: int
    test_crop: int         # short side and crop size of the 3-crop test views
    jitter: tuple          # train-time random short-side range; its low end sets the 1-crop test resize

    def dataset_args(self):
        """The keyword arguments every clip dataset (dataset.VideoDataset, dataset.CharadesDataset) takes."""
        return dict(frames=self.frames, rate=self.rate, train_crop=self.train_crop, test_crop=self.test_crop,
                    jitter=self.jitter)


def resolve_recipe(base, frames=None, rate=None, train_crop=None, test_crop=None, jitter=None,
                   jitter_follows="train_crop"):
    """`base`'s recipe (a ClipRecipe or x3d.X3DVersion) with every override that is not None. The jitter range,
    unless given, follows its crop in proportion, as the multigrid crops do: the train crop when training; for a
    trained model (jitter_follows='test_crop'), whose jitter only sets the 1-crop test resize, the test crop."""
    frames, rate = frames or base.frames, rate or base.rate
    train_crop, test_crop = train_crop or base.train_crop, test_crop or base.test_crop
    if jitter is None:
        if jitter_follows not in ("train_crop", "test_crop"):
            raise ValueError(f"jitter_follows must be 'train_crop' or 'test_crop', not {jitter_follows!r}")
        crop = train_crop if jitter_follows == "train_crop" else test_crop
        jitter = [round(j * crop / getattr(base, jitter_follows)) for j in base.jitter]
    return ClipRecipe(int(frames), int(rate), int(train_crop), int(test_crop), tuple(int(j) for j in jitter))


@dataclass(frozen=True)
class Recipe:
    """What a model needs to be built and fed: architecture, X3D version (None for I3D), clip recipe and class names
    (None where unknown)."""
    arch: str
    version: str
    spec: ClipRecipe
    class_names: tuple = None
    source: str = "flags"     # where it came from: a checkpoint or ONNX file path, or "flags"

    @property
    def name(self):
        return "I3D-R50" if self.arch == I3D_ARCH else f"X3D-{self.version}"
