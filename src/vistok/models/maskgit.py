"""MAGVIT-v2's masked token model: a bidirectional transformer over a grid of visual token ids (MaskGIT, Chang et al.,
CVPR 2022, §3.1–3.2; as used by Yu et al., ICLR 2024, "Language Model Beats Diffusion", §3.3; PAPERS.md §1).

**Training** (MaskGIT eq. 1). For each sample draw r ~ U(0, 1) and mask

    n_mask(r) = clamp(⌈γ(r)·N⌉, 1, N),    γ(r) = cos(π·r / 2)      (the cosine schedule)

positions chosen uniformly at random among the N maskable ones (:func:`num_masked_train`, :func:`random_mask`); the
model sees [MASK] there and the true ids elsewhere, and the loss is the cross-entropy of the true ids at the masked
positions only (:func:`masked_cross_entropy`, averaged over every masked token of the batch). Conditioning frames
(video prediction, ``cond_frames``) are never masked and never in the loss. Class-conditional models replace the class
by the null class with probability ``p_uncond`` (0.1), so one model also gives the unconditional logits that
classifier-free guidance needs. Decoding lives in :mod:`vistok.generate.maskgit`.

**Sequence.** ``[class] t_0 … t_{N−1}``: the class token only when ``num_classes > 0`` (ids 0 … C − 1, and C = the
null class), then the grid (H, W) or (T, H, W) in raster order (last axis fastest). Attention is full (bidirectional).
Positions are rotary over the grid (:func:`vistok.layers.grid_positions`: (h, w) or (t, h, w) coordinates, one rotary
share of the head dims per axis, :mod:`vistok.layers.rope`); the class token sits at coordinate −1 on every axis, a
position no grid token has (its identity comes from its own embedding table anyway). With ``abs_pos_emb`` (default)
every grid position also gets a learned absolute embedding added to its input, as in MaskGIT's BERT: with rotary
positions alone the tokens of a fully masked grid are identical inputs that can tell where they are only through
their attention weights (to the class token), and learning is much slower — measured on the tiny class-conditional
overfit of the tests: loss 0.03 after 100 steps with it, 1.7 after 150 steps without.

**Vocabulary.** Grid ids are 0 … V − 1 (V = ``codebook_size``) and :attr:`MaskGIT.mask_id` = V is [MASK] (a named
constant of this sequence format, above the visual vocabulary). With ``sub_tokens = S > 1`` (the paper predicts its
2^18 ids as two 2^9 sub-tokens) an id is written in base K = V^(1/S) (V must be a perfect S-th power), most
significant digit first:

    id = Σ_j d_j · K^(S−1−j),   d_j = ⌊id / K^(S−1−j)⌋ mod K      (:meth:`MaskGIT.to_sub`, :meth:`MaskGIT.from_sub`)

For V = 2^b and S = 2 that is d_0 = hi = id >> b/2, d_1 = lo = id & (2^(b/2) − 1), i.e. id = hi·2^(b/2) + lo; the
map is a bijection between [0, V) and [0, K)^S, so it round-trips. The input embedding of a token is Σ_j E_j[d_j]
(each table E_j has K + 1 rows, the last is that sub-token's [MASK]; a masked token is the sum of the S [MASK] rows).
The output has one head per sub-token, tied to its embedding table (MaskGIT's MLM layer with RMSNorm for its
LayerNorm: h_j = RMSNorm(GELU(W_j h + c_j)), then logits_j = h_j · E_j[:K]ᵀ + b_j), predicted independently:
log p(id) = Σ_j log softmax(logits_j)[d_j] (:func:`full_log_probs` materializes this for small V). S = 1 is the plain
head over V ids.

Presets: ``maskgit-tiny`` (CPU tests: 8×8 grid, 1,024 codes), ``maskgit-tiny-video`` (3×8×8, the first latent frame
given), ``maskgit-small`` (the CPU demo size), and paper-shaped configs: ``maskgit-base`` (MAGVIT-v2 ImageNet 256²:
2^18 codes as 2 × 2^9 sub-tokens, 16×16 grid, 1,000 classes, 24 layers × 1,024 dims × 16 heads ≈ 313M parameters, the
~307M masked transformer of MAGVIT/MAGVIT-v2), ``maskgit-base-512`` (32×32 grid, ImageNet 512²) and
``maskgit-base-video`` (17 frames at 128² → a 5×16×16 grid, frame prediction from the first latent frame).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.layers import RMSNorm, grid_positions
from vistok.models.transformer import Transformer, TransformerConfig
from vistok.registry import PresetMixin, register_model

__all__ = [
    "PRESETS",
    "MaskGIT",
    "MaskGITConfig",
    "MaskGITLoss",
    "cosine_schedule",
    "full_log_probs",
    "masked_cross_entropy",
    "num_masked_after_step",
    "num_masked_train",
    "random_mask",
]

# ---------------------------------------------------------------------------------------------------------------------
# Mask schedule (shared with the decoding loop)
# ---------------------------------------------------------------------------------------------------------------------


def cosine_schedule(r: float | Tensor) -> float | Tensor:
    """γ(r) = cos(π·r/2): the fraction of tokens masked at ratio r ∈ [0, 1] (1 at r = 0, 0 at r = 1)."""
    return torch.cos(r * (math.pi / 2)) if isinstance(r, Tensor) else math.cos(r * (math.pi / 2))


def num_masked_train(r: Tensor, n: int) -> Tensor:
    """Masked tokens per sample at training: clamp(⌈γ(r)·n⌉, 1, n) for ratios ``r`` (computed in float64)."""
    return torch.ceil(cosine_schedule(r.double()) * n).clamp(1, n).long()


def num_masked_after_step(t: int, steps: int, n: int) -> int:
    """Tokens still masked after decoding step t of ``steps`` (1-based): ⌊γ(t/steps)·n⌋, computed in float64.

    Non-increasing in t, n at t = 0 and 0 at t = steps (γ(1) = 6e-17 in floating point; the 1e-9 slack keeps
    products that are integers in exact arithmetic, such as γ(2/3)·n = n/2, from rounding down a whole token).
    """
    if not 0 <= t <= steps:
        raise ValueError(f"step t must be in [0, {steps}], got {t}")
    if t == steps:
        return 0
    return min(n, math.floor(cosine_schedule(t / steps) * n + 1e-9))


def random_mask(counts: Tensor, n: int, generator: torch.Generator | None = None) -> Tensor:
    """A (B, n) bool mask with exactly ``counts[b]`` True entries in row b, at uniformly random positions."""
    device = generator.device if generator is not None else counts.device
    scores = torch.rand(counts.shape[0], n, generator=generator, device=device).to(counts.device)
    ranks = scores.argsort(dim=1).argsort(dim=1)  # rank of each position in a random order
    return ranks < counts[:, None]


def masked_cross_entropy(
    logits: Tensor, targets: Tensor, mask: Tensor, label_smoothing: float = 0.0
) -> tuple[Tensor, Tensor]:
    """(mean −log p(target), accuracy) over the masked positions only.

    ``logits`` (B, N, S, K) sub-token logits, ``targets`` (B, N, S) sub-token ids, ``mask`` (B, N) bool. The loss of
    a token is Σ_j CE(logits_j, d_j) = −log p(id) of the factorized model; the mean is over all masked tokens of the
    batch. Accuracy: the fraction of masked tokens whose every sub-token argmax is right (= the full id's argmax).
    Unmasked positions get exactly zero gradient (they are not selected).
    """
    sel, tgt = logits[mask].float(), targets[mask]  # (M, S, K), (M, S)
    m, s, k = sel.shape
    if m == 0:
        raise ValueError("no masked positions: the loss is undefined")
    ce = F.cross_entropy(sel.reshape(m * s, k), tgt.reshape(m * s), reduction="sum", label_smoothing=label_smoothing)
    accuracy = (sel.argmax(-1) == tgt).all(-1).float().mean()
    return ce / m, accuracy.detach()


def full_log_probs(logits: Tensor, codebook_size: int) -> Tensor:
    """log p(id) for every id in [0, V): (..., S, K) sub-token logits → (..., V), the sum of sub-token log-probs.

    Materializes V values per token: meant for tests and small vocabularies.
    """
    logp = logits.float().log_softmax(-1)
    out = logp[..., 0, :]
    for j in range(1, logp.shape[-2]):
        out = (out[..., :, None] + logp[..., j, None, :]).flatten(-2)  # digits most significant first
    if out.shape[-1] != codebook_size:
        raise ValueError(f"logits describe {out.shape[-1]} ids, expected codebook_size {codebook_size}")
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


def _integer_root(v: int, s: int) -> int | None:
    """K with K^s == v, or None."""
    k = round(v ** (1.0 / s))
    for c in (k - 1, k, k + 1):
        if c >= 1 and c**s == v:
            return c
    return None


def _axes_dims(head_size: int, n_axes: int) -> tuple[int, ...] | None:
    """Rotary dims per grid axis: None (equal shares) when 2·n_axes divides the head size, else the rotary pairs
    spread as evenly as possible with the leftover pairs on the last (spatial) axes."""
    if head_size % (2 * n_axes) == 0:
        return None
    pairs = head_size // 2
    base, extra = divmod(pairs, n_axes)
    return tuple(2 * (base + (a >= n_axes - extra)) for a in range(n_axes))


@dataclass
class MaskGITConfig(PresetMixin):
    """Hyper-parameters of :class:`MaskGIT`; the backbone fields go into a bidirectional :class:`TransformerConfig`.

    - ``codebook_size`` V: the visual vocabulary (any size; a perfect S-th power when ``sub_tokens`` S > 1).
    - ``sub_tokens`` S: 1 = one head over V ids; 2 = factorized heads of K = √V ids each (MAGVIT-v2), etc.
    - ``grid``: the token grid, (H, W) for images or (T, H, W) for video.
    - ``num_classes`` C: 0 = unconditional; else a class token is prepended (ids 0 … C − 1, null class C).
    - ``cond_frames``: video prediction: this many leading latent frames are given, never masked, never in the loss.
    - ``abs_pos_emb``: add a learned absolute position embedding per grid token (on top of the rotary positions).
    - ``dim``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``head_dim``, ``intermediate_size``, ``multiple_of``,
      ``ffn_dim_multiplier``, ``norm_eps``, ``rope_theta``, ``rope_axes_dims``, ``init_std``: the backbone's (see
      :class:`TransformerConfig`); ``rope_axes_dims=None`` splits the head dims over the grid axes as evenly as
      possible.

    Derived (not stored): ``sub_vocab`` K, ``num_tokens`` N = prod(grid), ``cond_tokens`` (cond_frames · H · W),
    ``seq_len`` (N + 1 with a class token, else N).
    """

    codebook_size: int = 1024
    sub_tokens: int = 1
    grid: tuple[int, ...] = (8, 8)
    num_classes: int = 0
    cond_frames: int = 0
    abs_pos_emb: bool = True
    dim: int = 64
    n_layers: int = 2
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    multiple_of: int = 16
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_axes_dims: tuple[int, ...] | None = None
    init_std: float = 0.02

    sub_vocab: int = field(init=False, repr=False)
    num_tokens: int = field(init=False, repr=False)
    cond_tokens: int = field(init=False, repr=False)
    seq_len: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)
        if len(self.grid) not in (2, 3) or min(self.grid) < 1:
            raise ValueError(f"grid must be (H, W) or (T, H, W) of positive sizes, got {self.grid}")
        for name in ("codebook_size", "sub_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"MaskGITConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0 (0 = unconditional), got {self.num_classes}")
        k = _integer_root(self.codebook_size, self.sub_tokens)
        if k is None or k < 2:
            raise ValueError(
                f"codebook_size {self.codebook_size} is not the {self.sub_tokens}-th power of an integer >= 2: "
                "factorized heads need V = K^S (e.g. 2^18 = 512^2); use sub_tokens=1 or one that divides log2(V)"
            )
        self.sub_vocab = k
        self.num_tokens = math.prod(self.grid)
        if self.cond_frames:
            if len(self.grid) != 3 or not 0 < self.cond_frames < self.grid[0]:
                raise ValueError(
                    f"cond_frames={self.cond_frames} needs a (T, H, W) grid with T > cond_frames, got grid {self.grid}"
                )
        elif self.cond_frames < 0:
            raise ValueError(f"cond_frames must be >= 0, got {self.cond_frames}")
        self.cond_tokens = self.cond_frames * math.prod(self.grid[1:]) if self.cond_frames else 0
        self.seq_len = self.num_tokens + (1 if self.num_classes else 0)
        self.transformer_config()  # validates the backbone fields

    def transformer_config(self) -> TransformerConfig:
        """The bidirectional backbone: rotary positions over the grid axes, no token embedding or head of its own."""
        head = self.head_dim if self.head_dim is not None else (self.dim // self.n_heads if self.n_heads else 0)
        axes_dims = self.rope_axes_dims
        if axes_dims is None and head > 0 and head % 2 == 0:
            axes_dims = _axes_dims(head, len(self.grid))
        return TransformerConfig(
            vocab_size=1,
            dim=self.dim,
            n_layers=self.n_layers,
            n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim,
            intermediate_size=self.intermediate_size,
            multiple_of=self.multiple_of,
            ffn_dim_multiplier=self.ffn_dim_multiplier,
            norm_eps=self.norm_eps,
            rope_theta=self.rope_theta,
            rope_axes=len(self.grid),
            rope_axes_dims=axes_dims,
            max_seq_len=self.seq_len,
            causal=False,
            init_std=self.init_std,
        )


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class MaskGITLoss(NamedTuple):
    """What :meth:`MaskGIT.loss` returns: the mean masked-token NLL, accuracy, the mask used and the logits."""

    loss: Tensor
    accuracy: Tensor
    mask: Tensor
    logits: Tensor


class MaskGIT(nn.Module, PretrainedMixin):
    """Bidirectional masked token model over a token grid; see the module docstring."""

    config_class = MaskGITConfig

    def __init__(self, config: MaskGITConfig) -> None:
        super().__init__()
        self.config = c = config
        self.backbone = Transformer(c.transformer_config())
        # the backbone takes embeddings and returns hidden states: its own 1-row embedding and head are not used
        self.backbone.tok_embeddings = None
        self.backbone.output = None
        k = c.sub_vocab
        self.tok_embeddings = nn.ModuleList(nn.Embedding(k + 1, c.dim) for _ in range(c.sub_tokens))  # row k: [MASK]
        self.class_embeddings = nn.Embedding(c.num_classes + 1, c.dim) if c.num_classes else None  # row C: null
        self.pos_embeddings = nn.Parameter(torch.zeros(c.num_tokens, c.dim)) if c.abs_pos_emb else None
        self.head_proj = nn.ModuleList(nn.Linear(c.dim, c.dim) for _ in range(c.sub_tokens))
        self.head_norm = nn.ModuleList(RMSNorm(c.dim, c.norm_eps) for _ in range(c.sub_tokens))
        self.head_bias = nn.Parameter(torch.zeros(c.sub_tokens, k))
        pos = grid_positions(*c.grid)
        if c.num_classes:
            pos = torch.cat([torch.full((1, len(c.grid)), -1, dtype=pos.dtype), pos])
        self.register_buffer("positions", pos, persistent=False)
        self.register_buffer("_radix", k ** torch.arange(c.sub_tokens - 1, -1, -1), persistent=False)
        for p in [*self.tok_embeddings.parameters(), *self.head_proj.parameters()]:
            nn.init.normal_(p, std=c.init_std) if p.ndim == 2 else nn.init.zeros_(p)
        for p in (self.class_embeddings.weight if self.class_embeddings is not None else None, self.pos_embeddings):
            if p is not None:
                nn.init.normal_(p, std=c.init_std)

    # -- special ids and the sub-token code

    @property
    def mask_id(self) -> int:
        """The [MASK] id: V, just above the visual vocabulary."""
        return self.config.codebook_size

    @property
    def null_class(self) -> int:
        """The class id meaning "no class" (classifier-free guidance); only for class-conditional models."""
        if not self.config.num_classes:
            raise ValueError("this MaskGIT is unconditional (num_classes=0): it has no null class")
        return self.config.num_classes

    def to_sub(self, ids: Tensor) -> Tensor:
        """Full ids (...) in [0, V) → sub-token ids (..., S), most significant first (see the module docstring)."""
        return torch.div(ids[..., None], self._radix, rounding_mode="floor") % self.config.sub_vocab

    def from_sub(self, sub: Tensor) -> Tensor:
        """Sub-token ids (..., S) → full ids (...): Σ_j d_j · K^(S−1−j)."""
        return (sub * self._radix).sum(-1)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # -- forward

    def _flat_ids(self, ids: Tensor, allow_mask: bool) -> Tensor:
        c = self.config
        if ids.ndim == 1 + len(c.grid) and tuple(ids.shape[1:]) == c.grid:
            ids = ids.flatten(1)
        if ids.ndim != 2 or ids.shape[1] != c.num_tokens:
            raise ValueError(
                f"expected token ids of shape (B, {', '.join(map(str, c.grid))}) or (B, {c.num_tokens}), "
                f"got {tuple(ids.shape)}"
            )
        if ids.dtype in (torch.bool,) or ids.is_floating_point():
            raise TypeError(f"token ids must be integers, got {ids.dtype}")
        top = c.codebook_size if allow_mask else c.codebook_size - 1
        checking = not torch.compiler.is_compiling()  # value checks sync; a compiled forward skips them
        if checking and ids.numel() and (int(ids.min()) < 0 or int(ids.max()) > top):
            what = f"[0, {c.codebook_size}] ({c.codebook_size} = [MASK])" if allow_mask else f"[0, {c.codebook_size})"
            raise ValueError(f"token ids must be in {what}, got range [{int(ids.min())}, {int(ids.max())}]")
        return ids.long()

    def _class_ids(self, class_ids: Tensor | int | None, batch: int, device: torch.device) -> Tensor | None:
        c = self.config
        if not c.num_classes:
            if class_ids is not None:
                raise ValueError("this MaskGIT is unconditional (num_classes=0); do not pass class_ids")
            return None
        if class_ids is None:
            return torch.full((batch,), c.num_classes, dtype=torch.long, device=device)
        class_ids = torch.as_tensor(class_ids, device=device).long().reshape(-1)
        if class_ids.numel() == 1:
            class_ids = class_ids.expand(batch)
        if class_ids.shape != (batch,):
            raise ValueError(f"class_ids must be one id or {batch} ids, got shape {tuple(class_ids.shape)}")
        if not torch.compiler.is_compiling() and (int(class_ids.min()) < 0 or int(class_ids.max()) > c.num_classes):
            raise ValueError(
                f"class ids must be in [0, {c.num_classes}) (or {c.num_classes} = the null class), "
                f"got range [{int(class_ids.min())}, {int(class_ids.max())}]"
            )
        return class_ids

    def embed(self, ids: Tensor) -> Tensor:
        """Input embeddings (B, N, dim) of flat ids (B, N) with [MASK] = V: Σ_j E_j[d_j]."""
        masked = ids == self.mask_id
        sub = self.to_sub(ids.masked_fill(masked, 0)).masked_fill(masked[..., None], self.config.sub_vocab)
        return sum(emb(sub[..., j]) for j, emb in enumerate(self.tok_embeddings))

    def head(self, h: Tensor) -> Tensor:
        """Sub-token logits (B, N, S, K) of hidden states (B, N, dim), tied to the input embedding tables."""
        k = self.config.sub_vocab
        out = []
        for j, emb in enumerate(self.tok_embeddings):
            hj = self.head_norm[j](F.gelu(self.head_proj[j](h)))
            out.append(F.linear(hj, emb.weight[:k], self.head_bias[j]))
        return torch.stack(out, dim=-2)

    def forward(self, ids: Tensor, class_ids: Tensor | int | None = None) -> Tensor:
        """Sub-token logits (B, N, S, K) for ids (B, *grid) or (B, N) in [0, V], where V = :attr:`mask_id`.

        ``class_ids``: (B,) or one id for a class-conditional model (None = the null class, i.e. unconditional
        logits); must be None for an unconditional model. With S = 1, K = V and ``logits[..., 0, :]`` are the logits
        of the full ids.
        """
        ids = self._flat_ids(ids, allow_mask=True)
        x = self.embed(ids)
        if self.pos_embeddings is not None:
            x = x + self.pos_embeddings
        cls = self._class_ids(class_ids, ids.shape[0], ids.device)
        if cls is not None:
            x = torch.cat([self.class_embeddings(cls)[:, None], x], dim=1)
        h = self.backbone.forward_hidden(embeds=x, positions=self.positions, mask="full")
        return self.head(h[:, 1:] if cls is not None else h)

    def log_prob(self, logits: Tensor, ids: Tensor) -> Tensor:
        """log p(ids) under the factorized heads: Σ_j log softmax(logits_j)[d_j]; logits (..., S, K), ids (...)."""
        logp = logits.float().log_softmax(-1)
        return logp.gather(-1, self.to_sub(ids)[..., None]).squeeze(-1).sum(-1)

    # -- training objective

    def sample_mask(self, batch: int, device: torch.device, generator: torch.Generator | None = None) -> Tensor:
        """A training mask (B, N): r ~ U(0, 1) per sample, :func:`num_masked_train` of the maskable positions (all
        but the conditioning frames, which come first and are never masked)."""
        c = self.config
        n = c.num_tokens - c.cond_tokens
        gen_device = generator.device if generator is not None else device
        r = torch.rand(batch, generator=generator, device=gen_device, dtype=torch.float64).to(device)
        mask = random_mask(num_masked_train(r, n), n, generator)
        return F.pad(mask.to(device), (c.cond_tokens, 0), value=False)

    def loss(
        self,
        ids: Tensor,
        class_ids: Tensor | None = None,
        *,
        generator: torch.Generator | None = None,
        p_uncond: float = 0.1,
        label_smoothing: float = 0.0,
        mask: Tensor | None = None,
        forward: nn.Module | None = None,
    ) -> MaskGITLoss:
        """The MaskGIT objective on clean ids (B, *grid) (see the module docstring).

        ``class_ids`` are required for a class-conditional model; each is replaced by the null class with
        probability ``p_uncond``. ``mask`` (B, N) bool overrides the random mask. ``forward`` is the module to run
        (default ``self``; a trainer passes its DDP wrapper so gradients are synchronized).
        """
        c = self.config
        ids = self._flat_ids(ids, allow_mask=False)
        b, device = ids.shape[0], ids.device
        if mask is None:
            mask = self.sample_mask(b, device, generator)
        elif mask.shape != ids.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor of shape {tuple(ids.shape)}, got {mask.dtype} {mask.shape}")
        if c.num_classes:
            if class_ids is None:
                raise ValueError("a class-conditional MaskGIT needs class_ids for training")
            class_ids = self._class_ids(class_ids, b, device)
            if p_uncond > 0:
                gen_device = generator.device if generator is not None else device
                drop = torch.rand(b, generator=generator, device=gen_device).to(device) < p_uncond
                class_ids = class_ids.masked_fill(drop, c.num_classes)
        inputs = ids.masked_fill(mask, self.mask_id)
        logits = (forward if forward is not None else self)(inputs, class_ids)
        loss, accuracy = masked_cross_entropy(logits, self.to_sub(ids), mask, label_smoothing)
        return MaskGITLoss(loss, accuracy, mask, logits)


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------


def _base(grid: tuple[int, ...], **kw) -> MaskGITConfig:
    """The MAGVIT/MAGVIT-v2 masked transformer shape: 24 layers, 1,024 dims, 16 heads (≈ 313M parameters with
    SwiGLU at LLaMA's hidden size 2,816), 2^18 codes as two 2^9 sub-tokens."""
    cfg = dict(codebook_size=2**18, sub_tokens=2, grid=grid, dim=1024, n_layers=24, n_heads=16, multiple_of=256)
    return MaskGITConfig(**(cfg | kw))


PRESETS: dict[str, MaskGITConfig] = {
    # CPU tests: the default tokenizer's 8×8 grid of 1,024 codes; 2 layers × 64 dims (~0.2M parameters).
    "maskgit-tiny": MaskGITConfig(codebook_size=1024, grid=(8, 8), num_classes=10, dim=64, n_layers=2, n_heads=4),
    # CPU tests, video: a 9-frame 64² clip → 3×8×8 ids; predict the last two latent frames from the first.
    "maskgit-tiny-video": MaskGITConfig(
        codebook_size=1024, grid=(3, 8, 8), cond_frames=1, dim=64, n_layers=2, n_heads=4
    ),
    # the CPU demo (a few minutes on 2 cores): 4 layers × 128 dims (~1M parameters)
    "maskgit-small": MaskGITConfig(codebook_size=1024, grid=(8, 8), num_classes=10, dim=128, n_layers=4, n_heads=4),
    # MAGVIT-v2 class-conditional ImageNet 256² (16×16 tokens) and 512² (32×32 tokens)
    "maskgit-base": _base((16, 16), num_classes=1000),
    "maskgit-base-512": _base((32, 32), num_classes=1000),
    # MAGVIT-v2 frame prediction (Kinetics-600): 17 frames at 128² → 5×16×16 tokens, the first latent frame given
    "maskgit-base-video": _base((5, 16, 16), cond_frames=1),
}

register_model("maskgit", MaskGIT, presets=PRESETS)
