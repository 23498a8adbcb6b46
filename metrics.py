"""Metrics: clip top-k, per-video aggregation of view scores, Charades mAP (classification and localization) with
the official scorers' arithmetic."""
import numpy as np
import torch


def topk_correct(logits, labels, ks=(1, 5)):
    """Number of samples whose label is among the top-k scores, for each k (k capped at the class count)."""
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices
    hits = top == labels.view(-1, 1)
    return {k: int(hits[:, :k].any(dim=1).sum()) for k in ks}


class VideoAggregator:
    """Combines per-view scores into one score vector per video (per row: `rows_per_video` rows each): 'mean'
    (Kinetics: mean of the views' softmax) or 'max' (Charades: element-wise max of the views' sigmoid). A video
    with a view that could not be read (`add_unreadable`) gets no scores at all: its other views are not the video
    the metric asks about."""

    def __init__(self, num_videos, num_classes, combine="mean", rows_per_video=1):
        if combine not in ("mean", "max"):
            raise ValueError(f"combine must be 'mean' or 'max', not {combine!r}")
        self.combine = combine
        fill = 0.0 if combine == "mean" else -np.inf
        self.rows_per_video = rows_per_video
        self.totals = torch.full((num_videos * rows_per_video, num_classes), fill, dtype=torch.float64)
        self.counts = torch.zeros(num_videos * rows_per_video, dtype=torch.long)
        self.unreadable = torch.zeros(num_videos, dtype=torch.long)  # each video's views that could not be read

    def add(self, scores, video_index):
        scores, video_index = scores.detach().double().cpu(), video_index.cpu()
        if self.combine == "mean":
            self.totals.index_add_(0, video_index, scores)
        else:
            # scatter_reduce_, not index_reduce_: the same maximum without torch's "beta API" warning in every run
            self.totals.scatter_reduce_(0, video_index.unsqueeze(1).expand_as(scores), scores, "amax")
        self.counts.index_add_(0, video_index, torch.ones_like(video_index))

    def add_unreadable(self, video_index):
        video_index = video_index.detach().long().cpu()
        self.unreadable.index_add_(0, video_index, torch.ones_like(video_index))

    def scores(self):
        seen = self.counts > 0
        out = self.totals.clone()
        if self.combine == "mean":
            out[seen] /= self.counts[seen].unsqueeze(1).double()
        out[~seen] = float("nan")
        out.view(len(self.unreadable), self.rows_per_video, -1)[self.unreadable > 0] = float("nan")
        return out.float()


def video_topk(scores, labels, ks=(1, 5)):
    """Top-k accuracy (percent) over videos that have scores."""
    seen = ~torch.isnan(scores).any(dim=1)
    if not seen.any():
        return {k: float("nan") for k in ks}
    correct = topk_correct(scores[seen], torch.as_tensor(labels)[seen], ks)
    return {k: 100.0 * c / int(seen.sum()) for k, c in correct.items()}


def thumos_average_precision(scores, positives):
    """Average precision per column as the official Charades scorers compute it (THUMOSeventclspr, from THUMOS15):
    rows ranked by descending score with MATLAB's stable sort, so equal scores keep their row order (the ground
    truth file's); the precision at each positive's rank, summed, over the number of positives (NaN without one).
    Where scores tie across positives and negatives this differs from sklearn's average_precision_score, which
    counts a tied group at one threshold. scores, positives: (rows, classes)."""
    order = np.argsort(-scores, axis=0, kind="stable")
    hits = np.take_along_axis(positives, order, axis=0).astype(np.float64)
    precision = np.cumsum(hits, axis=0) / np.arange(1, len(hits) + 1)[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        return (precision * hits).sum(axis=0) / hits.sum(axis=0)


def _official_map(scores, targets, unlabelled_rows_last):
    scores = np.asarray(scores, dtype=np.float64).copy()       # the -inf below must not reach the caller's
    targets = np.asarray(targets) > 0
    scores[np.isnan(scores).any(axis=1)] = -np.inf        # a row without scores: missing from the submission
    if unlabelled_rows_last:
        scores[~targets.any(axis=1)] = -np.inf
    with_positives = targets.any(axis=0)
    if not with_positives.any():
        raise ValueError("mAP is undefined: no class has a positive sample")
    return 100.0 * float(np.mean(thumos_average_precision(scores, targets)[with_positives]))


def charades_classify_map(scores, targets):
    """Charades classification mAP (percent) with the arithmetic of the official Charades_v1_classify.m.
    scores, targets: (videos, classes) in the test CSV's order; a NaN row is a video missing from the submission.
    As the official scorer: a missing video scores -inf in every class, and so does a video without any action
    (its loader never records the id, so its submitted scores are not looked up); AP per class by
    thumos_average_precision. The official mean over all classes is undefined (NaN) when a class has no positive,
    as on small sets; this is the mean over the classes with one (every class has one on the real test set)."""
    return _official_map(scores, targets, unlabelled_rows_last=True)


def charades_localize_map(scores, targets):
    """Charades localization mAP (percent) with the arithmetic of the official Charades_v1_localize.m: rows are
    (video, time point) pairs in the test CSV's order (metrics.LOCALIZATION_POINTS per video); a NaN row is a point
    missing from the submission and scores -inf; a point without actions is an ordinary negative (the localize
    loader records every id). AP and the mean over classes as charades_classify_map."""
    return _official_map(scores, targets, unlabelled_rows_last=False)


def classes_with_positives(targets):
    """How many classes the Charades mAP averages over: those with a positive."""
    return int((np.asarray(targets) > 0).any(axis=0).sum())


LOCALIZATION_POINTS = 25


def localization_times(video_length_s, points=LOCALIZATION_POINTS):
    """The official Charades_v1_localize protocol: time point j (submitted as frame j+1) is j/25 of the video's
    length, j = 0..24; an action counts at a point when start <= t <= end."""
    return np.arange(points) / points * video_length_s


class LocalizationAggregator(VideoAggregator):
    """Charades localization: one row per (video, official time point), `row = video * points + j`; a view's
    per-frame scores reach the points inside its time span (each point takes its nearest clip frame), views are
    combined by element-wise max, and `scores()` gives a point no view reached the scores of its video's nearest
    reached point. `video_lengths` in seconds."""

    def __init__(self, video_lengths, num_classes, points=LOCALIZATION_POINTS):
        lengths = torch.as_tensor(np.asarray(video_lengths, dtype=np.float64))
        super().__init__(len(lengths), num_classes, "max", rows_per_video=points)
        self.points = points
        self.point_times = torch.stack([torch.as_tensor(localization_times(float(n), points)) for n in lengths]) \
            if len(lengths) else torch.zeros(0, points, dtype=torch.float64)

    def add_frames(self, frame_scores, video_index, frame_times):
        """frame_scores (B, classes, T), video_index (B,), frame_times (B, T) seconds, increasing. A point counts
        as inside a view when it lies within half a frame step of the view's first to last frame."""
        frame_scores = frame_scores.detach().double().cpu()
        video_index = video_index.detach().long().cpu()
        times = frame_times.detach().double().cpu()
        points = self.point_times[video_index]                                  # (B, P)
        step = (times[:, -1] - times[:, 0]) / max(times.shape[1] - 1, 1)         # (B,)
        inside = (points >= (times[:, :1] - step[:, None] / 2)) & (points <= (times[:, -1:] + step[:, None] / 2))
        nearest = (points[:, :, None] - times[:, None, :]).abs().argmin(dim=2)  # (B, P): clip frame per point
        picked = frame_scores.gather(2, nearest[:, None, :].expand(-1, frame_scores.shape[1], -1))  # (B, C, P)
        rows = video_index[:, None] * self.points + torch.arange(self.points)[None, :]
        if inside.any():
            self.add(picked.transpose(1, 2)[inside], rows[inside])

    def scores(self):
        out = super().scores().view(-1, self.points, self.totals.shape[1])
        for video in range(out.shape[0]):
            reached = torch.nonzero(self.counts.view(-1, self.points)[video] > 0).flatten()
            if len(reached) == 0 or len(reached) == self.points:
                continue
            times = self.point_times[video]
            source = reached[(times[:, None] - times[reached][None, :]).abs().argmin(dim=1)]
            out[video] = out[video][source]
        return out.view(-1, self.totals.shape[1])


VIEW_PRESETS = {1: (1, 1), 3: (3, 1), 10: (10, 1), 30: (10, 3)}  # views -> (temporal clips, spatial crops)


def parse_views(text):
    """'10x3' -> (10, 3); '30' -> (10, 3), '10' -> (10, 1), '3' -> (3, 1), '1' -> (1, 1)."""
    text = str(text).lower().strip()
    try:
        if "x" in text:
            temporal, spatial = (int(part) for part in text.split("x"))
        else:
            temporal, spatial = VIEW_PRESETS[int(text)]
    except (ValueError, KeyError):
        raise ValueError(f"views must be TEMPORALxSPATIAL (e.g. 10x3) or one of {sorted(VIEW_PRESETS)}, "
                         f"got {text!r}") from None
    if temporal < 1 or spatial not in (1, 3):
        raise ValueError(f"views {text!r}: need at least 1 temporal clip and 1 or 3 spatial crops")
    return temporal, spatial
