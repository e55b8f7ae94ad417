"""Pixel transforms shared by the image, video and sample datasets.

Everything here works on PIL images or uint8 numpy arrays and is deterministic given a ``numpy.random.Generator``.
A video clip is resized and cropped with *one* box for all its frames, so the clip stays consistent.
Models see float tensors in [-1, 1]; files hold uint8 [0, 255] (see :func:`to_tensor`, :func:`to_uint8`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

CROPS = ("center", "random")


def _size2(size: int | tuple[int, int]) -> tuple[int, int]:
    """``size`` as (height, width)."""
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


def resize_shorter_size(w: int, h: int, shorter: int) -> tuple[int, int]:
    """(new_w, new_h) so that the shorter side equals ``shorter`` and the aspect ratio is kept (rounded)."""
    if w <= h:
        return shorter, max(shorter, round(h * shorter / w))
    return max(shorter, round(w * shorter / h)), shorter


@dataclass(frozen=True)
class CropBox:
    """Resize to ``resize`` (w, h), then crop ``(left, top, width, height)``, then optionally flip horizontally."""

    resize: tuple[int, int]
    left: int
    top: int
    width: int
    height: int
    flip: bool = False


def crop_box(
    w: int,
    h: int,
    size: int | tuple[int, int],
    crop: str = "center",
    rng: np.random.Generator | None = None,
    hflip_p: float = 0.0,
    scale: float = 1.0,
) -> CropBox:
    """Plan a resize-shorter-side-then-crop of a ``w``×``h`` picture to ``size`` (int or (H, W)).

    ``scale`` > 1 resizes the shorter side to ``scale``·max(H, W) before cropping (a random crop then has room
    to move). ``crop`` is "center" or "random"; random choices draw from ``rng`` (required for random crops/flips).
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if w <= 0 or h <= 0:
        raise ValueError(f"picture size must be positive, got {w}x{h}")
    th, tw = _size2(size)
    shorter = max(1, round(max(th, tw) * scale))
    nw, nh = resize_shorter_size(w, h, shorter)
    # make sure both sides cover the crop (non-square crops of extreme aspect ratios)
    if nw < tw or nh < th:
        f = max(tw / nw, th / nh)
        nw, nh = max(tw, round(nw * f)), max(th, round(nh * f))
    if (crop == "random" or hflip_p > 0) and rng is None:
        raise ValueError("random crops and flips need a numpy Generator (rng=...)")
    if crop == "center":
        left, top = (nw - tw) // 2, (nh - th) // 2
    else:
        left = int(rng.integers(0, nw - tw + 1))
        top = int(rng.integers(0, nh - th + 1))
    flip = bool(hflip_p > 0 and rng.random() < hflip_p)
    return CropBox((nw, nh), left, top, tw, th, flip)


def apply_box(img: Image.Image, box: CropBox, resample: int = Image.Resampling.BICUBIC) -> Image.Image:
    """Apply a :class:`CropBox` to a PIL image (resample only when the size changes)."""
    if img.size != box.resize:
        img = img.resize(box.resize, resample=resample, reducing_gap=None)
    img = img.crop((box.left, box.top, box.left + box.width, box.top + box.height))
    if box.flip:
        img = img.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    return img


def to_tensor(img: Image.Image | np.ndarray) -> torch.Tensor:
    """uint8 HWC (PIL or numpy) → float32 CHW in [-1, 1]."""
    a = np.asarray(img, dtype=np.uint8)
    if a.ndim == 2:
        a = np.repeat(a[:, :, None], 3, axis=2)
    return torch.from_numpy(a.copy()).permute(2, 0, 1).float().div_(127.5).sub_(1.0)


def frames_to_tensor(frames: list[np.ndarray] | np.ndarray) -> torch.Tensor:
    """T frames of uint8 HWC → float32 (C, T, H, W) in [-1, 1]."""
    a = np.stack([np.asarray(f, dtype=np.uint8) for f in frames]) if isinstance(frames, list) else frames
    if a.ndim != 4 or a.shape[-1] != 3:
        raise ValueError(f"expected frames of shape (T, H, W, 3), got {tuple(a.shape)}")
    return torch.from_numpy(np.ascontiguousarray(a)).permute(3, 0, 1, 2).float().div_(127.5).sub_(1.0)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """float [-1, 1] (C,H,W) or (C,T,H,W) → uint8 numpy (H,W,C) or (T,H,W,C), clamped and rounded."""
    if x.dim() not in (3, 4):
        raise ValueError(f"expected (C,H,W) or (C,T,H,W), got shape {tuple(x.shape)}")
    y = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).cpu()
    return (y.permute(1, 2, 0) if y.dim() == 3 else y.permute(1, 2, 3, 0)).numpy()
