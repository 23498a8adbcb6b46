"""Export X3D (or I3D) to ONNX (dynamic batch axis) and check it against PyTorch with ONNX Runtime.

    python export_onnx.py --version S --weights x3d_s.pyth --out x3d_s.onnx          # test shape: 13 x 182 x 182
    python export_onnx.py --version XS --out x3d_xs.onnx --crop 160 --frames 4 --fp16
    python export_onnx.py --weights models/<run>/best.pt --out run.onnx        # the run's model, clips and classes

The model is exported in eval mode at one clip shape (default: the version's test shape, frames x test crop). At
the test crop the head classifies several positions and returns log(mean softmax) (see x3d.Head); the exported
graph does the same, so softmax(logits) is the authors' eval output with either backend. The Swish is F.silu, a
standard op: no custom op is needed.

Exporter: torch's TorchScript-based exporter (`dynamo=False`), which needs nothing beyond torch and onnx; the
torch.export-based one would add the onnxscript dependency. --fp16 converts weights and activations to float16
after export and keeps float32 inputs and outputs (Cast nodes at both ends), so callers need no change.
"""
import argparse
import copy
import inspect
import math
import os
import sys
import time
import warnings

import numpy as np
import torch

from inference import load_model
from archs import choose_recipe
from recipe import resolve_recipe
from x3d import TOTAL_SPATIAL_STRIDE

INPUT_NAME, OUTPUT_NAME = "video", "logits"
DEFAULT_OPSET = 17
PARITY_TOLERANCE = 1e-4       # max |logits difference|, fp32
PARITY_TOLERANCE_FP16 = 5e-2  # float16 keeps ~3 significant digits


def export(model, path, frames, crop, opset=DEFAULT_OPSET, fp16=False, rate=None):
    """Write `model` (X3D or I3D, eval) to `path` for inputs (batch, 3, frames, crop, crop), batch dynamic. The
    model's recipe (architecture, version, frames, rate, crop, jitter, class names) goes into the file's metadata,
    so predict.py and evaluate.py sample clips to match and name the classes."""
    model = copy.deepcopy(model).eval().to(memory_format=torch.contiguous_format)  # the exporter refuses formats
    _fit_head_window(model, frames, crop)
    example = torch.zeros(1, 3, frames, crop, crop)
    kwargs = dict(input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], opset_version=opset,
                  dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}, do_constant_folding=True)
    if "dynamo" in inspect.signature(torch.onnx.export).parameters:
        kwargs["dynamo"] = False
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with warnings.catch_warnings():
        # tracing turns the head's shape arithmetic into constants: right, since the clip shape is fixed
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
        warnings.filterwarnings("ignore", message=".*feature will be removed.*")
        with torch.no_grad():
            torch.onnx.export(model, (example,), path, **kwargs)
    import onnx
    graph = onnx.load(path)
    if fp16:
        graph = to_float16(graph)
    recipe = getattr(model, "recipe", None) or choose_recipe(None, model.version)
    clips = resolve_recipe(recipe.spec, frames=frames, rate=rate, test_crop=crop, jitter_follows="test_crop")
    props = {"arch": recipe.arch, "frames": str(clips.frames), "rate": str(clips.rate), "crop": str(clips.test_crop),
             "train_crop": str(clips.train_crop), "precision": "float16" if fp16 else "float32",
             "jitter": " ".join(str(j) for j in clips.jitter)}
    if recipe.version:
        props["x3d_version"] = recipe.version
    if recipe.class_names:
        props["classes"] = "\n".join(recipe.class_names)
    onnx.helper.set_model_props(graph, props)
    onnx.checker.check_model(graph)
    onnx.save(graph, path)
    return path


def _fit_head_window(model, frames, crop):
    """The head pools with min(window, feature size); tracing would record a smaller feature size as a shape
    computation. Clamp the window to the export shape's feature map first: the same numbers, a constant window."""
    side = crop
    for _ in range(int(math.log2(TOTAL_SPATIAL_STRIDE))):  # stem and 4 stages, each a stride-2 conv, padding 1
        side = (side + 1) // 2
    if hasattr(model, "head") and model.head.task != "loc":      # I3D pools globally: nothing to fit
        model.head.pool_window = tuple(min(w, size) for w, size in zip(model.head.pool_window, (frames, side, side)))


def to_float16(model_proto):
    """float32 -> float16 for every weight and constant, with float32 kept at the graph's input and output."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    graph = model_proto.graph

    def half(tensor):
        if tensor.data_type != TensorProto.FLOAT:
            return tensor
        converted = numpy_helper.from_array(numpy_helper.to_array(tensor).astype(np.float16), tensor.name)
        tensor.CopyFrom(converted)
        return tensor

    for initializer in graph.initializer:
        half(initializer)
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.type == onnx.AttributeProto.TENSOR:
                half(attribute.t)
            if node.op_type == "Cast" and attribute.name == "to" and attribute.i == TensorProto.FLOAT:
                attribute.i = TensorProto.FLOAT16
    # float32 at the boundary: Cast in after the input, Cast out before the output
    input_name, output_name = graph.input[0].name, graph.output[0].name
    for node in graph.node:
        node.input[:] = [f"{input_name}_fp16" if n == input_name else n for n in node.input]
        node.output[:] = [f"{output_name}_fp16" if n == output_name else n for n in node.output]
    graph.node.insert(0, helper.make_node("Cast", [input_name], [f"{input_name}_fp16"], to=TensorProto.FLOAT16))
    graph.node.append(helper.make_node("Cast", [f"{output_name}_fp16"], [output_name], to=TensorProto.FLOAT))
    del graph.value_info[:]  # stale float32 shapes; ONNX Runtime infers them again
    return model_proto


def check_parity(model, path, frames, crop, batches=(1, 3), seed=0):
    """Max |logits(PyTorch) - logits(ONNX Runtime)| over random inputs of each batch size (dynamic batch)."""
    from inference import OnnxPredictor
    session = OnnxPredictor(path)
    generator = torch.Generator().manual_seed(seed)
    worst = 0.0
    model = model.eval()
    for batch in batches:
        x = torch.randn(batch, 3, frames, crop, crop, generator=generator)
        with torch.no_grad():
            expected = model(x).float()
        got = session(x)
        if got.shape != expected.shape:
            raise AssertionError(f"ONNX output shape {tuple(got.shape)} != PyTorch {tuple(expected.shape)}")
        worst = max(worst, float((got - expected).abs().max()))
    return worst


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--version", default=None, help="XS, S, M, L or XL for checkpoints that do not say it "
                                                         "(default S; a project checkpoint gives its own)")
    parser.add_argument("--weights", help="checkpoint in any supported format (none: random weights, a warning)")
    parser.add_argument("--out", help="output .onnx (default x3d_<version>.onnx)")
    parser.add_argument("--crop", type=int, help="clip side (default: the version's test crop)")
    parser.add_argument("--frames", type=int, help="clip length (default: the version's frames)")
    parser.add_argument("--classes", type=int, help="classifier size without --weights (default 400)")
    parser.add_argument("--fp16", action="store_true", help="float16 weights and activations, float32 in/out")
    parser.add_argument("--opset", type=int, default=DEFAULT_OPSET, help=f"ONNX opset (default {DEFAULT_OPSET})")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX Runtime parity check")
    args = parser.parse_args(argv)

    try:
        model = load_model(args.version, args.weights, args.classes, channels_last=False)
    except Exception as error:  # CheckpointError, a missing file, a class-count clash, a contradicting --version
        print(f"error: {error}", file=sys.stderr)
        return 2
    recipe = model.recipe           # the checkpoint's own, else --version's
    clips = resolve_recipe(recipe.spec, frames=args.frames, test_crop=args.crop, jitter_follows="test_crop")
    frames, crop = clips.frames, clips.test_crop
    out = args.out or f"{recipe.name.lower().replace('-', '_')}{'_fp16' if args.fp16 else ''}.onnx"
    started = time.time()
    export(model, out, frames, crop, args.opset, args.fp16, rate=recipe.spec.rate)
    size = os.path.getsize(out) / 2**20
    print(f"exported {recipe.name} to {out} ({size:.1f} MiB, input (batch, 3, {frames}, {crop}, {crop}), "
          f"opset {args.opset}{', float16' if args.fp16 else ''}) in {time.time() - started:.1f} s")
    if args.no_check:
        return 0
    tolerance = PARITY_TOLERANCE_FP16 if args.fp16 else PARITY_TOLERANCE
    difference = check_parity(model, out, frames, crop)
    verdict = "OK" if difference <= tolerance else "FAILED"
    print(f"parity (ONNX Runtime vs PyTorch, batch 1 and 3, random input): max abs logits difference "
          f"{difference:.3g} (tolerance {tolerance:g}) {verdict}")
    return 0 if difference <= tolerance else 1


if __name__ == "__main__":
    sys.exit(main())
