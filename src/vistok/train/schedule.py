"""Learning-rate schedules as a pure function of the step, and a ``LambdaLR`` factory around it.

Steps count optimizer updates from 0. With ``warmup = W`` the factor rises linearly, ``(step + 1) / W``, so the
update at step ``W - 1`` is the first at the full rate; after warmup:

* ``"cosine"``: ``min_lr_ratio + (1 - min_lr_ratio) * (1 + cos(pi * p)) / 2`` with ``p = (step - W) / (total - W)``
  (clamped to [0, 1]), i.e. half a cosine from 1 down to ``min_lr_ratio`` at ``step = total``;
* ``"linear"``: ``1 - (1 - min_lr_ratio) * p``;
* ``"constant"``: 1.
"""

from __future__ import annotations

import math

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR

SCHEDULES = ("cosine", "linear", "constant")


def lr_factor(step: int, *, total: int, warmup: int = 0, min_lr_ratio: float = 0.0, kind: str = "cosine") -> float:
    """Multiplier of the base learning rate at optimizer step ``step`` (0-based)."""
    if kind not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {kind!r}")
    if not 0.0 <= min_lr_ratio <= 1.0:
        raise ValueError(f"min_lr_ratio must be in [0, 1], got {min_lr_ratio}")
    if step < warmup:
        return (step + 1) / warmup
    if kind == "constant":
        return 1.0
    progress = min(1.0, max(0.0, (step - warmup) / max(1, total - warmup)))
    if kind == "linear":
        return 1.0 - (1.0 - min_lr_ratio) * progress
    return min_lr_ratio + (1.0 - min_lr_ratio) * 0.5 * (1.0 + math.cos(math.pi * progress))


def build_scheduler(
    optimizer: Optimizer, *, total: int, warmup: int = 0, min_lr_ratio: float = 0.0, kind: str = "cosine"
) -> LambdaLR:
    """``LambdaLR`` applying :func:`lr_factor` to every param group's initial lr.

    Call ``scheduler.step()`` once after each optimizer update. Its ``state_dict()`` holds only numbers, so it
    round-trips through ``torch.load(weights_only=True)``.
    """
    lr_factor(0, total=total, warmup=warmup, min_lr_ratio=min_lr_ratio, kind=kind)  # validate arguments now

    def factor(step: int) -> float:
        return lr_factor(step, total=total, warmup=warmup, min_lr_ratio=min_lr_ratio, kind=kind)

    return LambdaLR(optimizer, factor)
