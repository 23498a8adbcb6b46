"""The authors' weights see the authors' inputs: every test view holds the frames the released X3D loader picks
(read back from frame numbers written into the pixels) and its pixels within uint8 rounding; training clips, frame
folders, headerless mkv/webm, Charades and predict.py follow the same rules.

How: videos whose frames carry their own number, at 25, 29.97 and 30 fps, landscape and portrait (and a real H.264
clip where the reference fixtures are present); the expected frames of every view computed from the stream's time
stamps independently of the loader; the resize compared with F.interpolate on float frames (mean abs difference of
normalized pixels <= 0.005). Training crops go through PyTorch's uint8 bilinear kernel: the same geometry, pixels
within one level of the float path."""
import math
from fractions import Fraction

import av
import numpy as np
import pytest
import torch
import torch.nn.functional as F

import predict
from dataset import CharadesDataset, VideoDataset
from dataset.synthetic import write_jpegs
from dataset.video_io import read_video_all
from numbered_video import (frame_numbers, numbered_frames, released_clip_frames, released_spatial,
                            write_numbered_video)
from transforms import charades_clip, crop_offsets, normalize_batch, random_short_side_crop, resize_crop

X3D_S = dict(frames=13, rate=6, train_crop=160, jitter=(182, 228), test_crop=182)
VIEWS = [(3, 1), (10, 1), (10, 3)]
PIXEL_TOLERANCE = 0.005  # mean abs difference of normalized pixels that uint8 rounding alone leaves
VIDEOS = [(25, 320, 240), (Fraction(30000, 1001), 320, 240), (30, 320, 240), (30, 240, 320), (25, 240, 320)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Numbered H.264 mp4s at 25, 29.97 and 30 fps, landscape and portrait, 5.5 s, in a csv data set."""
    root = tmp_path_factory.mktemp("numbered")
    paths = [write_numbered_video(root / f"v{float(fps):.2f}_{w}x{h}.mp4", fps, int(5.5 * fps), w, h)
             for fps, w, h in VIDEOS]
    (root / "test.csv").write_text("".join(f"{p} 0\n" for p in paths))
    return root, paths


def _full_decode(path):
    with av.open(str(path)) as container:
        return torch.from_numpy(np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)]))


@pytest.mark.parametrize("temporal, spatial", VIEWS)
def test_test_views_hold_the_released_frames_and_pixels(videos, temporal, spatial):
    root, paths = videos
    ds = VideoDataset(root, "test", mode="test", temporal_views=temporal, spatial_crops=spatial, **X3D_S)
    for v, path in enumerate(paths):
        everything = _full_decode(path)
        for view in range(temporal * spatial):
            t, s = divmod(view, spatial)
            expected = released_clip_frames(path, 13, 6, t, temporal)
            assert frame_numbers(ds.read_clip(path, view, 13, 6)) == expected, (path, view)
            size = 182 if spatial == 3 else 182  # 3 crops: the test crop; 1 crop: the jitter minimum (also 182)
            reference = released_spatial(everything[expected], size, 182, s if spatial == 3 else 1)
            ours = normalize_batch(ds[v * temporal * spatial + view]["clip"][None])[0]
            assert ours.shape == reference.shape
            assert (ours - reference).abs().mean() <= PIXEL_TOLERANCE, (path, view)


X3D_XS = dict(frames=4, rate=12, train_crop=160, jitter=(182, 228), test_crop=182)


@pytest.mark.parametrize("temporal, spatial", [(3, 1), (10, 3)])
def test_a_video_shorter_than_the_clip_is_sampled_as_the_released_loader_samples_it(tmp_path, temporal, spatial):
    """15 frames (0.5 s) under X3D-XS's 4 x 12 (a 1.6 s span): every view starts at frame 0, its window holds the
    whole video, and the positions past its end clamp to the last frame: frames 0, 14, 14, 14; pixels as above."""
    path = write_numbered_video(tmp_path / "short.mp4", 30, 15, 320, 240)
    (tmp_path / "test.csv").write_text(f"{path} 0\n")
    ds = VideoDataset(tmp_path, "test", mode="test", temporal_views=temporal, spatial_crops=spatial, **X3D_XS)
    everything = _full_decode(path)
    for view in range(temporal * spatial):
        t, s = divmod(view, spatial)
        expected = released_clip_frames(path, 4, 12, t, temporal)
        assert expected == [0, 14, 14, 14]
        item = ds[view]
        assert item["bad"] == 0 and frame_numbers(ds.read_clip(path, view, 4, 12)) == expected, view
        reference = released_spatial(everything[expected], 182, 182, s if spatial == 3 else 1)
        assert (normalize_batch(item["clip"][None])[0] - reference).abs().mean() <= PIXEL_TOLERANCE, view


def test_hand_computed_frames_at_30_and_25_fps(videos):
    """X3D-S (13 x 6) at 30 fps: clip_size 78, 165 frames, delta 87; view 1 of 10 starts at 8.7: the window holds
    frames 9..85 and the next (86), offsets 0, 6, 12, 19, ... 77. At 25 fps: clip_size 65 over 137 frames."""
    root, paths = videos
    ds = VideoDataset(root, "test", mode="test", temporal_views=10, spatial_crops=1, **X3D_S)
    offsets = [0, 6, 12, 19, 25, 32, 38, 44, 51, 57, 64, 70, 77]
    assert frame_numbers(ds.read_clip(paths[2], 1, 13, 6)) == [9 + o for o in offsets]
    assert frame_numbers(ds.read_clip(paths[2], 0, 13, 6)) == offsets
    # 25 fps: delta 72, view 3 starts at 21.6 -> frames from 22; linspace(0, 64, 13) = 0, 5.33, ... 64
    assert frame_numbers(ds.read_clip(paths[0], 3, 13, 6)) == [22 + int(k * 64 / 12) for k in range(13)]


def test_crop_offsets_are_ceil_centered():
    assert crop_offsets(182, 242, 182, 0) == (0, 0)
    assert crop_offsets(182, 242, 182, 1) == (0, 30)
    assert crop_offsets(182, 243, 182, 1) == (0, 31)  # ceil(61 / 2), where floor would give 30
    assert crop_offsets(182, 243, 182, 2) == (0, 61)
    assert crop_offsets(243, 182, 182, 1) == (31, 0) and crop_offsets(243, 182, 182, 2) == (61, 0)
    assert crop_offsets(229, 305, 182, 1) == (24, 62)  # 1 crop: ceil(47 / 2), ceil(123 / 2)


@pytest.mark.parametrize("height, width, size", [(256, 340, 205), (240, 320, 182), (320, 240, 182),
                                                 (720, 1280, 228), (50, 50, 60), (182, 300, 182)])
def test_resize_crop_equals_full_frame_interpolate(height, width, size):
    """The crop computed from its source region equals F.interpolate of the whole float frame, then cropped, up to
    the final rounding to uint8; the long side is floored (340 / 256 * 205 = 272.3 -> 272)."""
    clip = torch.randint(0, 256, (2, height, width, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    x = clip.permute(3, 0, 1, 2).float()
    if min(height, width) != size:
        if width < height:
            new = (math.floor(height / width * size), size)
        else:
            new = (size, math.floor(width / height * size))
        x = F.interpolate(x, size=new, mode="bilinear", align_corners=False)
    h, w = x.shape[-2:]
    crop = min(h, w) - 5
    for top, left in ((0, 0), (h - crop, w - crop), (2, (w - crop) // 3)):
        ours = resize_crop(clip, size, top, left, crop).float()
        assert (ours - x[:, :, top:top + crop, left:left + crop]).abs().max() <= 0.5 + 1e-3


def test_training_crop_replays_the_released_steps():
    """A training crop equals: short side to round(uniform(jitter)), F.interpolate, crop at the drawn offset
    (in [0, L - crop)), flip: replayed from the same generator. Training takes the uint8 kernel: within one level."""
    clip = torch.from_numpy(numbered_frames(4, 320, 240))
    for seed in range(6):
        out = random_short_side_crop(clip, 160, (182, 228), generator=torch.Generator().manual_seed(seed))
        g = torch.Generator().manual_seed(seed)
        size = int(round(182 + 46 * float(torch.rand((), dtype=torch.float64, generator=g))))
        new_w = math.floor(320 / 240 * size)
        top = int(torch.randint(0, size - 160, (1,), generator=g)) if size > 160 else 0
        left = int(torch.randint(0, new_w - 160, (1,), generator=g))
        x = F.interpolate(clip.permute(3, 0, 1, 2).float(), size=(size, new_w), mode="bilinear", align_corners=False)
        x = x[:, :, top:top + 160, left:left + 160]
        if float(torch.rand((), generator=g)) < 0.5:
            x = x.flip(-1)
        assert (out.float() - x).abs().max() <= 1 + 1e-3, seed
        assert (out.float() - x).abs().mean() <= 0.35, seed


def test_training_clips_follow_the_window_rule(videos):
    """Random training clips: a window starting at some frame, the released positions in it, at every fps."""
    root, paths = videos
    ds = VideoDataset(root, "test", mode="train", **X3D_S)
    torch.manual_seed(0)
    for path, (fps, _, _) in zip(paths, VIDEOS):
        size = 6 * 13 / 30 * float(fps)
        offsets = torch.linspace(0, 13 * 6 * float(fps) / 30 - 1, 13).long().tolist()
        n = int(5.5 * fps)
        firsts = set()
        for _ in range(12):
            got = frame_numbers(ds.read_clip(path, 0, 13, 6))
            assert [g - got[0] for g in got] == offsets, (path, got)
            assert 0 <= got[0] <= math.ceil(n - size)
            firsts.add(got[0])
        assert len(firsts) > 4  # the start is random


@pytest.mark.parametrize("name, codec", [("v.webm", "libvpx"), ("v.mkv", "libx264")])
def test_headerless_mkv_and_webm(tmp_path, name, codec):
    """PyAV reports no frame count and no duration for these; the released code then samples the whole decoded
    video; here the packet scan gives the same frames without decoding it all."""
    path = write_numbered_video(tmp_path / name, 25, 120, 160, 120, codec=codec)
    with av.open(path) as container:
        stream = container.streams.video[0]
        assert stream.frames == 0 and stream.duration is None
    (tmp_path / "test.csv").write_text(f"{path} 0\n")
    ds = VideoDataset(tmp_path, "test", mode="test", temporal_views=10, spatial_crops=1, **dict(X3D_S, test_crop=112,
                      jitter=(112, 140)))
    for view in range(10):
        assert frame_numbers(ds.read_clip(path, view, 13, 6)) == released_clip_frames(path, 13, 6, view, 10)


def test_frame_folders_use_exact_frame_times(tmp_path):
    """A JPEG folder is a video with exact time stamps at `frames_fps` (default 30): the window runs from the first
    frame at or after the start to the last at or before the end, plus the next one."""
    frames = numbered_frames(150, 160, 120)
    write_jpegs(str(tmp_path / "clips" / "a"), frames, "frame_{:05d}.jpg")
    (tmp_path / "clips" / "test.csv").write_text("a 0\n")
    for fps in (30, 25):
        ds = VideoDataset(tmp_path / "clips", "test", mode="test", temporal_views=10, spatial_crops=1,
                          frames_fps=fps, **X3D_S)
        size = 6 * 13 / 30 * fps
        for view in range(10):
            start = max(150 - size, 0) * view / 10
            window = [k for k in range(150) if start <= k <= start + size - 1]
            window.append(window[-1] + 1)
            expected = [window[min(i, len(window) - 1)] for i in
                        torch.linspace(0, 13 * 6 * fps / 30 - 1, 13).long().tolist()]
            assert frame_numbers(ds.read_clip(ds.video_paths[0], view, 13, 6)) == expected, (fps, view)


def test_charades_frame_rule(tmp_path):
    # 100 frames, 6 x 4: clip_length 21, gap 79 / 9; frames start + 4 i
    gap = 79 / 9
    for view in range(10):
        start = int(round(gap * view))
        assert charades_clip(100, 6, 4, view, 10).tolist() == [start + 4 * i for i in range(6)]
    assert charades_clip(100, 6, 4, 9, 10).tolist()[-1] == 99
    assert charades_clip(15, 6, 4, 3, 10).tolist() == [0, 4, 8, 12, 14, 14]  # shorter than the clip: clamped
    g = torch.Generator().manual_seed(0)
    starts = {int(charades_clip(100, 6, 4, generator=g)[0]) for _ in range(600)}
    assert starts == set(range(0, 80))  # randint(0, n - clip_length), both ends included
    starts = {tuple(charades_clip(15, 6, 4, generator=g).tolist()) for _ in range(300)}
    assert (0, 0, 2, 6, 10, 14) in starts and (0, 4, 8, 12, 14, 14) in starts and len(starts) == 7  # start in [-6, 0]


def test_charades_dataset_reads_the_rule(synthetic_data):
    ds = CharadesDataset(synthetic_data["charades"], "test", mode="test", frames=6, rate=4, jitter=(48, 56),
                         test_crop=48, temporal_views=3, spatial_crops=1)
    n = ds.folder_pattern(ds.video_paths[0])[2]
    for view in range(3):
        expected = charades_clip(n, 6, 4, view, 3).double() / ds.fps
        assert torch.allclose(ds[view]["frame_times"].double(), expected, atol=1e-6)


def test_predict_reads_the_dataset_test_views(videos):
    root, paths = videos
    ds = VideoDataset(root, "test", mode="test", temporal_views=10, spatial_crops=3, **X3D_S)
    views = predict.read_views(paths[1], 13, 6, 182, 10, 3, jitter_min=182)
    assert torch.equal(views, torch.stack([ds[30 + i]["clip"] for i in range(30)]))


def test_bunny_views_equal_the_released_frames(fixtures_dir):
    path = fixtures_dir / "bigbuckbunny.mp4"
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    everything = read_video_all(str(path))
    views = predict.read_views(str(path), 13, 6, 182, 10, 3, jitter_min=182)
    for view in range(30):
        t, s = divmod(view, 3)
        expected = released_clip_frames(path, 13, 6, t, 10)
        reference = released_spatial(everything[expected], 182, 182, s)
        assert (normalize_batch(views[view][None])[0] - reference).abs().mean() <= PIXEL_TOLERANCE, view
