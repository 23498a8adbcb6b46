"""Multi-view evaluation without training code: the loop that runs every view of a data set through a model (or an
ONNX Runtime predictor) and folds it into a per-video aggregator, the cross-process reduction of that aggregator,
the per-video predictions file, and precise BN (the statistics an evaluation uses). The training engine's
evaluation and test, evaluate.py and predict.py share it.

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
    predictor, fold the views into the aggregator with `add_views(aggregator, logits, batch)`; views marked
    unreadable (dataset.base's placeholders) are counted in the aggregator instead.
    Returns (clips predicted, bad samples that were replaced)."""
    clips = bad = 0
    for batch in tqdm(loader, desc=desc, leave=False, disable=not progress, dynamic_ncols=True):
        bad += int(batch["bad"].sum())
        batch = readable_views(aggregator, to_device(batch, device))
        if len(batch["video_index"]) == 0:
            continue
        with autocast(amp, device):
            logits = torch.as_tensor(predict_fn(normalize_batch(batch["clip"]))).float()
        add_views(aggregator, logits, batch)
        clips += len(batch["video_index"])
    return clips, bad


def readable_views(aggregator, batch):
    """The batch without its views marked 'unreadable', which go to `aggregator.add_unreadable` instead."""
    flags = batch.get("unreadable")
    if flags is None or not flags.any():
        return batch
    flags = flags.bool()
    aggregator.add_unreadable(batch["video_index"][flags])
    return {k: v[~flags] if torch.is_tensor(v) and v.dim() and len(v) == len(flags) else v for k, v in batch.items()}


def reduce_views(aggregator, device):
    """Every process's views in every process's aggregator (a collective where torch.distributed is initialized:
    all ranks call it together); combined as the aggregator combines views (sum for 'mean', max for 'max')."""
    if dist.is_initialized():
        totals = aggregator.totals.to(device)
        dist.all_reduce(totals, dist.ReduceOp.SUM if aggregator.combine == "mean" else dist.ReduceOp.MAX)
        counts = aggregator.counts.to(device)
        dist.all_reduce(counts, dist.ReduceOp.SUM)
        unreadable = aggregator.unreadable.to(device)
        dist.all_reduce(unreadable, dist.ReduceOp.SUM)
        aggregator.totals, aggregator.counts, aggregator.unreadable = totals.cpu(), counts.cpu(), unreadable.cpu()
    return aggregator


@torch.no_grad()
def evaluate(model, loader, task, dataset, device, amp=None, progress=False, desc="eval"):
    """Every view `loader` gives (each rank its share), combined per video as `task` combines them, reduced over
    ranks (a collective) -> (task.metrics, per-video scores, per-video unreadable views)."""
    model.eval()
    aggregator = task.aggregator(dataset)
    accumulate_views(model, loader, task.add_views, aggregator, device, amp, progress=progress, desc=desc)
    scores = reduce_views(aggregator, device).scores()
    return task.metrics(scores, dataset), scores, aggregator.unreadable


@torch.no_grad()
def precise_bn(model, loader, device, amp=None):
    """Recompute every BN layer's statistics as true averages over the training batches of `loader` (every rank's:
    a collective), at the shape they come in: multigrid's coarse phases leave running averages that do not fit the
    evaluation shape. Split BN normalizes whole batches meanwhile; the model's mode, momenta and splits are kept."""
    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return
    saved = [(m.momentum, getattr(m, "num_splits", 1)) for m in bns]
    sums = [(torch.zeros_like(m.running_mean), torch.zeros_like(m.running_var)) for m in bns]
    for m in bns:
        m.momentum = 1.0                     # each forward leaves exactly this batch's statistics in the buffers
        if hasattr(m, "num_splits"):
            m.num_splits = 1
    was_training = model.training
    model.train()
    count = 0
    for batch in loader:
        with autocast(amp, device):
            model(normalize_batch(batch["clip"].to(device, non_blocking=True)))
        for (mean, var), m in zip(sums, bns):
            mean += m.running_mean
            var += m.running_var
        count += 1
    counts = _all_reduce(torch.tensor(float(count), device=device))
    for (mean, var), m, (momentum, splits) in zip(sums, bns, saved):
        m.running_mean.copy_(_all_reduce(mean) / counts)
        m.running_var.copy_(_all_reduce(var) / counts)
        m.momentum = momentum
        if hasattr(m, "num_splits"):
            m.num_splits = splits
    model.train(was_training)


def _all_reduce(tensor):
    if dist.is_initialized():
        dist.all_reduce(tensor)
    return tensor


def write_video_predictions(path, scores, labels, views=None, video_paths=None, class_names=None, k=5,
                            unreadable=None):
    """Per-video CSV: index, path, label, top-k predicted ids and probabilities, top-1/top-k hit (and the number of
    views, where known), and the number of views that could not be read (a video with any has no prediction).
    Shared by the training scripts' test and evaluate.py."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    k = min(k, scores.shape[1])
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["video", "path", "label", "label_name", "views", f"top{k}_ids", f"top{k}_probs",
                         "pred_name", "top1_correct", f"top{k}_correct", "unreadable_views"])
        for i in range(scores.shape[0]):
            label = int(labels[i])
            name = class_names[label] if class_names and 0 <= label < len(class_names) else ""
            path_i = video_paths[i] if video_paths else ""
            lost = 0 if unreadable is None else int(unreadable[i])
            if torch.isnan(scores[i]).any():
                writer.writerow([i, path_i, label, name, 0, "", "", "", "", "", lost])
                continue
            probs, ids = scores[i].topk(k)
            ids = ids.tolist()
            pred = class_names[ids[0]] if class_names and ids[0] < len(class_names) else ""
            writer.writerow([i, path_i, label, name, "" if views is None else int(views[i]),
                             " ".join(map(str, ids)), " ".join(f"{p:.6f}" for p in probs.tolist()), pred,
                             int(ids[0] == label), int(label in ids), lost])


def write_unreadable_list(path, dataset, unreadable):
    """`<video path>\t<unreadable views>\t<why>` for every video of `dataset` (a ClipDataset) with unreadable
    views (`unreadable`: per video, as the aggregator counted them); returns how many."""
    videos = torch.nonzero(torch.as_tensor(unreadable) > 0).flatten().tolist()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for video in videos:
            reason = dataset.read_error(video) or "read fine when checked again: a passing error"
            f.write(f"{dataset.sample_path(video)}\t{int(unreadable[video])}\t{reason}\n")
    return len(videos)
