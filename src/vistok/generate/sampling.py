"""Next-token samplers: logits → a filtered distribution → one id per row, deterministic given a generator.

The filters run in the order of Hugging Face's ``LogitsProcessorList`` for ``generate(do_sample=True)``:

1. ``allowed`` (bool (V,) or (B, V)): disallowed ids get logit −∞ (constrained decoding, e.g. visual ids only);
2. temperature τ > 0: z ← z / τ;
3. top-k: keep the k largest logits (ties with the k-th are kept, as in HF), the rest −∞;
4. top-p (nucleus sampling, Holtzman et al., 2020, §3.1): with ids sorted by probability p₍₁₎ ≥ p₍₂₎ ≥ …, keep id (i)
   iff p₍₁₎ + … + p₍ᵢ₋₁₎ < top_p — the smallest prefix whose mass reaches top_p, the id that crosses the threshold
   included, so at least one id is always kept (``top_p = 1`` is a no-op, as in HF);
5. p = softmax(z), computed in float32 whatever the logits' dtype.

τ = 0 means greedy decoding: the argmax over the allowed ids (top-k/top-p cannot change it).

**Sampling without a host sync** (gpt-fast's trick): with Eᵢ ~ Exp(1) i.i.d., argmaxᵢ pᵢ / Eᵢ is distributed as
Categorical(p) — it is the Gumbel-max trick, since −log Eᵢ ~ Gumbel(0, 1) and argmax log pᵢ − log Eᵢ ~ p. Unlike
``torch.multinomial`` it needs no device → host synchronization, is one elementwise op and a reduction (so
``torch.compile`` fuses it), and consumes exactly B·V exponential draws from the generator per call, so a seeded
``torch.Generator`` gives the same ids on the same device every time. Ids of probability 0 are never drawn.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = ["check_sampling_args", "logits_to_probs", "sample_from_probs", "sample_logits"]


def check_sampling_args(temperature: float, top_k: int | None, top_p: float | None) -> None:
    """Raise ``ValueError`` / ``TypeError`` for a temperature < 0, top_k < 1 or top_p outside (0, 1]."""
    if isinstance(temperature, bool) or not isinstance(temperature, int | float):
        raise TypeError(f"temperature must be a number >= 0, got {type(temperature).__name__}")
    if not math.isfinite(temperature) or temperature < 0:
        raise ValueError(f"temperature must be a finite number >= 0 (0 = greedy), got {temperature}")
    if top_k is not None:
        if isinstance(top_k, bool) or not isinstance(top_k, int):
            raise TypeError(f"top_k must be an int >= 1 or None, got {type(top_k).__name__}")
        if top_k < 1:
            raise ValueError(f"top_k must be >= 1 (or None to disable), got {top_k}")
    if top_p is not None:
        if isinstance(top_p, bool) or not isinstance(top_p, int | float):
            raise TypeError(f"top_p must be a number in (0, 1] or None, got {type(top_p).__name__}")
        if not 0.0 < top_p <= 1.0:
            raise ValueError(f"top_p must be in (0, 1] (or None to disable), got {top_p}")


def _check_logits(logits: Tensor) -> None:
    if not isinstance(logits, Tensor) or logits.ndim != 2 or not logits.is_floating_point():
        got = f"shape {tuple(logits.shape)}, dtype {logits.dtype}" if isinstance(logits, Tensor) else type(logits)
        raise ValueError(f"logits must be a floating-point tensor (B, V), got {got}")


def _check_allowed(allowed: Tensor, logits: Tensor) -> Tensor:
    """``allowed`` as a bool tensor broadcastable to the logits, on their device."""
    if not isinstance(allowed, Tensor) or allowed.dtype != torch.bool:
        got = allowed.dtype if isinstance(allowed, Tensor) else type(allowed).__name__
        raise TypeError(f"allowed must be a bool tensor (V,) or (B, V) (True = may be sampled), got {got}")
    b, v = logits.shape
    if tuple(allowed.shape) not in ((v,), (b, v), (1, v)):
        raise ValueError(f"allowed must have shape ({v},) or ({b}, {v}), got {tuple(allowed.shape)}")
    return allowed.to(logits.device)


def _filter_logits(
    logits: Tensor, temperature: float, top_k: int | None, top_p: float | None, allowed: Tensor | None
) -> Tensor:
    """Float32 logits after steps 1-4 of the module docstring (τ > 0)."""
    z = logits.float()
    if allowed is not None:
        z = z.masked_fill(~_check_allowed(allowed, logits), -math.inf)
    if temperature != 1.0:
        z = z / temperature
    if top_k is not None and top_k < z.shape[-1]:
        kth = torch.topk(z, top_k, dim=-1).values[:, -1:]
        z = z.masked_fill(z < kth, -math.inf)
    if top_p is not None and top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        sorted_p = torch.softmax(sorted_z, dim=-1)
        mass_before = sorted_p.cumsum(dim=-1) - sorted_p
        drop_sorted = mass_before >= top_p
        drop_sorted[:, 0] = False  # the most probable id always stays
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        z = z.masked_fill(drop, -math.inf)
    return z


def _greedy(logits: Tensor, allowed: Tensor | None) -> Tensor:
    z = logits.float()
    if allowed is not None:
        z = z.masked_fill(~_check_allowed(allowed, logits), -math.inf)
    return z.argmax(dim=-1)


def logits_to_probs(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed: Tensor | None = None,
) -> Tensor:
    """The distribution :func:`sample_logits` draws from: float32 (B, V) probabilities, rows summing to 1.

    Filters as in the module docstring; ``temperature = 0`` gives the one-hot distribution of the greedy choice.
    """
    _check_logits(logits)
    check_sampling_args(temperature, top_k, top_p)
    if temperature == 0:
        idx = _greedy(logits, allowed)
        return torch.zeros_like(logits, dtype=torch.float32).scatter_(-1, idx[:, None], 1.0)
    return torch.softmax(_filter_logits(logits, temperature, top_k, top_p, allowed), dim=-1)


def sample_from_probs(probs: Tensor, noise: Tensor) -> Tensor:
    """argmax pᵢ / Eᵢ for ``noise`` E ~ Exp(1) of probs' shape: a draw from Categorical(p) per row, (B,) int64.

    Ids with pᵢ = 0 are never chosen (even where Eᵢ underflows to 0).
    """
    return torch.where(probs > 0, probs / noise, -1.0).argmax(dim=-1)


def sample_logits(
    logits: Tensor,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    allowed: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """One id per row (B,) int64 from ``logits`` (B, V): filter (module docstring), then sample without a host sync.

    ``temperature = 0``: greedy argmax over the allowed ids (no random draw is consumed). Otherwise B·V Exp(1) draws
    are taken from ``generator`` (which must live on the logits' device; None = torch's default generator). Every
    row of ``allowed`` must allow at least one id (not checked here, to avoid a sync: an all-False row gives id 0).
    """
    _check_logits(logits)
    check_sampling_args(temperature, top_k, top_p)
    if generator is not None and generator.device.type != logits.device.type:
        raise ValueError(
            f"generator must be on the logits' device ({logits.device}), got a generator on {generator.device}"
        )
    if temperature == 0:
        return _greedy(logits, allowed)
    probs = torch.softmax(_filter_logits(logits, temperature, top_k, top_p, allowed), dim=-1)
    noise = torch.empty_like(probs).exponential_(1.0, generator=generator)
    return sample_from_probs(probs, noise)
