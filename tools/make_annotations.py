"""Build the `path label` CSVs and the class-name file that the training scripts read, from a folder tree
(<root>/<split>/<class>/<video>), a tree of frame folders, or the official Kinetics annotation CSVs.

    python tools/make_annotations.py data/kinetics400 --splits train val                # tree or official, detected
    python tools/make_annotations.py data/k400_frames --layout frames --out data/k400_frames

Writes <out>/<split>.csv (paths relative to <out>) and <out>/classes.txt (one class name a line, the label order).
Files listed by the official CSV but absent on disk are left out and counted (--keep-missing keeps them).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

from tqdm import tqdm  # noqa: E402

from dataset import VideoDataset  # noqa: E402


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("root")
    parser.add_argument("--splits", nargs="+", default=["train", "val"])
    parser.add_argument("--layout", default="auto", choices=["auto", "official", "tree", "frames"])
    parser.add_argument("--out", help="output folder (default: root)")
    parser.add_argument("--keep-missing", action="store_true", help="keep rows whose file is absent")
    args = parser.parse_args(argv)
    out = args.out or args.root
    os.makedirs(out, exist_ok=True)
    class_names = None
    for split in args.splits:
        ds = VideoDataset(args.root, split=split, layout=args.layout, class_names=class_names)
        class_names = ds.class_names  # every split uses the first split's ids
        csv_path = os.path.join(out, f"{split}.csv")
        missing = 0
        with open(csv_path, "w", encoding="utf-8") as f:
            for path, label in tqdm(zip(ds.video_paths, ds.labels), total=ds.num_videos, desc=split, unit="video"):
                if not args.keep_missing and not os.path.exists(path):
                    missing += 1
                    continue
                f.write(f"{os.path.relpath(path, out)} {label}\n")
        print(f"{csv_path}: {ds.num_videos - missing} videos ({ds.layout} layout), {missing} missing on disk")
    with open(os.path.join(out, "classes.txt"), "w", encoding="utf-8") as f:
        f.write("".join(name + "\n" for name in class_names))
    print(f"{os.path.join(out, 'classes.txt')}: {len(class_names)} classes")


if __name__ == "__main__":
    main()
