"""Fine-tune X3D for Charades v1 temporal localization: per-frame multi-label scores (the model's task='loc').

    python train_x3d_charades_loc.py                                      # built-in synthetic demo, CPU, minutes
    python train_x3d_charades_loc.py --data /data/charades --finetune X3D_M.pyth -gpu 0,1,2,3
    python train_x3d_charades_loc.py --data /data/charades --test-only --finetune models/<run>/best.pt

Same data, recipe and flags as train_x3d_charades.py. Loss: binary cross-entropy per frame against the actions
going on at that frame, plus binary cross-entropy of the clip's max-over-time logits against the clip's labels.
Evaluation follows the official Charades_v1_localize protocol: 25 equally spaced time points per test video
(point j at j/25 of the video's length, submitted as frame j+1), mAP over all (video, point) pairs per class; the
submission file has `<id> <frame> <157 scores>` lines. This is NOT the x3d-multigrid port's all-frames metric.
"""
import engine
import torch
import torch.nn.functional as F
from dataset.charades import point_targets, video_lengths
from metrics import LOCALIZATION_POINTS, LocalizationAggregator, charades_localize_map
from train_x3d_charades import CharadesTask, official_note, submission_scores


def frame_logits(logits, frames):
    """(B, classes, T') -> (B, classes, frames): nearest upsampling along time (I3D pools time by 2)."""
    if logits.shape[-1] == frames:
        return logits
    return F.interpolate(logits, size=frames, mode="nearest")


def localization_loss(logits, frame_targets, clip_targets, mask=None):
    """Per-frame BCE over the valid frames (mask (B, T), 1 = real frame) + clip-level BCE of the max over the valid
    frames' logits. logits, frame_targets: (B, classes, T); clip_targets: (B, classes)."""
    logits, frame_targets = logits.float(), frame_targets.float()
    if mask is None:
        mask = torch.ones(logits.shape[0], logits.shape[2], device=logits.device)
    mask = mask.float()[:, None, :].expand_as(logits)
    per_frame = F.binary_cross_entropy_with_logits(logits, frame_targets, reduction="none")
    frame_loss = (per_frame * mask).sum() / mask.sum().clamp(min=1)
    clip_logits = logits.masked_fill(mask == 0, float("-inf")).amax(dim=2)
    clip_loss = F.binary_cross_entropy_with_logits(clip_logits, clip_targets.float())
    return frame_loss + clip_loss


class CharadesLocalizationTask(CharadesTask):
    name = "charades-loc"        # not "charades_...": --resume globs <name>_*/last.pt
    model_task = "loc"
    predictions_file = "submission_loc_{views}.txt"

    def loss(self, logits, batch):
        # CharadesDataset never pads: a clip that runs past a video's end repeats its last frame (clamped indices)
        # with that frame's time and targets, so every frame is real. A loader that pads gives 'frame_mask'.
        logits = frame_logits(logits, batch["frame_targets"].shape[-1])
        return localization_loss(logits, batch["frame_targets"], batch["target"], batch.get("frame_mask"))

    def aggregator(self, dataset):
        return LocalizationAggregator(video_lengths(dataset), dataset.num_classes)

    def add_views(self, aggregator, logits, batch):
        scores = torch.sigmoid(frame_logits(logits.float(), batch["frame_times"].shape[-1]))
        aggregator.add_frames(scores, batch["video_index"], batch["frame_times"])

    def metrics(self, scores, dataset):
        return {"mAP": charades_localize_map(scores, point_targets(dataset, video_lengths(dataset)))}

    def metrics_note(self, dataset):
        return official_note("Charades_v1_localize", point_targets(dataset, video_lengths(dataset)))

    def write_predictions(self, path, scores, dataset, unreadable=None):
        """The official localization submission (Charades_v1_localize): `<id> <frame 1..25> <scores>` per line, for
        every test video (one without readable views as -inf, as the scorer scores a missing frame)."""
        rows = scores.view(dataset.num_videos, LOCALIZATION_POINTS, -1).tolist()
        with open(path, "w") as f:
            for video_id, points in zip(dataset.video_ids, rows):
                for j, row in enumerate(points):
                    f.write(f"{video_id} {j + 1} {submission_scores(row)}\n")


if __name__ == "__main__":
    engine.main(CharadesLocalizationTask())
