"""Training-pipeline throughput of one DataLoader worker (one thread) for the X3D-S shape (13 frames x rate 6,
160 crop, short side jitter 182-228), from mp4 and from JPEG frame folders, against a baseline that does what the
x3d-multigrid port does (PIL open per frame, per-frame resize + crop + flip, ToTensor, Normalize on the CPU).
Rounds alternate between pipelines so that machine noise hits all of them alike. Then: seconds to take one
2-second clip out of a 5-minute mp4 by seeking, against decoding the whole video.

    python benchmarks/bench_data.py                 # about a minute on 2 cores
    python benchmarks/bench_data.py --rounds 9 --clips 20     # steadier on a busy machine
"""
import argparse
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

from dataset import VideoDataset  # noqa: E402
from dataset.synthetic import render_video, write_jpegs, write_mp4  # noqa: E402
from dataset.video_io import read_video_windows  # noqa: E402

FRAMES, RATE, CROP, JITTER = 13, 6, 160, (182, 228)  # X3D-S training shape
WIDTH, HEIGHT, FPS, SECONDS = 340, 256, 30, 10.0     # Kinetics after the usual short-side-256 resize, 10 s clips
# camera-like grain; the synthetic set's stronger per-pixel noise would make H.264 and JPEG files (and their decode)
# several times heavier than real Kinetics clips of this size (a few hundred kbit/s)
NOISE = 2.0
LONG_SECONDS, CLIP_SECONDS = 300, 2.0
MEAN, STD = [0.45] * 3, [0.225] * 3


def make_data(folder, videos):
    rows_mp4, rows_frames = [], []
    for k in tqdm(range(videos), desc="benchmark videos", unit="video"):
        frames = render_video((7, k), [("move_right", 0, SECONDS)], WIDTH, HEIGHT, FPS, SECONDS, noise=NOISE)
        write_mp4(os.path.join(folder, f"v{k}.mp4"), frames, FPS)
        write_jpegs(os.path.join(folder, f"v{k}"), frames, "frame_{:05d}.jpg")
        rows_mp4.append(f"v{k}.mp4 0")
        rows_frames.append(f"v{k} 0")
    kbps = sum(os.path.getsize(os.path.join(folder, f"v{k}.mp4")) for k in range(videos)) * 8 / 1000 / SECONDS
    print(f"benchmark mp4s: {kbps / videos:.0f} kbit/s each")
    os.makedirs(os.path.join(folder, "mp4"), exist_ok=True)
    os.makedirs(os.path.join(folder, "frames"), exist_ok=True)
    for sub, rows in (("mp4", rows_mp4), ("frames", rows_frames)):
        with open(os.path.join(folder, sub, "train.csv"), "w") as f:
            f.write("".join(f"../{row}\n" for row in rows))


class PortBaseline:
    """The x3d-multigrid port's path: PIL per frame, PIL resize of the whole frame, crop, flip, ToTensor, Normalize."""

    def __init__(self, folders):
        import torchvision.transforms as T
        self.folders = folders
        self.to_tensor, self.normalize = T.ToTensor(), T.Normalize(MEAN, STD)

    def __len__(self):
        return len(self.folders)

    def __getitem__(self, i):
        folder = self.folders[i]
        n = len(os.listdir(folder))
        start = np.random.randint(0, max(n - FRAMES * RATE, 0) + 1)
        short = np.random.randint(JITTER[0], JITTER[1] + 1)
        flip = np.random.rand() < 0.5
        out = []
        for idx in range(start, start + FRAMES * RATE, RATE):
            with open(os.path.join(folder, f"frame_{min(idx, n - 1) + 1:05d}.jpg"), "rb") as f:
                image = Image.open(f).convert("RGB")
            w, h = image.size
            scale = short / min(w, h)
            image = image.resize((round(w * scale), round(h * scale)), Image.BILINEAR)
            x0 = np.random.randint(0, image.size[0] - CROP + 1)
            y0 = np.random.randint(0, image.size[1] - CROP + 1)
            image = image.crop((x0, y0, x0 + CROP, y0 + CROP))
            if flip:
                image = image.transpose(Image.FLIP_LEFT_RIGHT)
            out.append(self.normalize(self.to_tensor(image)))
        return torch.stack(out, 1)


def clips_per_second(dataset, clips, offset):
    started = time.perf_counter()
    for k in range(clips):
        dataset[(offset + k) % len(dataset)]
    return clips / (time.perf_counter() - started)


def seek_benchmark(folder):
    """A 5-minute mp4 (key frame every 250 frames, x264's default): one 2 s clip by seeking vs the whole decode."""
    import av
    path = os.path.join(folder, "long.mp4")
    width, height = 320, 240
    base = render_video(9, [("spin", 0, 2.0)], width, height, FPS, 2.0)  # cheap: a 2 s loop, shifted
    with av.open(path, "w") as container:
        stream = container.add_stream("libx264", rate=FPS, options={"crf": "28", "preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in tqdm(range(LONG_SECONDS * FPS), desc="5-minute mp4", unit="frame", miniters=1000):
            frame = np.roll(base[i % len(base)], i, axis=1)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    start = LONG_SECONDS / 2

    def window(meta):  # FRAMES frames evenly over CLIP_SECONDS from the middle of the video
        tb = float(meta["time_base"])
        span = round(CLIP_SECONDS * meta["fps"])
        return [(int(start / tb), int((start + CLIP_SECONDS) / tb), [k * span // (FRAMES - 1) for k in range(FRAMES)])]

    t0 = time.perf_counter()
    _, meta = read_video_windows(path, window)
    seek_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    with av.open(path) as container:
        decoded = sum(1 for _ in container.decode(container.streams.video[0]))
    whole_s = time.perf_counter() - t0
    return seek_s, meta["decoded_frames"], whole_s, decoded


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--videos", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--clips", type=int, default=16, help="clips per pipeline per round")
    args = parser.parse_args()
    torch.set_num_threads(1)  # one DataLoader worker = one core
    with tempfile.TemporaryDirectory() as folder:
        make_data(folder, args.videos)
        ours_mp4 = VideoDataset(os.path.join(folder, "mp4"), "train", frames=FRAMES, rate=RATE, train_crop=CROP,
                                jitter=JITTER)
        ours_frames = VideoDataset(os.path.join(folder, "frames"), "train", frames=FRAMES, rate=RATE,
                                   train_crop=CROP, jitter=JITTER)
        baseline = PortBaseline(ours_frames.video_paths)
        pipelines = {"port baseline (PIL, frames)": baseline, "ours, JPEG frame folders": ours_frames,
                     "ours, mp4 (PyAV seek)": ours_mp4}
        rates = {name: [] for name in pipelines}
        for name, ds in pipelines.items():  # warm-up: imports, file cache
            clips_per_second(ds, 2, 0)
        for r in tqdm(range(args.rounds), desc="rounds"):
            for name, ds in pipelines.items():
                rates[name].append(clips_per_second(ds, args.clips, r * args.clips))
        seek_s, seek_frames, whole_s, whole_frames = seek_benchmark(folder)
    base = statistics.median(rates["port baseline (PIL, frames)"])
    print(f"\nX3D-S training clips ({FRAMES} x {CROP}, rate {RATE}) from {WIDTH}x{HEIGHT} video, one worker thread, "
          f"median of {args.rounds} alternating rounds x {args.clips} clips")
    print("| pipeline | clips/s per worker | vs port |\n|---|---|---|")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"| {name} | {median:.1f} | {median / base:.2f}x |")
    print(f"\n2 s clip out of a {LONG_SECONDS // 60}-minute 320x240 mp4: seek {seek_s:.3f} s ({seek_frames} frames "
          f"decoded) vs whole video {whole_s:.2f} s ({whole_frames} frames): {whole_s / seek_s:.0f}x")


if __name__ == "__main__":
    main()
