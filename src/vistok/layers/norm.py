"""Root-mean-square layer normalization (Zhang & Sennrich, 2019), as used by LLaMA.

    RMSNorm(x) = w ⊙ x / sqrt(mean_i(x_i²) + eps)

No mean subtraction and no bias. The statistics are computed in float32 (float64 inputs stay float64) and the
normalized value is cast back to the input dtype *before* the weight is applied — the order of Hugging Face's
``LlamaRMSNorm``, so that loaded LLaMA checkpoints reproduce their reference logits in half precision too.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


def rms_norm(x: Tensor, weight: Tensor | None = None, eps: float = 1e-6) -> Tensor:
    """Normalize ``x`` over its last dimension by its root mean square, then scale by ``weight``.

    The arithmetic runs in float32 (float64 stays float64), the result is cast back to ``x.dtype``.
    """
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    y = (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype)
    return y if weight is None else weight * y


class RMSNorm(nn.Module):
    """RMSNorm over the last dimension of size ``dim`` with a learned gain (initialized to ones)."""

    def __init__(self, dim: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: Tensor) -> Tensor:
        return rms_norm(x, self.weight, self.eps)

    def extra_repr(self) -> str:
        return f"{self.weight.shape[0]}, eps={self.eps}"
