"""Shared neural-network layers: norms, rotary embeddings, MLP, attention (+ masks), causal convolution."""

from vistok.layers.attention import (
    Attention,
    MaskSpec,
    attention,
    build_dense_mask,
    make_mask_mod,
    repeat_kv,
)
from vistok.layers.conv import CausalConv3d
from vistok.layers.mlp import SwiGLU, swiglu_hidden_dim
from vistok.layers.norm import RMSNorm, rms_norm
from vistok.layers.rope import (
    RotaryEmbedding,
    apply_rotary,
    grid_positions,
    packed_position_ids,
    rope_cos_sin,
    rope_frequencies,
    rotate_half,
    split_head_dim,
)

__all__ = [
    "Attention",
    "CausalConv3d",
    "MaskSpec",
    "RMSNorm",
    "RotaryEmbedding",
    "SwiGLU",
    "apply_rotary",
    "attention",
    "build_dense_mask",
    "grid_positions",
    "make_mask_mod",
    "packed_position_ids",
    "repeat_kv",
    "rms_norm",
    "rope_cos_sin",
    "rope_frequencies",
    "rotate_half",
    "split_head_dim",
    "swiglu_hidden_dim",
]
