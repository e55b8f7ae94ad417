"""Video files decoded with PyAV."""

from __future__ import annotations

import os
from fractions import Fraction
from pathlib import Path

import numpy as np

VIDEO_WRITE_CODECS = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".webm": "libvpx-vp9",
                      ".avi": "mpeg4", ".gif": "gif"}


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
