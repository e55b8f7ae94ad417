"""Exponential moving average of model weights, kept in float32.

After each optimizer update, ``shadow <- d * shadow + (1 - d) * param`` for every floating-point parameter, with
``d = decay`` or, when ``warmup=True``, ``d = min(decay, (1 + n) / (10 + n))`` where ``n`` counts earlier updates
(the ``num_updates`` rule of TensorFlow's ``ExponentialMovingAverage``), so early averages are not dominated by the
random initialisation. Buffers (e.g. BatchNorm statistics) are copied, not averaged. DDP and ``torch.compile``
wrappers are looked through, so the EMA's names are those of the plain model's ``state_dict``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vistok.train.distributed import unwrap_model


class EMA:
    """Float32 shadow copy of a model's parameters (and a copy of its buffers).

    Example::

        ema = EMA(model, decay=0.999)
        ...  # after every optimizer.step():
        ema.update()
        with ema.swap():   # the model holds the averaged weights in here, its trained ones again after
            evaluate(model)
    """

    def __init__(self, model: nn.Module, decay: float = 0.999, warmup: bool = False):
        if not 0.0 <= decay <= 1.0:
            raise ValueError(f"EMA decay must be in [0, 1], got {decay}")
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        plain = unwrap_model(model)
        self.model = plain
        self.shadow = {n: p.detach().float().clone() for n, p in plain.named_parameters() if p.is_floating_point()}
        self.buffers = {n: b.detach().clone() for n, b in plain.named_buffers()}

    def _resolve(self, model: nn.Module | None) -> nn.Module:
        return self.model if model is None else unwrap_model(model)

    def current_decay(self) -> float:
        """The decay the next :meth:`update` will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1.0 + n) / (10.0 + n))

    @torch.no_grad()
    def update(self, model: nn.Module | None = None) -> None:
        """Fold the model's current weights into the average and copy its buffers (default: the tracked model)."""
        d = self.current_decay()
        plain = self._resolve(model)
        params = dict(plain.named_parameters())
        for name, s in self.shadow.items():
            s.mul_(d).add_(params[name].detach().float(), alpha=1.0 - d)
        for name, b in plain.named_buffers():
            if name in self.buffers:
                self.buffers[name].copy_(b)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module | None = None) -> None:
        """Write the averaged weights (and buffers) into ``model`` (default: the tracked one), cast to its dtypes."""
        plain = self._resolve(model)
        params = dict(plain.named_parameters())
        for name, s in self.shadow.items():
            params[name].copy_(s)
        for name, b in plain.named_buffers():
            if name in self.buffers:
                b.copy_(self.buffers[name])

    @contextmanager
    def swap(self, model: nn.Module | None = None) -> Iterator[nn.Module]:
        """Context manager: the model holds the EMA weights inside the block and its own weights again after it."""
        plain = self._resolve(model)
        saved = {k: v.detach().clone() for k, v in plain.state_dict().items()}
        self.copy_to(plain)
        try:
            yield plain
        finally:
            plain.load_state_dict(saved)

    def model_state_dict(self) -> dict[str, torch.Tensor]:
        """A ``state_dict`` for the plain model with the averaged weights (float32), e.g. for release export."""
        return {**self.buffers, **self.shadow}

    def state_dict(self) -> dict[str, Any]:
        return {
            "decay": self.decay,
            "warmup": self.warmup,
            "num_updates": self.num_updates,
            "shadow": self.shadow,
            "buffers": self.buffers,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        missing = set(self.shadow) ^ set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state does not match the model; differing parameter names: {sorted(missing)[:5]}")
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
        for name, s in self.shadow.items():
            s.copy_(state["shadow"][name])
        for name, b in self.buffers.items():
            if name in state["buffers"]:
                b.copy_(state["buffers"][name])
