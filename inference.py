"""Inference backends behind one call: `predictor(normalized float32 batch (B, 3, T, H, W)) -> logits (B, classes)`.

    TorchPredictor   PyTorch eager on any device; fp32, channels_last_3d or bf16 autocast
    OnnxPredictor    an exported model (export_onnx.py) through ONNX Runtime

predict.py, evaluate.py and benchmarks/bench_inference.py build their backend here, so every entry point loads
weights, picks the backend and runs the model the same way. Knows nothing of files or data sets.

A checkpoint of this project's training scripts or an exported ONNX file describes itself (architecture, version,
clip recipe, class names): `load_model` and `OnnxPredictor` read that description through archs.py.
"""
import os
import sys

import numpy as np
import torch

import archs
from archs import checkpoint_recipe, choose_recipe, default_recipe
from checkpoints import convert_state_dict, detect_format, extract_state_dict, read_checkpoint
from recipe import I3D_ARCH, Recipe, resolve_recipe

BACKENDS = ("pytorch", "onnxruntime")
DEFAULT_LABELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "kinetics400_classes.txt")


def classifier(model):
    """The final Linear layer of X3D (head.fc) or I3D (fc)."""
    return model.head.fc if hasattr(model, "head") else model.fc


def checkpoint_classes(state):
    """Class count of a checkpoint's classifier, in any supported format (None if it has no classifier)."""
    if "fc.weight" in state:                      # I3D (this project's format)
        return int(state["fc.weight"].shape[0])
    converted, _ = convert_state_dict(state, detect_format(state))
    weight = converted.get("head.fc.weight")
    return None if weight is None else int(weight.shape[0])


def load_model(version=None, weights=None, n_classes=None, channels_last=True, verbose=True, arch=None):
    """The model of `weights` in eval mode: a project checkpoint says its architecture, version and recipe (a
    contradicting `version` / `arch` is a ValueError); other formats (SlowFast / PyTorchVideo / x3d-multigrid) are
    X3D `version` (default S). The class count comes from the checkpoint's classifier unless `n_classes` is given;
    without weights the model is randomly initialized and a warning says its predictions mean nothing. The model's
    `recipe` attribute holds the Recipe it was built from."""
    state, found = None, None
    if weights:
        checkpoint = read_checkpoint(weights)
        found = checkpoint_recipe(checkpoint, weights)
        state = extract_state_dict(checkpoint)
        classes = checkpoint_classes(state)
        if n_classes is None:
            n_classes = classes
        elif classes is not None and classes != n_classes:
            raise ValueError(f"{weights}: its classifier has {classes} classes, {n_classes} were asked for")
    recipe = choose_recipe(found, version, arch)
    # the head's pooling window is the training shape's (frames x train crop), as in the training scripts
    model = archs.build_model(recipe.arch, recipe.version, n_classes=n_classes or 400, frames=recipe.spec.frames,
                              train_crop=recipe.spec.train_crop, channels_last=channels_last)
    model.recipe = recipe
    if state is not None:
        archs.load_pretrained(model, recipe.arch, state, verbose=False)
        if verbose:
            print(f"loaded {weights} into {recipe.name} ({classifier(model).out_features} classes)")
    else:
        print(f"WARNING: no weights given: {recipe.name} has RANDOM weights, its predictions are meaningless "
              "(nothing is downloaded; pass --weights PATH)", file=sys.stderr)
    return model.eval()


class TorchPredictor:
    """PyTorch eager. mode: 'fp32' (contiguous), 'channels_last' (channels_last_3d weights and inputs) or 'bf16'
    (channels_last_3d under bfloat16 autocast; logits returned as float32)."""

    MODES = ("fp32", "channels_last", "bf16")

    def __init__(self, model, device="cpu", mode="channels_last"):
        if mode not in self.MODES:
            raise ValueError(f"mode must be one of {self.MODES}, got {mode!r}")
        self.device, self.mode = torch.device(device), mode
        memory_format = torch.contiguous_format if mode == "fp32" else torch.channels_last_3d
        self.model = model.eval().to(self.device, memory_format=memory_format)
        self.num_classes = classifier(model).out_features
        self.recipe = getattr(model, "recipe", None) or choose_recipe(None, getattr(model, "version", None))
        self.name = f"pytorch-{mode}"

    @torch.inference_mode()
    def __call__(self, x):
        x = torch.as_tensor(x).to(self.device, non_blocking=True)
        if self.mode == "bf16":
            with torch.autocast(self.device.type, dtype=torch.bfloat16):
                return self.model(x).float()
        return self.model(x).float()


class OnnxPredictor:
    """ONNX Runtime session with the model of export_onnx.py (input 'video', output 'logits', dynamic batch).
    Takes torch tensors or numpy arrays; returns float32 torch logits on the CPU."""

    def __init__(self, path, threads=None, providers=None):
        import onnxruntime as ort
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such ONNX file")
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(path, options, providers=providers or ["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0]
        self.output = self.session.get_outputs()[0]
        self.num_classes = self.output.shape[-1] if isinstance(self.output.shape[-1], int) else None
        self.device = torch.device("cpu")
        self.name = "onnxruntime"
        # the clip recipe it was exported for (export_onnx.py writes it); the batch axis is the only dynamic one
        self.metadata = dict(self.session.get_modelmeta().custom_metadata_map)
        dims = self.input.shape
        self.version = self.metadata.get("x3d_version")
        self.frames = dims[2] if isinstance(dims[2], int) else None
        self.crop = dims[3] if isinstance(dims[3], int) else None
        self.rate = int(self.metadata["rate"]) if "rate" in self.metadata else None
        self.recipe = self._recipe(path)

    def _recipe(self, path):
        """The recipe export_onnx.py wrote into the metadata (older files: version, frames, rate and crop only)."""
        meta = self.metadata
        if "x3d_version" not in meta and "arch" not in meta:
            return None
        arch = meta.get("arch", "x3d")
        version = self.version.upper() if arch != I3D_ARCH else None
        base = default_recipe(arch, version)
        jitter = tuple(int(j) for j in meta["jitter"].split()) if "jitter" in meta else None
        spec = resolve_recipe(base, frames=self.frames, rate=self.rate,
                              train_crop=int(meta.get("train_crop", self.crop or base.test_crop)),
                              test_crop=self.crop, jitter=jitter, jitter_follows="test_crop")
        names = tuple(meta["classes"].split("\n")) if meta.get("classes") else None
        return Recipe(arch, version, spec, names, path)

    def __call__(self, x):
        if isinstance(x, torch.Tensor):
            x = x.detach().cpu().numpy()
        x = np.ascontiguousarray(x, dtype=np.float32)
        logits = self.session.run([self.output.name], {self.input.name: x})[0]
        return torch.from_numpy(logits.astype(np.float32, copy=False))


def make_predictor(backend="pytorch", version=None, weights=None, onnx=None, device="cpu", mode="channels_last",
                   n_classes=None, threads=None, verbose=True):
    """The backend by name: 'pytorch' (weights, and version where they do not say it) or 'onnxruntime' (onnx path).
    Either way `predictor.recipe` is the model's Recipe; a `version` that contradicts the file's is a ValueError."""
    if backend == "onnxruntime":
        if not onnx:
            raise ValueError("the onnxruntime backend needs --onnx PATH (make one with export_onnx.py)")
        predictor = OnnxPredictor(onnx, threads=threads)
        predictor.recipe = choose_recipe(predictor.recipe, version)
        return predictor
    if backend != "pytorch":
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    return TorchPredictor(load_model(version, weights, n_classes, verbose=verbose), device, mode)
