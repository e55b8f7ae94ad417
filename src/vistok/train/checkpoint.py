"""Resume checkpoints: written atomically by rank 0, loaded with ``torch.load(weights_only=True)``.

A resume checkpoint is one file ``<dir>/ckpt_<step:08d>.pt`` holding a plain dict: ``model``, ``ema``, ``opt``,
``sched``, ``step``, ``config`` (a plain dict), ``rng`` (one entry per rank: python ``random``, numpy's legacy global
generator, torch CPU and, when present, CUDA states, all as tensors / lists / numbers) and any ``extra`` state
(data position, loop counters, further models). Release weights are a different format (``config.json`` +
``model.safetensors``, see ``vistok.hub``).

Writes go to a temporary file in the same directory, are flushed and fsynced, then moved into place with
``os.replace``: a crash or an exception mid-write leaves the previous checkpoints untouched and no partial file
under a checkpoint name. Only the last ``keep_last`` checkpoints are kept.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import random
import re
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vistok.train.distributed import all_gather_object, barrier, get_rank, is_main, unwrap_model

CKPT_PATTERN = re.compile(r"^ckpt_(\d+)\.pt$")
TMP_PREFIX = ".tmp-ckpt_"


def checkpoint_path(directory: str | os.PathLike, step: int) -> Path:
    """Canonical file name of the checkpoint taken after ``step`` optimizer steps."""
    return Path(directory) / f"ckpt_{step:08d}.pt"


def list_checkpoints(directory: str | os.PathLike) -> list[Path]:
    """Checkpoints in ``directory``, oldest step first (temporary files are ignored)."""
    d = Path(directory)
    if not d.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in d.iterdir() if (m := CKPT_PATTERN.match(p.name))]
    return [p for _, p in sorted(found)]


def latest_checkpoint(directory: str | os.PathLike) -> Path | None:
    """The checkpoint with the highest step in ``directory``, or ``None``."""
    ckpts = list_checkpoints(directory)
    return ckpts[-1] if ckpts else None


def load_resume_state(out_dir: str | os.PathLike, resume: bool = True) -> tuple[Path, dict[str, Any]] | None:
    """(path, state) of the latest checkpoint in ``out_dir`` to resume from, or ``None`` for a fresh run.

    With ``resume=False`` a folder that already holds checkpoints is refused rather than mixed with a new run.
    """
    if not resume:
        if list_checkpoints(out_dir):
            raise FileExistsError(
                f"{out_dir} holds checkpoints of an earlier run; resume it (resume=True, --resume) or choose "
                "another output folder"
            )
        return None
    path = latest_checkpoint(out_dir)
    return None if path is None else (path, load_checkpoint(path))


def _fsync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):  # not every platform / filesystem lets a directory be opened
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def save_checkpoint(state: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """Write ``state`` to ``path`` atomically (temp file in the same directory, fsync, ``os.replace``).

    Any failure (including ``KeyboardInterrupt``) removes the temporary file and re-raises; the file at ``path``
    is then either the complete old one or absent, never a partial new one.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=TMP_PREFIX, suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(dict(state), f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code runs while unpickling)."""
    return torch.load(Path(path), map_location=map_location, weights_only=True)


def prune_checkpoints(directory: str | os.PathLike, keep_last: int) -> list[Path]:
    """Delete all but the newest ``keep_last`` checkpoints (``keep_last <= 0`` keeps all) and stale temp files.

    Only the single writer (rank 0) may call this: a temp file of a concurrent writer would be removed.
    """
    d = Path(directory)
    removed = [p for p in d.glob(f"{TMP_PREFIX}*.tmp")]
    ckpts = list_checkpoints(d)
    if keep_last > 0:
        removed += ckpts[:-keep_last]
    for p in removed:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()
    return removed


# ------------------------------------------------------------------------------------------ training state


def save_training_checkpoint(
    directory: str | os.PathLike,
    step: int,
    *,
    model: nn.Module,
    optimizer: Any = None,
    scheduler: Any = None,
    ema: Any = None,
    config: Any = None,
    extra: Mapping[str, Any] | None = None,
    keep_last: int = 3,
) -> Path | None:
    """Collective: every rank calls it; the random states of all ranks are gathered and rank 0 writes the file.

    ``optimizer``, ``scheduler`` and ``ema`` are anything with ``state_dict()``; ``config`` a dataclass or dict
    (stored via :func:`to_plain`); ``extra`` further ``weights_only``-safe state. Returns the path on rank 0.
    """
    rng = all_gather_object(capture_rng_state())
    path = None
    if is_main():
        state = {
            "format": 1,
            "step": int(step),
            "model": unwrap_model(model).state_dict(),
            "ema": ema.state_dict() if ema is not None else None,
            "opt": optimizer.state_dict() if optimizer is not None else None,
            "sched": scheduler.state_dict() if scheduler is not None else None,
            "config": to_plain(config if config is not None else {}),
            "rng": rng,
            "extra": dict(extra or {}),
        }
        path = save_checkpoint(state, checkpoint_path(directory, step))
        prune_checkpoints(directory, keep_last)
    barrier()
    return path


def restore_training_checkpoint(
    state: Mapping[str, Any],
    *,
    model: nn.Module,
    optimizer: Any = None,
    scheduler: Any = None,
    ema: Any = None,
    restore_rng: bool = True,
) -> int:
    """Load what :func:`save_training_checkpoint` wrote into live objects; returns the step.

    This rank's random state is restored last (rank ``r`` gets entry ``r``, or rank 0's when the checkpoint was
    written by fewer ranks), so nothing done here disturbs it.
    """
    unwrap_model(model).load_state_dict(state["model"])
    for obj, key in ((optimizer, "opt"), (scheduler, "sched"), (ema, "ema")):
        if obj is not None:
            if state.get(key) is None:
                raise KeyError(f"checkpoint has no '{key}' state to restore")
            obj.load_state_dict(state[key])
    if restore_rng:
        rng = state["rng"]
        restore_rng_state(rng[get_rank()] if get_rank() < len(rng) else rng[0])
    return int(state["step"])


# ----------------------------------------------------------------------------------------------- random states


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch (CPU and every CUDA device)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def capture_rng_state() -> dict[str, Any]:
    """This process's random states as tensors, lists and numbers (``weights_only``-loadable)."""
    version, internal, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": {"version": int(version), "internal": [int(x) for x in internal], "gauss": gauss},
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    npy = state["numpy"]
    keys = npy["keys"].numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached_gaussian"]))
    torch.set_rng_state(state["torch"].cpu())
    cuda = state.get("cuda")
    if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


# --------------------------------------------------------------------------------------------- plain configs


def to_plain(obj: Any) -> Any:
    """Dataclasses, paths, tuples and numpy scalars as JSON-like dicts, lists, strings and numbers."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        obj = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    if isinstance(obj, Mapping):
        return {str(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple | set | frozenset):
        return [to_plain(v) for v in obj]
    if isinstance(obj, np.generic):
        return obj.item()
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if isinstance(obj, torch.device | torch.dtype):
        return str(obj)
    raise TypeError(f"cannot store a {type(obj).__name__} in a checkpoint config; use plain dicts, lists, numbers")
