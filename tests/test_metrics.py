"""metrics.py against hand-computed cases and sklearn."""
import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

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
