"""VideoDataset in every layout, CharadesDataset, multigrid shapes, test views, bad data, on real files written by
the synthetic writer."""
import os
import warnings

import pytest
import torch
from torch.utils.data import DataLoader, default_collate

from conftest import failing_once
from dataset import BadCSVLineWarning, BadSampleWarning, CharadesDataset, VideoDataset, ensure_synthetic
from dataset.synthetic import CLASSES, MARKER, render_video
from multigrid import ClipRequest

SMALL = dict(frames=4, rate=4, train_crop=48, jitter=(56, 64), test_crop=56)


@pytest.mark.parametrize("name, split, layout, expected_layout, per_class", [
    ("kinetics", "train", "auto", "csv", 2), ("kinetics", "val", "tree", "tree", 1),
    ("frames", "train", "auto", "csv", 1), ("frames", "val", "frames", "frames", 1),
    ("official", "train", "auto", "official", 1)])
def test_layouts_load_real_files(synthetic_data, name, split, layout, expected_layout, per_class):
    ds = VideoDataset(synthetic_data[name], split=split, layout=layout, **SMALL)
    assert ds.layout == expected_layout and len(ds) == ds.num_videos == per_class * len(CLASSES)
    if name != "official":  # the official layout has no class file: ids are the sorted label names
        assert ds.class_names == list(CLASSES)
    for i in (0, len(ds) - 1):
        item = ds[i]
        assert item["clip"].shape == (3, 4, 48, 48) and item["clip"].dtype == torch.uint8
        assert item["video_index"] == i and item["view"] == 0 and item["bad"] == 0
        # the label agrees with the class folder the file sits in
        folder = os.path.basename(os.path.dirname(ds.video_paths[i]))
        if folder != split:
            assert ds.class_names[item["label"]].replace(" ", "_") == folder


def test_multigrid_shapes_and_collate(synthetic_data):
    ds = VideoDataset(synthetic_data["kinetics"], "train", **SMALL)
    for shape in [(2, 8, 24), (8, 2, 34), (4, 4, 48)]:
        batch = default_collate([ds[ClipRequest(i, *shape)] for i in range(3)])
        assert batch["clip"].shape == (3, 3, shape[0], shape[2], shape[2])
        assert batch["label"].shape == (3,) and batch["bad"].sum() == 0
    assert ds.scaled_jitter(24) == (28, 32)


def test_test_mode_views(synthetic_data):
    ds = VideoDataset(synthetic_data["kinetics"], "val", mode="test", temporal_views=2, spatial_crops=3, **SMALL)
    assert len(ds) == len(CLASSES) * 2 * 3
    items = [ds[i] for i in range(6)]
    assert [it["view"] for it in items] == list(range(6)) and {it["video_index"] for it in items} == {0}
    assert all(it["clip"].shape == (3, 4, 56, 56) for it in items)
    # three crops of one temporal view differ (left/center/right); the same index is deterministic
    assert not torch.equal(items[0]["clip"], items[2]["clip"])
    assert torch.equal(ds[7]["clip"], ds[7]["clip"])
    one = VideoDataset(synthetic_data["kinetics"], "val", mode="test", temporal_views=3, spatial_crops=1, **SMALL)
    assert len(one) == 3 * len(CLASSES) and one[4]["video_index"] == 1 and one[4]["view"] == 1


def test_validation_clips_are_a_random_draw_seeded_per_video(tmp_path):
    """Mode 'val' draws as training does (position, jitter, crop, flip) from a generator seeded per video: a video's
    clip is the same in every evaluation, whatever the global RNG, the workers and the batch order; videos (here
    copies of one numbered video, so only the draw differs) get different positions, mostly not the first clip."""
    from numbered_video import frame_numbers, write_numbered_video
    path = write_numbered_video(tmp_path / "numbered.mp4", 30, 90, 160, 120)
    (tmp_path / "val.csv").write_text("".join(f"{path} {k % 2}\n" for k in range(12)))
    ds = VideoDataset(tmp_path, "val", mode="val", frames=4, rate=4, train_crop=96, jitter=(100, 120), test_crop=112)
    assert len(ds) == 12 and ds.default_shape() == (4, 4, 96)
    read_clip, starts = ds.read_clip, []

    def noting_the_start(*args, **kwargs):
        clip = read_clip(*args, **kwargs)
        starts.append(frame_numbers(clip)[0])
        return clip

    ds.read_clip = noting_the_start
    torch.manual_seed(0)
    clips = [ds[i]["clip"] for i in range(len(ds))]
    torch.manual_seed(1)
    assert all(torch.equal(ds[i]["clip"], clips[i]) for i in reversed(range(len(ds))))
    assert len(set(starts[:12])) >= 6 and sum(s == 0 for s in starts[:12]) <= 2      # 90 - 16 frames to start in
    assert len({tuple(c.flatten()[::97].tolist()) for c in clips}) == 12              # crops and flips differ too
    del ds.read_clip
    for workers in (0, 2):
        order = torch.randperm(len(ds), generator=torch.Generator().manual_seed(workers)).tolist()
        loader = DataLoader(ds, batch_size=5, sampler=order, num_workers=workers)
        for batch in loader:
            for clip, video in zip(batch["clip"], batch["video_index"]):
                assert torch.equal(clip, clips[video]), (workers, int(video))


def test_charades_validation_clips_are_seeded_per_video(synthetic_data):
    root = synthetic_data["charades"]
    ds = CharadesDataset(root, "train", mode="val", frames=6, rate=4, train_crop=40, jitter=(48, 56), test_crop=48)
    items = [ds[i] for i in range(len(ds))]
    assert all(it["clip"].shape == (3, 6, 40, 40) for it in items)
    again = [ds[i] for i in range(len(ds))]
    assert all(torch.equal(a["clip"], b["clip"]) and torch.equal(a["frame_times"], b["frame_times"])
               for a, b in zip(items, again))
    starts = {round(float(it["frame_times"][0]) * ds.fps) for it in items}
    assert len(starts) >= 4 and starts != {49}            # random starts, not the 1-view test clip's middle one


def test_dataloader_workers(synthetic_data):
    ds = VideoDataset(synthetic_data["frames"], "train", **SMALL)
    loader = DataLoader(ds, batch_size=5, num_workers=2, shuffle=True)
    labels = torch.cat([b["label"] for b in loader])
    assert sorted(labels.tolist()) == sorted(ds.labels)


def test_synthetic_frames_change_with_motion(synthetic_data):
    ds = VideoDataset(synthetic_data["kinetics"], "val", mode="test", temporal_views=1, spatial_crops=1, **SMALL)
    clip = ds[0]["clip"].float()
    assert (clip[:, 0] - clip[:, -1]).abs().mean() > 1.0  # things move
    a = render_video((0, 1, 2), [("grow", 0, 1)], 32, 24, 30, 1.0)
    b = render_video((0, 1, 2), [("grow", 0, 1)], 32, 24, 30, 1.0)
    assert (a == b).all()  # deterministic from the seed


def test_no_flip_keeps_left_and_right(tmp_path):
    """Frames dark on the left half and bright on the right: every 40 px crop of the 64 px width keeps that order
    unless flipped."""
    from dataset.synthetic import write_jpegs
    frames = torch.zeros(40, 48, 64, 3, dtype=torch.uint8)
    frames[:, :, 32:] = 255
    write_jpegs(str(tmp_path / "clips" / "half"), frames.numpy(), "frame_{:05d}.jpg")
    (tmp_path / "clips" / "train.csv").write_text("half 0\n")
    kwargs = dict(frames=4, rate=2, train_crop=40, jitter=(48, 48), test_crop=40, layout="csv", flip=False)

    def left_darker(ds):
        clip = ds[0]["clip"].float()
        return bool(clip[..., :4].mean() < clip[..., -4:].mean())

    assert all(left_darker(VideoDataset(tmp_path / "clips", "train", **kwargs)) for _ in range(20))
    flipping = VideoDataset(tmp_path / "clips", "train", **dict(kwargs, flip=True))
    assert not all(left_darker(flipping) for _ in range(20))        # p = 2^-20 of a false failure


def test_class_names_file_and_errors(synthetic_data, tmp_path):
    root = synthetic_data["kinetics"]
    ds = VideoDataset(root, "val", class_names=list(reversed(CLASSES)), **SMALL)
    assert ds.labels[0] == 0  # integer labels of the CSV stay as written
    with pytest.raises(ValueError, match="unknown class name 'blink'"):
        VideoDataset(root, "val", layout="tree", class_names=["jumping", "running"], **SMALL)
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(ValueError, match="lists no videos"):
        VideoDataset(tmp_path, "train", **SMALL)
    (tmp_path / "val.csv").write_text(f"{root}/val/move_left/val_00001.mp4 1\nbroken line here\n")
    with pytest.warns(BadCSVLineWarning, match=r"val.csv:2"):
        ds = VideoDataset(tmp_path, "val", class_names=CLASSES, **SMALL)
    assert len(ds) == 1
    with pytest.raises(ValueError, match=r"val.csv:2"):
        VideoDataset(tmp_path, "val", class_names=CLASSES, strict_csv=True, **SMALL)
    (tmp_path / "test.csv").write_text(f"{root}/val/move_left/val_00001.mp4 12\n")
    with pytest.raises(ValueError, match=r"test.csv:1: label 12"):
        VideoDataset(tmp_path, "test", class_names=CLASSES, **SMALL)


def test_bad_data_is_replaced_warned_once_and_counted(broken_data):
    with pytest.warns(BadCSVLineWarning, match=r"train.csv:2"):
        ds = VideoDataset(broken_data["root"], "train", max_retries=50, **SMALL)
    assert len(ds) == len(broken_data["good"]) + len(broken_data["bad"])
    torch.manual_seed(0)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds)) for _ in range(2)]
    good = {os.path.normpath(os.path.join(broken_data["root"], p)) for p in broken_data["good"]}
    assert all(ds.video_paths[it["video_index"]] in good for it in items)
    assert all(it["clip"].shape == (3, 4, 48, 48) for it in items)
    assert sum(it["bad"] for it in items) >= 2 * len(broken_data["bad"])
    messages = [str(w.message) for w in caught if issubclass(w.category, BadSampleWarning)]
    for rel in broken_data["bad"]:  # every bad file is named, exactly once per process
        named = [m for m in messages if os.path.normpath(rel) in m]
        assert len(named) == 1, (rel, messages)
    assert set(ds.bad_paths) == {os.path.normpath(os.path.join(broken_data["root"], p)) for p in broken_data["bad"]}


def test_test_mode_retries_the_same_video_then_marks_it_unreadable(broken_data, monkeypatch):
    """At test time no video stands in for another: a bad file's views are zero clips of the batch's shape, marked
    unreadable, with the bad video's own index (warned once per file); a read that fails once and then succeeds
    (a passing error) gives the real clip."""
    with pytest.warns(BadCSVLineWarning):
        ds = VideoDataset(broken_data["root"], "train", mode="test", temporal_views=2, spatial_crops=1, **SMALL)
    bad = {os.path.normpath(os.path.join(broken_data["root"], p)) for p in broken_data["bad"]}
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    for i, item in enumerate(items):
        video, view = divmod(i, 2)
        assert (item["video_index"], item["view"], item["bad"]) == (video, view, 0)
        assert item["clip"].shape == (3, 4, 56, 56) and item["label"] == ds.labels[video]
        assert item["unreadable"] == int(ds.video_paths[video] in bad), ds.video_paths[video]
        if item["unreadable"]:
            assert not item["clip"].any()
    messages = [str(w.message) for w in caught if issubclass(w.category, BadSampleWarning)]
    assert len(messages) == len(bad) and all("left out of the evaluation" in m for m in messages)
    assert ds.read_error(ds.video_paths.index(sorted(bad)[0])) == ds.bad_paths[sorted(bad)[0]]

    with pytest.warns(BadCSVLineWarning):
        fresh = VideoDataset(broken_data["root"], "train", mode="test", temporal_views=2, spatial_crops=1, **SMALL)
    failures = []
    monkeypatch.setattr(fresh, "_load", failing_once(fresh._load, failures))
    assert torch.equal(fresh[0]["clip"], items[0]["clip"]) and fresh[0]["unreadable"] == 0 and failures == [0]


def test_too_many_bad_samples_is_an_error(broken_data, tmp_path):
    (tmp_path / "train.csv").write_text(f"{broken_data['root']}/videos/zero.mp4 0\n")
    ds = VideoDataset(tmp_path, "train", max_retries=3, **SMALL)
    with pytest.warns(BadSampleWarning), pytest.raises(RuntimeError, match="zero.mp4"):
        ds[0]


def test_charades_targets(synthetic_data):
    root = synthetic_data["charades"]
    ds = CharadesDataset(root, "train", frames=6, rate=4, train_crop=40, jitter=(48, 56), test_crop=48)
    assert ds.num_classes == len(CLASSES) and len(ds) == len(ds.video_ids) == 6
    assert ds.video_lengths[0] == pytest.approx(5.0)
    for i in range(len(ds)):
        item = ds[ClipRequest(i, 6, 4, 40)]
        assert item["clip"].shape == (3, 6, 40, 40) and item["clip"].dtype == torch.uint8
        t0, t1 = float(item["frame_times"][0]), float(item["frame_times"][-1])
        expected = torch.zeros(ds.num_classes)
        for cls, start, end in ds.actions[i]:
            expected[cls] = float(start <= t1 and end >= t0)
        assert torch.equal(item["target"], expected)
        assert item["frame_targets"].shape == (ds.num_classes, 6)
        assert (item["frame_targets"].amax(1) <= item["target"]).all()  # per-frame actions are in the union
    test = CharadesDataset(root, "test", mode="test", frames=6, rate=4, jitter=(48, 56), test_crop=48,
                           temporal_views=3, spatial_crops=3)
    assert len(test) == 3 * 9
    times = [float(test[v * 3]["frame_times"][-1]) for v in range(3)]
    assert times[-1] == pytest.approx((120 - 1) / 24)  # last view ends on the last frame (5 s at 24 fps)
    batch = default_collate([test[i] for i in range(4)])
    assert batch["frame_targets"].shape == (4, ds.num_classes, 6)


def test_ensure_synthetic_is_cached_and_redone_when_interrupted(tmp_path):
    kwargs = dict(videos_per_class=1, val_per_class=1, charades=False, frames=False, official=False)
    paths = ensure_synthetic(tmp_path / "s", seed=3, **kwargs)
    marker = os.path.join(paths["root"], MARKER)
    first = os.path.getmtime(marker)
    assert ensure_synthetic(tmp_path / "s", seed=3, **kwargs) == paths and os.path.getmtime(marker) == first
    os.remove(marker)  # as if the write had been interrupted
    os.remove(os.path.join(paths["kinetics"], "val.csv"))
    ensure_synthetic(tmp_path / "s", seed=3, **kwargs)
    assert os.path.isfile(os.path.join(paths["kinetics"], "val.csv")) and os.path.isfile(marker)
