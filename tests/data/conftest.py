"""Fixtures that write tiny good and bad image/video files into tmp_path at test time.

Video frames carry their frame number in their brightness (``LEVEL0 + STEP * i``, flat grey), so a test can tell
which source frame a sampled clip holds even after lossy compression; ``frame_ids`` reads the numbers back.
"""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vistok.data.video import write_video

LEVEL0, STEP = 8, 6  # frame i is flat grey LEVEL0 + STEP * i (up to 41 frames)


def _frame(i: int, width: int, height: int, ramp: bool) -> np.ndarray:
    level = LEVEL0 + STEP * i if not ramp else 40 + 4 * i
    a = np.full((height, width, 3), level, np.uint8)
    if ramp:  # a horizontal ramp shows the crop box and the flip
        a = (a + (np.arange(width) * 3)[None, :, None]).astype(np.uint8)
    return a


def _write_image(path, width=48, height=32, mode="RGB", seed=0, **save) -> Path:
    """A smooth random picture (so JPEG keeps it close) saved in ``mode`` with Pillow's ``save`` options."""
    rng = np.random.default_rng(seed)
    low = rng.integers(0, 256, (4, 6, 3), dtype=np.uint8)
    img = Image.fromarray(low).resize((width, height), Image.Resampling.BILINEAR)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.convert(mode).save(path, **save)
    return path


def _write_video(path, num_frames=10, width=48, height=32, fps=8.0, ramp=False) -> Path:
    """A clip whose frame i has brightness LEVEL0 + STEP·i (or a ramp, ``ramp=True``), written by ``write_video``."""
    return write_video(path, np.stack([_frame(i, width, height, ramp) for i in range(num_frames)]), fps=fps)


def _write_timed_video(path, times, width=48, height=32, gop=12, faststart=False) -> Path:
    """An H.264 clip whose frame i (brightness-numbered) has timestamp ``times[i]`` seconds: variable frame rate."""
    import av

    path = Path(path)
    options = {"movflags": "+faststart"} if faststart else {}
    with av.open(str(path), "w", options=options) as c:
        s = c.add_stream("libx264", rate=30)
        s.width, s.height, s.pix_fmt = width, height, "yuv420p"
        s.codec_context.time_base = Fraction(1, 1000)
        s.codec_context.gop_size = gop
        for i, t in enumerate(times):
            frame = av.VideoFrame.from_ndarray(_frame(i, width, height, False), format="rgb24")
            frame.pts, frame.time_base = round(t * 1000), Fraction(1, 1000)
            for packet in s.encode(frame):
                c.mux(packet)
        for packet in s.encode():
            c.mux(packet)
    return path


def _frame_ids(frames) -> list[int]:
    """Frame numbers of flat numbered frames: uint8 (T, H, W, 3) arrays or (3, T, H, W) tensors in [-1, 1]."""
    if isinstance(frames, torch.Tensor):
        means = ((frames.float() + 1) * 127.5).mean(dim=(0, 2, 3)).numpy()
    else:
        means = np.asarray(frames, dtype=np.float64).mean(axis=(1, 2, 3))
    return [round((m - LEVEL0) / STEP) for m in means]


def _write_bad_files(folder) -> dict[str, Path]:
    """One file of every kind of breakage, named by what is wrong with it."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = {"empty.png": folder / "empty.png", "text.png": folder / "text.png", "corrupt.mp4": folder / "corrupt.mp4"}
    out["empty.png"].write_bytes(b"")
    out["text.png"].write_text("this is not a picture\n")
    out["corrupt.mp4"].write_bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8).tobytes())
    for name, kw in (("truncated.jpg", {"quality": 95}), ("truncated.png", {})):
        full = _write_image(folder / f"full_{name}", seed=3, **kw).read_bytes()
        (folder / f"full_{name}").unlink()
        out[name] = folder / name
        out[name].write_bytes(full[: len(full) * 6 // 10])
    full = _write_video(folder / "full.mp4", num_frames=10).read_bytes()
    (folder / "full.mp4").unlink()
    out["truncated.mp4"] = folder / "truncated.mp4"
    out["truncated.mp4"].write_bytes(full[: len(full) // 2])
    out["one_frame.mp4"] = _write_video(folder / "one_frame.mp4", num_frames=1)
    return out


@pytest.fixture
def make_image():
    return _write_image


@pytest.fixture
def make_video():
    return _write_video


@pytest.fixture
def make_timed_video():
    return _write_timed_video


@pytest.fixture
def make_bad_files():
    return _write_bad_files


@pytest.fixture
def frame_ids():
    return _frame_ids
