"""Multi-view evaluation without training code: the loop that runs every view of a data set through a model (or an
ONNX Runtime predictor) and folds it into a per-video aggregator, the cross-process reduction of that aggregator,
and the per-video predictions file. The training engine's evaluation and test, evaluate.py and predict.py share it.

    aggregator = VideoAggregator(dataset.num_videos, dataset.num_classes)
    accumulate_views(model, loader, add_softmax, aggregator, device)
    scores = reduce_views(aggregator, device).scores()          # (videos, classes), NaN rows for unseen videos
"""
import csv
import os

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm import tqdm

from transforms import normalize_batch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def to_device(batch, device):
    return {k: v.to(device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}


def autocast(amp, device):
    """torch.autocast for --amp 'bf16' / 'fp16'; 'none' (or None): a context that changes nothing."""
    dtype = AMP_DTYPES.get(amp)
    return torch.autocast(device.type, dtype=dtype, enabled=dtype is not None)


def add_softmax(aggregator, logits, batch):
    """Kinetics scoring: each view's softmax into its video's row."""
    aggregator.add(F.softmax(logits.float(), dim=1), batch["video_index"])


def accumulate_views(predict_fn, loader, add_views, aggregator, device, amp=None, progress=False, desc="eval"):
    """The one multi-view loop: normalize each batch on the device, predict with a model or an ONNX Runtime
    predictor, fold the views into the aggregator with `add_views(aggregator, logits, batch)`.
    Returns (clips, bad samples that were replaced)."""
    clips = bad = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        batch = to_device(batch, device)
        with autocast(amp, device):
            logits = torch.as_tensor(predict_fn(normalize_batch(batch["clip"]))).float()
        add_views(aggregator, logits, batch)
        clips += len(batch["video_index"])
        bad += int(batch["bad"].sum())
    return clips, bad


def reduce_views(aggregator, device):
    """Every process's views in every process's aggregator (a collective where torch.distributed is initialized:
    all ranks call it together); combined as the aggregator combines views (sum for 'mean', max for 'max')."""
    if dist.is_initialized():
        totals = aggregator.totals.to(device)
        dist.all_reduce(totals, dist.ReduceOp.SUM if aggregator.combine == "mean" else dist.ReduceOp.MAX)
        counts = aggregator.counts.to(device)
        dist.all_reduce(counts, dist.ReduceOp.SUM)
        aggregator.totals, aggregator.counts = totals.cpu(), counts.cpu()
    return aggregator


def write_video_predictions(path, scores, labels, views=None, video_paths=None, class_names=None, k=5):
    """Per-video CSV: index, path, label, top-k predicted ids and probabilities, top-1/top-k hit (and the number of
    views, where known). Shared by the training scripts' test and evaluate.py."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    k = min(k, scores.shape[1])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "path", "label", "label_name", "views", f"top{k}_ids", f"top{k}_probs",
                         "pred_name", "top1_correct", f"top{k}_correct"])
        for i in range(scores.shape[0]):
            label = int(labels[i])
            name = class_names[label] if class_names and 0 <= label < len(class_names) else ""
            path_i = video_paths[i] if video_paths else ""
            if torch.isnan(scores[i]).any():
                writer.writerow([i, path_i, label, name, 0, "", "", "", "", ""])
                continue
            probs, ids = scores[i].topk(k)
            ids = ids.tolist()
            pred = class_names[ids[0]] if class_names and ids[0] < len(class_names) else ""
            writer.writerow([i, path_i, label, name, "" if views is None else int(views[i]),
                             " ".join(map(str, ids)), " ".join(f"{p:.6f}" for p in probs.tolist()), pred,
                             int(ids[0] == label), int(label in ids)])
