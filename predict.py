"""Top-5 classes of one or more videos (mp4 / webm / avi / mkv / ... or JPEG frame folders).

    python predict.py clip.mp4 --version S --weights x3d_s.pyth
    python predict.py clip.mp4 --weights models/<run>/best.pt           # the run's own model, clips and classes
    python predict.py a.mp4 b.webm frames_dir/ --onnx x3d_s.onnx --views 10x3 --json

Each video is cut into the authors' test views (evenly spaced clips x 1 or 3 crops, decoded once through
dataset.video_io), every view is classified, and the video's scores are the mean of the views' softmax.
A checkpoint of this project's training scripts gives the architecture (X3D or I3D), version, clip recipe and class
names; other class names default to the Kinetics-400 list shipped in the repo (kinetics400_classes.txt).
A missing or unreadable input is read again, then reported and skipped (no other input stands in for it); the
others are still predicted; the exit code is 1 then.

Backend: with --onnx, ONNX Runtime (the fastest CPU backend in benchmarks/bench_inference.py); otherwise PyTorch.
"""
import argparse
import json
import sys
import time

import torch

from dataset import read_class_names
from dataset.base import EVALUATION_RETRIES
from dataset.kinetics import FRAMES_FPS, read_test_views
from dataset.video_io import VideoReadError
from inference import DEFAULT_LABELS, make_predictor
from metrics import parse_views
from recipe import resolve_recipe
from transforms import normalize_batch


def read_views(path, frames, rate, crop, temporal_views, spatial_crops, jitter_min, frames_fps=FRAMES_FPS):
    """uint8 (views, 3, frames, crop, crop) test views of one video file or frame folder, temporal-major (view
    t * spatial_crops + s): the dataset's test views (dataset.kinetics.read_test_views), from one decoding pass;
    a failed read is tried again as the datasets' test views are (dataset.base.EVALUATION_RETRIES)."""
    resize = crop if spatial_crops == 3 else max(crop, jitter_min)
    for attempt in range(1 + EVALUATION_RETRIES):
        try:
            return read_test_views(path, frames, rate, crop, temporal_views, spatial_crops, resize, frames_fps)
        except VideoReadError:
            if attempt == EVALUATION_RETRIES:
                raise


def predict_video(predictor, path, clip_args, batch_size=16, k=5):
    """Mean softmax over the views of one video -> (probabilities (classes,), number of views)."""
    views = read_views(path, **clip_args)
    total = None
    for start in range(0, len(views), batch_size):
        x = normalize_batch(views[start:start + batch_size].to(predictor.device))
        probs = torch.softmax(torch.as_tensor(predictor(x)).float(), dim=1).sum(0).cpu()
        total = probs if total is None else total + probs
    return total / len(views), len(views)


def build_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("videos", nargs="+", help="video files or JPEG frame folders")
    parser.add_argument("--version", default=None,
                        help="XS, S, M, L, XL for checkpoints that do not say it (default S); a training checkpoint of "
                             "this project or an exported ONNX file gives its own version, recipe and class names")
    parser.add_argument("--weights", help="checkpoint in any supported format (without it: random weights, a warning)")
    parser.add_argument("--onnx", help="exported model (export_onnx.py): runs with ONNX Runtime")
    parser.add_argument("--backend", default="auto", choices=("auto", "pytorch", "onnxruntime"),
                        help="auto: onnxruntime when --onnx is given, else pytorch")
    parser.add_argument("--labels", help="class names, one a line (default: the checkpoint's, else "
                                         "kinetics400_classes.txt)")
    parser.add_argument("--views", default="10x3", help="TEMPORALxSPATIAL or 1/3/10/30 (default 10x3)")
    parser.add_argument("--frames", type=int, help="clip length (default: the version's)")
    parser.add_argument("--rate", type=int, help="temporal stride at 30 fps (default: the version's)")
    parser.add_argument("--crop", type=int, help="test crop (default: the version's test crop)")
    parser.add_argument("--frames-fps", type=float, default=FRAMES_FPS,
                        help=f"frame rate of frame folders (default {FRAMES_FPS})")
    parser.add_argument("--top", type=int, default=5, help="classes to show (default 5)")
    parser.add_argument("--batch-size", type=int, default=16, help="views per forward pass")
    parser.add_argument("--device", default="cpu", help="pytorch backend device (cpu, cuda, ...)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    return parser


def names_to_show(given_names, labels_path, recipe, num_classes):
    """--labels, or the checkpoint's own class names, or the Kinetics-400 list; a count the model contradicts is an
    error, except for the default list (then class numbers, with a warning)."""
    class_names, labels_path = given_names or recipe.class_names, labels_path or recipe.source
    if class_names is None:
        class_names, labels_path = read_class_names(DEFAULT_LABELS), DEFAULT_LABELS
    class_names = list(class_names)
    if num_classes and num_classes != len(class_names):
        if given_names or recipe.class_names:
            raise ValueError(f"{labels_path} has {len(class_names)} names, the model {num_classes} classes")
        print(f"WARNING: the model has {num_classes} classes, not the {len(class_names)} Kinetics-400 names: "
              "showing class numbers (pass --labels FILE)", file=sys.stderr)
        class_names = [f"class {i}" for i in range(num_classes)]
    return class_names


def main(argv=None):
    args = build_parser().parse_args(argv)

    backend = args.backend if args.backend != "auto" else ("onnxruntime" if args.onnx else "pytorch")
    try:
        views = parse_views(args.views)
        given_names = read_class_names(args.labels) if args.labels else None
        predictor = make_predictor(backend, version=args.version, weights=args.weights, onnx=args.onnx,
                                   device=args.device, n_classes=len(given_names) if given_names else None,
                                   verbose=not args.json)
        recipe = predictor.recipe
        # an ONNX file's fixed shape comes before the recipe's
        clips = resolve_recipe(recipe.spec, frames=args.frames or getattr(predictor, "frames", None), rate=args.rate,
                               test_crop=args.crop or getattr(predictor, "crop", None), jitter_follows="test_crop")
        frames, rate, crop = clips.frames, clips.rate, clips.test_crop
        if backend == "onnxruntime" and (frames, crop) != (predictor.frames or frames, predictor.crop or crop):
            raise ValueError(f"{args.onnx} takes {predictor.frames} frames x {predictor.crop} px clips")
        class_names = names_to_show(given_names, args.labels, recipe, predictor.num_classes)
    except Exception as error:  # bad weights, labels, ONNX file or options: nothing to predict with
        print(f"error: {error}", file=sys.stderr)
        return 2

    clip_args = dict(frames=frames, rate=rate, crop=crop, temporal_views=views[0], spatial_crops=views[1],
                     jitter_min=clips.jitter[0], frames_fps=args.frames_fps)
    results, failed = [], 0
    for path in args.videos:
        started = time.time()
        try:
            probs, num_views = predict_video(predictor, path, clip_args, args.batch_size)
        except Exception as error:  # VideoReadError for bad files; anything else from a decoder counts the same
            failed += 1
            message = str(error) if isinstance(error, VideoReadError) else f"{path}: {type(error).__name__}: {error}"
            results.append({"path": path, "ok": False, "error": message})
            print(f"error: {message}", file=sys.stderr)
            continue
        top_probs, top_ids = probs.topk(min(args.top, len(probs)))
        result = {"path": path, "ok": True, "views": num_views, "seconds": round(time.time() - started, 3),
                  "top": [{"class": class_names[i], "index": i, "probability": round(p, 6)}
                          for p, i in zip(top_probs.tolist(), top_ids.tolist())]}
        results.append(result)
        if not args.json:
            print(f"{path}  ({num_views} views, {predictor.name}, {result['seconds']:.1f} s)")
            for rank, entry in enumerate(result["top"], 1):
                print(f"  {rank}. {entry['probability']:7.2%}  {entry['class']}")
    if args.json:
        json.dump({"model": recipe.name, "backend": predictor.name, "views": f"{views[0]}x{views[1]}",
                   "clip": {"frames": frames, "rate": rate, "crop": crop}, "results": results}, sys.stdout, indent=2)
        print()
    if failed:
        print(f"{failed} of {len(args.videos)} inputs failed", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
