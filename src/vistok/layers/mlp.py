"""SwiGLU feed-forward block (Shazeer, 2020, "GLU Variants Improve Transformer", eq. 6), as used by LLaMA.

    FFN(x) = W₂ (SiLU(W₁ x) ⊙ W₃ x),   no biases.

Weight names follow Meta's LLaMA code: w1 = gate (HF ``gate_proj``), w3 = up (``up_proj``), w2 = down (``down_proj``).
The hidden size follows LLaMA's rule (:func:`swiglu_hidden_dim`): two thirds of 4·dim, so the three matrices hold as
many parameters as a 4·dim two-matrix MLP, optionally scaled, then rounded up to a multiple of ``multiple_of``.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn


def swiglu_hidden_dim(dim: int, multiple_of: int = 256, ffn_dim_multiplier: float | None = None) -> int:
    """LLaMA's hidden size: int(2·4·dim/3), times ``ffn_dim_multiplier`` if given, rounded up to ``multiple_of``.

    For example dim 4096 → 11008 (LLaMA-7B).
    """
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


class SwiGLU(nn.Module):
    """SwiGLU MLP dim → hidden → dim. ``hidden_dim`` overrides the LLaMA sizing rule when given."""

    def __init__(
        self,
        dim: int,
        hidden_dim: int | None = None,
        multiple_of: int = 256,
        ffn_dim_multiplier: float | None = None,
        bias: bool = False,
    ) -> None:
        super().__init__()
        hidden = hidden_dim if hidden_dim is not None else swiglu_hidden_dim(dim, multiple_of, ffn_dim_multiplier)
        self.w1 = nn.Linear(dim, hidden, bias=bias)
        self.w3 = nn.Linear(dim, hidden, bias=bias)
        self.w2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.w2(F.silu(self.w1(x)) * self.w3(x))
