"""Video files decoded with PyAV: probe, read, write, and a clip dataset over a folder of videos.

Frames are picked by *timestamp* (pts · time_base, in seconds), never by assuming a constant frame rate: the frame
shown at time t is the latest frame whose timestamp is ≤ t. That is how :class:`VideoFolder` samples at a target
``fps`` from variable-frame-rate files, and (with the exact timestamps of frames read from the packet index) how it
finds frame number i when it samples with a ``frame_stride``. To read a clip it seeks to the keyframe before the
clip and stops decoding after the clip's last frame, so a short clip from a long video costs about one GOP of decoding.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from vistok.data.errors import BadFileError
from vistok.data.images import FolderDataset, check_crop_args
from vistok.data.transforms import apply_box, crop_box, frames_to_tensor

VIDEO_EXTS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".gif")
VIDEO_WRITE_CODECS = {
    ".mp4": "libx264",
    ".mkv": "libx264",
    ".mov": "libx264",
    ".webm": "libvpx-vp9",
    ".avi": "mpeg4",
    ".gif": "gif",
}
SHORT_MODES = ("skip", "loop")
EPS = 1e-6  # seconds: timestamps this close count as equal
REORDER = 16  # packets come in decode order; this many extra packets cover B-frame reordering

EMPTY = "empty file (0 bytes)"
NOT_VIDEO = "not a readable video"
NO_STREAM = "no video stream"
NO_FRAMES = "no frames"
CORRUPT = "corrupt video data"
TRUNCATED = "truncated video data (ends before the frames it claims)"
NO_FRAMES_DECODED = "no frames decoded (truncated or corrupt data)"


# ------------------------------------------------------------------------------------------------------- probing


@dataclass(frozen=True)
class VideoInfo:
    """What :func:`probe_video` found. Times are in seconds; ``start_time`` is the timestamp of the first frame.

    ``timestamps`` (sorted, one per frame) is filled when the frames were counted from the packets or decoded, i.e.
    when the container does not store a frame count or ``exact=True``; otherwise it is ``None``. ``last_time``, the
    timestamp of the last frame, is exact when ``timestamps`` is known, else start + duration − one frame (left
    out, it is worked out that way).
    """

    num_frames: int
    fps: float
    duration: float
    width: int
    height: int
    timestamps: tuple[float, ...] | None = None
    start_time: float = 0.0
    last_time: float | None = None

    def __post_init__(self):
        if self.last_time is None:
            last = self.timestamps[-1] if self.timestamps else self.start_time + max(0.0, self.duration - 1 / self.fps)
            object.__setattr__(self, "last_time", float(last))


@contextmanager
def _open_video(path: str | os.PathLike) -> Iterator[tuple[Any, Any]]:
    """(container, first video stream), with PyAV's errors turned into :class:`BadFileError`."""
    import av

    if os.path.getsize(path) == 0:
        raise BadFileError(path, EMPTY)
    try:
        container = av.open(str(path))
    except (av.FFmpegError, UnicodeDecodeError, ValueError) as e:
        raise BadFileError(path, NOT_VIDEO) from e
    try:
        if not container.streams.video:
            raise BadFileError(path, NO_STREAM)
        yield container, container.streams.video[0]
    except av.FFmpegError as e:
        raise BadFileError(path, CORRUPT) from e
    finally:
        container.close()


def _frame_step(stream: Any) -> float:
    """Nominal seconds per frame: only used to number frames that carry no timestamp."""
    rate = stream.average_rate or stream.guessed_rate
    return 1.0 / float(rate) if rate else 0.04


def _frame_time(frame: Any, previous: float | None, step: float) -> float:
    """Timestamp of a decoded frame in seconds; a frame without one follows the previous frame by ``step``."""
    if frame.pts is not None:
        return float(frame.pts * frame.time_base)
    return previous + step if previous is not None else 0.0


def _packet_times(container: Any, stream: Any, limit: int | None = None) -> np.ndarray | None:
    """Sorted frame timestamps read from the packets (demuxed, not decoded), up to ``limit`` packets.

    Returns ``None`` when a packet has no timestamp (some AVI/raw streams): then frames can only be counted by decoding.
    """
    times = []
    for packet in container.demux(stream):
        if packet.size == 0:  # the flush packet at the end
            continue
        pts = packet.pts if packet.pts is not None else packet.dts
        if pts is None:
            return None
        times.append(float(pts * packet.time_base))
        if limit is not None and len(times) >= limit:
            break
    return np.sort(np.asarray(times, dtype=np.float64))


def _decoded_times(container: Any, stream: Any) -> np.ndarray:
    """Timestamps of every frame, by decoding the whole stream."""
    times: list[float] = []
    step = _frame_step(stream)
    for frame in container.decode(stream):
        times.append(_frame_time(frame, times[-1] if times else None, step))
    return np.asarray(times, dtype=np.float64)


def _rate(stream: Any, times: np.ndarray | None) -> float:
    """Average frame rate: from the stream, else from the timestamps, else 1."""
    for rate in (stream.average_rate, stream.guessed_rate, stream.base_rate):
        if rate and float(rate) > 0:
            return float(rate)
    if times is not None and len(times) > 1 and times[-1] > times[0]:
        return (len(times) - 1) / float(times[-1] - times[0])
    return 1.0


def probe_video(path: str | os.PathLike, exact: bool = False) -> VideoInfo:
    """Frame count, frame rate, duration and size of a video file.

    The frame count comes from the container when it stores one (MP4, MOV, AVI); otherwise (WebM, MKV) the packets
    are counted and their timestamps kept, without decoding. ``exact=True`` decodes every frame instead (exact count
    and timestamps, and corrupt data is found now). Raises :class:`BadFileError` for unreadable files.
    """
    with _open_video(path) as (container, stream):
        if exact:
            times = _decoded_times(container, stream)
        else:
            times = None if stream.frames > 0 else _packet_times(container, stream)
        num_frames = len(times) if times is not None else int(stream.frames)
        if num_frames == 0:
            raise BadFileError(path, NO_FRAMES)
        fps = _rate(stream, times)
        if times is not None:
            start = float(times[0])
        else:
            start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        if stream.duration:
            duration = float(stream.duration * stream.time_base)
        elif container.duration:
            duration = container.duration / 1e6
        else:
            duration = num_frames / fps
        width, height = stream.codec_context.width, stream.codec_context.height
        if width <= 0 or height <= 0:
            raise BadFileError(path, f"no frame size ({width}x{height})")
        stamps = tuple(float(t) for t in times) if times is not None else None
        return VideoInfo(num_frames, fps, duration, width, height, stamps, start, stamps[-1] if stamps else None)


# ------------------------------------------------------------------------------------------------------- reading


def _seek(container: Any, stream: Any, t: float) -> None:
    """Seek to the keyframe at or before time ``t`` (seconds)."""
    container.seek(math.floor(t / stream.time_base), stream=stream, backward=True, any_frame=False)


def _frames_at(container: Any, stream: Any, targets: np.ndarray, seek: bool) -> tuple[list, np.ndarray, bool] | None:
    """The frame shown at each target time (latest timestamp ≤ t), decoding no further than the last target.

    Returns (av frames, their timestamps, reached_end_of_stream), or ``None`` when the seek landed after the first
    target (a container with an imprecise index): the caller then decodes from the start instead.
    """
    if seek:
        _seek(container, stream, float(targets[0]))
    picked: list = [None] * len(targets)
    stamps = np.zeros(len(targets))
    prev, prev_t, k, step = None, None, 0, _frame_step(stream)
    for frame in container.decode(stream):
        t = _frame_time(frame, prev_t, step)
        if prev is None and seek and t > targets[0] + EPS:
            return None
        while k < len(targets) and t > targets[k] + EPS:
            picked[k], stamps[k] = (prev, prev_t) if prev is not None else (frame, t)
            k += 1
        if k == len(targets):
            return picked, stamps, False
        prev, prev_t = frame, t
    if prev is None:
        return picked[:0], stamps[:0], True
    for j in range(k, len(targets)):
        picked[j], stamps[j] = prev, prev_t
    return picked, stamps, True


def _to_arrays(frames: list) -> list[np.ndarray]:
    """av frames → uint8 (H, W, 3) arrays, converting a frame picked twice only once."""
    cache: dict[int, np.ndarray] = {}
    return [cache.setdefault(id(f), f.to_ndarray(format="rgb24")) for f in frames]


def read_frames_at(path: str | os.PathLike, times: np.ndarray) -> tuple[np.ndarray, np.ndarray, bool]:
    """The frames shown at ``times`` (seconds, increasing): (uint8 (T, H, W, 3), their timestamps, reached_end).

    A time before the first frame gets the first frame; a time after the last frame gets the last frame
    (``reached_end`` then tells that the stream ended). Raises :class:`BadFileError` for unreadable files.
    """
    times = np.asarray(times, dtype=np.float64)
    if len(times) == 0 or np.any(np.diff(times) < 0):
        raise ValueError(f"times must be a non-empty increasing sequence, got {times}")
    with _open_video(path) as (container, stream):
        first = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        got = _frames_at(container, stream, times, seek=times[0] > first + EPS)
    if got is None:  # the seek overshot: decode from the start
        with _open_video(path) as (container, stream):
            got = _frames_at(container, stream, times, seek=False)
    frames, stamps, ended = got
    if not frames:
        raise BadFileError(path, NO_FRAMES_DECODED)
    return np.stack(_to_arrays(frames)), stamps, ended


def read_video(
    path: str | os.PathLike, start: float = 0.0, end: float | None = None, max_frames: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Decode the frames with timestamps in [start, end] (seconds; at most ``max_frames``).

    Returns (uint8 frames (T, H, W, 3), float64 timestamps (T,) in seconds). Seeks to the keyframe before ``start``
    and stops after ``end``. Raises :class:`BadFileError` for unreadable files.
    """
    with _open_video(path) as (container, stream):
        got = _frames_between(container, stream, start, end, max_frames, seek=start > 0)
        if got is None:  # the seek overshot: decode from the start
            container.seek(0)
            got = _frames_between(container, stream, start, end, max_frames, seek=False)
        frames, times = got
        if not frames:
            w, h = stream.codec_context.width, stream.codec_context.height
            return np.zeros((0, h, w, 3), np.uint8), np.zeros(0)
    return np.stack(frames), np.asarray(times, dtype=np.float64)


def _frames_between(
    container: Any, stream: Any, start: float, end: float | None, max_frames: int | None, seek: bool
) -> tuple[list[np.ndarray], list[float]] | None:
    """Decoded frames with timestamps in [start, end]; ``None`` when a seek landed after ``start``."""
    if seek:
        _seek(container, stream, start)
    frames, times, previous, step = [], [], None, _frame_step(stream)
    for frame in container.decode(stream):
        t = _frame_time(frame, previous, step)
        if seek and previous is None and t > start + EPS:
            return None
        previous = t
        if end is not None and t > end + EPS:
            break
        if t >= start - EPS:
            frames.append(frame.to_ndarray(format="rgb24"))
            times.append(t)
        if max_frames is not None and len(frames) >= max_frames:
            break
    return frames, times


def write_video(path: str | os.PathLike, frames: np.ndarray, fps: float = 8.0, crf: int = 18) -> Path:
    """Write uint8 frames (T, H, W, 3) to a video file; the codec follows the extension (mp4 → H.264, gif, …).

    H.264 needs even sizes: odd heights/widths are padded by one edge row/column. Written atomically (temp file +
    rename), so a failed write leaves nothing behind.
    """
    import av

    path = Path(path)
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8:
        raise ValueError(f"expected uint8 frames of shape (T, H, W, 3), got {frames.dtype} {tuple(frames.shape)}")
    ext = path.suffix.lower()
    if ext not in VIDEO_WRITE_CODECS:
        raise ValueError(f"unsupported video extension {ext!r}; expected one of {sorted(VIDEO_WRITE_CODECS)}")
    codec = VIDEO_WRITE_CODECS[ext]
    if codec in ("libx264", "libvpx-vp9", "mpeg4") and (frames.shape[1] % 2 or frames.shape[2] % 2):
        frames = np.pad(frames, ((0, 0), (0, frames.shape[1] % 2), (0, frames.shape[2] % 2), (0, 0)), mode="edge")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{ext}")
    try:
        with av.open(str(tmp), mode="w") as container:
            rate = Fraction(fps).limit_denominator(1000)
            stream = container.add_stream(codec, rate=rate)
            stream.width, stream.height = frames.shape[2], frames.shape[1]
            if codec == "gif":
                stream.pix_fmt = "rgb8"
            elif codec == "libx264":
                stream.pix_fmt = "yuv420p"
                stream.options = {"crf": str(crf)}
            else:
                stream.pix_fmt = "yuv420p"
                if codec == "mpeg4":  # no CRF: ask for a high bit rate (≥ 0.5 bit per pixel) or flat areas band
                    stream.bit_rate = max(4_000_000, int(frames.shape[1] * frames.shape[2] * float(fps) / 2))
            for f in frames:
                frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(f), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            for packet in stream.encode():
                container.mux(packet)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


# ------------------------------------------------------------------------------------------------------- dataset


def _start(k: int, clips: int, max_start: float, rng: np.random.Generator | None) -> float:
    """Start of clip ``k`` of ``clips`` in [0, max_start]: uniform with an ``rng``, else evenly spaced (clip 0 at 0).

    An int ``max_start`` (a frame number) gives an int start.
    """
    if isinstance(max_start, int):
        if rng is not None:
            return int(rng.integers(0, max_start + 1))
        return round(max_start * k / (clips - 1)) if clips > 1 else 0
    if rng is not None:
        return float(rng.uniform(0.0, max_start))
    return max_start * k / (clips - 1) if clips > 1 else 0.0


class VideoFolder(FolderDataset):
    """Clips of ``num_frames`` frames from the videos under ``root`` as float32 (3, T, H, W) tensors in [-1, 1].

    Sampling: with ``fps=None`` a clip is every ``frame_stride``-th frame; with ``fps`` given it is the frame shown at
    each time t0 + k/fps (the latest frame with timestamp ≤ that time), so variable-frame-rate files are sampled by
    their timestamps. Each video gives ``clips_per_video`` items (item i is clip i % clips_per_video of video
    i // clips_per_video). Where a clip starts: with ``crop="random"`` uniformly at random over the whole video,
    drawn from (seed, epoch, index); otherwise clip 0 starts at the first frame and the clips are spread evenly so
    the last one ends at the last frame. One resize/crop/flip box (``size``, ``crop``, ``hflip_p``, ``scale`` as in
    ``ImageFolder``) serves every frame of a clip.

    A video shorter than a clip is skipped with ``short="skip"`` (counted as "too short (N frames < M needed)",
    N counted at the sampling rate) or played in a loop from its first frame with ``short="loop"``. Items are dicts
    ``{"pixels", "label", "path", "index", "fps"}`` where ``fps`` is the clip's frame rate. Unreadable files are
    skipped and counted in ``bad``, or raise with ``strict=True`` (see ``FolderDataset``).
    """

    exts = VIDEO_EXTS
    kind = "video"

    def __init__(
        self,
        root: str | os.PathLike,
        num_frames: int = 17,
        frame_stride: int = 1,
        fps: float | None = None,
        size: int | tuple[int, int] = 256,
        crop: str = "center",
        hflip_p: float = 0.0,
        scale: float = 1.0,
        short: str = "skip",
        clips_per_video: int = 1,
        seed: int = 0,
        strict: bool = False,
        labels: str | None = "subfolder",
    ):
        check_crop_args(size, crop, hflip_p, scale)
        if num_frames < 1 or frame_stride < 1 or clips_per_video < 1:
            raise ValueError(
                f"num_frames, frame_stride and clips_per_video must be >= 1, got {num_frames}, {frame_stride}, "
                f"{clips_per_video}"
            )
        if fps is not None and not fps > 0:
            raise ValueError(f"fps must be positive or None, got {fps}")
        if short not in SHORT_MODES:
            raise ValueError(f"short must be one of {SHORT_MODES}, got {short!r}")
        self.num_frames, self.frame_stride, self.fps = int(num_frames), int(frame_stride), fps
        self.size, self.crop, self.hflip_p, self.scale = size, crop, hflip_p, scale
        self.short, self.clips_per_video = short, int(clips_per_video)
        super().__init__(root, seed=seed, strict=strict, labels=labels)

    # -- how long a video is at the sampling rate

    @property
    def needed(self) -> int:
        """Frames a clip spans at the sampling rate: (T − 1)·stride + 1 source frames, or T frames at ``fps``."""
        return self.num_frames if self.fps else (self.num_frames - 1) * self.frame_stride + 1

    def available(self, info: VideoInfo) -> int:
        """Frames the video has at the sampling rate (source frames, or frames at ``fps`` over its time span)."""
        if not self.fps:
            return info.num_frames
        return math.floor((info.last_time - info.start_time) * self.fps + EPS) + 1

    def _check(self, path: Path) -> VideoInfo:
        """Probe the video; keep its info without the per-frame timestamps (memory: datasets of long videos)."""
        info = probe_video(path)
        if self.short == "skip" and self.available(info) < self.needed:
            raise BadFileError(path, f"too short ({self.available(info)} frames < {self.needed} needed)")
        return replace(info, timestamps=None)

    def __len__(self) -> int:
        return len(self.paths) * self.clips_per_video

    def file_index(self, index: int) -> int:
        return index // self.clips_per_video

    # -- loading a clip

    def _load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        v, k = divmod(index, self.clips_per_video)
        path, info = self.paths[v], self._infos[v]
        draw = rng if self.crop == "random" else None
        if self.available(info) < self.needed:
            frames = self._looped_clip(path, info)
        elif self.fps:
            frames = self._clip_at_fps(path, info, k, draw)
        else:
            frames = self._clip_by_stride(path, info, k, draw)
        h, w = frames.shape[1:3]
        box = crop_box(w, h, self.size, self.crop, rng, self.hflip_p, self.scale)
        pixels = frames_to_tensor([np.asarray(apply_box(Image.fromarray(f), box)) for f in frames])
        fps = float(self.fps) if self.fps else info.fps / self.frame_stride
        return {"pixels": pixels, "label": self.labels[v], "path": path, "index": index, "fps": fps}

    def _clip_at_fps(self, path: str, info: VideoInfo, k: int, rng: np.random.Generator | None) -> np.ndarray:
        span = (self.num_frames - 1) / self.fps
        t0 = info.start_time + _start(k, self.clips_per_video, max(0.0, info.last_time - info.start_time - span), rng)
        targets = t0 + np.arange(self.num_frames) / self.fps
        frames, stamps, ended = read_frames_at(path, targets)
        if ended and stamps[-1] < min(targets[-1], info.last_time) - 2.0 / info.fps - EPS:
            raise BadFileError(path, TRUNCATED)
        return frames

    def _clip_by_stride(self, path: str, info: VideoInfo, k: int, rng: np.random.Generator | None) -> np.ndarray:
        start = _start(k, self.clips_per_video, info.num_frames - self.needed, rng)
        index = start + self.frame_stride * np.arange(self.num_frames)
        times = self._frame_times(path, int(index[-1]) + 1)
        if times is None:  # no packet timestamps: count decoded frames instead
            return self._frames_by_count(path, index)
        if len(times) <= index[-1]:
            raise BadFileError(path, TRUNCATED)
        return read_frames_at(path, times[index])[0]

    @staticmethod
    def _frame_times(path: str, count: int) -> np.ndarray | None:
        """Timestamps of the first ``count`` frames (from the packets, plus a margin for B-frame reordering)."""
        with _open_video(path) as (container, stream):
            times = _packet_times(container, stream, limit=count + REORDER)
        return times[:count] if times is not None else None

    @staticmethod
    def _frames_by_count(path: str, index: np.ndarray) -> np.ndarray:
        frames, _ = read_video(path, max_frames=int(index[-1]) + 1)
        if len(frames) <= index[-1]:
            raise BadFileError(path, TRUNCATED)
        return frames[index]

    def _looped_clip(self, path: str, info: VideoInfo) -> np.ndarray:
        """A clip from a video shorter than the clip: the video played in a loop from its first frame."""
        frames, times = read_video(path)
        if len(frames) == 0:
            raise BadFileError(path, NO_FRAMES)
        if not self.fps:
            return frames[(self.frame_stride * np.arange(self.num_frames)) % len(frames)]
        step = float(np.median(np.diff(times))) if len(times) > 1 else 1.0 / info.fps
        period = float(times[-1] - times[0]) + step
        targets = (np.arange(self.num_frames) / self.fps) % period
        pick = np.searchsorted(times - times[0], targets + EPS, side="right") - 1
        return frames[np.clip(pick, 0, len(frames) - 1)]
