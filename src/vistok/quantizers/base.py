"""Pieces every quantizer shares: the output tuple, channel-first shape helpers, DDP helpers, usage statistics.

The one quantizer API (vector-quantize-pytorch's shape of it): ``out = q(z)`` for a channel-first ``z`` of any rank
``(B, C, *S)`` returns :class:`QuantizerOutput` ``(quantized, indices, loss, metrics)`` where ``quantized`` has the
shape of ``z``, ``indices`` is int64 of shape ``(B, *S)``, ``loss`` is a scalar tensor (the weighted sum of the
quantizer's own losses) and ``metrics`` maps names to detached 0-d tensors. ``q.indices_to_codes(indices)`` returns
the channel-first codes (before any output projection); ``q.codebook_size`` is the vocabulary size.

Usage statistics (:class:`UsageTracker`) are kept over a sliding window of recent batches as sparse histograms
(distinct codes and their counts per batch), so memory is O(window × distinct codes per batch) even for 2^18+ codes.
"""

from __future__ import annotations

import math
from collections import deque
from contextlib import AbstractContextManager
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import Tensor


class QuantizerOutput(NamedTuple):
    """What every quantizer returns.

    quantized: same shape (and, without projections, dtype) as the input; straight-through gradients to the input.
    indices: int64 token ids, the input shape without the channel dim.
    loss: scalar tensor, the weighted sum of the quantizer's losses (0 when it has none).
    metrics: detached 0-d tensors (losses before weighting, entropies, usage, perplexity, bits per token).
    """

    quantized: Tensor
    indices: Tensor
    loss: Tensor
    metrics: dict[str, Tensor]


# ----------------------------------------------------------------------------------------------- shape helpers


def flatten_channels(z: Tensor, channels: int) -> tuple[Tensor, tuple[int, ...]]:
    """Channel-first ``(B, C, *S)`` → tokens ``(B·ΠS, C)``, plus the token grid ``(B, *S)`` to undo it."""
    if z.ndim < 2 or z.shape[1] != channels:
        raise ValueError(f"expected a channel-first tensor (B, {channels}, ...), got shape {tuple(z.shape)}")
    grid = (z.shape[0], *z.shape[2:])
    return z.movedim(1, -1).reshape(-1, channels), grid


def unflatten_channels(x: Tensor, grid: tuple[int, ...]) -> Tensor:
    """Tokens ``(N, C)`` → channel-first ``(B, C, *S)`` for the grid ``(B, *S)`` (inverse of flatten_channels)."""
    return x.reshape(*grid, x.shape[-1]).movedim(-1, 1)


def codes_channel_first(codes: Tensor) -> Tensor:
    """Codes ``(B, *S, C)`` looked up from indices ``(B, *S)`` → channel-first ``(B, C, *S)``."""
    if codes.ndim < 2:
        raise ValueError(f"indices need a batch dimension, got codes of shape {tuple(codes.shape)}")
    return codes.movedim(-1, 1)


def full_precision(device: torch.device) -> AbstractContextManager:
    """Autocast off: the quantization step runs in float32 under bf16/fp16 autocast (callers cast with .float())."""
    return torch.autocast(device_type=device.type, enabled=False)


# ----------------------------------------------------------------------------------------------- distributed


def is_distributed() -> bool:
    """True inside an initialized torch.distributed group of more than one process."""
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


class _AllReduceSum(torch.autograd.Function):
    """Differentiable all-reduce (sum). Backward all-reduces the gradients (as torch.distributed.nn does).

    When every rank computes the same loss from the reduced sum, each rank's gradient is world_size × the gradient of
    the global-batch loss, and DDP's gradient averaging turns that into exactly the global-batch gradient.
    """

    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:  # type: ignore[override]
        out = tensor.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(out)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # type: ignore[override]
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad)
        return grad


def all_reduce_sum(tensor: Tensor, differentiable: bool = False) -> Tensor:
    """Sum over ranks (identity outside torch.distributed); ``differentiable`` keeps the autograd graph."""
    if not is_distributed():
        return tensor
    if differentiable:
        return _AllReduceSum.apply(tensor)
    tensor = tensor.detach().clone()
    dist.all_reduce(tensor)
    return tensor


def all_gather_varlen(tensor: Tensor) -> Tensor:
    """Concatenate 1-D tensors of different lengths from all ranks (rank order)."""
    if not is_distributed():
        return tensor
    size = torch.tensor([tensor.numel()], device=tensor.device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    lengths = [int(s) for s in sizes]
    padded = tensor.new_zeros(max(lengths))
    padded[: tensor.numel()] = tensor
    gathered = [torch.empty_like(padded) for _ in lengths]
    dist.all_gather(gathered, padded)
    return torch.cat([g[:n] for g, n in zip(gathered, lengths)])


# ----------------------------------------------------------------------------------------------- usage statistics


def _merge_histograms(values: Tensor, counts: Tensor) -> tuple[Tensor, Tensor]:
    """Sum the counts of equal values; drop values whose total count is zero. Returns sorted values."""
    merged, inverse = torch.unique(values, return_inverse=True)
    totals = torch.zeros(merged.shape, dtype=torch.long, device=values.device).index_add_(0, inverse, counts)
    keep = totals != 0
    return merged[keep], totals[keep]


class UsageTracker:
    """Code usage over a sliding window of the last ``window`` batches.

    Each batch is stored as a sparse histogram (distinct codes and their counts); the window's histogram is kept
    merged (sorted codes, positive counts) and updated incrementally: add the new batch, subtract the one that leaves.
    Memory is O(distinct codes in the window), whatever the codebook size (2^18 codes, 100 batches of 2,048 tokens:
    ~2 ms per update on a CPU). Metrics over the window:

    - ``usage``: fraction of the codebook used at least once;
    - ``perplexity``: exp of the entropy of the empirical code histogram;
    - ``code_entropy_bits``: that entropy in bits (the empirical bits per token);
    - ``bits_per_token``: log2(codebook_size), the fixed-length cost of a token.

    ``update(indices, sync=True)`` gathers the batch histograms of all ranks under torch.distributed, so every rank
    tracks the global batch; quantizers sync only in training mode (evaluation may run on one rank alone).
    The state is not saved in checkpoints (statistics restart with the run).
    """

    def __init__(self, codebook_size: int, window: int = 100):
        if window < 1:
            raise ValueError(f"window must be >= 1 batch, got {window}")
        self.codebook_size, self.window = codebook_size, window
        self.reset()

    def reset(self) -> None:
        self.slots: deque[tuple[Tensor, Tensor]] = deque()
        self.values = torch.zeros(0, dtype=torch.long)
        self.counts = torch.zeros(0, dtype=torch.long)

    @torch.no_grad()
    def update(self, indices: Tensor, sync: bool = False) -> None:
        """Add one batch of token ids (any shape)."""
        values, counts = torch.unique(indices.detach().reshape(-1), return_counts=True)
        if sync and is_distributed():
            values, counts = _merge_histograms(all_gather_varlen(values), all_gather_varlen(counts))
        self.update_histogram(values, counts)

    @torch.no_grad()
    def update_histogram(self, values: Tensor, counts: Tensor) -> None:
        """Add one batch given as distinct code ids and their (positive) counts."""
        values, counts = values.detach().long(), counts.detach().long()
        self.slots.append((values, counts))
        all_values, all_counts = [self.values.to(values.device), values], [self.counts.to(values.device), counts]
        if len(self.slots) > self.window:
            old_values, old_counts = self.slots.popleft()
            all_values.append(old_values.to(values.device))
            all_counts.append(-old_counts.to(values.device))
        self.values, self.counts = _merge_histograms(torch.cat(all_values), torch.cat(all_counts))

    def metrics(self) -> dict[str, Tensor]:
        """usage, perplexity, code_entropy_bits, bits_per_token over the window (0-d float tensors)."""
        p = self.counts.double() / self.counts.sum().clamp(min=1)
        entropy = -(p * p.log()).sum()  # every stored count is positive: no 0·log 0
        ones = torch.ones((), device=self.counts.device)
        return {
            "usage": ones * (self.values.numel() / self.codebook_size),
            "perplexity": entropy.exp().float(),
            "code_entropy_bits": (entropy / math.log(2)).float(),
            "bits_per_token": ones * math.log2(self.codebook_size),
        }


def project(layer: torch.nn.Module, x: Tensor) -> Tensor:
    """Apply an input/output projection (a Linear or Identity) in the layer's own dtype (bf16-cast models too)."""
    weight = getattr(layer, "weight", None)
    return layer(x if weight is None else x.to(weight.dtype))
