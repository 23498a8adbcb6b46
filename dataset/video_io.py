"""Reading frames from disk: video files through PyAV (seek to the window, decode only it) and JPEG frame folders
(read only the frames a clip needs). Everything returns uint8 tensors T x H x W x C (RGB) and knows nothing of
labels, sampling or models.

Why seek: a 2-second clip out of a 10-minute video must cost about a 2-second decode, not a 10-minute one. PyAV's
`container.seek` jumps to the key frame at or before the window start; we decode forward from there and stop at
the first frame past the window end.
"""
import io
import os
import re
import warnings
from fractions import Fraction

import numpy as np
import torch

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
# A frame counts as "at" a requested time if it starts no later than this fraction of a frame after it: just
# enough for float and pts rounding, so that time t shows source frame floor(t * fps) like the authors' loader.
PTS_TOLERANCE_FRAMES = 0.01
# A file whose decodable frames stop this long before the clip end the header promised was cut short.
TRUNCATION_SLACK_S = 1.0
# Decode at most this many seconds past the last key frame before giving up on reaching the window (broken index).
MAX_DECODE_OVERRUN_S = 30.0
# A packet lasting 1/fps within this fraction is taken as a constant-rate frame whose display time its pts and
# duration tell exactly (needed to skip the decoding of frames a clip does not show). mp4 time bases (1/15360,
# 1/30000, ...) give exact durations; millisecond time stamps (mkv, webm) round 1/30 s to 33 ms, leave 1 ms gaps
# between frames, and picked other frames in 23 of 315 test clips with a 5% slack, so those files decode whole.
CONSTANT_RATE_SLACK = 0.001
_FRAME_NAME = re.compile(r"^(.*?)(\d+)\.(jpg|jpeg)$", re.IGNORECASE)


class VideoReadError(RuntimeError):
    """A file that cannot give the frames asked for; the message names the file and the reason."""


def is_video_file(path):
    return str(path).lower().endswith(VIDEO_EXTENSIONS)


# ----------------------------------------------------------------------------------------------------------------
# Video files (PyAV)

def _open(path):
    import av  # imported here so that frame-folder users never pay for it
    if not os.path.exists(path):
        raise VideoReadError(f"{path}: file is missing")
    if os.path.getsize(path) == 0:
        raise VideoReadError(f"{path}: file is empty (0 bytes)")
    try:
        container = av.open(str(path))
    except Exception as e:  # av.error.InvalidDataError and friends: not a video
        raise VideoReadError(f"{path}: cannot open ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: has no video stream")
    return container


def video_meta(path):
    """fps, duration (s), an estimated frame count, width, height, without decoding (reads the header only)."""
    container = _open(path)
    try:
        return _meta(container, path)
    finally:
        container.close()


def _meta(container, path):
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.base_rate or stream.guessed_rate
    fps = float(rate) if rate else 0.0
    if stream.duration is not None and stream.time_base is not None:
        duration = float(stream.duration * stream.time_base)
    elif container.duration is not None:
        duration = container.duration / 1e6  # av.time_base is microseconds
    else:
        duration = stream.frames / fps if (stream.frames and fps) else 0.0
    if fps <= 0 or duration <= 0:
        raise VideoReadError(f"{path}: no usable frame rate / duration in the header (fps={fps}, duration={duration})")
    num_frames = stream.frames if stream.frames else int(round(duration * fps))
    start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
    return dict(fps=fps, duration=duration, num_frames=num_frames, start=start,
                width=stream.codec_context.width, height=stream.codec_context.height)


def read_video_times(path, times, threads=1):
    """Frames shown at `times` (seconds from the video start, sorted ascending) as uint8 T x H x W x 3.
    `times` may be a function of the header's meta (fps, duration, num_frames, ...) so that a clip can be chosen
    from the video's length without opening the file twice. Returns (frames, meta).

    Seeks once to the key frame before times[0] and decodes forward until times[-1]; each time takes the last
    frame that starts at or before it (so a 25 fps video sampled at 30 fps repeats a frame now and then, exactly
    as a player would show it). Frames that no time needs and that no other frame refers to (most B-frames) are
    not decoded at all: a clip every 6th frame then decodes about a third fewer frames, with the same pixels.
    """
    container = _open(path)
    try:
        meta = _meta(container, path)
        if callable(times):
            times = times(meta)
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = threads
        tolerance = PTS_TOLERANCE_FRAMES / meta["fps"]
        wanted_times = [t + meta["start"] for t in times]
        first, last = wanted_times[0], wanted_times[-1]
        if first - meta["start"] > 0.5:  # seeking to 0 is what opening already does
            container.seek(int(first / stream.time_base), stream=stream, backward=True, any_frame=False)
        picked, out_i, previous = [None] * len(times), 0, None
        meta["decoded_frames"] = 0  # how much work the seek and the skipping saved; tests and the benchmark read it
        try:
            for frame in _decode_shown(container, stream, wanted_times, meta["fps"], tolerance):
                meta["decoded_frames"] += 1
                t = frame.time if frame.time is not None else (previous[0] + 1 / meta["fps"] if previous else 0.0)
                if t - first > MAX_DECODE_OVERRUN_S + (last - first):
                    break
                # every requested time before this frame's start belongs to the previous frame
                while out_i < len(times) and wanted_times[out_i] + tolerance < t:
                    if previous is not None:
                        picked[out_i] = previous[1]
                    out_i += 1
                if out_i >= len(times):
                    break
                previous = (t, frame)
                if t > last + tolerance:
                    break
        except Exception as e:  # a decode error mid-stream: truncated or corrupt data
            if previous is None:
                raise VideoReadError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
        if previous is not None and out_i < len(times):
            wanted = min(last, meta["start"] + meta["duration"])
            if wanted - previous[0] > TRUNCATION_SLACK_S:
                raise VideoReadError(f"{path}: truncated (frames stop at {previous[0]:.2f} s, the header says "
                                     f"{meta['duration']:.2f} s)")
        # times past the last decoded frame (the end of the video) take the last frame
        while out_i < len(times) and previous is not None:
            picked[out_i] = previous[1]
            out_i += 1
        if previous is None:
            raise VideoReadError(f"{path}: no frame could be decoded")
        # a time before the first decoded frame (pts not starting at 0) takes the first frame we have
        first_frame = next(f for f in picked if f is not None)
        picked = [f if f is not None else first_frame for f in picked]
        return torch.from_numpy(_frames_to_rgb(picked)), meta
    finally:
        container.close()


def _decode_shown(container, stream, wanted_times, fps, tolerance):
    """Decoded frames from the container's position on, leaving out (not decoding) those that no wanted time shows
    and no other frame refers to."""
    codec = stream.codec_context
    time_base = float(stream.time_base)
    for packet in container.demux(stream):
        codec.skip_frame = "NONREF" if _packet_unneeded(packet, time_base, wanted_times, fps, tolerance) else "DEFAULT"
        yield from codec.decode(packet)


def _packet_unneeded(packet, time_base, wanted_times, fps, tolerance):
    """True when the frame in `packet` is shown at none of `wanted_times`: with the picking rule above, a frame
    starting at s and lasting d is shown at every t with s <= t + tolerance < s + d. Judged only where the stream
    looks constant-rate (the packet lasts 1/fps within CONSTANT_RATE_SLACK); otherwise a packet's duration may not
    be its display time and the frame is decoded. Only a hint: the decoder still decodes it if others refer to it.
    `time_base` is the stream's, as a float (Fraction arithmetic here cost 4 ms a clip)."""
    if packet.pts is None or not packet.duration:
        return False
    duration = packet.duration * time_base
    if abs(duration * fps - 1.0) > CONSTANT_RATE_SLACK:
        return False
    start = packet.pts * time_base
    return not any(start <= t + tolerance < start + duration for t in wanted_times)


def _frames_to_rgb(frames):
    """RGB24 arrays of decoded frames, each distinct frame converted once, through one swscale context: PyAV's
    `frame.to_ndarray(format='rgb24')` builds a new context (and thread pool) per frame, which cost more than the
    conversion itself (0.23 vs 0.01 ms at 64x48, 0.48 vs 0.17 ms at 340x256, one thread). Same pixels."""
    from av.video.reformatter import VideoReformatter
    reformatter = VideoReformatter()
    arrays = {}
    for f in frames:
        if id(f) not in arrays:
            arrays[id(f)] = reformatter.reformat(f, format="rgb24", threads=1).to_ndarray()
    return np.stack([arrays[id(f)] for f in frames])


def read_video_all(path, threads=1):
    """Every frame of a video, decoded front to back (the slow way; for tools and the benchmark's comparison)."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"
        stream.codec_context.thread_count = threads
        frames = list(container.decode(stream))
    except VideoReadError:
        raise
    except Exception as e:
        raise VideoReadError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()
    if not frames:
        raise VideoReadError(f"{path}: no frame could be decoded")
    return torch.from_numpy(_frames_to_rgb(frames))


# ----------------------------------------------------------------------------------------------------------------
# JPEG frame folders

def frame_folder_pattern(folder):
    """(name template, first index, frame count) of a frame folder: `frame_%05d.jpg`, `img_%05d.jpg`, `%06d.jpg`,
    Charades' `<id>-%06d.jpg`, or any `<prefix><digits>.jpg` with a fixed digit count."""
    try:
        names = os.listdir(folder)
    except FileNotFoundError:
        raise VideoReadError(f"{folder}: frame folder is missing") from None
    except NotADirectoryError:
        raise VideoReadError(f"{folder}: is not a folder") from None
    prefixes = {}
    for name in names:
        m = _FRAME_NAME.match(name)
        if m:
            key = (m.group(1), len(m.group(2)), m.group(3))
            prefixes.setdefault(key, []).append(int(m.group(2)))
    if not prefixes:
        raise VideoReadError(f"{folder}: no JPEG frames (expected e.g. frame_00001.jpg, img_00001.jpg, 000001.jpg)")
    (prefix, digits, ext), indices = max(prefixes.items(), key=lambda kv: len(kv[1]))
    template = f"{prefix}{{:0{digits}d}}.{ext}"
    return template, min(indices), len(indices)


def _torchvision_jpeg_decoder():
    """torchvision's libjpeg-turbo decoder: ~1.5x faster than Pillow here (0.52 vs 0.81 ms at 340x256, 5.1 vs 7.5 ms
    at 1280x720, one thread) and no PIL image or numpy copy in between. torchvision 0.29 marks its image codecs
    deprecated in favour of torchcodec, so fall back to Pillow the day they are gone."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None

    def decode(data):
        with warnings.catch_warnings():  # a few microseconds; a global filter would not survive pytest's resets
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_jpeg(torch.frombuffer(data, dtype=torch.uint8), mode=ImageReadMode.RGB)
        return image.permute(1, 2, 0)

    return decode


def _pillow_jpeg_decode(data):
    from PIL import Image
    with Image.open(io.BytesIO(data)) as image:
        return torch.from_numpy(np.asarray(image.convert("RGB")).copy())


_decode_jpeg = _torchvision_jpeg_decoder() or _pillow_jpeg_decode


def read_jpeg(path):
    """One JPEG file as uint8 H x W x 3."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise VideoReadError(f"{path}: frame file is missing") from None
    if not data:
        raise VideoReadError(f"{path}: frame file is empty (0 bytes)")
    if data[:2] != b"\xff\xd8":  # every JPEG starts with the SOI marker
        raise VideoReadError(f"{path}: not a decodable JPEG (no JPEG start marker)")
    try:
        return _decode_jpeg(bytearray(data))
    except Exception as e:
        raise VideoReadError(f"{path}: not a decodable JPEG ({str(e).splitlines()[0]})") from None


def read_frames(folder, indices, pattern=None):
    """Frames `indices` (0-based positions in the folder) of a frame folder as uint8 T x H x W x 3; each distinct
    file is read once even if a clip repeats it."""
    template, first, _ = pattern or frame_folder_pattern(folder)
    cache = {}
    out = []
    for i in indices:
        i = int(i)
        if i not in cache:
            cache[i] = read_jpeg(os.path.join(folder, template.format(first + i)))
        out.append(cache[i])
    shapes = {tuple(f.shape) for f in cache.values()}
    if len(shapes) > 1:
        raise VideoReadError(f"{folder}: frames differ in size {sorted(shapes)}")
    return torch.stack(out)


def video_fps_fraction(fps):
    """A frame rate as the Fraction PyAV wants for writing (30 -> 30/1, 29.97 -> 2997/100)."""
    return Fraction(fps).limit_denominator(1001)
