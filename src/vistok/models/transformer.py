"""The vistok sequence backbone: a LLaMA-style transformer (Touvron et al., 2023, "LLaMA", §2.2) over token ids or
precomputed embeddings, shared by LVM, MaskGIT, Transfusion and DiGIT.

    h₀ = E[idx]  (or given embeddings)
    hₗ' = hₗ₋₁ + Attn(RMSNorm(hₗ₋₁))          RMSNorm (Zhang & Sennrich, 2019); GQA (Ainslie et al., 2023)
    hₗ  = hₗ'  + SwiGLU(RMSNorm(hₗ'))          SwiGLU (Shazeer, 2020, eq. 6)
    logits = W_out RMSNorm(h_N)

pre-norm, rotary positions (RoPE, Su et al., 2021) on queries and keys, no biases anywhere. Weight names follow Meta's
and gpt-fast's LLaMA code (``tok_embeddings``, ``layers.{i}.attention.{wq,wk,wv,wo}``,
``layers.{i}.feed_forward.{w1,w2,w3}``, ``attention_norm``, ``ffn_norm``, ``norm``, ``output``);
:mod:`vistok.models.hf_llama` maps them to and from Hugging Face ``LlamaForCausalLM`` checkpoints.

**Attention pattern** per call (``mask=``): ``None`` takes the config's default (``causal=True``: causal, as LVM and
DiGIT; ``causal=False``: full/bidirectional, as MaskGIT), ``"causal"``, ``"full"``, a
:class:`~vistok.layers.MaskSpec` (packed documents via ``doc_ids``, Transfusion's bidirectional image spans via
``span_ids``, padding via ``valid``; built once per call into a dense boolean mask shared by all layers), or a boolean
tensor broadcastable to (B, 1, L, L) (True = attend). Attention runs through SDPA (:func:`vistok.layers.attention`).

**Positions** (``positions=``): rotary position ids, any integers, default 0 … L − 1. With ``rope_axes = n > 1`` the
model takes N-D coordinates of shape (B, L, n) (or (L, n)), e.g. (t, h, w) of a token grid; axis a rotates its own
share of the head dims (see :mod:`vistok.layers.rope`). For packed documents pass positions restarting at every
document (:func:`vistok.layers.packed_position_ids`).

**Static KV cache** (gpt-fast's ``setup_caches``): :meth:`Transformer.setup_caches` allocates per-layer key/value
buffers (B_max, n_kv_heads, S, head_dim) and a slot → position buffer; ``forward(idx, input_pos=...)`` then writes the
new keys/values (already rotated) into the cache at ``input_pos`` (L,) — one position per token, shared by the batch —
and attends over the cache with a mask computed from tensors (no Python branch on tensor values, no shape change from
step to step), so ``torch.compile`` captures a one-token decode step once and replays it. Prefill a prompt with
``input_pos = arange(L)``, then decode with ``input_pos = tensor([p])``; :meth:`Transformer.reset_caches` forgets
everything. Without a window the cache holds positions 0 … S − 1 (slot = position; positions ≥ S are an error).

**Sliding window** (``setup_caches(..., window=W)``): the cache becomes a ring of S = W slots, slot = position mod W,
and a query at position p attends to the keys at positions p − W + 1 … p only, at every layer. Keys are cached *after*
RoPE, so a cached key stays valid when its slot outlives other slots: RoPE makes q_p·k_s depend on p − s alone, and
positions may grow without bound (beyond ``max_seq_len``; float32 angles lose accuracy past ~10⁵). One-token steps
write then attend (the slot overwritten held position p − W, just outside the window); multi-token calls attend over
[old ring contents, new keys] and then keep the newest W, so a chunk of any length is exact. This is exactly the
full forward with a banded causal mask (sliding-window attention, as in Mistral) — at layers > 0 the keys of the oldest
tokens in the window still carry information from tokens that have left it. It is *not* the same as re-encoding the
last W tokens from scratch (LVM's public inference re-encodes the last frames for every new frame); for that, the
caller re-prefills: ``reset_caches()``, then a forward over the kept tokens with positions from 0.

Presets: ``transformer-tiny`` (CPU tests). The LVM sizes (``lvm-300m`` … ``lvm-7b``) are presets of
:class:`vistok.models.lvm.LVMConfig`, which builds this backbone.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.layers import (
    Attention,
    MaskSpec,
    RMSNorm,
    RotaryEmbedding,
    SwiGLU,
    build_dense_mask,
    split_head_dim,
    swiglu_hidden_dim,
)
from vistok.registry import PresetMixin, register_model

__all__ = ["PRESETS", "KVCache", "Transformer", "TransformerBlock", "TransformerConfig"]

Mask = str | MaskSpec | Tensor | None

# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TransformerConfig(PresetMixin):
    """Hyper-parameters of :class:`Transformer` (defaults: the LVM-300M shape).

    - ``n_kv_heads``: key/value heads for grouped-query attention (None = ``n_heads``, plain multi-head attention).
    - ``head_dim``: per-head size (None = ``dim // n_heads``).
    - ``intermediate_size``: SwiGLU hidden size; None = LLaMA's rule from ``multiple_of`` and ``ffn_dim_multiplier``
      (:func:`vistok.layers.swiglu_hidden_dim`).
    - ``rope_axes``: number of position axes (1 = a sequence; 2 or 3 = coordinates of an image/video token grid);
      ``rope_axes_dims`` optionally sets each axis's share of the head dims (even, summing to the head size).
    - ``max_seq_len``: the longest sequence one forward takes, and the default KV-cache length.
    - ``causal``: the default attention pattern (True: causal, False: bidirectional); a call can override it.
    - ``init_std``: std of the normal init; the residual output projections (wo, w2) get
      ``init_std / sqrt(2 · n_layers)`` (GPT-2's scaling).

    Derived in ``__post_init__`` (not stored): ``kv_heads``, ``head_size``, ``ffn_dim``.
    """

    vocab_size: int = 8292
    dim: int = 1024
    n_layers: int = 22
    n_heads: int = 8
    n_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    multiple_of: int = 256
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_axes: int = 1
    rope_axes_dims: tuple[int, ...] | None = None
    max_seq_len: int = 4096
    causal: bool = True
    tie_embeddings: bool = False
    init_std: float = 0.02

    kv_heads: int = field(init=False, repr=False)
    head_size: int = field(init=False, repr=False)
    ffn_dim: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        for name in ("vocab_size", "dim", "n_layers", "n_heads", "max_seq_len", "multiple_of", "rope_axes"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        self.kv_heads = self.n_heads if self.n_kv_heads is None else self.n_kv_heads
        if self.kv_heads < 1 or self.n_heads % self.kv_heads != 0:
            raise ValueError(f"n_kv_heads ({self.n_kv_heads}) must divide n_heads ({self.n_heads})")
        if self.head_dim is None and self.dim % self.n_heads != 0:
            raise ValueError(f"dim ({self.dim}) must be divisible by n_heads ({self.n_heads}) unless head_dim is set")
        self.head_size = self.head_dim if self.head_dim is not None else self.dim // self.n_heads
        split_head_dim(self.head_size, self.rope_axes, self.rope_axes_dims)  # validates the rotary split
        self.ffn_dim = (
            self.intermediate_size
            if self.intermediate_size is not None
            else swiglu_hidden_dim(self.dim, self.multiple_of, self.ffn_dim_multiplier)
        )


# ---------------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------------


class KVCache(nn.Module):
    """Static key/value buffers (B_max, n_kv_heads, S, head_dim) of one layer, held as non-persistent buffers.

    Keys are stored after RoPE. :meth:`update` writes one call's keys/values at ``slots`` and returns the keys/values
    to attend over (see the module docstring for the two write modes).
    """

    def __init__(
        self, batch: int, n_kv_heads: int, length: int, head_dim: int, dtype: torch.dtype, device: torch.device
    ) -> None:
        super().__init__()
        shape = (batch, n_kv_heads, length, head_dim)
        self.register_buffer("k", torch.zeros(shape, dtype=dtype, device=device), persistent=False)
        self.register_buffer("v", torch.zeros(shape, dtype=dtype, device=device), persistent=False)

    def update(self, slots: Tensor, k: Tensor, v: Tensor, keep_old: bool) -> tuple[Tensor, Tensor]:
        """Write k, v (B, Hkv, L, hd) at ``slots`` (L,) and return the keys/values to attend over, in k's dtype.

        ``keep_old=False``: write, then return the whole cache (B, Hkv, S, hd). ``keep_old=True``: return the old
        contents followed by the new keys (B, Hkv, S + L, hd), then keep only the newest S of them in the cache.
        """
        b, length = k.shape[0], self.k.shape[2]
        ck, cv = self.k[:b], self.v[:b]
        if keep_old:
            k_all = torch.cat([ck.to(k.dtype), k], dim=2)
            v_all = torch.cat([cv.to(v.dtype), v], dim=2)
            ck.index_copy_(2, slots[-length:], k[:, :, -length:].to(ck.dtype))
            cv.index_copy_(2, slots[-length:], v[:, :, -length:].to(cv.dtype))
            return k_all, v_all
        ck.index_copy_(2, slots, k.to(ck.dtype))
        cv.index_copy_(2, slots, v.to(cv.dtype))
        return ck.to(k.dtype), cv.to(v.dtype)

    def reset(self) -> None:
        self.k.zero_()
        self.v.zero_()


class TransformerBlock(nn.Module):
    """Pre-norm block: x + Attn(RMSNorm(x)), then + SwiGLU(RMSNorm(·)); ``kv_cache`` is set by ``setup_caches``."""

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        c = config
        self.attention = Attention(c.dim, c.n_heads, c.kv_heads, c.head_size)
        self.feed_forward = SwiGLU(c.dim, hidden_dim=c.ffn_dim)
        self.attention_norm = RMSNorm(c.dim, c.norm_eps)
        self.ffn_norm = RMSNorm(c.dim, c.norm_eps)
        self.kv_cache: KVCache | None = None

    def forward(
        self,
        x: Tensor,
        cos: Tensor,
        sin: Tensor,
        mask: str | Tensor,
        cache_slots: Tensor | None = None,
        keep_old: bool = False,
    ) -> Tensor:
        """x (B, L, dim); cos/sin rotary tables; with ``cache_slots`` the keys/values go through ``kv_cache``."""
        q, k, v = self.attention._qkv(self.attention_norm(x), cos, sin)
        if cache_slots is not None:
            k, v = self.kv_cache.update(cache_slots, k, v, keep_old)
        x = x + self.attention._attend(q, k, v, mask)
        return x + self.feed_forward(self.ffn_norm(x))


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class Transformer(nn.Module, PretrainedMixin):
    """LLaMA-style decoder (or bidirectional encoder) over token ids or embeddings; see the module docstring."""

    config_class = TransformerConfig

    def __init__(self, config: TransformerConfig) -> None:
        super().__init__()
        self.config = config
        self.tok_embeddings = nn.Embedding(config.vocab_size, config.dim)
        self.layers = nn.ModuleList(TransformerBlock(config) for _ in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        self.output = nn.Linear(config.dim, config.vocab_size, bias=False)
        if config.tie_embeddings:
            self.output.weight = self.tok_embeddings.weight
        self.rope = RotaryEmbedding(config.head_size, config.rope_theta, config.rope_axes, config.rope_axes_dims)
        self.window: int | None = None  # set by setup_caches
        self._init_weights()

    def _init_weights(self) -> None:
        """Normal(0, init_std) for embeddings and linear weights; wo and w2 scaled by 1/sqrt(2·n_layers)."""
        std = self.config.init_std
        for name, p in self.named_parameters():
            if p.ndim == 2:
                scale = math.sqrt(2 * self.config.n_layers) if name.endswith(("wo.weight", "w2.weight")) else 1.0
                nn.init.normal_(p, mean=0.0, std=std / scale)

    def num_params(self, include_embeddings: bool = True) -> int:
        """Number of parameters (tied weights counted once); without the input embedding and output head if asked."""
        skip = set() if include_embeddings else {id(self.tok_embeddings.weight), id(self.output.weight)}
        return sum(p.numel() for p in self.parameters() if id(p) not in skip)

    # -- KV cache

    @property
    def has_caches(self) -> bool:
        return self.layers[0].kv_cache is not None

    def setup_caches(
        self,
        max_batch_size: int,
        max_seq_len: int | None = None,
        dtype: torch.dtype | None = None,
        *,
        window: int | None = None,
    ) -> None:
        """Allocate the static KV cache on the model's device.

        Without ``window`` the cache holds positions 0 … S − 1, S = ``max_seq_len`` (default: the config's). With
        ``window = W`` it is a ring of W slots and every query attends to the last W positions (its own included);
        positions are then unbounded and ``max_seq_len`` is not used. ``dtype`` defaults to the embedding's dtype.
        """
        if window is not None and window < 1:
            raise ValueError(f"window must be >= 1, got {window}")
        length = window if window is not None else (max_seq_len or self.config.max_seq_len)
        weight = self.tok_embeddings.weight
        dtype, device = dtype or weight.dtype, weight.device
        c = self.config
        for layer in self.layers:
            layer.kv_cache = KVCache(max_batch_size, c.kv_heads, length, c.head_size, dtype, device)
        # absolute position held by each slot; -1 = empty
        self.register_buffer("cache_pos", torch.full((length,), -1, dtype=torch.long, device=device), persistent=False)
        self.window = window

    def reset_caches(self) -> None:
        """Empty the cache (keeps the buffers): the next call starts a new sequence."""
        if not self.has_caches:
            raise RuntimeError("no KV cache: call setup_caches(max_batch_size, max_seq_len) first")
        for layer in self.layers:
            layer.kv_cache.reset()
        self.cache_pos.fill_(-1)

    def remove_caches(self) -> None:
        """Free the cache buffers."""
        for layer in self.layers:
            layer.kv_cache = None
        if "cache_pos" in self._buffers:
            del self._buffers["cache_pos"]
        self.window = None

    # -- forward

    def forward(
        self,
        idx: Tensor | None = None,
        *,
        embeds: Tensor | None = None,
        positions: Tensor | None = None,
        mask: Mask = None,
        input_pos: Tensor | None = None,
    ) -> Tensor:
        """Logits (B, L, vocab_size) in the model's dtype for token ids ``idx`` (B, L) or ``embeds`` (B, L, dim).

        ``positions``: rotary positions, (B or 1, L) / (L,) ids, or (B or 1, L, rope_axes) / (L, rope_axes)
        coordinates; default 0 … L − 1 (``input_pos`` with the cache). ``mask``: see the module docstring.
        ``input_pos`` (L,) int64: positions of these tokens in the KV cache (needs :meth:`setup_caches`).
        """
        return self.output(self.forward_hidden(idx, embeds=embeds, positions=positions, mask=mask, input_pos=input_pos))

    def forward_hidden(
        self,
        idx: Tensor | None = None,
        *,
        embeds: Tensor | None = None,
        positions: Tensor | None = None,
        mask: Mask = None,
        input_pos: Tensor | None = None,
    ) -> Tensor:
        """The final normalized hidden states (B, L, dim) (what :meth:`forward` feeds to the output head)."""
        x = self._embed(idx, embeds)
        b, n, _ = x.shape
        if input_pos is None and n > self.config.max_seq_len:
            raise ValueError(f"sequence of length {n} exceeds max_seq_len={self.config.max_seq_len}")
        if input_pos is not None and input_pos.shape != (n,):
            raise ValueError(f"input_pos must have shape (L,) = ({n},), got {tuple(input_pos.shape)}")
        if positions is None:
            positions = input_pos if input_pos is not None else torch.arange(n, device=x.device)
        cos, sin = self.rope(self._check_positions(positions, n))
        if input_pos is None:
            mask, slots, keep_old = self._full_mask(mask, n, x.device), None, False
        else:
            mask, slots, keep_old = self._cache_call(input_pos, mask, b, n)
        for layer in self.layers:
            x = layer(x, cos, sin, mask, slots, keep_old)
        return self.norm(x)

    def _embed(self, idx: Tensor | None, embeds: Tensor | None) -> Tensor:
        if (idx is None) == (embeds is None):
            raise ValueError("pass exactly one of idx (B, L) token ids or embeds (B, L, dim)")
        if idx is not None:
            if idx.ndim != 2:
                raise ValueError(f"idx must be (B, L) token ids, got shape {tuple(idx.shape)}")
            return self.tok_embeddings(idx)
        if embeds.ndim != 3 or embeds.shape[-1] != self.config.dim:
            raise ValueError(f"embeds must be (B, L, {self.config.dim}), got shape {tuple(embeds.shape)}")
        return embeds

    def _check_positions(self, positions: Tensor, n: int) -> Tensor:
        axes = self.config.rope_axes
        tail = (n,) if axes == 1 else (n, axes)
        if tuple(positions.shape[-len(tail) :]) != tail or positions.ndim > len(tail) + 1:
            want = "(B, L) or (L,)" if axes == 1 else f"(B, L, {axes}) or (L, {axes})"
            raise ValueError(f"positions must be {want} with L = {n}, got shape {tuple(positions.shape)}")
        return positions

    def _full_mask(self, mask: Mask, n: int, device: torch.device) -> str | Tensor:
        """'causal', 'full' (SDPA fast paths) or a dense bool mask shared by all layers."""
        if mask is None:
            return "causal" if self.config.causal else "full"
        if isinstance(mask, str):
            if mask not in ("causal", "full"):
                raise ValueError(f"mask must be 'causal', 'full', a MaskSpec or a bool tensor, got {mask!r}")
            return mask
        if isinstance(mask, MaskSpec):
            return mask.kind if mask.kind != "dense" else build_dense_mask(mask, n, device=device)
        if isinstance(mask, Tensor):
            if mask.dtype != torch.bool:
                raise TypeError(f"attention masks must be bool (True = attend), got {mask.dtype}")
            return mask
        raise TypeError(f"mask must be None, 'causal', 'full', a MaskSpec or a bool tensor, got {type(mask).__name__}")

    def _cache_call(self, input_pos: Tensor, mask: Mask, b: int, n: int) -> tuple[Tensor, Tensor, bool]:
        """Slots to write, the (1 or B, 1, L, keys) mask over the cached keys, and whether to keep the old contents.

        Everything here branches on shapes and settings only, never on tensor values (``torch.compile``-friendly).
        """
        if not self.has_caches:
            raise RuntimeError("input_pos needs a KV cache: call setup_caches(max_batch_size, max_seq_len) first")
        cache = self.layers[0].kv_cache
        max_batch, length = cache.k.shape[0], cache.k.shape[2]
        if b > max_batch:
            raise ValueError(f"batch size {b} exceeds the cache's max_batch_size={max_batch}")
        if self.window is None and n > length:
            raise ValueError(f"{n} tokens do not fit a KV cache of {length} positions")
        if mask is None:
            mask = "causal" if self.config.causal else "full"
        if isinstance(mask, MaskSpec) or (isinstance(mask, str) and mask not in ("causal", "full")):
            raise ValueError("with the KV cache, mask must be 'causal', 'full' or a bool tensor (B or 1, 1, L, keys)")
        input_pos = input_pos.long()
        keep_old = self.window is not None and n > 1
        slots = input_pos % length if self.window is not None else input_pos
        if keep_old:  # attend over [old ring contents, new keys]; old entries at or after the new positions are stale
            old = torch.where(self.cache_pos < input_pos.min(), self.cache_pos, -1)
            key_pos = torch.cat([old, input_pos])
            new_pos = self.cache_pos.index_copy(0, slots[-length:], input_pos[-length:])
        else:
            key_pos = new_pos = self.cache_pos.index_copy(0, slots, input_pos)
        self.cache_pos.copy_(new_pos)
        query = input_pos[:, None]
        limit = input_pos.max() if isinstance(mask, str) and mask == "full" else query
        allowed = (key_pos >= 0) & (key_pos <= limit)
        if self.window is not None:
            allowed = allowed & (key_pos > query - self.window)
        allowed = allowed[None, None]
        if isinstance(mask, Tensor):
            if mask.dtype != torch.bool:
                raise TypeError(f"attention masks must be bool (True = attend), got {mask.dtype}")
            allowed = allowed & mask
        return allowed, slots, keep_old


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------

PRESETS: dict[str, TransformerConfig] = {
    # CPU tests: 2 layers, GQA (4 query heads, 2 kv heads), 64 dims; ~0.1M parameters.
    "transformer-tiny": TransformerConfig(
        vocab_size=512, dim=64, n_layers=2, n_heads=4, n_kv_heads=2, multiple_of=16, max_seq_len=256
    ),
}

register_model("transformer", Transformer, presets=PRESETS)
