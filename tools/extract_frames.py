"""Turn videos into JPEG frame folders with PyAV (parallel, resumable), resizing the short side if asked.

    python tools/extract_frames.py data/kinetics400 data/k400_frames --short-side 256 --workers 8

The input is a data set root with `path label` CSVs (their folders are written as <out>/<split>.csv too) or any
folder of videos. <video path relative to the input, without extension>/frame_00001.jpg, ... (1-based, the
x3d-multigrid layout) is written for each; a `.done` marker written last makes reruns skip finished videos and
redo half-written ones.
"""
import argparse
import multiprocessing
import os
import shutil
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from tqdm import tqdm  # noqa: E402

from dataset.kinetics import find_split_csv, read_path_label_csv  # noqa: E402
from dataset.video_io import is_video_file  # noqa: E402

DONE = ".done"
PATTERN = "frame_{:05d}.jpg"


def extract_one(job):
    """(video, folder, short_side, quality) -> (video, None or error)."""
    video, folder, short_side, quality = job
    if os.path.isfile(os.path.join(folder, DONE)):
        return video, None
    import av
    partial = folder + ".partial"
    shutil.rmtree(partial, ignore_errors=True)
    os.makedirs(partial)
    try:
        with av.open(video) as container:
            stream = container.streams.video[0]
            stream.thread_type = "AUTO"
            count = 0
            for frame in container.decode(stream):
                if short_side:
                    scale = short_side / min(frame.width, frame.height)
                    width, height = round(frame.width * scale / 2) * 2, round(frame.height * scale / 2) * 2
                    frame = frame.reformat(width=width, height=height, interpolation="AREA")
                count += 1
                frame.to_image().save(os.path.join(partial, PATTERN.format(count)), quality=quality)
        if count == 0:
            raise RuntimeError("no frame decoded")
    except Exception as e:
        shutil.rmtree(partial, ignore_errors=True)
        return video, f"{type(e).__name__}: {e}"
    open(os.path.join(partial, DONE), "w").close()
    shutil.rmtree(folder, ignore_errors=True)
    os.rename(partial, folder)
    return video, None


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("input", help="data set root with <split>.csv files, or a folder of videos")
    parser.add_argument("out", help="output root for the frame folders")
    parser.add_argument("--splits", nargs="+", default=["train", "val", "test"])
    parser.add_argument("--short-side", type=int, default=0, help="resize so the short side is this (0: keep)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality")
    parser.add_argument("--workers", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)

    videos, csvs = [], {}
    for split in args.splits:
        csv_path = find_split_csv(args.input, split)
        if csv_path:
            paths, labels = read_path_label_csv(csv_path, os.path.dirname(csv_path))
            csvs[split] = list(zip(paths, [label for label, _ in labels]))
            videos += paths
    if not csvs:  # no CSVs: every video file under the input
        for dirpath, _, names in os.walk(args.input):
            videos += [os.path.join(dirpath, n) for n in sorted(names) if is_video_file(n)]

    def folder_of(video):
        return os.path.join(args.out, os.path.splitext(os.path.relpath(video, args.input))[0])

    jobs = [(v, folder_of(v), args.short_side, args.quality) for v in dict.fromkeys(videos)]
    failed = []
    with multiprocessing.get_context("fork" if os.name == "posix" else "spawn").Pool(args.workers) as pool:
        for video, error in tqdm(pool.imap_unordered(extract_one, jobs), total=len(jobs), desc="extract",
                                 unit="video"):
            if error:
                failed.append(video)
                print(f"FAILED {video}: {error}", file=sys.stderr)
    for split, rows in csvs.items():
        with open(os.path.join(args.out, f"{split}.csv"), "w", encoding="utf-8") as f:
            for video, label in rows:
                if video not in failed:
                    f.write(f"{os.path.relpath(folder_of(video), args.out)} {label}\n")
    for name in ("classes.txt", "labels.txt", "classInd.txt"):
        if os.path.isfile(os.path.join(args.input, name)):
            shutil.copyfile(os.path.join(args.input, name), os.path.join(args.out, name))
    print(f"{len(jobs) - len(failed)} videos extracted to {args.out}, {len(failed)} failed")
    return failed


if __name__ == "__main__":
    main()
