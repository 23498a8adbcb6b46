"""Train X3D on Kinetics-400 (or any Kinetics-style data set) with the Multigrid schedule.

    python train_x3d_kinetics_multigrid.py                                 # built-in synthetic demo, CPU, minutes
    python train_x3d_kinetics_multigrid.py --data /data/kinetics400 --version S -gpu 0,1,2,3
    torchrun --nproc_per_node 8 train_x3d_kinetics_multigrid.py --data ... -gpu 0,1,2,3,4,5,6,7
    python train_x3d_kinetics_multigrid.py --data ... --test-only --finetune X3D_S.pyth --test-views 10x3

With no --data, the synthetic motion data set is written once to data/synthetic/ and a small X3D-XS trains on it
with multigrid on. The data layout (path-label CSVs, the official CSV, class folders, JPEG frame folders) is
detected; see the README's "Data preparation". Everything not Kinetics-specific lives in engine.py.
"""
import os

import engine
from config import clip_recipe
from dataset import VideoDataset, ensure_synthetic

SYNTHETIC_ROOT = os.path.join("data", "synthetic")
# The demo: a small shape that learns the synthetic motions on a laptop CPU in minutes. AdamW because it needs far
# fewer steps than SGD from scratch on 500 videos; no flips because a mirror turns move_right into move_left; batch
# 8 because the run is limited by its number of steps (batch 16 halves them and learnt less in the same time).
# Tested at the train crop: the same three trained models scored 96.25 / 96.25 / 92.5% held-out at 40 px but
# 90.0 / 88.75 / 83.75% at a 48 px test crop (the authors' larger test crop does not pay on 64x48 videos).
# Values a user gives win.
DEMO = dict(version="XS", frames=8, rate=4, crop=40, test_crop=40, jitter=[40, 48], epochs=60, batch_size=8,
            optimizer="adamw", lr=0.003, lr_policy="cosine", warmup_epochs=1.0, weight_decay=5e-5, workers=2,
            precise_bn_batches=20, eval_every=15, test_views="3x1", dropout=0.3, flip=False)


class KineticsTask(engine.Task):
    name = "kinetics"
    demo = DEMO
    demo_data_root = SYNTHETIC_ROOT

    def add_arguments(self, parser):
        parser.add_argument("--layout", default="auto", choices=("auto", "csv", "official", "tree", "frames"),
                            help="how --data is organized (auto: detect)")
        parser.add_argument("--classes", default=None, help="class-name file that fixes label ids")
        parser.add_argument("--train-split", default="train")
        parser.add_argument("--val-split", default="val")

    def demo_data(self):
        return ensure_synthetic(SYNTHETIC_ROOT)["kinetics"]

    def datasets(self, args):
        common = dict(layout=args.layout, flip=args.flip, **clip_recipe(args).dataset_args())
        train = VideoDataset(args.data, args.train_split, mode="train", class_names=args.classes, **common)
        val = VideoDataset(args.data, args.val_split, mode="val", class_names=train.class_names, **common)
        test = VideoDataset(args.data, args.val_split, mode="test", temporal_views=args.temporal_views,
                            spatial_crops=args.spatial_crops, class_names=train.class_names, **common)
        return {"train": train, "val": val, "test": test}


if __name__ == "__main__":
    engine.main(KineticsTask())
