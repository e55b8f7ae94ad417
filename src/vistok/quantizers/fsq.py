"""Finite scalar quantization (FSQ) — Mentzer et al., "Finite Scalar Quantization: VQ-VAE Made Simple", ICLR 2024,
§3 and the reference code of Appendix A.1.

Each of the d = len(levels) channels is bounded and rounded to L_i levels:
    bound(x)_i = tanh(x_i + shift_i) · h_i − offset_i,   h_i = (L_i − 1)(1 − ε)/2,  ε = 1e-3,
    offset_i = 0.5 for even L_i else 0,                shift_i = atanh(offset_i / h_i),
    q(x)_i = round(bound(x)_i) / ⌊L_i/2⌋  ∈ [−1, 1]    (straight-through round),
so odd L_i gives the symmetric levels {−⌊L/2⌋, …, ⌊L/2⌋}/⌊L/2⌋ and even L_i the levels {−L/2, …, L/2 − 1}/(L/2)
(the half-level offset). The paper's code writes ``tan`` for the shift; ``atanh`` is the exact value that makes
bound(0) = 0 (vector-quantize-pytorch uses atanh too, with (1 + ε)). Levels must be ≥ 3 (use LFQ for 2 levels).

Token index — mixed radix, channel 0 least significant (the paper's code and vector-quantize-pytorch agree):
    index = Σ_i digit_i · Π_{j<i} L_j,   digit_i = round(bound(x)_i) + ⌊L_i/2⌋ ∈ {0, …, L_i − 1}.
The codebook is implicit (Π L_i codes); there is no auxiliary loss (loss = 0). Quantization runs in float32.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from vistok.quantizers.base import (
    QuantizerOutput,
    UsageTracker,
    codes_channel_first,
    flatten_channels,
    full_precision,
    project,
    unflatten_channels,
)


class FSQ(nn.Module):
    """Finite scalar quantizer with per-channel ``levels`` (e.g. [8, 5, 5, 5] → 1,000 codes).

    Args:
        levels: number of levels per code channel (each ≥ 3).
        dim: input channels; linear projections in/out are added when dim ≠ len(levels). Default len(levels).
        eps: the bound's margin ε (1e-3).
        usage_window: batches in the usage-statistics window (0 disables usage metrics).
    """

    def __init__(
        self,
        levels: Sequence[int],
        dim: int | None = None,
        *,
        eps: float = 1e-3,
        usage_window: int = 100,
        projection_bias: bool = True,
    ):
        super().__init__()
        levels = [int(level) for level in levels]
        if not levels or min(levels) < 3:
            raise ValueError(f"FSQ levels must be a non-empty list of integers >= 3, got {levels}")
        self.levels_list, self.code_dim, self.dim = levels, len(levels), dim or len(levels)
        self.codebook_size = math.prod(levels)
        if self.codebook_size >= 2**62:
            raise ValueError(f"codebook of {self.codebook_size} codes does not fit int64 token ids")
        self.eps = eps
        basis = [math.prod(levels[:i]) for i in range(len(levels))]
        self.register_buffer("levels", torch.tensor(levels, dtype=torch.long), persistent=False)
        self.register_buffer("basis", torch.tensor(basis, dtype=torch.long), persistent=False)
        project = self.dim != self.code_dim
        self.project_in = nn.Linear(self.dim, self.code_dim, bias=projection_bias) if project else nn.Identity()
        self.project_out = nn.Linear(self.code_dim, self.dim, bias=projection_bias) if project else nn.Identity()
        self.usage = UsageTracker(self.codebook_size, usage_window) if usage_window else None

    # -- maths

    def bound(self, x: Tensor) -> Tensor:
        """tanh(x + shift)·h − offset: maps R onto the open interval whose roundings are the L levels."""
        levels = self.levels.to(x.dtype)
        half = (levels - 1) * (1 - self.eps) / 2
        offset = torch.where(self.levels % 2 == 0, 0.5, 0.0).to(x.dtype)
        return torch.tanh(x + torch.atanh(offset / half)) * half - offset

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Float latents ``(N, d)`` → (straight-through codes in [−1, 1], integer digits in {0..L−1})."""
        bounded = self.bound(x)
        rounded = bounded.round()
        half_width = (self.levels // 2).to(x.dtype)
        codes = (rounded + (bounded - bounded.detach())) / half_width
        return codes, (rounded + half_width).long()

    def digits_to_indices(self, digits: Tensor) -> Tensor:
        """Per-channel digits ``(..., d)`` → mixed-radix ids ``(...)`` (channel 0 least significant)."""
        return (digits.long() * self.basis).sum(-1)

    def indices_to_digits(self, indices: Tensor) -> Tensor:
        """Ids ``(...)`` → per-channel digits ``(..., d)``; also the level ids for factorized output heads."""
        return torch.div(indices.long().unsqueeze(-1), self.basis, rounding_mode="floor") % self.levels

    def codes_to_indices(self, codes: Tensor) -> Tensor:
        """Channel-last codes ``(..., d)`` with values on the grid → ids ``(...)``."""
        half_width = (self.levels // 2).to(codes.dtype)
        return self.digits_to_indices((codes * half_width).round() + half_width)

    # -- ids ↔ codes

    def indices_to_codes(self, indices: Tensor) -> Tensor:
        """Ids ``(B, *S)`` → channel-first codes ``(B, d, *S)`` in [−1, 1]."""
        half_width = self.levels // 2
        return codes_channel_first((self.indices_to_digits(indices) - half_width).float() / half_width)

    def indices_to_quantized(self, indices: Tensor) -> Tensor:
        """Ids → what ``forward`` returns as ``quantized`` (codes through the output projection)."""
        codes, grid = flatten_channels(self.indices_to_codes(indices), self.code_dim)
        return unflatten_channels(project(self.project_out, codes), grid)

    # -- forward

    def forward(self, z: Tensor) -> QuantizerOutput:
        """Quantize channel-first ``z`` ``(B, dim, *S)``; loss is a zero tensor (FSQ has no auxiliary loss)."""
        tokens, grid = flatten_channels(z, self.dim)
        tokens = self.project_in(tokens)
        with full_precision(z.device):
            codes, digits = self.quantize(tokens.float())
        quantized = self.project_out(codes.to(tokens.dtype))
        indices = self.digits_to_indices(digits).reshape(grid)
        metrics: dict[str, Tensor] = {}
        if self.usage is not None:
            self.usage.update(indices, sync=self.training)
            metrics.update(self.usage.metrics())
        loss = torch.zeros((), device=z.device)
        return QuantizerOutput(unflatten_channels(quantized, grid), indices, loss, metrics)

    def extra_repr(self) -> str:
        return f"levels={self.levels_list}, dim={self.dim}, codebook_size={self.codebook_size}"
