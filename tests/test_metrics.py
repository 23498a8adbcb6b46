"""metrics.py against hand-computed cases, sklearn and a transcription of the official Charades scorers."""
import json
import math
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import average_precision_score

from charades_official import charades_v1_classify, charades_v1_localize, mean_over_defined
from conftest import REPO
from metrics import (LOCALIZATION_POINTS, VideoAggregator, charades_classify_map, charades_localize_map,
                     localization_times, thumos_average_precision, topk_correct, video_topk)


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


def test_a_video_with_an_unreadable_view_is_left_out_and_no_other_changes():
    from evaluation import readable_views
    from metrics import LocalizationAggregator
    for aggregator, rows in ((VideoAggregator(3, 2, "max"), 1), (LocalizationAggregator([2.0, 2.0, 2.0], 2), 25)):
        batch = {"video_index": torch.tensor([0, 1, 1, 2]), "unreadable": torch.tensor([0, 1, 0, 0]),
                 "frame_times": torch.tensor([[0.0, 1.0, 2.0]] * 4)}
        kept = readable_views(aggregator, batch)
        assert kept["video_index"].tolist() == [0, 1, 2] and kept["frame_times"].shape == (3, 3)
        assert aggregator.unreadable.tolist() == [0, 1, 0]
        scores = torch.tensor([[0.2, 0.9], [0.4, 0.6], [0.7, 0.1]])
        if rows == 1:
            aggregator.add(scores, kept["video_index"])
        else:
            aggregator.add_frames(scores[:, :, None].expand(-1, -1, 3), kept["video_index"], kept["frame_times"])
        out = aggregator.scores().view(3, rows, 2)
        assert torch.isnan(out[1]).all()                      # its readable view does not stand for the video
        assert torch.allclose(out[0], scores[0].expand(rows, 2)) and torch.allclose(out[2], scores[2].expand(rows, 2))


def test_video_topk_ignores_videos_without_views():
    agg = VideoAggregator(3, 3)
    agg.add(torch.tensor([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1]]), torch.tensor([0, 2]))
    result = video_topk(agg.scores(), [1, 0, 1], ks=(1, 2))
    assert result == {1: 50.0, 2: 100.0}


def test_classify_map_hand_computed_cases():
    # class 0: positives ranked 1st and 3rd -> AP = (1/1 + 2/3) / 2; class 1: positive ranked 2nd -> AP = 1/2;
    # class 2 has no positive and is left out of the mean.
    scores = np.array([[0.9, 0.1, 0.3], [0.8, 0.7, 0.2], [0.7, 0.9, 0.1], [0.1, 0.2, 0.0]])
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    assert charades_classify_map(scores, targets) == pytest.approx(100 * ((1 + 2 / 3) / 2 + 1 / 2) / 2)
    # rows in the CSV's order: a video without actions scored 0.9 (the official scorer ranks it at -inf, below
    # everything), a video with action 0 that got no views (NaN: -inf, after the first, as the stable sort keeps
    # their order), a video with action 1 and one with action 0. Class 0: positive 1st, then the 4th: (1 + 2/4) / 2;
    # class 1: positive 1st: 1
    scores = np.array([[0.9, 0.9], [np.nan, np.nan], [0.3, 0.2], [0.5, 0.1]])
    targets = np.array([[0, 0], [1, 0], [0, 1], [1, 0]])
    assert charades_classify_map(scores, targets) == pytest.approx(100 * ((1 + 2 / 4) / 2 + 1) / 2)
    # localization counts a point without actions as an ordinary negative: its 0.9 ranks first in both classes
    assert charades_localize_map(scores, targets) == pytest.approx(100 * ((1 / 2 + 2 / 4) / 2 + 1 / 2) / 2)
    with pytest.raises(ValueError, match="no class has a positive"):
        charades_classify_map(scores, np.zeros_like(targets))


def test_charades_ap_equals_sklearn_where_no_scores_tie():
    rng = np.random.default_rng(5)
    for _ in range(20):
        n = int(rng.integers(5, 300))
        positives = rng.random((n, 3)) < rng.uniform(0.05, 0.6)
        positives[rng.integers(n), :] = True
        scores = rng.random((n, 3))                      # continuous: no ties
        expected = [average_precision_score(positives[:, c], scores[:, c]) for c in range(3)]
        assert thumos_average_precision(scores, positives) == pytest.approx(expected, abs=1e-12)


def write_charades_csv(path, videos):
    """A Charades_v1_<split>.csv of (id, [(class, start, end), ...], length) rows, as the official one is written."""
    header = "id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"
    rows = [f'{vid},P0,Home,6,7,Yes,"a script","things","a description",'
            + ";".join(f"c{c:03d} {s:.2f} {e:.2f}" for c, s, e in actions) + f",{length:.2f}"
            for vid, actions, length in videos]
    path.write_text("\n".join([header] + rows) + "\n")


def random_charades_split(rng, num_videos, num_classes, length=10.0):
    """Videos with 0-3 actions (a fifth of them none, as 49 of the 1,863 real test videos have none)."""
    videos = []
    for v in range(num_videos):
        count = 0 if rng.random() < 0.2 else int(rng.integers(1, 4))
        actions = []
        for c in rng.choice(num_classes, size=count, replace=False):
            start = round(float(rng.uniform(0, length - 1)), 2)
            actions.append((int(c), start, round(min(length, start + float(rng.uniform(0.5, 6))), 2)))
        videos.append((f"V{v:04d}", actions, length))
    return videos


def tied_scores(rng, rows, num_classes, missing):
    """Scores on a coarse grid (ties everywhere, also between positives and negatives); `missing` rows NaN."""
    scores = rng.integers(0, 6, size=(rows, num_classes)) / 5.0
    scores[missing] = np.nan
    return scores


@pytest.mark.parametrize("seed", range(6))
def test_classify_map_equals_the_transcribed_official_scorer(tmp_path, seed):
    """Random splits with tied scores, videos without actions and videos without views (written as -inf rows by
    the submission writer, or left out of the file: the official scorer gives both the same -inf)."""
    from train_x3d_charades import CharadesTask
    rng = np.random.default_rng(seed)
    num_classes = 6
    videos = random_charades_split(rng, int(rng.integers(8, 40)), num_classes)
    write_charades_csv(tmp_path / "gt.csv", videos)
    targets = np.zeros((len(videos), num_classes))
    for v, (_, actions, _) in enumerate(videos):
        for c, _, _ in actions:
            targets[v, c] = 1
    missing = rng.random(len(videos)) < 0.15
    scores = tied_scores(rng, len(videos), num_classes, missing)
    ids = SimpleNamespace(video_ids=[v[0] for v in videos])
    CharadesTask().write_predictions(str(tmp_path / "submission.txt"), torch.tensor(scores), ids)
    official = charades_v1_classify(tmp_path / "submission.txt", tmp_path / "gt.csv", num_classes)
    assert charades_classify_map(scores, targets) == pytest.approx(mean_over_defined(official), abs=1e-9)
    lines = (tmp_path / "submission.txt").read_text().splitlines()
    assert len(lines) == len(videos)                              # every test video is in the file
    kept = [line for line, gone in zip(lines, missing) if not gone]
    (tmp_path / "without_missing.txt").write_text("\n".join(kept) + "\n")
    assert charades_v1_classify(tmp_path / "without_missing.txt", tmp_path / "gt.csv", num_classes) == \
        pytest.approx(official, nan_ok=True)


@pytest.mark.parametrize("seed", range(3))
def test_localize_map_equals_the_transcribed_official_scorer(tmp_path, seed):
    from train_x3d_charades_loc import CharadesLocalizationTask
    rng = np.random.default_rng(100 + seed)
    num_classes = 5
    videos = random_charades_split(rng, int(rng.integers(5, 15)), num_classes, length=float(rng.uniform(5, 30)))
    write_charades_csv(tmp_path / "gt.csv", videos)
    targets = np.zeros((len(videos) * LOCALIZATION_POINTS, num_classes))
    for v, (_, actions, length) in enumerate(videos):
        times = localization_times(length)
        for c, start, end in actions:
            targets[v * LOCALIZATION_POINTS:(v + 1) * LOCALIZATION_POINTS, c] += (times >= start) & (times <= end)
    missing = np.repeat(rng.random(len(videos)) < 0.2, LOCALIZATION_POINTS)
    scores = tied_scores(rng, len(targets), num_classes, missing)
    ids = SimpleNamespace(video_ids=[v[0] for v in videos], num_videos=len(videos))
    CharadesLocalizationTask().write_predictions(str(tmp_path / "submission.txt"), torch.tensor(scores), ids)
    official = charades_v1_localize(tmp_path / "submission.txt", tmp_path / "gt.csv", num_classes)
    assert charades_localize_map(scores, targets) == pytest.approx(mean_over_defined(official), abs=1e-9)


def test_localization_time_points_follow_the_official_protocol():
    times = localization_times(50.0)
    assert len(times) == 25 and times[0] == 0.0 and times[1] == pytest.approx(2.0) and times[-1] == pytest.approx(48.0)


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
