"""Kinetics-style multi-view evaluation: video-level top-1 / top-5 over 1, 3, 10 or 30 views, with the PyTorch model
or an exported ONNX model.

    python evaluate.py --data data/synthetic/kinetics --version S --weights x3d_s.pyth --views 10x3
    python evaluate.py --data data/synthetic/kinetics --backend onnxruntime --onnx x3d_s.onnx --views 30

A video's prediction is the mean of its views' softmax (metrics.VideoAggregator); top-k is counted over videos,
not clips. The view loop and the per-video CSV are evaluation.accumulate_views and
evaluation.write_video_predictions, the same code the training scripts' evaluation runs.
"""
import argparse
import os
import sys
import time

import torch

from evaluation import accumulate_views, add_softmax, write_unreadable_list, write_video_predictions
from metrics import VideoAggregator, parse_views, video_topk
from recipe import resolve_recipe


def evaluate_views(predict_fn, loader, num_videos, num_classes, device="cpu", progress=False):
    """Run `predict_fn(normalized float batch) -> logits` over every view the loader yields (dicts with uint8
    'clip', 'label', 'video_index', 'bad', 'unreadable', as dataset.VideoDataset gives them) and combine each
    video's views; unreadable views are left out, and so is the video they belong to.

    Returns dict(top1, top5 (percent over the videos scored), scores (num_videos x classes mean softmax, NaN rows
    for videos without views or with an unreadable one), labels (num_videos, -1 where unseen), views (per video),
    unreadable (unreadable views per video), bad (replaced samples), clips, seconds)."""
    device = torch.device(device)
    aggregator = VideoAggregator(num_videos, num_classes, combine="mean")
    labels = torch.full((num_videos,), -1, dtype=torch.long)
    started = time.time()

    def add_views(aggregator, logits, batch):
        """Kinetics scoring that also notes each video's label as its views pass: the loader alone tells which
        videos it covers."""
        add_softmax(aggregator, logits, batch)
        labels[batch["video_index"].cpu()] = batch["label"].cpu()

    with torch.inference_mode():
        clips, bad = accumulate_views(predict_fn, loader, add_views, aggregator, device, progress=progress,
                                      desc="evaluate")
    scores = aggregator.scores()
    topk = video_topk(scores, labels, ks=(1, 5))
    return dict(top1=topk[1], top5=topk[5], scores=scores, labels=labels, views=aggregator.counts.clone(),
                unreadable=aggregator.unreadable.clone(), bad=bad, clips=clips, seconds=time.time() - started)


def write_predictions(path, result, video_paths=None, class_names=None, k=5):
    """One row per video (evaluation.write_video_predictions), with the number of views each video got."""
    write_video_predictions(path, result["scores"], result["labels"], views=result["views"],
                            video_paths=video_paths, class_names=class_names, k=k, unreadable=result["unreadable"])


def build_loader(data, split, spec_frames, rate, crop, jitter, views, batch_size, workers, layout="auto"):
    from dataset import VideoDataset
    temporal, spatial = views
    dataset = VideoDataset(data, split=split, layout=layout, mode="test", frames=spec_frames, rate=rate,
                           train_crop=crop, jitter=jitter, test_crop=crop, temporal_views=temporal,
                           spatial_crops=spatial)
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         pin_memory=torch.cuda.is_available(), persistent_workers=False)
    return dataset, loader


def main(argv=None):
    from inference import make_predictor

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="data set root (any layout of dataset.VideoDataset)")
    parser.add_argument("--split", default="val")
    parser.add_argument("--layout", default="auto")
    parser.add_argument("--version", default=None, help="XS, S, M, L, XL for checkpoints that do not say it "
                                                         "(default S; a project checkpoint or ONNX file gives its own)")
    parser.add_argument("--weights", help="checkpoint in any supported format (pytorch backend)")
    parser.add_argument("--views", default="10x3", help="TEMPORALxSPATIAL or 1/3/10/30 (default 10x3)")
    parser.add_argument("--backend", default="pytorch", choices=("pytorch", "onnxruntime"))
    parser.add_argument("--onnx", help="exported model (export_onnx.py) for --backend onnxruntime")
    parser.add_argument("--frames", type=int, help="clip length (default: the version's, or the ONNX file's)")
    parser.add_argument("--rate", type=int, help="temporal stride at 30 fps (default: the version's)")
    parser.add_argument("--crop", type=int, help="test crop (default: the version's, or the ONNX file's)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--out", help="per-video CSV (default: none)")
    args = parser.parse_args(argv)

    try:
        views = parse_views(args.views)
        if args.backend == "onnxruntime":
            predictor = make_predictor("onnxruntime", version=args.version, onnx=args.onnx)
            if (args.frames and predictor.frames and args.frames != predictor.frames) or \
                    (args.crop and predictor.crop and args.crop != predictor.crop):
                raise ValueError(f"{args.onnx} was exported for {predictor.frames} frames x {predictor.crop} px")
            device = "cpu"
        else:
            predictor = make_predictor("pytorch", version=args.version, weights=args.weights, device=args.device)
            device = args.device
        recipe = predictor.recipe            # the checkpoint's or ONNX file's own, else --version's
        clips = resolve_recipe(recipe.spec, frames=args.frames or getattr(predictor, "frames", None), rate=args.rate,
                               test_crop=args.crop or getattr(predictor, "crop", None), jitter_follows="test_crop")
        frames, rate, crop = clips.frames, clips.rate, clips.test_crop
        dataset, loader = build_loader(args.data, args.split, frames, rate, crop, clips.jitter, views, args.batch_size,
                                       args.workers, args.layout)
    except Exception as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    num_classes = predictor.num_classes or dataset.num_classes
    if num_classes != dataset.num_classes:
        print(f"WARNING: the model has {num_classes} classes, {args.data} has {dataset.num_classes}", file=sys.stderr)
    print(f"evaluating {recipe.name} ({predictor.name}) on {dataset.num_videos} videos x {views[0]}x{views[1]} "
          f"views, clips {frames} x {crop} px, rate {rate}")
    result = evaluate_views(predictor, loader, dataset.num_videos, num_classes, device, progress=sys.stderr.isatty())
    scored = int((~torch.isnan(result["scores"]).any(dim=1)).sum())
    print(f"video top-1 {result['top1']:.2f}%  top-5 {result['top5']:.2f}%  ({scored}/{dataset.num_videos} videos, "
          f"{result['clips']} clips, {result['seconds']:.1f} s)")
    if args.out:
        write_predictions(args.out, result, dataset.video_paths, dataset.class_names)
        print(f"per-video predictions: {args.out}")
    unreadable = int((result["unreadable"] > 0).sum())
    if unreadable and args.out:
        listed = os.path.splitext(args.out)[0] + "_unreadable.txt"
        print(f"{write_unreadable_list(listed, dataset, result['unreadable'])} of {dataset.num_videos} test videos "
              f"unreadable, listed in {listed}")
    elif unreadable:
        print(f"{unreadable} of {dataset.num_videos} test videos unreadable (--out lists them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
