"""Rotary position embeddings (RoPE; Su et al., 2021, "RoFormer", eq. 34) for 1-D sequences and N-D token grids.

**Layout: rotate-half**, as in Hugging Face ``LlamaForCausalLM`` (and GPT-NeoX). A head vector x of size D is split
into halves x = [x₁, x₂]; the pair (x₁[i], x₂[i]) is rotated by the angle φᵢ = p · θ^(−2i/D), i < D/2::

    RoPE(x, p) = x ⊙ cos + rotate_half(x) ⊙ sin,    rotate_half([x₁, x₂]) = [−x₂, x₁],
    cos = [cos φ, cos φ],  sin = [sin φ, sin φ].

The inverse frequencies use HF's exact expression ``1 / θ ** (arange(0, D, 2).float() / D)`` and the angles are
computed in float32, so a loaded HF LLaMA checkpoint reproduces its logits. (Meta's original LLaMA code rotates
*interleaved* pairs (x[2i], x[2i+1]); HF permutes the rows of wq/wk when converting, so HF checkpoints expect
rotate-half — load Meta-format weights only after that permutation.)

**Position ids are arbitrary**: any integer (or real) position per token, e.g. restarting at 0 at every document of a
packed sequence (:func:`packed_position_ids`) or centroid coordinates of merged tokens.

**N-D grids — axis split rule.** Positions have shape (..., n_axes) (e.g. (t, h, w)). Axis a owns d_a of the D head
dims (default d_a = D / n_axes; set ``axes_dims`` to choose, each even, summing to D) and gets a standard 1-D RoPE of
dimension d_a driven by its own coordinate p_a, with frequencies θ^(−2j/d_a), j < d_a/2. In the rotate-half layout
the D/2 angles are the per-axis angle vectors concatenated, φ = [φ⁽⁰⁾, φ⁽¹⁾, ...], so axis a rotates the dims
[o_a, o_a + d_a/2) together with [D/2 + o_a, D/2 + o_a + d_a/2), where o_a = Σ_{b<a} d_b/2. With n_axes = 1 this
is exactly the 1-D rope above, and one :func:`apply_rotary` serves every case.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn


def rope_frequencies(dim: int, theta: float = 10000.0, device: torch.device | None = None) -> Tensor:
    """The dim/2 inverse frequencies θ^(−2i/dim), float32, computed exactly as HF Llama's default rope does."""
    return 1.0 / (theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim))


def split_head_dim(head_dim: int, n_axes: int = 1, axes_dims: Sequence[int] | None = None) -> tuple[int, ...]:
    """Dims per axis: ``axes_dims`` if given (validated), else ``head_dim`` split equally (must divide by 2·n_axes)."""
    if axes_dims is None:
        if n_axes < 1 or head_dim % (2 * n_axes) != 0:
            raise ValueError(
                f"rotary head_dim must be divisible by 2 * n_axes so every axis gets an even share; "
                f"got head_dim={head_dim}, n_axes={n_axes} (pass axes_dims to split unevenly)"
            )
        return (head_dim // n_axes,) * n_axes
    axes_dims = tuple(int(d) for d in axes_dims)
    if len(axes_dims) != n_axes or sum(axes_dims) != head_dim or any(d <= 0 or d % 2 for d in axes_dims):
        raise ValueError(
            f"axes_dims must be {n_axes} positive even numbers summing to head_dim={head_dim}, got {axes_dims}"
        )
    return axes_dims


def rope_cos_sin(
    positions: Tensor, head_dim: int, theta: float = 10000.0, axes_dims: Sequence[int] | None = None
) -> tuple[Tensor, Tensor]:
    """cos and sin tables, each (..., head_dim) float32, for token coordinates ``positions`` of shape (..., n_axes).

    For a 1-D sequence pass ``position_ids[..., None]``. Coordinates may be integers or reals.
    """
    if positions.ndim < 1:
        raise ValueError("positions must have shape (..., n_axes)")
    dims = split_head_dim(head_dim, positions.shape[-1], axes_dims)
    device = positions.device
    inv_freq = torch.cat([rope_frequencies(d, theta, device) for d in dims])  # (D/2,)
    axis_of = torch.tensor([a for a, d in enumerate(dims) for _ in range(d // 2)], device=device)  # angle → axis
    angles = positions.to(torch.float32)[..., axis_of] * inv_freq  # (..., D/2): φ
    emb = torch.cat((angles, angles), dim=-1)
    return emb.cos(), emb.sin()


def rotate_half(x: Tensor) -> Tensor:
    """[x₁, x₂] → [−x₂, x₁] over the last dimension (HF Llama's ``rotate_half``)."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate queries or keys ``x`` (..., H, L, D) by tables ``cos``, ``sin`` of shape (..., L, D) (no head axis).

    The tables broadcast over the head axis and are cast to ``x.dtype`` first, as in HF Llama.
    """
    cos = cos.to(x.dtype).unsqueeze(-3)
    sin = sin.to(x.dtype).unsqueeze(-3)
    return x * cos + rotate_half(x) * sin


def packed_position_ids(doc_ids: Tensor) -> Tensor:
    """Position ids (B, L) restarting at 0 wherever ``doc_ids`` (B, L) changes value along the sequence."""
    b, n = doc_ids.shape
    idx = torch.arange(n, device=doc_ids.device).expand(b, n)
    starts = torch.ones_like(doc_ids, dtype=torch.bool)
    starts[:, 1:] = doc_ids[:, 1:] != doc_ids[:, :-1]
    start_idx = torch.where(starts, idx, torch.zeros_like(idx)).cummax(dim=1).values
    return idx - start_idx


def grid_positions(*sizes: int, device: torch.device | None = None) -> Tensor:
    """Integer coordinates (prod(sizes), n_axes) of a grid in raster order (last axis fastest), e.g. (t, h, w)."""
    axes = [torch.arange(s, device=device) for s in sizes]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1).reshape(-1, len(sizes))


class RotaryEmbedding(nn.Module):
    """Turns positions into (cos, sin) tables for :func:`apply_rotary`; holds no buffers (nothing to cast or save).

    ``n_axes = 1``: ``positions`` are position ids of shape (..., L). ``n_axes > 1``: (..., L, n_axes) coordinates,
    split over the head dims as described in the module docstring.
    """

    def __init__(
        self, head_dim: int, theta: float = 10000.0, n_axes: int = 1, axes_dims: Sequence[int] | None = None
    ) -> None:
        super().__init__()
        self.head_dim, self.theta, self.n_axes = head_dim, theta, n_axes
        self.axes_dims = split_head_dim(head_dim, n_axes, axes_dims)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        if self.n_axes == 1:
            positions = positions[..., None]
        elif positions.ndim < 2 or positions.shape[-1] != self.n_axes:
            raise ValueError(f"expected positions of shape (..., L, {self.n_axes}), got {tuple(positions.shape)}")
        return rope_cos_sin(positions, self.head_dim, self.theta, self.axes_dims)

    def extra_repr(self) -> str:
        return f"head_dim={self.head_dim}, theta={self.theta}, axes_dims={self.axes_dims}"
