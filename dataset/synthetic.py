"""A synthetic video data set written as REAL files (H.264 mp4 through PyAV, JPEG frame folders, the CSVs and class
files of the Kinetics and Charades layouts), deterministic from a seed. It is the built-in data of the demo and
of the tests.

Each class is a MOTION: one shape moves right/left/up/down, grows, shrinks, blinks or spins in place (either
sense; format 4 had rotate cw/ccw and orbit, which X3D-XS at 40 px did not learn in the demo's budget: see the
README). Shape, colour, size, position and speed are random, and the frame is cluttered with static shapes,
jittering distractor shapes, a random background gradient and per-frame noise, so one frame does not tell the
class; a ~1 s clip does, even at 64 px.

    python -m dataset.synthetic --out data/synthetic            # the default set (seconds on 2 cores)
    python -m dataset.synthetic --out /tmp/broken --broken      # deliberately broken files for robustness tests
"""
import argparse
import math
import multiprocessing
import os
import shutil
import time

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("move_right", "move_left", "move_up", "move_down", "grow", "shrink", "blink", "spin")
MARKER = "COMPLETE"  # written last: its presence means every file of the set is there
FORMAT_VERSION = 7   # bump when the content changes, so cached sets are rewritten

# Kinetics-layout videos (the demo's training data)
# 64x48: the demo trains at 40-48 px; larger sources only made decoding (the coarse multigrid phases' limit) slower
WIDTH, HEIGHT, FPS, SECONDS = 64, 48, 30, 2.4
TRAIN_PER_CLASS, VAL_PER_CLASS = 50, 10
# frame-folder and Charades variants are for tests: fewer and smaller
FRAMES_TRAIN_PER_CLASS, FRAMES_VAL_PER_CLASS = 2, 1
FRAME_PATTERNS = ("frame_{:05d}.jpg", "img_{:05d}.jpg", "{:06d}.jpg")  # cycled over videos: all three get read
CHARADES_WIDTH, CHARADES_HEIGHT, CHARADES_FPS, CHARADES_SECONDS = 96, 72, 24, 5.0
CHARADES_TRAIN, CHARADES_TEST = 12, 6
OFFICIAL_PER_CLASS = 1
CRF = 23             # H.264 quality; the noise makes lower values grow files fast
KEYFRAME_INTERVAL = 30    # write_mp4's default, like camera and web video
DATASET_KEYFRAME_INTERVAL = 8   # the set's own mp4s: a random clip starts near a keyframe, so little is decoded
                                # before it (the demo's coarse multigrid phases were limited by decoding)
JPEG_QUALITY = 90
NOISE_SIGMA = 4.0
STATIC_CLUTTER = (2, 4)   # how many static shapes in the background (min, max)
MOVING_CLUTTER = (0, 1)   # how many jittering distractors
# the actor's motions, as (min, max) of a uniform draw; lengths are fractions of the frame height, times in seconds
ACTOR_RADIUS = (0.2, 0.26)
ACTOR_SPREAD = 0.12       # centre within +-12% of the frame's middle
# Speeds are such that the shape moves about 2-3 px between the frames a clip samples at the demo's 48 px and rate 4:
# within reach of the first layers' 3x3 kernels, which is where a small network learns the direction of motion
TRAVEL_SPEED = (0.3, 0.45)  # frame heights per second
SPIN_SPEED = (3.0, 4.0)   # radians per second, either direction
GROWTH_PER_SECOND, GROWTH_MID_RADIUS, MAX_RADIUS = (1.5, 1.7), (0.16, 0.2), 0.45
# on and off for 0.4-0.55 s each: at least one switch in any ~1 s clip, and two frames 0.53 s apart (multigrid's
# coarsest phase at its top rate, 16) mostly differ; a faster blink aliased there and was learnt last (3/10 held-out)
BLINK_PERIOD = (0.8, 1.1)

# shapes as unit polygons; all are rotation-asymmetric so that rotation is visible
SHAPES = {
    "triangle": [(0.0, -1.0), (0.7, 0.8), (-0.7, 0.8)],
    "bar": [(-1.0, -0.35), (1.0, -0.35), (1.0, 0.35), (-1.0, 0.35)],
    "ell": [(-0.8, -1.0), (-0.2, -1.0), (-0.2, 0.4), (0.8, 0.4), (0.8, 1.0), (-0.8, 1.0)],
    "arrow": [(-1.0, -0.3), (0.2, -0.3), (0.2, -0.8), (1.0, 0.0), (0.2, 0.8), (0.2, 0.3), (-1.0, 0.3)],
    "kite": [(0.0, -1.0), (0.5, -0.2), (0.0, 1.0), (-0.5, -0.2)],
    "tee": [(-1.0, -1.0), (1.0, -1.0), (1.0, -0.4), (0.3, -0.4), (0.3, 1.0), (-0.3, 1.0), (-0.3, -0.4),
            (-1.0, -0.4)],
}
SHAPE_NAMES = sorted(SHAPES)


# ----------------------------------------------------------------------------------------------------------------
# Rendering

def _colour(rng):
    hue = rng.uniform(0, 6)
    c = np.clip([abs(hue - 3) - 1, 2 - abs(hue - 2), 2 - abs(hue - 4)], 0, 1)  # a saturated hue
    return tuple(int(v) for v in (40 + c * rng.uniform(150, 215)))


def _polygon(shape, cx, cy, radius, angle):
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + radius * (x * cos - y * sin), cy + radius * (x * sin + y * cos)) for x, y in SHAPES[shape]]


def _background(rng, width, height):
    top, bottom = np.array(_colour(rng)) * 0.5, np.array(_colour(rng)) * 0.5
    ramp = np.linspace(0, 1, height)[:, None, None]
    image = Image.fromarray(np.repeat(top * (1 - ramp) + bottom * ramp, width, axis=1).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(*STATIC_CLUTTER, endpoint=True)):
        radius = rng.uniform(0.04, 0.09) * height
        draw.polygon(_polygon(SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))], rng.uniform(0, width),
                              rng.uniform(0, height), radius, rng.uniform(0, 2 * math.pi)), fill=_colour(rng))
    return image


class _Actor:
    """One shape doing one motion during [start, end] seconds (still before and after). Moves wrap around the frame
    and the other motions are periodic or steady, so any window of about a second shows the motion, whatever the
    video's length."""

    def __init__(self, rng, motion, width, height, start, end):
        self.motion, self.start, self.end = motion, start, end
        self.width, self.height = width, height
        self.shape = SHAPE_NAMES[rng.integers(len(SHAPE_NAMES))]
        self.colour = _colour(rng)
        # the actor is the largest thing in the scene, near the middle so that random crops keep it
        self.radius = rng.uniform(*ACTOR_RADIUS) * height
        self.angle = rng.uniform(0, 2 * math.pi)
        self.cx = rng.uniform(0.5 - ACTOR_SPREAD, 0.5 + ACTOR_SPREAD) * width
        self.cy = rng.uniform(0.5 - ACTOR_SPREAD, 0.5 + ACTOR_SPREAD) * height
        # move_*: constant speed, leaving one side of the frame and coming back in on the other
        self.speed = rng.uniform(*TRAVEL_SPEED) * height
        self.spin = rng.uniform(*SPIN_SPEED) * rng.choice([-1, 1])
        # grow/shrink: the radius changes by a constant factor per second, passing its drawn size mid-action
        self.growth = math.log(rng.uniform(*GROWTH_PER_SECOND)) * (1 if motion == "grow" else -1)
        if motion in ("grow", "shrink"):  # the largest size must fit a frame that the shape sits in the middle of
            self.radius = rng.uniform(*GROWTH_MID_RADIUS) * height
        self.blink_period = rng.uniform(*BLINK_PERIOD)
        self.phase = rng.uniform(0, 1)

    def draw(self, draw, t):
        s = min(max(t, self.start), self.end) - self.start  # seconds of motion so far
        cx, cy, radius, angle = self.cx, self.cy, self.radius, self.angle
        if self.motion in ("move_right", "move_left", "move_up", "move_down"):
            horizontal = self.motion in ("move_right", "move_left")
            sign = 1.0 if self.motion in ("move_right", "move_down") else -1.0
            span = (self.width if horizontal else self.height) + 2 * radius   # off one side, in at the other
            offset = ((cx if horizontal else cy) + radius + sign * self.speed * s) % span - radius
            cx, cy = (offset, cy) if horizontal else (cx, offset)
        elif self.motion == "spin":
            angle += self.spin * s
        elif self.motion in ("grow", "shrink"):
            radius *= math.exp(self.growth * (s - (self.end - self.start) / 2))
            radius = min(radius, MAX_RADIUS * self.height)
        elif self.motion == "blink" and self.start <= t <= self.end:
            if (s / self.blink_period + self.phase) % 1.0 >= 0.5:
                return  # off half of each period
        draw.polygon(_polygon(self.shape, cx, cy, radius, angle), fill=self.colour)


def render_video(seed, actions, width, height, fps, seconds, noise=NOISE_SIGMA):
    """uint8 frames (N, H, W, 3) of a cluttered scene; actions = [(motion, start_s, end_s), ...]."""
    rng = np.random.default_rng(seed)
    background = _background(rng, width, height)
    actors = [_Actor(rng, motion, width, height, start, end) for motion, start, end in actions]
    # distractors: random walks pulled back to their home, so they jitter without a direction
    num_moving = rng.integers(*MOVING_CLUTTER, endpoint=True)
    home = rng.uniform([0, 0], [width, height], size=(num_moving, 2))
    position = home.copy()
    sizes = rng.uniform(0.04, 0.09, num_moving) * height
    colours = [_colour(rng) for _ in range(num_moving)]
    shapes = [SHAPE_NAMES[i] for i in rng.integers(len(SHAPE_NAMES), size=num_moving)]
    angles = rng.uniform(0, 2 * math.pi, num_moving)
    frames = []
    for i in range(int(round(seconds * fps))):
        t = i / fps
        image = background.copy()
        draw = ImageDraw.Draw(image)
        position += rng.normal(0, 1.2, position.shape) + 0.1 * (home - position)
        angles += rng.normal(0, 0.08, num_moving)
        for k in range(num_moving):
            draw.polygon(_polygon(shapes[k], *position[k], sizes[k], angles[k]), fill=colours[k])
        for actor in actors:
            actor.draw(draw, t)
        noisy = np.asarray(image, dtype=np.int16) + rng.normal(0, noise, (height, width, 1)).astype(np.int16)
        frames.append(np.clip(noisy, 0, 255).astype(np.uint8))
    return np.stack(frames)


# ----------------------------------------------------------------------------------------------------------------
# Writing

def write_mp4(path, frames, fps, crf=CRF, faststart=False, keyframe_interval=KEYFRAME_INTERVAL, x264_params=None):
    """H.264 (libx264, B-frames as its veryfast preset makes them); x264_params e.g. "open-gop=1:scenecut=0"."""
    import av
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # no macroblock-tree rate control: with it the same frames came out as other files from one write to the next
    # (in a process that had imported torch; 134 of the set's 480 videos differed between two writes, and the
    # demo's accuracy with them)
    options = {"crf": str(crf), "preset": "veryfast", "g": str(keyframe_interval), "threads": "1",
               "x264-params": ":".join(["mbtree=0"] + ([x264_params] if x264_params else []))}
    with av.open(path, "w", options={"movflags": "+faststart"} if faststart else None) as container:
        stream = container.add_stream("libx264", rate=fps, options=options)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        for array in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(array, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def write_jpegs(folder, frames, pattern, first=1):
    os.makedirs(folder, exist_ok=True)
    for i, array in enumerate(frames):
        Image.fromarray(array).save(os.path.join(folder, pattern.format(first + i)), quality=JPEG_QUALITY)


def _job(job):
    """One video (run in a worker process): render and write it as mp4 or as a frame folder."""
    kind, path, seed, actions, width, height, fps, seconds, pattern = job
    frames = render_video(seed, actions, width, height, fps, seconds)
    if kind == "mp4":
        write_mp4(path, frames, fps, keyframe_interval=DATASET_KEYFRAME_INTERVAL)
    else:
        write_jpegs(path, frames, pattern)
    return path


def _run_jobs(jobs, workers, desc):
    from tqdm import tqdm
    if workers <= 1:
        for job in tqdm(jobs, desc=desc, unit="video"):
            _job(job)
        return
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    with multiprocessing.get_context(method).Pool(workers) as pool:
        for _ in tqdm(pool.imap_unordered(_job, jobs, chunksize=4), total=len(jobs), desc=desc, unit="video"):
            pass


def _write_lines(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("".join(line + "\n" for line in lines))


def _classification_jobs(out, kind, split, per_class, seed, split_id):
    jobs, rows = [], []
    for label, motion in enumerate(CLASSES):
        for k in range(per_class):
            number = label * per_class + k
            name = f"{split}_{number:05d}"
            rel = os.path.join(split, motion, name + (".mp4" if kind == "mp4" else ""))
            pattern = FRAME_PATTERNS[number % len(FRAME_PATTERNS)]
            jobs.append((kind, os.path.join(out, rel), (seed, split_id, number), [(motion, 0.0, SECONDS)],
                         WIDTH, HEIGHT, FPS, SECONDS, pattern))
            rows.append(f"{rel} {label}")
    return jobs, rows


def _classification_layout(root, kind, per_class, seed, first_split_id):
    """The CSVs and class file of one classification layout (train and val); returns the jobs that write its videos."""
    os.makedirs(root, exist_ok=True)
    jobs = []
    for split_id, (split, count) in enumerate(zip(("train", "val"), per_class), start=first_split_id):
        split_jobs, rows = _classification_jobs(root, kind, split, count, seed, split_id)
        jobs += split_jobs
        _write_lines(os.path.join(root, f"{split}.csv"), rows)
    _write_lines(os.path.join(root, "classes.txt"), CLASSES)
    return jobs


def _charades_actions(rng):
    """2-3 time-stamped actions, sometimes overlapping, with distinct motions."""
    motions = rng.choice(len(CLASSES), size=rng.integers(2, 4), replace=False)
    actions = []
    for m in motions:
        length = rng.uniform(1.5, 3.0)
        start = rng.uniform(0, CHARADES_SECONDS - length)
        actions.append((CLASSES[m], round(start, 2), round(start + length, 2)))
    return actions


def write_synthetic(out, seed=0, videos_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, workers=None,
                    charades=True, frames=True, official=True,
                    frames_per_class=(FRAMES_TRAIN_PER_CLASS, FRAMES_VAL_PER_CLASS),
                    charades_videos=(CHARADES_TRAIN, CHARADES_TEST)):
    """Write the whole set under `out`; returns the dict of paths that ensure_synthetic returns."""
    workers = workers or os.cpu_count() or 1
    out = os.fspath(out)
    jobs = []
    # 1. Kinetics layout: <out>/kinetics/{train,val}/<class>/<id>.mp4 + path-label CSVs + classes.txt
    kinetics = os.path.join(out, "kinetics")
    jobs += _classification_layout(kinetics, "mp4", (videos_per_class, val_per_class), seed, 0)
    # 2. frame folders: <out>/frames/{train,val}/<class>/<id>/frame_00001.jpg (three naming patterns)
    frames_root = os.path.join(out, "frames")
    if frames:
        jobs += _classification_layout(frames_root, "frames", frames_per_class, seed, 10)
    # 3. Charades layout: frames at 24 fps, several time-stamped actions per video
    charades_root = os.path.join(out, "charades")
    if charades:
        rng = np.random.default_rng([seed, 20])
        _write_lines(os.path.join(os.makedirs(charades_root, exist_ok=True) or charades_root,
                                  "Charades_v1_classes.txt"),
                     [f"c{i:03d} {name.replace('_', ' ')}" for i, name in enumerate(CLASSES)])
        for split, count in zip(("train", "test"), charades_videos):
            rows = ["id,subject,scene,quality,relevance,verified,script,objects,descriptions,actions,length"]
            for k in range(count):
                video_id = f"S{split[:2].upper()}{k:03d}"
                actions = _charades_actions(rng)
                folder = os.path.join(charades_root, "Charades_v1_rgb", video_id)
                jobs.append(("frames", folder, (seed, 21, split == "test", k), actions, CHARADES_WIDTH,
                             CHARADES_HEIGHT, CHARADES_FPS, CHARADES_SECONDS, video_id + "-{:06d}.jpg"))
                text = ";".join(f"c{CLASSES.index(m):03d} {s:.2f} {e:.2f}" for m, s, e in actions)
                rows.append(f'{video_id},P0,Synthetic,6,7,Yes,"a synthetic scene","shapes","moving shapes",'
                            f'{text},{CHARADES_SECONDS:.2f}')
            _write_lines(os.path.join(charades_root, f"Charades_v1_{split}.csv"), rows)
    _run_jobs(jobs, workers, "synthetic videos")
    # 4. the official annotation layout, from copies of a few Kinetics-layout videos (no new encoding)
    official_root = os.path.join(out, "official")
    if official:
        rows = ["label,youtube_id,time_start,time_end,split"]
        for label, motion in enumerate(CLASSES):
            for k in range(OFFICIAL_PER_CLASS):
                source = os.path.join(kinetics, "train", motion, f"train_{label * videos_per_class + k:05d}.mp4")
                youtube_id = f"yt{label:02d}{k:02d}xyzAB"[:11]
                start = 10 * k
                name = f"{youtube_id}_{start:06d}_{start + 10:06d}.mp4"
                if label == 0:  # one flat, one without the times: both are seen in the wild
                    target = os.path.join(official_root, "train", youtube_id + ".mp4")
                elif label == 1:
                    target = os.path.join(official_root, "train", name)
                else:
                    target = os.path.join(official_root, "train", motion, name)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
                rows.append(f"{motion.replace('_', ' ')},{youtube_id},{start},{start + 10},train")
        _write_lines(os.path.join(official_root, "train.csv"), rows)
    return {"root": out, "kinetics": kinetics, "frames": frames_root, "charades": charades_root,
            "official": official_root, "classes": os.path.join(kinetics, "classes.txt")}


def ensure_synthetic(root="data/synthetic", seed=0, **kwargs):
    """Write the synthetic set once: a marker file written LAST marks a complete set (with its seed and options);
    a missing or different marker means an interrupted or different write, which is redone from scratch."""
    root = os.fspath(root)
    marker = os.path.join(root, MARKER)
    options = dict(videos_per_class=TRAIN_PER_CLASS, val_per_class=VAL_PER_CLASS, charades=True, frames=True,
                   official=True, frames_per_class=(FRAMES_TRAIN_PER_CLASS, FRAMES_VAL_PER_CLASS),
                   charades_videos=(CHARADES_TRAIN, CHARADES_TEST))
    options.update({k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items() if k != "workers"})
    signature = f"version={FORMAT_VERSION} seed={seed} " + " ".join(f"{k}={v}" for k, v in sorted(options.items()))
    if os.path.isfile(marker) and open(marker).read().strip() == signature:
        return _paths(root)
    if os.path.isdir(root):
        shutil.rmtree(root)
    os.makedirs(root)
    paths = write_synthetic(root, seed=seed, **kwargs)
    with open(marker, "w") as f:
        f.write(signature + "\n")
    return paths


def _paths(root):
    return {"root": root, "kinetics": os.path.join(root, "kinetics"), "frames": os.path.join(root, "frames"),
            "charades": os.path.join(root, "charades"), "official": os.path.join(root, "official"),
            "classes": os.path.join(root, "kinetics", "classes.txt")}


# ----------------------------------------------------------------------------------------------------------------
# Deliberately broken files, for robustness tests and for trying tools/check_dataset.py

def write_broken(out, seed=0):
    """A small path-label data set under `out` in which some entries are bad on purpose. Returns
    {'root': out, 'good': [relative paths], 'bad': {relative path: what is wrong}}; train.csv also has one
    malformed line (line 2)."""
    out = os.fspath(out)
    os.makedirs(out, exist_ok=True)
    width, height, fps, seconds = 64, 48, FPS, 3.0
    good, bad, rows = [], {}, []
    for k in range(4):  # good videos, two per class
        rel = f"videos/good_{k}.mp4"
        write_mp4(os.path.join(out, rel), render_video((seed, 30, k), [(CLASSES[k % 2], 0, seconds)], width,
                                                       height, fps, seconds), fps)
        good.append(rel)
    source = open(os.path.join(out, good[0]), "rb").read()

    def bad_file(rel, data, reason):
        with open(os.path.join(out, rel), "wb") as f:
            f.write(data)
        bad[rel] = reason

    bad_file("videos/zero.mp4", b"", "zero bytes")
    bad_file("videos/truncated.mp4", source[: len(source) * 2 // 5], "truncated (index at the end is cut off)")
    bad_file("videos/garbage.mp4", np.random.default_rng(seed).integers(0, 256, 4096, dtype=np.uint8).tobytes(),
             "random bytes")
    write_mp4(os.path.join(out, "videos/short.mp4"), render_video((seed, 31), [("blink", 0, 0.1)], width, height,
                                                                  fps, 2 / fps), fps)
    bad["videos/short.mp4"] = "too short (2 frames)"
    bad["videos/missing.mp4"] = "listed in the CSV, absent on disk"
    # frame folders: one good, one with holes, one with a file that is not a JPEG
    frames = render_video((seed, 32), [("move_up", 0, seconds)], width, height, fps, seconds)
    write_jpegs(os.path.join(out, "frames/good_frames"), frames, "frame_{:05d}.jpg")
    good.append("frames/good_frames")
    write_jpegs(os.path.join(out, "frames/holes"), frames, "frame_{:05d}.jpg")
    for i in range(2, len(frames), 2):  # every other frame gone: any clip needs one of them
        os.remove(os.path.join(out, "frames/holes", f"frame_{i:05d}.jpg"))
    bad["frames/holes"] = "missing frames"
    write_jpegs(os.path.join(out, "frames/not_jpeg"), frames, "frame_{:05d}.jpg")
    for i in range(1, len(frames) + 1):  # every frame replaced by text
        with open(os.path.join(out, "frames/not_jpeg", f"frame_{i:05d}.jpg"), "w") as f:
            f.write("this is not a JPEG\n")
    bad["frames/not_jpeg"] = "files named .jpg that are not JPEGs"
    labels = {rel: i % 2 for i, rel in enumerate(good)}
    labels.update({rel: i % 2 for i, rel in enumerate(bad)})
    rows = [f"{good[0]} 0", "this line is malformed"] + [f"{rel} {labels[rel]}" for rel in good[1:] + list(bad)]
    _write_lines(os.path.join(out, "train.csv"), rows)
    _write_lines(os.path.join(out, "classes.txt"), CLASSES[:2])
    return {"root": out, "good": good, "bad": bad}


def main():
    parser = argparse.ArgumentParser(description="Write the synthetic motion data set (real mp4 and JPEG files).")
    parser.add_argument("--out", default="data/synthetic", help="output folder")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--videos-per-class", type=int, default=TRAIN_PER_CLASS, help="training videos per class")
    parser.add_argument("--val-per-class", type=int, default=VAL_PER_CLASS, help="validation videos per class")
    parser.add_argument("--workers", type=int, default=os.cpu_count(), help="parallel writer processes")
    parser.add_argument("--broken", action="store_true",
                        help="write the small set of deliberately broken files instead (robustness tests)")
    args = parser.parse_args()
    started = time.time()
    if args.broken:
        result = write_broken(args.out, args.seed)
        print(f"wrote {len(result['good'])} good and {len(result['bad'])} bad entries to {args.out}/train.csv")
    else:
        paths = ensure_synthetic(args.out, seed=args.seed, videos_per_class=args.videos_per_class,
                                 val_per_class=args.val_per_class, workers=args.workers)
        for name, path in paths.items():
            print(f"{name:9s} {path}")
    print(f"done in {time.time() - started:.1f} s")


if __name__ == "__main__":
    main()
