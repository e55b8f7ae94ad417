"""Pictures of what happened: labelled image grids and line plots, written atomically as PNG.

Grids need only Pillow. Plots use matplotlib (``pip install 'vistok[plots]'``); :func:`line_plot` raises a clear
error naming the extra when it is missing, and :func:`try_line_plot` returns ``None`` instead, for callers that
treat a plot as optional.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

from vistok._optional import MissingDependencyError, require

__all__ = ["image_grid", "line_plot", "save_png", "to_uint8_image", "try_line_plot"]


def to_uint8_image(x: torch.Tensor | np.ndarray) -> np.ndarray:
    """A (3, H, W) float tensor in [−1, 1] (or an (H, W, 3) uint8 array) → (H, W, 3) uint8."""
    if isinstance(x, np.ndarray):
        if x.dtype != np.uint8 or x.ndim != 3 or x.shape[-1] != 3:
            raise ValueError(f"expected an (H, W, 3) uint8 array, got {x.dtype} {x.shape}")
        return x
    if x.ndim != 3 or x.shape[0] != 3:
        raise ValueError(f"expected a (3, H, W) tensor in [-1, 1], got shape {tuple(x.shape)}")
    y = ((x.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
    return y.permute(1, 2, 0).numpy()


def image_grid(
    rows: Sequence[Sequence[torch.Tensor | np.ndarray | None]],
    *,
    row_labels: Sequence[str] | None = None,
    col_labels: Sequence[str] | None = None,
    gap: int = 2,
    scale: int = 1,
) -> Image.Image:
    """Tile images (each a (3, H, W) tensor in [−1, 1] or (H, W, 3) uint8; None = empty cell) on white, with
    optional text labels left of each row and above each column; ``scale`` enlarges small images (nearest)."""
    cells = [[None if c is None else to_uint8_image(c) for c in row] for row in rows]
    shapes = {c.shape for row in cells for c in row if c is not None}
    if not shapes:
        raise ValueError("image_grid needs at least one image")
    h, w = max(s[0] for s in shapes) * scale, max(s[1] for s in shapes) * scale
    ncol = max(len(r) for r in cells)
    left = 7 * max((len(s) for s in row_labels or []), default=0) + (6 if row_labels else 0)
    top = 14 if col_labels else 0
    canvas = Image.new("RGB", (left + ncol * (w + gap) - gap, top + len(cells) * (h + gap) - gap), "white")
    draw = ImageDraw.Draw(canvas)
    for j, label in enumerate(col_labels or []):
        draw.text((left + j * (w + gap) + 2, 1), str(label), fill=(0, 0, 0))
    for i, row in enumerate(cells):
        y = top + i * (h + gap)
        if row_labels and i < len(row_labels):
            draw.text((2, y + h // 2 - 5), str(row_labels[i]), fill=(0, 0, 0))
        for j, cell in enumerate(row):
            if cell is not None:
                img = Image.fromarray(cell)
                if scale != 1:
                    img = img.resize((cell.shape[1] * scale, cell.shape[0] * scale), Image.Resampling.NEAREST)
                canvas.paste(img, (left + j * (w + gap), y))
    return canvas


def save_png(img: Image.Image, path: str | os.PathLike) -> Path:
    """Write ``img`` as a PNG at ``path`` atomically (temp file + rename); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def line_plot(
    series: Mapping[str, tuple[Sequence[float], Sequence[float]]],
    path: str | os.PathLike,
    *,
    title: str = "",
    xlabel: str = "",
    ylabel: str = "",
    logy: bool = False,
    hlines: Mapping[str, float] | None = None,
) -> Path:
    """Plot named (x, y) series (markers + lines) and optional labelled horizontal reference lines to a PNG (the legend
    goes beside the axes when it has more than 6 entries, so that it hides no point)."""
    matplotlib = require("matplotlib", "plots", "plots")
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    beside = len(series) + len(hlines or {}) > 6
    fig, ax = plt.subplots(figsize=(8.0 if beside else 5.5, 3.6), dpi=110)
    try:
        for name, (xs, ys) in series.items():
            ax.plot(list(xs), list(ys), marker="o", label=name)
        for k, (name, y) in enumerate((hlines or {}).items()):
            ax.axhline(y, linestyle="--", color=f"C{len(series) + k}", label=name)
        if logy:
            ax.set_yscale("log")
        ax.set(title=title, xlabel=xlabel, ylabel=ylabel)
        ax.grid(alpha=0.3)
        if beside:
            ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
        else:
            ax.legend(fontsize=8)
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        try:
            fig.savefig(tmp, format="png")
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        plt.close(fig)
    return path


def try_line_plot(*args, **kwargs) -> Path | None:
    """:func:`line_plot`, or None when matplotlib is not installed."""
    try:
        return line_plot(*args, **kwargs)
    except MissingDependencyError:
        return None
