"""Scan a video data set, list every problem with the reason (videos that cannot be read or are too short, CSV
lines that do not parse, labels outside the classes, as file:line), and write cleaned CSVs that keep only the good
entries. The exit status is 1 when anything was found, else 0.

    python tools/check_dataset.py data/kinetics400 --splits train val --min-frames 13 --out data/kinetics400_clean

Layouts as in dataset/kinetics.py (auto-detected). Video files are decoded front to back (catches truncation in
the middle); --quick reads only the header and one frame.
"""
import argparse
import multiprocessing
import os
import sys
import warnings

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from tqdm import tqdm  # noqa: E402

from dataset import BadCSVLineWarning, VideoDataset  # noqa: E402
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


def read_split(root, split, layout):
    """(data set of the good entries, problems of the others as 'file:line: reason'): every bad CSV line and label,
    not just the first."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", BadCSVLineWarning)
        ds = VideoDataset(root, split=split, layout=layout, min_video_frames=1, skip_bad_labels=True)
    lines = [str(w.message) for w in caught if issubclass(w.category, BadCSVLineWarning)]
    for w in caught:                      # anything else is not ours to swallow
        if not issubclass(w.category, BadCSVLineWarning):
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return ds, lines + ds.bad_labels


def main(argv=None):
    """-> the number of problems found (bad entries and bad videos); a split that cannot be read counts as one."""
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
        try:
            ds, bad_entries = read_split(args.root, split, args.layout)
        except (ValueError, OSError) as error:   # no such root or CSV, an empty split, a bad class file
            print(f"error: {split}: {error}")
            total_bad += 1
            continue
        total_bad += len(bad_entries)
        for problem in bad_entries:
            print(f"  BAD ENTRY {problem}")
        jobs = [(p, args.min_frames, args.quick) for p in ds.video_paths]
        with multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(args.workers) as pool:
            results = list(tqdm(pool.imap(check_one, jobs, chunksize=8), total=len(jobs), desc=f"check {split}",
                                unit="video"))
        bad = [(path, reason) for path, reason, _ in results if reason]
        total_bad += len(bad)
        print(f"{split}: {len(results) - len(bad)} good, {len(bad)} bad of {len(results)} videos, "
              f"{len(bad_entries)} bad entries left out ({ds.layout} layout)")
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
    sys.exit(1 if main() else 0)
