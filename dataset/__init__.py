"""Video data: Kinetics-style classification in every layout (VideoDataset), Charades multi-label and per-frame
targets (CharadesDataset), and the synthetic motion data set (ensure_synthetic). Clips are uint8 (3, T, H, W);
normalize on the device with transforms.normalize_batch. Knows nothing of models."""
from .base import BadSampleWarning
from .charades import CharadesDataset
from .kinetics import BadCSVLineWarning, VideoDataset, detect_layout, read_class_names
from .synthetic import ensure_synthetic, write_broken
from .video_io import VideoReadError, read_video_windows, video_meta

__all__ = ["VideoDataset", "CharadesDataset", "ensure_synthetic", "write_broken", "BadSampleWarning",
           "BadCSVLineWarning", "VideoReadError", "detect_layout", "read_class_names", "read_video_windows",
           "video_meta"]
