"""What every clip dataset shares: the ClipRequest items of the multigrid batch sampler, the modes and surviving
bad files.

Modes, as the released code's: 'train' draws a random clip (position, short-side jitter, crop, flip); 'val' draws
one clip per video the same way, from a generator seeded per video, so every evaluation sees the same clips
whatever the workers, devices or batch order; 'test' gives the evenly spaced test views.
Training replaces a bad sample by another video (warned once per file, counted in the item's 'bad' field);
evaluation ('val', 'test') retries the same video, then gives a placeholder marked 'unreadable' that every
aggregator leaves out (evaluation.accumulate_views), so no other video's score changes."""
import contextlib
import sys
import warnings

import torch

from multigrid import ClipRequest

from .video_io import VideoReadError, frame_folder_pattern

# In evaluation ('val', 'test') a failed read is tried this many more times on the same video (a network file
# system's passing error) before the video is reported unreadable; SlowFast's current loader retries its test
# videos in place too.
EVALUATION_RETRIES = 2
MODES = ("train", "val", "test")
# with the video's index, the seed of its validation clip; fixed, so runs with other seeds are judged on the same
VALIDATION_SEED = 0


@contextlib.contextmanager
def seeded_randomness(*key):
    """Inside, torch's default CPU generator (which the clip draws use) starts from a seed that is a function of
    `key` alone; outside, it continues where it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(hash(key) % 2 ** 63)   # ints and tuples hash the same in every process
        yield


class BadSampleWarning(UserWarning):
    """A video or frame folder could not give a clip: replaced by another sample (training) or left out
    (evaluation)."""


class ClipDataset(torch.utils.data.Dataset):
    """Subclasses set self.num_videos and implement sample_path(video), _load(video, view, frames, rate, crop)
    -> dict and unreadable_targets(video, frames) -> the same dict's fields but the clip, for a placeholder."""

    def __init__(self, mode, frames, rate, train_crop, jitter, test_crop, temporal_views, spatial_crops,
                 max_retries, flip=True):
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if spatial_crops not in (1, 3):
            raise ValueError(f"spatial_crops must be 1 or 3, got {spatial_crops}")
        self.mode = mode
        self.frames, self.rate, self.train_crop = frames, rate, train_crop
        self.jitter, self.test_crop = tuple(jitter), test_crop
        self.temporal_views = temporal_views if mode == "test" else 1
        self.spatial_crops = spatial_crops if mode == "test" else 1
        self.max_retries = max_retries
        # train-time horizontal flips; off for classes that a mirror changes (left/right, clockwise motions)
        self.flip = flip
        self.bad_paths = {}  # path -> reason; per process (each DataLoader worker has its own)
        self._folder_patterns = {}  # frame folder -> (template, first, count); listing 300 names cost ~1 ms a clip

    @property
    def views_per_video(self):
        return self.temporal_views * self.spatial_crops

    def __len__(self):
        return self.num_videos * self.views_per_video

    @property
    def random_clips(self):
        """Clips drawn at random (train and val), not the test views."""
        return self.mode != "test"

    def default_shape(self):
        return (self.frames, self.rate, self.test_crop if self.mode == "test" else self.train_crop)

    def __getitem__(self, item):
        # a batch sampler of this project hands a ClipRequest; a plain sampler an int (the default shape)
        request = item if isinstance(item, ClipRequest) else ClipRequest(int(item), *self.default_shape())
        index, frames, rate, crop = (int(v) for v in request[:4])
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for {len(self)} samples")
        video, view = divmod(index, self.views_per_video)
        if self.mode == "train":
            return self._training_item(video, view, frames, rate, crop)
        return self._evaluation_item(video, view, frames, rate, crop)

    def _read(self, video, view, frames, rate, crop):
        """(item, None) from one read of a video's view, or (None, the reason it failed, naming the file)."""
        try:
            return self._load(video, view, frames, rate, crop), None
        except VideoReadError as e:
            return None, str(e)
        except Exception as e:  # decoders raise many types; any of them means "this file is bad"
            return None, f"{self.sample_path(video)}: {type(e).__name__}: {e}"

    def _training_item(self, video, view, frames, rate, crop):
        bad = 0
        for _ in range(self.max_retries + 1):
            path = self.sample_path(video)
            if path not in self.bad_paths:  # known bad in this process: do not pay for decoding it again
                out, error = self._read(video, view, frames, rate, crop)
                if out is not None:
                    out.update(video_index=video, view=view, bad=bad, unreadable=0)
                    return out
                self._report(path, error, "replaced by another")
            bad += 1
            # another video, same view, so the batch keeps its shape
            video = int(torch.randint(0, self.num_videos, (1,)))
        raise RuntimeError(f"{bad} bad samples in a row (max_retries={self.max_retries}); last ones: "
                           + "; ".join(list(self.bad_paths.values())[-3:]))

    def _evaluation_item(self, video, view, frames, rate, crop):
        """The view of this video, read up to 1 + EVALUATION_RETRIES times (a val clip from its own seeded draw each
        time); else a placeholder of the batch's shape marked unreadable (another video's view would count twice
        in that video's score)."""
        path = self.sample_path(video)
        if path not in self.bad_paths:
            for _ in range(1 + EVALUATION_RETRIES):
                with seeded_randomness(VALIDATION_SEED, video) if self.mode == "val" else contextlib.nullcontext():
                    out, error = self._read(video, view, frames, rate, crop)
                if out is not None:
                    out.update(video_index=video, view=view, bad=0, unreadable=0)
                    return out
            self._report(path, error, "left out of the evaluation")
        out = self.unreadable_targets(video, frames)
        out.update(clip=torch.zeros(3, frames, crop, crop, dtype=torch.uint8), video_index=video, view=view, bad=0,
                   unreadable=1)
        return out

    def read_error(self, video):
        """Why `video` gives no clip (None if it reads now): for the list of unreadable videos a test writes."""
        path = self.sample_path(video)
        if path in self.bad_paths:
            return self.bad_paths[path]
        return self._read(video, 0, *self.default_shape())[1]

    def _report(self, path, error, consequence):
        self.bad_paths[path] = error
        warnings.warn(f"skipping bad sample, {consequence}: {error}", BadSampleWarning, stacklevel=4)
        sys.stderr.flush()

    def folder_pattern(self, folder):
        """frame_folder_pattern(folder), listed once per process: the files of a folder do not change during a run."""
        if folder not in self._folder_patterns:
            self._folder_patterns[folder] = frame_folder_pattern(folder)
        return self._folder_patterns[folder]

    def scaled_jitter(self, crop):
        """The multigrid sampler shrinks the crop; the short-side jitter range shrinks with it, so a coarse clip sees
        the base shape's field of view. (The released loader shrinks only the low end; the demo's multigrid run
        learnt far less that way: see the README's Multigrid section.)"""
        factor = crop / self.train_crop
        return (max(crop, round(self.jitter[0] * factor)), max(crop, round(self.jitter[1] * factor)))

    def reduced_decode_side(self, crop):
        """For a training clip at a smaller shape than the base (multigrid's coarse shapes): the longest short side
        it can be resized to, so JPEG frames may be decoded at a reduced scale (video_io.read_frames). None at the
        base shape and for test views, which see exactly the released loader's pixels."""
        if self.mode != "train" or crop >= self.train_crop:
            return None
        return self.scaled_jitter(crop)[1]

    def test_resize(self, crop):
        """3 crops: short side to the crop size; 1 crop: short side to the jitter minimum (the released test),
        scaled."""
        if self.spatial_crops == 3:
            return crop
        return max(crop, round(self.jitter[0] * crop / self.test_crop))
