"""Fine-tune X3D on Charades v1: 157-class multi-label classification (sigmoid + binary cross-entropy).

    python train_x3d_charades.py                                          # built-in synthetic demo, CPU, minutes
    python train_x3d_charades.py --data /data/charades --finetune X3D_M.pyth -gpu 0,1,2,3
    torchrun --nproc_per_node 8 train_x3d_charades.py --data /data/charades --finetune X3D_M.pyth -gpu 0,1,2,3,4,5,6,7
    python train_x3d_charades.py --data /data/charades --test-only --finetune models/<run>/best.pt

--finetune takes Kinetics weights in any format x3d.load_pretrained reads (the classifier is replaced). The recipe
defaults are the authors' Charades fine-tuning recipe (SlowFast configs/Charades, multigrid on); the final test
takes 10 clips x 3 crops per video combined by element-wise max, reports mAP with the official scorer's arithmetic
(metrics.charades_classify_map) and writes the official classification submission file (`<id> <157 scores>` per
line, every test video). Everything not Charades-specific lives in
engine.py; train_x3d_charades_loc.py builds on this task for localization.
"""
import os

import engine
from config import clip_recipe
import torch
import torch.nn.functional as F
from dataset import CharadesDataset, ensure_synthetic
from dataset.charades import video_targets
from metrics import charades_classify_map, classes_with_positives

SYNTHETIC_ROOT = os.path.join("data", "synthetic")
# The authors' Charades fine-tuning recipe (SlowFast configs/Charades/SLOWFAST_16x8_R50*.yaml): batch 16, base LR
# 0.0375, LR x0.1 at epochs 41 and 49 of 57, 4 warm-up epochs from 1e-4, weight decay 1e-4, dropout 0.5; test 10x3.
RECIPE = dict(version="M", batch_size=16, lr=0.0375, lr_policy="step", steps=[0, 41, 49], epochs=57, gamma=0.1,
              warmup_epochs=4.0, warmup_start=1e-4 / 0.0375, weight_decay=1e-4, dropout=0.5, test_views="10x3")
# The demo on the built-in synthetic Charades set (12 train / 6 test videos of 5 s at 96x72): too few videos for
# the long cycle's big batches, so plain training. Values a user gives win.
DEMO = dict(version="XS", frames=8, rate=4, crop=64, test_crop=72, jitter=[64, 80], epochs=30, batch_size=4,
            lr=0.05, lr_policy="cosine", steps=[], warmup_epochs=1.0, long_cycle=False, short_cycle=False,
            workers=2, precise_bn_batches=10, test_views="4x1", dropout=0.2, flip=False)


def submission_scores(row):
    """A submission line's scores: 9 significant digits keep every distinct float32 score distinct and in order,
    so the official scorer ranks (and breaks ties) exactly as the printed mAP; NaN (a video without readable views)
    is written as -inf, which the official scorers treat as they treat a missing video."""
    return " ".join("-inf" if s != s else f"{s:.9g}" for s in row)


def official_note(scorer, targets):
    """What the printed mAP is: the official scorer's arithmetic, averaged over fewer classes where some have no
    positive (the official mean is NaN then)."""
    classes, scored = targets.shape[1], classes_with_positives(targets)
    if scored == classes:
        return f"as {scorer} counts it"
    return f"as {scorer} counts it, over the {scored} of {classes} classes with a positive: its own mean is NaN"


class CharadesTask(engine.Task):
    name = "charades"
    combine = "max"
    main_metric = "mAP"
    defaults = RECIPE
    predictions_file = "submission_{views}.txt"
    demo = DEMO
    demo_data_root = SYNTHETIC_ROOT

    def add_arguments(self, parser):
        parser.add_argument("--train-split", default="train", help="Charades_v1_<split>.csv to train on")
        parser.add_argument("--test-split", default="test", help="Charades_v1_<split>.csv to evaluate on")
        parser.add_argument("--frames-dir", default="Charades_v1_rgb", help="frame folders under --data")

    def demo_data(self):
        return ensure_synthetic(SYNTHETIC_ROOT)["charades"]

    def datasets(self, args):
        common = dict(frames_dir=args.frames_dir, flip=args.flip, **clip_recipe(args).dataset_args())
        train = CharadesDataset(args.data, args.train_split, mode="train", **common)
        val = CharadesDataset(args.data, args.test_split, mode="val", **common)
        test = CharadesDataset(args.data, args.test_split, mode="test", temporal_views=args.temporal_views,
                               spatial_crops=args.spatial_crops, **common)
        return {"train": train, "val": val, "test": test}

    def prepare_model(self, model, args):
        # At a test crop larger than the training crop X3D's head classifies several positions; for Kinetics it
        # averages their softmax, for multi-label scores it must average their sigmoids (the authors' X3D head)
        head = getattr(model, "head", None)
        if hasattr(head, "multi_label"):
            head.multi_label = True

    def loss(self, logits, batch):
        return F.binary_cross_entropy_with_logits(logits.float(), batch["target"].float())

    def train_correct(self, logits, batch):
        return None                                       # multi-label: no accuracy

    def add_views(self, aggregator, logits, batch):
        aggregator.add(torch.sigmoid(logits.float()), batch["video_index"])

    def metrics(self, scores, dataset):
        return {"mAP": charades_classify_map(scores, video_targets(dataset))}

    def metrics_note(self, dataset):
        return official_note("Charades_v1_classify", video_targets(dataset))

    def write_predictions(self, path, scores, dataset, unreadable=None):
        """The official classification submission (Charades_v1_classify): `<id> <score per class>` per line, for
        every test video (one without readable views as -inf: what the scorer gives a missing one)."""
        with open(path, "w") as f:
            for video_id, row in zip(dataset.video_ids, scores.tolist()):
                f.write(f"{video_id} {submission_scores(row)}\n")


if __name__ == "__main__":
    engine.main(CharadesTask())
