"""Reading frames from disk: video files through PyAV (seek to the window, decode only it) and JPEG frame folders
(read only the frames a clip needs). Everything returns uint8 tensors T x H x W x C (RGB) and knows nothing of
labels, models or where a clip starts: callers say which window of time stamps they want (transforms.temporal).

Why seek: a 2-second clip out of a 10-minute video must cost about a 2-second decode, not a 10-minute one. PyAV's
`container.seek` jumps to the key frame at or before the window start; we decode forward from there and stop at
the first frame past the window end (a 2 s clip of a 5-minute mp4: 59x faster than decoding it whole,
benchmarks/README.md: bench_data).

What else keeps decoding cheap: frames no clip shows and nothing refers to (most B-frames) are not decoded; the rest
of a key-frame interval after the last frame a clip shows there is not decoded either, so a sparse clip (multigrid's
2 frames up to 16 apart) decodes a few frames per interval it touches, not its whole span (this pays where key
frames are frequent, as in the synthetic set's 8-frame intervals; an open GOP's leading frames are read correctly);
one swscale context per clip; the demuxer is the one the extension names (a file whose extension lies is probed). A
header without frame count or duration (some mkv/webm) is scanned for its time stamps instead of failing. JPEG
folders read only the clip's frames, each decoded by libjpeg-turbo (`simplejpeg`) straight into its place in the
clip; multigrid's smaller training crops may decode them at libjpeg's scales of 1/2 or less where the short side
they are resized to allows it, within 0.03 (mean abs, normalized) of a full decode resized the same way
(tests/test_data_io.py). Base-shape clips and test views decode in full.
"""
import bisect
import math
import os
import re

import numpy as np
import simplejpeg
import torch

VIDEO_EXTENSIONS = (".mp4", ".avi", ".mkv", ".webm", ".mov", ".m4v")
JPEG_EXTENSIONS = (".jpg", ".jpeg")
# A second pass seeks this many time-base units before a window start, as the authors' loader does; the first
# seeks to the start itself (a margin can cost a whole extra key-frame interval) and checks where it landed.
SEEK_MARGIN_PTS = 1024
# A file whose frames stop this long before its header's duration was cut short (a download that lost its tail);
# intact files end within a frame or two of it. A video merely shorter than a clip is not truncated: its clip
# repeats the last frame, as the released loader's clamped indices do.
TRUNCATION_SLACK_S = 1.0
# A packet lasting 1/fps within this fraction is taken as a constant-rate frame on a grid of time stamps, so which
# frames a window shows can be predicted before decoding and the others skipped. mp4 time bases (1/15360, 1/30000,
# ...) give exact durations; millisecond time stamps (mkv, webm at 29.97 or 30 fps) round 1/30 s to 33 ms and fall
# off the grid, so those files decode whole windows.
CONSTANT_RATE_SLACK = 0.001
# The demuxer an extension names: probing every format first costs more than opening a small mp4 does
# (benchmarks/bench_shapes.py's coarse shapes open a file per 2-frame clip). A file whose extension lies is probed.
CONTAINER_FORMATS = {".mp4": "mp4", ".m4v": "mp4", ".mov": "mov", ".mkv": "matroska", ".webm": "matroska",
                     ".avi": "avi"}
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
    hinted = CONTAINER_FORMATS.get(os.path.splitext(str(path))[1].lower())
    try:
        container = av.open(str(path), format=hinted)
    except Exception:
        try:
            container = av.open(str(path))
        except Exception as e:  # av.error.InvalidDataError and friends: not a video
            raise VideoReadError(f"{path}: cannot open ({type(e).__name__}: {e})") from None
    if not container.streams.video:
        container.close()
        raise VideoReadError(f"{path}: has no video stream")
    return container


def video_meta(path):
    """The header's fps, frame count, duration (s and time-base units), width, height (see _meta)."""
    container = _open(path)
    try:
        return _meta(container, path)
    finally:
        container.close()


def _meta(container, path):
    """fps = the stream's average rate; num_frames and duration_pts = the header's frame count and duration (time
    base units). Where the header lacks either (mkv and webm carry neither), `frame_pts` lists every frame's time
    stamp from one pass over the packets (no decoding) and num_frames is its length; otherwise frame_pts is None."""
    stream = container.streams.video[0]
    rate = stream.average_rate or stream.guessed_rate or stream.base_rate
    fps = float(rate) if rate else 0.0
    if fps <= 0:
        raise VideoReadError(f"{path}: no usable frame rate in the header")
    time_base = stream.time_base
    meta = dict(fps=fps, num_frames=stream.frames, duration_pts=stream.duration, time_base=time_base,
                frame_pts=None, width=stream.codec_context.width, height=stream.codec_context.height,
                start=float(stream.start_time * time_base) if stream.start_time is not None else 0.0)
    if not stream.frames or not stream.duration:
        meta["frame_pts"] = _scan_frame_pts(path)
        meta["num_frames"] = len(meta["frame_pts"])
        if not meta["frame_pts"]:
            raise VideoReadError(f"{path}: no video packets with time stamps")
        meta["duration_pts"] = meta["frame_pts"][-1] - meta["frame_pts"][0] + round(1 / (fps * time_base))
    meta["duration"] = float(meta["duration_pts"] * time_base)
    return meta


def _scan_frame_pts(path):
    """Sorted time stamps of every video packet (one per frame): demuxing only, a small fraction of a decode."""
    container = _open(path)
    try:
        stream = container.streams.video[0]
        return sorted(p.pts for p in container.demux(stream) if p.pts is not None and p.size)
    except Exception as e:
        raise VideoReadError(f"{path}: reading the packets failed ({type(e).__name__}: {e})") from None
    finally:
        container.close()


def read_video_windows(path, plan, threads=1):
    """Clips given as windows of time stamps, all from one pass: `plan(meta)` (meta from the header, see _meta)
    returns a list of (start_pts, end_pts, positions); a window holds, in time order, the frames with
    start_pts <= pts <= end_pts and then the next frame (as the authors' loader decodes it), and its clip is the
    frames at `positions` (clamped to the window's last frame). Returns (list of uint8 T x H x W x 3, meta).

    Frames that no clip shows and no other frame refers to (most B-frames) are not decoded at all where the stream
    is constant-rate, and decoded frames are kept only where a clip shows them; both rest on the decoder handing
    frames out in time order. A pass whose guesses miss a frame runs again decoding and keeping every window frame.
    """
    container = _open(path)
    try:
        meta = _meta(container, path)
        windows = [(int(s), int(e), [int(p) for p in positions]) for s, e, positions in plan(meta)]
        stream = container.streams.video[0]
        stream.thread_type = "AUTO" if threads != 1 else "SLICE"   # before the codec opens: a second pass cannot
        stream.codec_context.thread_count = threads
        clips = _decode_windows(container, path, meta, windows, exhaustive=False)
        if clips is None:
            meta["second_pass"] = True
            container.seek(0, stream=container.streams.video[0], backward=True, any_frame=False)
            clips = _decode_windows(container, path, meta, windows, exhaustive=True)
        return clips, meta
    finally:
        container.close()


def _decode_windows(container, path, meta, windows, exhaustive):
    """The clips of `windows` from one decoding pass, or None when a frame they need was skipped or not kept."""
    stream = container.streams.video[0]
    first_start = min(s for s, _, _ in windows)
    seek_to = max(first_start - (SEEK_MARGIN_PTS if exhaustive else 0), 0)
    if seek_to > 0:
        container.seek(seek_to, stream=stream, backward=True, any_frame=False)
    last_end = max(e for _, e, _ in windows)
    shown = _ShownFrames(windows, meta, exhaustive)
    meta["decoded_frames"] = 0  # how much work the seek and the skipping saved; tests and the benchmark read it
    try:
        for frame in _decode_packets(container, stream, shown):
            meta["decoded_frames"] += 1
            if frame.pts is None:
                raise VideoReadError(f"{path}: a frame without a time stamp")
            shown.add_frame(frame)
            if frame.pts > last_end:
                break
    except VideoReadError:
        raise
    except Exception as e:  # a decode error mid-stream: truncated or corrupt data; use what was decoded
        shown.stream_ended = True
        if not shown.kept:
            raise VideoReadError(f"{path}: decoding failed ({type(e).__name__}: {e})") from None
    if seek_to > 0 and not exhaustive and (not shown.seen or shown.seen[0] > first_start):
        return None  # the seek landed past the window start
    time_base = float(meta["time_base"])
    clips = []
    for start, end, positions in windows:
        window = shown.window(start, end)
        if shown.stream_ended and (not window or window[-1] <= end):  # the stream ended inside the window
            _check_not_truncated(path, meta, shown.seen, start)
        if not window:
            raise VideoReadError(f"{path}: no frame between {start * time_base:.2f} and {end * time_base:.2f} s")
        wanted = [window[min(p, len(window) - 1)] for p in positions]
        if any(pts not in shown.kept for pts in wanted):
            if exhaustive:
                raise VideoReadError(f"{path}: frames of a clip could not be decoded")
            return None
        clips.append([shown.kept[pts] for pts in wanted])
    arrays = _frames_to_rgb([f for clip in clips for f in clip])
    sizes = np.cumsum([0] + [len(clip) for clip in clips])
    return [torch.from_numpy(arrays[a:b]) for a, b in zip(sizes[:-1], sizes[1:])]


def _check_not_truncated(path, meta, seen, sought):
    """Raise when the frames met from time stamp `sought` on (every frame to the end of the stream, `seen` sorted)
    stop more than TRUNCATION_SLACK_S before the end the header gives (its start plus its duration)."""
    time_base = float(meta["time_base"])
    header_end = meta["start"] + meta["duration"]
    frames_end = seen[-1] * time_base + 1 / meta["fps"] if seen else sought * time_base
    if header_end - frames_end > TRUNCATION_SLACK_S:
        stop = f"at {seen[-1] * time_base:.2f} s" if seen else f"before {sought * time_base:.2f} s"
        raise VideoReadError(f"{path}: truncated (frames stop {stop}, the header says {header_end:.2f} s)")


class _ShownFrames:
    """Book-keeping of one pass: the time stamps of every frame met (decoded or skipped), and the decoded frames a
    clip may show. Exhaustive: skip nothing and keep every window frame."""

    def __init__(self, windows, meta, exhaustive):
        self.windows, self.meta, self.exhaustive = windows, meta, exhaustive
        self.wanted = [set(positions) for _, _, positions in windows]
        self.seen, self._seen_set = [], set()  # sorted pts of the frames met so far
        self.kept = {}  # pts -> decoded frame
        self.tails = {}  # window start -> the latest decoded frame in that window
        self.needed = None  # pts of every clip frame predicted on a constant-rate grid
        self.grid_before_last = None  # pts of every grid frame from the first window's start to the last needed
        self.fps, self.time_base = meta["fps"], float(meta["time_base"])
        self.stream_ended = False  # the pass met every frame there is, or data it could not decode

    def see(self, pts):
        if pts not in self._seen_set:
            self._seen_set.add(pts)
            bisect.insort(self.seen, pts)

    def count(self, low, high):
        """Frames met with low <= pts < high."""
        return bisect.bisect_left(self.seen, high) - bisect.bisect_left(self.seen, low)

    def packet_unneeded(self, packet):
        """True when the grid says no clip shows the packet's frame (only a hint: the decoder still decodes it if
        other frames refer to it)."""
        if self.exhaustive or packet.pts is None or not packet.duration:
            return False
        if abs(packet.duration * self.time_base * self.fps - 1.0) > CONSTANT_RATE_SLACK:
            return False
        if self.needed is None:
            self.needed = self._predict(packet.pts % packet.duration, packet.duration)
        on_grid = packet.pts % packet.duration == self.grid[0] and packet.duration == self.grid[1]
        return on_grid and packet.pts not in self.needed

    def all_needed_met(self):
        """True once every frame a clip shows has been met, and every frame of the grid before the last of them
        (frames come in decode order, so a B-frame the windows count may still be to come)."""
        if self.needed is None or not self.needed <= self._seen_set:
            return False
        if self.grid_before_last is None:
            offset, step = self.grid
            first = offset + math.ceil((min(s for s, _, _ in self.windows) - offset) / step) * step
            self.grid_before_last = set(range(first, max(self.needed) + 1, step))
        return self.grid_before_last <= self._seen_set

    def pending_before(self, pts):
        """True when a frame a clip shows, earlier than `pts`, has not been met yet (an open GOP's leading frames
        come after their key frame and may refer to the interval before it)."""
        return self.needed is not None and any(p < pts and p not in self._seen_set for p in self.needed)

    def _predict(self, offset, step):
        """Time stamps of the clips' frames if every frame lasts `step` and starts at offset + k * step."""
        self.grid = (offset, step)
        last_frame = None
        if self.meta["frame_pts"] is None:
            last_frame = offset + (self.meta["num_frames"] - 1) * step
        needed = set()
        for start, end, positions in self.windows:
            first = offset + math.ceil((start - offset) / step) * step
            last = offset + math.floor((end - offset) / step) * step + step  # + the next frame
            if last_frame is not None:
                last = min(last, last_frame)
            count = (last - first) // step + 1
            needed.update(first + min(p, count - 1) * step for p in positions)
        return needed

    def add_frame(self, frame):
        """Keep a decoded frame where a clip may show it: its window position is wanted (frames come in time order,
        so the frames met before it are all there are), it is the frame after a window, or it is the last one so
        far in a window (positions past a window's end clamp to its last frame)."""
        pts = frame.pts
        self.see(pts)
        keep = self.needed is not None and pts in self.needed
        for (start, end, _), wanted in zip(self.windows, self.wanted):
            if pts < start:
                continue
            if pts <= end:
                keep = keep or self.exhaustive or self.count(start, pts) in wanted
                self.tails[start] = frame
            elif self.count(end + 1, pts) == 0:
                keep = True
        if keep:
            self.kept[pts] = frame

    def window(self, start, end):
        """Time stamps of a window's frames: those in [start, end] and the next one met."""
        if start in self.tails:
            self.kept.setdefault(self.tails[start].pts, self.tails[start])
        i, j = bisect.bisect_left(self.seen, start), bisect.bisect_right(self.seen, end)
        return self.seen[i:j + 1]


def _decode_packets(container, stream, shown):
    """Decoded frames from the container's position on. Two kinds of frames no clip shows are not decoded: those no
    other frame refers to (the decoder skips them), and the rest of a key-frame interval after its last shown frame
    (its packets are held back while unneeded and dropped at the next key frame). Sparse clips, such as multigrid's
    2 frames at a high rate, then decode a few frames per key-frame interval instead of the whole window."""
    codec = stream.codec_context
    held = []  # packets since the last key frame or shown frame, none of them a frame a clip shows
    for packet in container.demux(stream):
        if packet.pts is not None and packet.size:
            shown.see(packet.pts)
        if not packet.size or (packet.is_keyframe and not shown.pending_before(packet.pts)):
            held = []  # the end, or a new key frame: what came since the last shown frame will never be needed
        if shown.packet_unneeded(packet):
            held.append(packet)
        else:
            for earlier in held:  # in decode order, before the frames that may refer to them
                codec.skip_frame = "NONREF"
                yield from codec.decode(earlier)
            held = []
            codec.skip_frame = "DEFAULT"
            yield from codec.decode(packet)
        if shown.all_needed_met():  # shown frames are never held: every one of them went to the decoder
            yield from codec.decode(None)  # drain the decoder's reordering delay: no later packet matters
            return
    shown.stream_ended = True


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
    """Every frame of a video, decoded front to back: the slow, obviously right way the tests compare with."""
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


def _read_jpeg_bytes(path):
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise VideoReadError(f"{path}: frame file is missing") from None
    if not data:
        raise VideoReadError(f"{path}: frame file is empty (0 bytes)")
    if data[:2] != b"\xff\xd8":  # every JPEG starts with the SOI marker
        raise VideoReadError(f"{path}: not a decodable JPEG (no JPEG start marker)")
    return data


# libjpeg can decode at k/8 scale inside its inverse DCT, cheaper than a full decode and the resize after it;
# scales between 1/2 and 1 decode slower than full size, so only factors from 2 on (k <= 4) are used.
MIN_REDUCED_DECODE_FACTOR = 2


def _decode_jpeg(path, data, out=None, min_size=(0, 0)):
    """libjpeg-turbo through simplejpeg (the same pixels as torchvision's and Pillow's libjpeg-turbo decode), written
    straight into `out` (an H x W x 3 slice of the clip) when given: no per-frame tensor and no stacking copy.
    `min_size` (height, width) lets libjpeg decode at a reduced scale that keeps both at least that large."""
    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=out, min_height=min_size[0],
                                      min_width=min_size[1], min_factor=MIN_REDUCED_DECODE_FACTOR)
    except ValueError as e:
        raise VideoReadError(f"{path}: not a decodable JPEG ({str(e).splitlines()[0]})") from None


def _jpeg_size(path, data, min_size=(0, 0)):
    """(height, width) the decode will have (for `min_size`, see _decode_jpeg)."""
    try:
        height, width, _, _ = simplejpeg.decode_jpeg_header(data, min_height=min_size[0], min_width=min_size[1],
                                                            min_factor=MIN_REDUCED_DECODE_FACTOR)
    except ValueError as e:
        raise VideoReadError(f"{path}: not a decodable JPEG ({str(e).splitlines()[0]})") from None
    return height, width


def read_jpeg(path):
    """One JPEG file as uint8 H x W x 3."""
    return torch.from_numpy(_decode_jpeg(path, _read_jpeg_bytes(path)))


def _reduced_decode_size(path, data, min_short_side):
    """The (height, width) minimum that keeps the short side at least `min_short_side` (0: decode at full size)."""
    if not min_short_side:
        return 0, 0
    height, width = _jpeg_size(path, data)
    return (min_short_side, 0) if height <= width else (0, min_short_side)


def read_frames(folder, indices, pattern=None, min_short_side=None):
    """Frames `indices` (0-based positions in the folder) of a frame folder as uint8 T x H x W x 3, each decoded into
    its place in the clip; a file a clip repeats is read once. With `min_short_side`, frames are decoded at the
    smallest of libjpeg's scales 4/8 ... 1/8 whose short side is still at least that long (full size if none):
    for training clips that will be resized to that short side or less anyway."""
    template, first, _ = pattern or frame_folder_pattern(folder)
    indices = [int(i) for i in indices]
    clip, size, min_size, placed = None, None, (0, 0), {}
    for position, i in enumerate(indices):
        if i in placed:
            clip[position] = clip[placed[i]]
            continue
        path = os.path.join(folder, template.format(first + i))
        data = _read_jpeg_bytes(path)
        if clip is None:
            min_size = _reduced_decode_size(path, data, min_short_side)
            size = _jpeg_size(path, data, min_size)
            clip = np.empty((len(indices), *size, 3), dtype=np.uint8)
        elif _jpeg_size(path, data, min_size) != size:
            raise VideoReadError(f"{folder}: frames differ in size ({path} is {_jpeg_size(path, data)} before "
                                 f"any reduction, the clip's first frame decodes to {size})")
        _decode_jpeg(path, data, clip[position], min_size)
        placed[i] = position
    return torch.from_numpy(clip)

