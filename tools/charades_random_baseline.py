"""The mAP a random predictor gets on a Charades-layout split: the baseline that a trained model's classification
mAP and 25-point localization mAP must beat (uniform random scores, mean and std over seeds), counted as the
official scorers count them (metrics.charades_classify_map, charades_localize_map).

    python tools/charades_random_baseline.py /data/charades --split test --seeds 100
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # run from anywhere

import torch  # noqa: E402

from dataset import CharadesDataset  # noqa: E402
from dataset.charades import point_targets, video_lengths, video_targets  # noqa: E402
from metrics import charades_classify_map, charades_localize_map  # noqa: E402


def random_map(targets, seeds, metric=charades_classify_map):
    """(mean, std) of the mAP `metric` gives uniform random scores over `seeds` seeds."""
    maps = torch.tensor([metric(torch.rand(targets.shape, generator=torch.Generator().manual_seed(s)), targets)
                         for s in range(seeds)])
    return float(maps.mean()), float(maps.std())


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", help="Charades root (Charades_v1_<split>.csv, class file, frame folders)")
    parser.add_argument("--split", default="test")
    parser.add_argument("--frames-dir", default="Charades_v1_rgb")
    parser.add_argument("--seeds", type=int, default=100)
    args = parser.parse_args(argv)
    dataset = CharadesDataset(args.data, args.split, mode="test", frames_dir=args.frames_dir)
    for name, targets, metric in (
            ("classification", video_targets(dataset), charades_classify_map),
            ("localization (25 points)", point_targets(dataset, video_lengths(dataset)), charades_localize_map)):
        mean, std = random_map(targets, args.seeds, metric)
        print(f"{name}: random mAP {mean:.2f} +- {std:.2f} over {args.seeds} seeds ({dataset.num_videos} videos)")


if __name__ == "__main__":
    main()
