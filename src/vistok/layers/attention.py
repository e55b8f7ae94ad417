"""Multi-head attention with grouped-query heads, and the attention masks the vistok models need.

    Attention(Q, K, V) = softmax(Q Kᵀ / √d + M) V        (Vaswani et al., 2017, eq. 1)

computed by ``F.scaled_dot_product_attention`` (SDPA). Grouped-query attention (GQA; Ainslie et al., 2023): n_heads
query heads share n_kv_heads key/value heads, query head i reading kv head i // (n_heads / n_kv_heads) — the grouping
of HF Llama's ``repeat_kv``. For forward-only calls on CPU (no gradient needed, torch ≥ 2.5) SDPA groups the heads
itself (``enable_gqa=True``): the same outputs without materializing the repeated keys/values (a decode step over a
2,400-slot cache: ~0.4 ms instead of ~1.1 ms per layer). Otherwise the keys/values are repeated first: on CPU the
grouped backward is no faster, and on CUDA the repeat keeps the fused kernels for masked attention.

**Masks** are boolean, True = "this query may attend to this key" (SDPA's convention). :class:`MaskSpec` describes the
general pattern from per-token ids; for a query at sequence position q and a key at position k::

    allowed(q, k) = valid[q] ∧ valid[k] ∧ doc[q] = doc[k] ∧ (k ≤ q ∨ (span[q] ≠ 0 ∧ span[q] = span[k]))

- ``k ≤ q``: causal (drop it with ``causal=False`` for full attention);
- ``span``: tokens sharing a nonzero span id see each other fully — Transfusion's bidirectional attention inside each
  image (Zhou et al., 2024, §2.2: M_ij = 1 iff j ≤ i or i, j are in the same image); span id 0 = ordinary token;
- ``doc``: packed documents never attend to one another;
- ``valid``: False marks padding; a padding token neither sees nor is seen, and its output is zero.

One definition, two forms: :func:`make_mask_mod` returns a ``mask_mod(b, h, q_idx, kv_idx)`` for FlexAttention's
``create_block_mask`` (pass B = batch size), and :func:`build_dense_mask` evaluates that same function on index grids
to get the (B, 1, Lq, Lk) boolean tensor for SDPA. :func:`attention` dispatches: no mask for full attention, SDPA's
``is_causal`` fast path for plain causal attention, a dense boolean mask otherwise. Query rows that see no key at all
return zeros instead of NaN.

When there are fewer queries than keys (Lq < Lk, e.g. decoding against cached keys), the queries are the *last* Lq
positions of the key sequence (``q_offset = Lk − Lq``, "bottom-right" alignment) unless told otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.layers.rope import apply_rotary

MaskMod = Callable[[Tensor, Tensor, Tensor, Tensor], Tensor]


@dataclass(frozen=True, eq=False)
class MaskSpec:
    """Attention pattern from per-token ids, each (B, L) over the key sequence; see the module docstring.

    ``span_ids``/``doc_ids`` are integer tensors, ``valid`` is boolean (False = padding). Unused fields stay None.
    """

    causal: bool = True
    span_ids: Tensor | None = None
    doc_ids: Tensor | None = None
    valid: Tensor | None = None

    def __post_init__(self) -> None:
        shapes = {tuple(t.shape) for t in self.tensors()}
        if len(shapes) > 1 or any(len(s) != 2 for s in shapes):
            raise ValueError(f"span_ids, doc_ids and valid must all have the same shape (B, L), got {shapes}")
        if self.valid is not None and self.valid.dtype != torch.bool:
            raise TypeError(f"valid must be a bool tensor (True = real token), got {self.valid.dtype}")

    def tensors(self) -> list[Tensor]:
        """The id tensors that are set."""
        return [t for t in (self.span_ids, self.doc_ids, self.valid) if t is not None]

    @property
    def kind(self) -> str:
        """'causal' or 'full' when no ids are set (the fast paths), else 'dense'."""
        if self.tensors():
            return "dense"
        return "causal" if self.causal else "full"


Mask = str | MaskSpec | Tensor | None


def _as_spec(mask: str | MaskSpec | None) -> MaskSpec:
    """'causal' / 'full' / None / MaskSpec → MaskSpec."""
    if isinstance(mask, MaskSpec):
        return mask
    if mask is None or mask == "full":
        return MaskSpec(causal=False)
    if mask == "causal":
        return MaskSpec(causal=True)
    raise ValueError(f"mask must be 'causal', 'full', None, a MaskSpec or a bool tensor, got {mask!r}")


def make_mask_mod(spec: MaskSpec, q_offset: int = 0) -> MaskMod:
    """FlexAttention-style ``mask_mod(b, h, q_idx, kv_idx) -> bool`` for ``spec``; query i sits at q_offset + i.

    Works on scalar index tensors (as ``torch.vmap`` inside ``create_block_mask`` calls it) and on broadcastable
    index grids (as :func:`build_dense_mask` calls it).
    """
    span, doc, valid = spec.span_ids, spec.doc_ids, spec.valid

    def mask_mod(b: Tensor, h: Tensor, q_idx: Tensor, kv_idx: Tensor) -> Tensor:
        q = q_idx + q_offset
        allowed = kv_idx <= q if spec.causal else torch.ones_like(kv_idx, dtype=torch.bool)
        if span is not None:
            allowed = allowed | ((span[b, q] != 0) & (span[b, q] == span[b, kv_idx]))
        if doc is not None:
            allowed = allowed & (doc[b, q] == doc[b, kv_idx])
        if valid is not None:
            allowed = allowed & valid[b, q] & valid[b, kv_idx]
        return allowed

    return mask_mod


def build_dense_mask(
    mask: str | MaskSpec | None,
    q_len: int,
    kv_len: int | None = None,
    q_offset: int | None = None,
    device: torch.device | None = None,
) -> Tensor:
    """Boolean mask (B, 1, Lq, Lk) for SDPA (True = attend), B = batch of the spec's ids (1 without ids).

    ``kv_len`` defaults to the ids' length, else to ``q_len``; ``q_offset`` defaults to kv_len − q_len.
    """
    spec = _as_spec(mask)
    ids = spec.tensors()
    batch, length = ids[0].shape if ids else (1, None)
    kv_len = kv_len if kv_len is not None else (length if length is not None else q_len)
    if length is not None and length != kv_len:
        raise ValueError(f"mask ids have length {length} but there are {kv_len} keys")
    q_offset = kv_len - q_len if q_offset is None else q_offset
    if ids and q_offset + q_len > kv_len:
        raise ValueError(f"queries at {q_offset}..{q_offset + q_len - 1} fall outside the ids' {kv_len} positions")
    device = ids[0].device if ids else device
    b = torch.arange(batch, device=device).view(-1, 1, 1, 1)
    h = torch.zeros(1, 1, 1, 1, dtype=torch.long, device=device)
    q = torch.arange(q_len, device=device).view(1, 1, -1, 1)
    kv = torch.arange(kv_len, device=device).view(1, 1, 1, -1)
    return make_mask_mod(spec, q_offset)(b, h, q, kv).expand(batch, 1, q_len, kv_len)


def repeat_kv(x: Tensor, n_rep: int) -> Tensor:
    """(B, Hkv, L, D) → (B, Hkv·n_rep, L, D), kv head j serving query heads j·n_rep … (j+1)·n_rep − 1."""
    if n_rep == 1:
        return x
    b, h, n, d = x.shape
    return x[:, :, None].expand(b, h, n_rep, n, d).reshape(b, h * n_rep, n, d)


_SDPA_HAS_GQA = tuple(int(p) for p in torch.__version__.split(".")[:2]) >= (2, 5)


def _masked_sdpa(q: Tensor, k: Tensor, v: Tensor, mask: Tensor, scale: float | None, **kwargs) -> Tensor:
    """SDPA with a boolean mask; query rows with no visible key give zeros (never NaN)."""
    has_key = mask.any(dim=-1, keepdim=True)
    out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask | ~has_key, scale=scale, **kwargs)
    return out.masked_fill(~has_key, 0.0)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Mask = "causal", scale: float | None = None) -> Tensor:
    """Softmax attention of q (B, H, Lq, D) over k, v (B, Hkv, Lk, D), Hkv dividing H → (B, H, Lq, D).

    ``mask``: None or 'full' (no mask), 'causal', a :class:`MaskSpec`, or a bool tensor broadcastable to
    (B, H, Lq, Lk). ``scale`` defaults to 1/√D.
    """
    n_heads, n_kv_heads = q.shape[1], k.shape[1]
    if n_heads % n_kv_heads != 0:
        raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
    gqa = {}
    if n_heads != n_kv_heads:
        needs_grad = torch.is_grad_enabled() and (q.requires_grad or k.requires_grad or v.requires_grad)
        if _SDPA_HAS_GQA and q.device.type == "cpu" and not needs_grad:
            gqa = {"enable_gqa": True}
        else:
            k, v = repeat_kv(k, n_heads // n_kv_heads), repeat_kv(v, n_heads // n_kv_heads)
    q_len, kv_len = q.shape[2], k.shape[2]
    if isinstance(mask, Tensor):
        if mask.dtype != torch.bool:
            raise TypeError(f"attention masks must be bool (True = attend), got {mask.dtype}")
        return _masked_sdpa(q, k, v, mask, scale, **gqa)
    spec = _as_spec(mask)
    if spec.kind == "full":
        return F.scaled_dot_product_attention(q, k, v, scale=scale, **gqa)
    if spec.kind == "causal" and q_len == kv_len:
        return F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scale, **gqa)
    return _masked_sdpa(q, k, v, build_dense_mask(spec, q_len, kv_len, device=q.device), scale, **gqa)


_flex_fns: dict[bool, Callable] = {}


def flex_attention(q: Tensor, k: Tensor, v: Tensor, block_mask, *, compiled: bool | None = None) -> Tensor:
    """FlexAttention of q (B, H, L, D) over k, v (B, Hkv, L, D) with a ``BlockMask`` (see :func:`make_mask_mod`).

    FlexAttention is meant to run compiled: ``torch.compile`` fuses the mask into a tiled kernel that skips the
    blocks the mask rules out, while the eager function is a slow reference that materializes all L × L scores.
    ``compiled`` (default: on CUDA) picks the compiled kernel, compiled once per process and shared by every call;
    eager on CPU, where FlexAttention's compiled path is not used by vistok (dense SDPA is).
    """
    from torch.nn.attention.flex_attention import flex_attention as _flex

    use = q.device.type == "cuda" if compiled is None else compiled
    if use not in _flex_fns:
        _flex_fns[use] = torch.compile(_flex) if use else _flex
    return _flex_fns[use](q, k, v, block_mask=block_mask, enable_gqa=q.shape[1] != k.shape[1])


class Attention(nn.Module):
    """Multi-head self-attention with GQA and rotary embeddings; projections wq, wk, wv, wo (no biases by default).

    ``forward`` = :meth:`_qkv` (project, split heads, rotate) then :meth:`_attend` (attend, merge heads, project), so
    a key/value cache can be slotted in between.
    """

    def __init__(
        self, dim: int, n_heads: int, n_kv_heads: int | None = None, head_dim: int | None = None, bias: bool = False
    ) -> None:
        super().__init__()
        n_kv_heads = n_heads if n_kv_heads is None else n_kv_heads
        if n_heads % n_kv_heads != 0:
            raise ValueError(f"n_kv_heads ({n_kv_heads}) must divide n_heads ({n_heads})")
        if head_dim is None and dim % n_heads != 0:
            raise ValueError(f"dim ({dim}) must be divisible by n_heads ({n_heads}) unless head_dim is given")
        self.n_heads, self.n_kv_heads = n_heads, n_kv_heads
        self.head_dim = head_dim if head_dim is not None else dim // n_heads
        self.wq = nn.Linear(dim, n_heads * self.head_dim, bias=bias)
        self.wk = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.wv = nn.Linear(dim, n_kv_heads * self.head_dim, bias=bias)
        self.wo = nn.Linear(n_heads * self.head_dim, dim, bias=bias)

    def forward(self, x: Tensor, cos: Tensor | None = None, sin: Tensor | None = None, mask: Mask = "causal") -> Tensor:
        """x (B, L, dim); cos, sin (B or 1, L, head_dim) rotary tables or None; mask as for :func:`attention`."""
        q, k, v = self._qkv(x, cos, sin)
        return self._attend(q, k, v, mask)

    def _qkv(self, x: Tensor, cos: Tensor | None, sin: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
        """Project x to q (B, H, L, hd) and k, v (B, Hkv, L, hd); rotate q and k when tables are given."""
        b, n, _ = x.shape
        q = self.wq(x).view(b, n, self.n_heads, self.head_dim).transpose(1, 2)
        k = self.wk(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        v = self.wv(x).view(b, n, self.n_kv_heads, self.head_dim).transpose(1, 2)
        if (cos is None) != (sin is None):
            raise ValueError("pass both cos and sin, or neither")
        if cos is not None:
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return q, k, v

    def _attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Mask) -> Tensor:
        """Attend, merge the heads back to (B, Lq, H·hd) and project with wo."""
        out = attention(q, k, v, mask)
        b, _, n, _ = out.shape
        return self.wo(out.transpose(1, 2).reshape(b, n, -1))
