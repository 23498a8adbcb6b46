"""Scan a video data set, list the videos that cannot be read or are too short (with the reason), and write cleaned
CSVs that keep only the good ones.

    python tools/check_dataset.py data/kinetics400 --splits train val --min-frames 13 --out data/kinetics400_clean

Layouts as in dataset/kinetics.py (auto-detected). Video files are decoded front to back (catches truncation in
the middle); --quick reads only the header and one frame.
"""
import argparse
import multiprocessing
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from tqdm import tqdm  # noqa: E402

from dataset import VideoDataset  # noqa: E402
from dataset.video_io import (VideoReadError, frame_folder_pattern, read_frames,  # noqa: E402
                              read_video_windows, video_meta)

# a decoded stream this much shorter than its header says is truncated
TRUNCATED_FRACTION = 0.9


def count_decodable_frames(path):
    import av
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO"
        return sum(1 for _ in container.decode(stream))


def check_one(job):
    """(path, min_frames, quick) -> (path, None or reason, frame count)."""
    path, min_frames, quick = job
    try:
        if os.path.isdir(path):
            template, first, count = frame_folder_pattern(path)
            missing = [i for i in range(count) if not os.path.isfile(os.path.join(path, template.format(first + i)))]
            if missing:
                return path, f"{len(missing)} missing frames (first: {template.format(first + missing[0])})", count
            read_frames(path, [0, count // 2, count - 1] if quick else range(count), (template, first, count))
        else:
            meta = video_meta(path)
            count = meta["num_frames"]
            read_video_windows(path, lambda meta: [(0, 0, [0])])  # the first frame decodes
            if not quick:
                decoded = count_decodable_frames(path)
                if decoded < TRUNCATED_FRACTION * count:
                    return path, f"truncated: {decoded} of {count} frames decode", decoded
                count = decoded
        if count < min_frames:
            return path, f"too short: {count} frames (need {min_frames})", count
        return path, None, count
    except VideoReadError as e:
        return path, str(e).replace(f"{path}: ", ""), 0
    except Exception as e:
        return path, f"{type(e).__name__}: {e}", 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root", help="data set root (with train.csv/val.csv, the official CSVs, or split folders)")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--layout", default="auto", choices=["auto", "csv", "official", "tree", "frames"])
    parser.add_argument("--min-frames", type=int, default=13, help="shorter videos are listed as too short")
    parser.add_argument("--quick", action="store_true", help="header and first frame only, no full decode")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    parser.add_argument("--out", help="folder for cleaned <split>.csv files and classes.txt (default: none)")
    args = parser.parse_args(argv)

    total_bad = 0
    for split in args.splits:
        ds = VideoDataset(args.root, split=split, layout=args.layout, min_video_frames=1)
        jobs = [(p, args.min_frames, args.quick) for p in ds.video_paths]
        with multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(args.workers) as pool:
            results = list(tqdm(pool.imap(check_one, jobs, chunksize=8), total=len(jobs), desc=f"check {split}",
                                unit="video"))
        bad = [(path, reason) for path, reason, _ in results if reason]
        total_bad += len(bad)
        print(f"{split}: {len(results) - len(bad)} good, {len(bad)} bad of {len(results)} ({ds.layout} layout)")
        for path, reason in bad:
            print(f"  BAD {path}: {reason}")
        if args.out:
            os.makedirs(args.out, exist_ok=True)
            csv_path = os.path.join(args.out, f"{split}.csv")
            with open(csv_path, "w", encoding="utf-8") as f:
                for (path, reason, _), label in zip(results, ds.labels):
                    if not reason:
                        f.write(f"{os.path.relpath(path, args.out)} {label}\n")
            with open(os.path.join(args.out, "classes.txt"), "w", encoding="utf-8") as f:
                f.write("".join(name + "\n" for name in ds.class_names))
            print(f"  wrote {csv_path}")
    return total_bad


if __name__ == "__main__":
    main()
