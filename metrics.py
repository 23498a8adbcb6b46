"""Metrics: clip top-k, per-video aggregation of view scores, Charades mAP (classification and localization)."""
import numpy as np
import torch
from sklearn.metrics import average_precision_score


def topk_correct(logits, labels, ks=(1, 5)):
    """Number of samples whose label is among the top-k scores, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.view(-1, 1)
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


class VideoAggregator:
    """Combines per-view scores into one score vector per video: 'mean' (Kinetics: mean of the views' softmax) or
    'max' (Charades: element-wise max of the views' sigmoid)."""

    def __init__(self, num_videos, num_classes, combine="mean"):
        if combine not in ("mean", "max"):
            raise ValueError(f"combine must be 'mean' or 'max', not {combine!r}")
        self.combine = combine
        fill = 0.0 if combine == "mean" else -np.inf
        self.totals = torch.full((num_videos, num_classes), fill, dtype=torch.float64)
        self.counts = torch.zeros(num_videos, dtype=torch.long)

    def add(self, scores, video_index):
        scores, video_index = scores.detach().double().cpu(), video_index.cpu()
        if self.combine == "mean":
            self.totals.index_add_(0, video_index, scores)
        else:
            self.totals.index_reduce_(0, video_index, scores, "amax")
        self.counts.index_add_(0, video_index, torch.ones_like(video_index))

    def merge(self, other_totals, other_counts):
        """Fold in another process's partial results (distributed evaluation)."""
        if self.combine == "mean":
            self.totals += other_totals
        else:
            self.totals = torch.maximum(self.totals, other_totals)
        self.counts += other_counts

    def scores(self):
        seen = self.counts > 0
        out = self.totals.clone()
        if self.combine == "mean":
            out[seen] /= self.counts[seen].unsqueeze(1).double()
        out[~seen] = float("nan")
        return out.float()


def video_topk(scores, labels, ks=(1, 5)):
    """Top-k accuracy (percent) over videos that have scores."""
    seen = ~torch.isnan(scores).any(dim=1)
    if not seen.any():
        return {k: float("nan") for k in ks}
    correct = topk_correct(scores[seen], torch.as_tensor(labels)[seen], ks)
    return {k: 100.0 * c / int(seen.sum()) for k, c in correct.items()}


def mean_average_precision(scores, targets):
    """Charades mAP: sklearn's average precision per class, averaged over classes with at least one positive.
    scores, targets: (N, classes). Returns percent."""
    scores = np.asarray(scores, dtype=np.float64)
    targets = np.asarray(targets) > 0
    with_positives = targets.any(axis=0)
    if not with_positives.any():
        raise ValueError("mAP is undefined: no class has a positive sample")
    aps = [average_precision_score(targets[:, c], scores[:, c]) for c in np.flatnonzero(with_positives)]
    return 100.0 * float(np.mean(aps))


LOCALIZATION_POINTS = 25


def localization_times(video_length_s, points=LOCALIZATION_POINTS):
    """The official Charades_v1_localize protocol: time point j (submitted as frame j+1) is j/25 of the video's
    length, j = 0..24; an action counts at a point when start <= t <= end."""
    return np.arange(points) / points * video_length_s
