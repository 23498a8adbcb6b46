"""metrics.py against hand-computed cases and sklearn."""
import json
import math
import subprocess
import sys

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from conftest import REPO
from metrics import VideoAggregator, localization_times, mean_average_precision, topk_correct, video_topk


def test_topk_counts_hits():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.05], [0.2, 0.3, 0.5]])
    labels = torch.tensor([1, 2, 0])
    assert topk_correct(logits, labels, ks=(1, 2)) == {1: 1, 2: 1}   # rows 2 and 3 miss the top 2
    assert topk_correct(logits, labels, ks=(1, 5)) == {1: 1, 5: 3}   # k capped at the class count


def test_video_aggregation_mean_and_max():
    mean = VideoAggregator(2, 3, "mean")
    mean.add(torch.tensor([[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]]), torch.tensor([0, 0, 1]))
    assert torch.allclose(mean.scores(), torch.tensor([[0.5, 0.5, 0], [0, 0, 1.0]]))
    peak = VideoAggregator(1, 2, "max")
    peak.add(torch.tensor([[0.2, 0.9], [0.7, 0.1]]), torch.tensor([0, 0]))
    assert torch.allclose(peak.scores(), torch.tensor([[0.7, 0.9]]))


def test_max_aggregation_over_several_batches_and_videos_warns_nothing():
    # torch warns once per process, so the check runs in a fresh one, with warnings as errors
    code = ("import json, torch; from metrics import VideoAggregator; a = VideoAggregator(3, 2, 'max'); "
            "a.add(torch.tensor([[0.2, 0.9], [0.7, 0.1]]), torch.tensor([0, 2])); "
            "a.add(torch.tensor([[0.5, 0.3], [0.6, 0.4], [0.1, 0.95]]), torch.tensor([0, 2, 2])); "
            "print(json.dumps(a.scores().tolist()))")
    result = subprocess.run([sys.executable, "-W", "error", "-c", code], cwd=REPO, capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    scores = json.loads(result.stdout)
    assert scores[0] == pytest.approx([0.5, 0.9]) and scores[2] == pytest.approx([0.7, 0.95])
    assert all(math.isnan(v) for v in scores[1])                  # video 1 has no views


def test_video_topk_ignores_videos_without_views():
    agg = VideoAggregator(3, 3)
    agg.add(torch.tensor([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]), torch.tensor([0, 2]))
    result = video_topk(agg.scores(), [1, 0, 1], ks=(1, 2))
    assert result == {1: 50.0, 2: 100.0}


def test_map_hand_computed_case():
    # class 0: positives ranked 1st and 3rd -> AP = (1/1 + 2/3) / 2; class 1: positive ranked 2nd -> AP = 1/2;
    # class 2 has no positive and is left out.
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.7, 0.9, 0.1], [0.1, 0.2, 0.0]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    expected = 100 * ((1 + 2 / 3) / 2 + 1 / 2) / 2
    assert mean_average_precision(scores, targets) == pytest.approx(expected)


def test_map_agrees_with_sklearn_per_class():
    rng = np.random.default_rng(0)
    targets = rng.random((50, 7)) < 0.3
    targets[:, 6] = False
    scores = rng.random((50, 7)) + targets * 0.3
    expected = 100 * np.mean([average_precision_score(targets[:, c], scores[:, c]) for c in range(6)])
    assert mean_average_precision(scores, targets) == pytest.approx(expected)
    with pytest.raises(ValueError, match="no class has a positive"):
        mean_average_precision(scores, np.zeros_like(targets))


def test_localization_time_points_follow_the_official_protocol():
    times = localization_times(50.0)
    assert len(times) == 25 and times[0] == 0.0 and times[1] == pytest.approx(2.0) and times[-1] == pytest.approx(48.0)


def thumos_average_precision(scores, positives):
    """The official Charades/THUMOS AP: precision at each positive's rank in the descending order, averaged."""
    order = np.argsort(-scores, kind="stable")
    hits = positives[order].astype(np.float64)
    precision = np.cumsum(hits) / np.arange(1, len(hits) + 1)
    return float((precision * hits).sum() / hits.sum())


def test_official_thumos_ap_equals_sklearn_for_untied_scores():
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        positives = rng.random(n) < rng.uniform(0.05, 0.6)
        positives[rng.integers(n)] = True
        scores = rng.random(n)                      # continuous: no ties
        assert thumos_average_precision(scores, positives) == pytest.approx(
            average_precision_score(positives, scores), abs=1e-12)


def test_localization_aggregator_two_videos_hand_computed():
    from metrics import LocalizationAggregator
    # video 0: 5.0 s -> points every 0.2 s; video 1: 2.5 s -> every 0.1 s. Each view has 3 frames, 2 classes.
    agg = LocalizationAggregator([5.0, 2.5], num_classes=2)
    assert agg.point_times.shape == (2, 25) and agg.point_times[1, 24] == pytest.approx(2.4)
    times = torch.tensor([[0.0, 1.0, 2.0],      # A, video 0: reaches points 0..12 (t <= 2.5), frame edges 0.5, 1.5
                          [3.1, 3.5, 3.9],      # B, video 0: reaches points 15..20 (2.9 <= t <= 4.1)
                          [0.25, 1.25, 2.25],   # C, video 1: reaches every point, frame edges 0.75, 1.75
                          [0.58, 1.08, 1.58]])  # D, video 1: reaches points 4..18 (0.33 <= t <= 1.83)
    frames = torch.tensor([[[0.1, 0.2, 0.3], [0.9, 0.8, 0.7]],
                           [[0.4, 0.5, 0.6], [0.6, 0.5, 0.4]],
                           [[0.1, 0.2, 0.3], [0.1, 0.2, 0.3]],
                           [[0.9, 0.0, 0.5], [0.0, 0.9, 0.5]]])
    agg.add_frames(frames, torch.tensor([0, 0, 1, 1]), times)
    reached = agg.counts.view(2, 25) > 0
    assert reached[0].tolist() == [True] * 13 + [False] * 2 + [True] * 6 + [False] * 4
    assert reached[1].all()
    scores = agg.scores().view(2, 25, 2)
    # video 0: A's frames at points 0-2 / 3-7 / 8-12, B's at 15-16 / 17-18 / 19-20; the gaps take the nearest
    # reached point: 13 <- 12 (0.2 s away, 15 is 0.4 s), 14 <- 15, 21-24 <- 20
    v0 = [(0.1, 0.9)] * 3 + [(0.2, 0.8)] * 5 + [(0.3, 0.7)] * 5 + [(0.3, 0.7), (0.4, 0.6)] \
        + [(0.4, 0.6)] * 2 + [(0.5, 0.5)] * 2 + [(0.6, 0.4)] * 2 + [(0.6, 0.4)] * 4
    # video 1: C's frames at points 0-7 / 8-17 / 18-24, D's at 4-8 / 9-13 / 14-18; element-wise max where both
    v1 = [(0.1, 0.1)] * 4 + [(0.9, 0.1)] * 4 + [(0.9, 0.2)] + [(0.2, 0.9)] * 5 + [(0.5, 0.5)] * 5 + [(0.3, 0.3)] * 6
    assert torch.allclose(scores[0], torch.tensor(v0))
    assert torch.allclose(scores[1], torch.tensor(v1))


def test_localization_aggregator_leaves_unseen_videos_empty():
    from metrics import LocalizationAggregator
    agg = LocalizationAggregator([4.0, 4.0], num_classes=3)
    agg.add_frames(torch.rand(1, 3, 4), torch.tensor([1]), torch.tensor([[1.0, 1.5, 2.0, 2.5]]))
    scores = agg.scores().view(2, 25, 3)
    assert torch.isnan(scores[0]).all() and not torch.isnan(scores[1]).any()
