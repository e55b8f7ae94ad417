"""Training metrics: a JSONL file, optional TensorBoard, a rank-0 progress bar and a closing summary line.

``metrics.jsonl`` holds one JSON object per logged step (``{"step": 10, "loss": ..., "lr": ...}``), appended and
flushed line by line, so a killed run loses at most the line being written. On resume from the checkpoint taken
after step ``k`` the file is first cut back to lines with ``step <= k`` (and any torn last line is dropped), so the
resumed run appends exactly where the checkpoint left off and no step appears twice. Non-finite numbers are
written as ``null`` (JSON has no NaN).

(Named ``metrics`` rather than ``logging`` so it never shadows the standard library module.)
"""

from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TextIO

from tqdm.auto import tqdm

from vistok._optional import require


def _json_value(v: Any) -> Any:
    if hasattr(v, "item") and callable(v.item):  # tensors and numpy scalars
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None
    return v


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
    """All complete JSON lines of ``path`` (a torn, unparsable line is skipped)."""
    rows = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue
    return rows


def truncate_jsonl(path: str | os.PathLike, max_step: int) -> int:
    """Keep only complete lines whose ``step`` is ``<= max_step``; returns how many lines were dropped.

    The rewrite goes through a temporary file and ``os.replace``, so a crash here loses nothing.
    """
    path = Path(path)
    if not path.exists():
        return 0
    lines = path.read_text(encoding="utf-8").splitlines(keepends=True)
    kept = []
    for line in lines:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if line.endswith("\n") and (not isinstance(row, dict) or int(row.get("step", 0)) <= max_step):
            kept.append(line)
    if len(kept) != len(lines):
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text("".join(kept), encoding="utf-8")
        os.replace(tmp, path)
    return len(lines) - len(kept)


class MetricsLogger:
    """Appends metrics to ``<out_dir>/metrics.jsonl`` and, optionally, TensorBoard (``<out_dir>/tb``).

    Only an ``enabled`` logger (rank 0) touches files; the others accept calls and do nothing. ``resume_step``
    cuts the JSONL back to that step (and purges later TensorBoard events) before anything is appended.
    """

    def __init__(
        self,
        out_dir: str | os.PathLike | None,
        *,
        enabled: bool = True,
        resume_step: int = 0,
        tensorboard: bool = False,
        filename: str = "metrics.jsonl",
    ):
        self.path: Path | None = None
        self._file: TextIO | None = None
        self._tb: Any = None
        if not enabled or out_dir is None:
            return
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        self.path = Path(out_dir) / filename
        truncate_jsonl(self.path, resume_step)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - closed in close()
        if tensorboard:
            tb = require("torch.utils.tensorboard", "tensorboard", "TensorBoard logging")
            self._tb = tb.SummaryWriter(log_dir=str(Path(out_dir) / "tb"), purge_step=resume_step + 1)

    def log(self, step: int, metrics: Mapping[str, Any]) -> None:
        """Write one line ``{"step": step, **metrics}`` and flush it."""
        row = {"step": int(step), **{k: _json_value(v) for k, v in metrics.items()}}
        if self._file is not None:
            self._file.write(json.dumps(row) + "\n")
            self._file.flush()
        if self._tb is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, int | float) and not isinstance(v, bool):
                    self._tb.add_scalar(f"train/{k}", v, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None

    def __enter__(self) -> MetricsLogger:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Progress:
    """A tqdm bar over training steps on rank 0 (``enabled=False`` elsewhere makes every call a no-op)."""

    def __init__(self, total: int, *, initial: int = 0, enabled: bool = True, desc: str = "train"):
        self.enabled = enabled
        self._bar = tqdm(total=total, initial=initial, desc=desc, unit="step", dynamic_ncols=True, disable=not enabled)

    def update(self, n: int = 1) -> None:
        self._bar.update(n)

    def show(self, **values: Any) -> None:
        """Show short ``name=value`` pairs beside the bar (floats get 4 significant digits)."""
        if self.enabled:
            self._bar.set_postfix({k: _short(v) for k, v in values.items() if v is not None}, refresh=False)

    def write(self, message: str) -> None:
        """Print a line on rank 0 without breaking the bar."""
        if self.enabled:
            self._bar.write(message, file=sys.stderr)

    def close(self) -> None:
        self._bar.close()


def _short(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def format_summary(
    *, steps: int, start_step: int, elapsed_s: float, last: Mapping[str, Any], skipped: int, out_dir: Any
) -> str:
    """One closing line: what ran, how long, the last loss, skipped steps, and where the files are."""
    ran = steps - start_step
    resumed = f" (resumed at step {start_step})" if start_step else ""
    loss = last.get("loss")
    loss_s = f"; last loss {loss:.4g}" if isinstance(loss, float) else ""
    where = f"; checkpoints and metrics.jsonl in {out_dir}" if out_dir is not None else ""
    return (
        f"trained {ran} step(s) to step {steps}{resumed} in {elapsed_s:.1f} s{loss_s}; "
        f"{skipped} step(s) skipped for non-finite loss/grad{where}"
    )
