"""DiGIT → pixels, the paper's route (option (b) of the pixel decoder; PAPERS.md §5): a token-to-token model maps the
discriminative DiGIT ids of a picture to the ids a reconstructive tokenizer (MAGVIT-v2, VQGAN) gives the same picture,
and that tokenizer's decoder renders the pixels.

**Model** (:class:`DigitTranslator`, ``model_type`` ``digit-translator``). The simplest faithful version: one
bidirectional pass, no masking or sampling loop. The DiGIT grid (h, w) of ids in [0, K) is embedded (one table of K
rows, plus a learned absolute position embedding per cell), run through vistok's :class:`Transformer` backbone with
full attention and rotary positions over the grid's (row, column) coordinates (as :mod:`vistok.models.maskgit`), and
a linear head gives, at every cell, logits over the V target ids of the same cell:

    p(t_i | s) = softmax(W · Transformer(E[s] + P)_i + b),    loss = mean_i CE(t_i),  i over all h·w cells

The target ids of different cells are predicted independently given the whole source grid. The grids must be
*aligned*: cell (r, c) of both tokenizers covers the same crop (DiGIT's ViT-tiny patch 8 and MAGVIT-v2's 8× down-
sampling both give 8×8 grids for 64² pictures); :func:`aligned_grid` checks that and raises a clear error otherwise.

**Inference** (:func:`translate_to_pixels`): argmax (``temperature=0``) or sampled target ids →
``pixel_tokenizer.decode(ids)`` → pixels (B, 3, H, W). Training and scoring: :mod:`vistok.train.digit_translate`
(``vistok digit translate``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.layers import grid_positions
from vistok.models.maskgit import _axes_dims
from vistok.models.transformer import Transformer, TransformerConfig
from vistok.registry import PresetMixin, register_model

__all__ = [
    "DIGIT_TRANSLATOR_PRESETS",
    "DigitTranslator",
    "DigitTranslatorConfig",
    "aligned_grid",
    "check_target",
    "pixel_token_grid",
    "translate_to_pixels",
]


@dataclass
class DigitTranslatorConfig(PresetMixin):
    """Hyper-parameters of :class:`DigitTranslator`.

    - ``source_vocab`` K: the DiGIT vocabulary (its k-means clusters); ``target_vocab`` V: the reconstructive
      tokenizer's codebook (1,024 for the shipped MAGVIT-v2).
    - ``grid``: the (h, w) id grid, the same for both tokenizers.
    - ``dim``, ``n_layers``, ``n_heads``, ``n_kv_heads``, ``head_dim``, ``intermediate_size``, ``multiple_of``,
      ``ffn_dim_multiplier``, ``norm_eps``, ``rope_theta``, ``init_std``: the bidirectional backbone's
      (:class:`TransformerConfig`).
    - ``source_codebook_sha256`` / ``target_config_sha256``: optional identities of the two tokenizers it was
      trained for (DiGIT's centroids checksum, the pixel tokenizer's config hash); checked at inference when set.
    """

    source_vocab: int = 256
    target_vocab: int = 1024
    grid: tuple[int, int] = (8, 8)
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    head_dim: int | None = None
    intermediate_size: int | None = None
    multiple_of: int = 16
    ffn_dim_multiplier: float | None = None
    norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    init_std: float = 0.02
    source_codebook_sha256: str | None = None
    target_config_sha256: str | None = None

    def __post_init__(self) -> None:
        self.grid = tuple(int(g) for g in self.grid)
        if len(self.grid) != 2 or min(self.grid) < 1:
            raise ValueError(f"grid must be (h, w) of positive sizes, got {self.grid}")
        for name in ("source_vocab", "target_vocab"):
            if getattr(self, name) < 2:
                raise ValueError(f"DigitTranslatorConfig.{name} must be >= 2, got {getattr(self, name)}")
        self.transformer_config()  # validates the backbone fields

    @property
    def num_tokens(self) -> int:
        return self.grid[0] * self.grid[1]

    def transformer_config(self) -> TransformerConfig:
        """The bidirectional backbone (rotary over the two grid axes; no token embedding or head of its own)."""
        head = self.head_dim if self.head_dim is not None else (self.dim // self.n_heads if self.n_heads else 0)
        axes_dims = _axes_dims(head, 2) if head > 0 and head % 2 == 0 else None
        return TransformerConfig(
            vocab_size=1, dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads,
            head_dim=self.head_dim, intermediate_size=self.intermediate_size, multiple_of=self.multiple_of,
            ffn_dim_multiplier=self.ffn_dim_multiplier, norm_eps=self.norm_eps, rope_theta=self.rope_theta,
            rope_axes=2, rope_axes_dims=axes_dims, max_seq_len=self.num_tokens, causal=False, init_std=self.init_std,
        )  # fmt: skip


class DigitTranslator(nn.Module, PretrainedMixin):
    """DiGIT id grid (B, h, w) → logits (B, h, w, V) over the reconstructive tokenizer's ids; see the module doc."""

    config_class = DigitTranslatorConfig

    def __init__(self, config: DigitTranslatorConfig) -> None:
        super().__init__()
        self.config = c = config
        self.backbone = Transformer(c.transformer_config())
        self.backbone.tok_embeddings = None  # embeddings in, hidden states out
        self.backbone.output = None
        self.src_embeddings = nn.Embedding(c.source_vocab, c.dim)
        self.pos_embeddings = nn.Parameter(torch.zeros(c.num_tokens, c.dim))
        self.head = nn.Linear(c.dim, c.target_vocab)
        for p in (self.src_embeddings.weight, self.pos_embeddings, self.head.weight):
            nn.init.normal_(p, std=c.init_std)
        nn.init.zeros_(self.head.bias)
        self.register_buffer("positions", grid_positions(*c.grid), persistent=False)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _flat(self, ids: Tensor, vocab: int, what: str) -> Tensor:
        c = self.config
        if ids.is_floating_point() or ids.dtype == torch.bool:
            raise TypeError(f"{what} ids must be integers, got {ids.dtype}")
        if ids.ndim != 3 or tuple(ids.shape[1:]) != c.grid:
            raise ValueError(
                f"expected {what} ids of shape (B, {c.grid[0]}, {c.grid[1]}) (this translator's grid), got "
                f"{tuple(ids.shape)}: the DiGIT and target grids must be aligned with the one it was trained on"
            )
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= vocab):
            raise ValueError(f"{what} ids must be in [0, {vocab}), got range [{int(ids.min())}, {int(ids.max())}]")
        return ids.long().flatten(1)

    def forward(self, source_ids: Tensor) -> Tensor:
        """Logits (B, h, w, V) of the target ids, from DiGIT ids (B, h, w) in [0, K)."""
        c = self.config
        ids = self._flat(source_ids, c.source_vocab, "DiGIT")
        x = self.src_embeddings(ids) + self.pos_embeddings
        h = self.backbone.forward_hidden(embeds=x, positions=self.positions, mask="full")
        return self.head(h).unflatten(1, c.grid)

    def loss(self, source_ids: Tensor, target_ids: Tensor, label_smoothing: float = 0.0) -> tuple[Tensor, Tensor]:
        """(mean cross-entropy of the target ids over every cell, accuracy of the argmax)."""
        tgt = self._flat(target_ids, self.config.target_vocab, "target")
        logits = self(source_ids).flatten(1, 2).float()
        loss = F.cross_entropy(logits.flatten(0, 1), tgt.flatten(), label_smoothing=label_smoothing)
        return loss, (logits.argmax(-1) == tgt).float().mean().detach()

    @torch.no_grad()
    def translate(
        self,
        source_ids: Tensor,
        temperature: float = 0.0,
        top_k: int | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Target ids (B, h, w) int64: the argmax per cell (``temperature=0``), else one draw per cell from
        softmax(logits / temperature), optionally restricted to the ``top_k`` most likely ids."""
        if temperature < 0:
            raise ValueError(f"temperature must be >= 0, got {temperature}")
        logits = self(source_ids).float()
        if temperature == 0:
            return logits.argmax(-1)
        if top_k is not None:
            kth = logits.topk(min(top_k, logits.shape[-1]), dim=-1).values[..., -1:]
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = (logits / temperature).softmax(-1)
        flat = torch.multinomial(probs.flatten(0, -2).cpu(), 1, generator=generator).to(logits.device)
        return flat.reshape(logits.shape[:-1])


# ---------------------------------------------------------------------------------------------------------------------
# Grids, and the whole route DiGIT ids → target ids → pixels
# ---------------------------------------------------------------------------------------------------------------------


def _device(module: Any) -> torch.device:
    device = getattr(module, "device", None)
    if isinstance(device, torch.device):
        return device
    return next(iter(module.parameters()), torch.empty(0)).device


@torch.no_grad()
def pixel_token_grid(pixel_tokenizer: Any, size: int) -> tuple[int, int]:
    """The (h, w) id grid a reconstructive tokenizer gives a ``size``² picture (from encoding a blank one)."""
    ids = pixel_tokenizer.encode(torch.zeros(1, 3, size, size, device=_device(pixel_tokenizer)), pad=True)
    if ids.ndim == 4:  # an image's single latent frame
        ids = ids[:, 0]
    return tuple(int(s) for s in ids.shape[1:])


def aligned_grid(digit_tokenizer: Any, pixel_tokenizer: Any, size: int) -> tuple[int, int]:
    """The shared (h, w) grid of both tokenizers for ``size``² pictures; raises ValueError when they differ (a
    cell-to-cell translator needs cell (r, c) of both grids to cover the same crop)."""
    digit = tuple(int(s) for s in digit_tokenizer.token_grid(size, size))
    pixel = pixel_token_grid(pixel_tokenizer, size)
    if digit != pixel:
        raise ValueError(
            f"the DiGIT tokenizer gives a {digit[0]}x{digit[1]} id grid for {size}x{size} pictures but the pixel "
            f"tokenizer gives {pixel[0]}x{pixel[1]}: the translator maps each DiGIT cell to the target cell of the "
            f"same crop, so the grids must be aligned (use a DiGIT patch size equal to the pixel tokenizer's "
            f"downsampling factor, e.g. ViT patch 8 with MAGVIT-v2's 8x)"
        )
    return digit


def check_target(translator: DigitTranslator, pixel_tokenizer: Any) -> None:
    """Raise ValueError when ``pixel_tokenizer`` is not the kind of tokenizer ``translator`` predicts ids of."""
    c = translator.config
    v = int(getattr(pixel_tokenizer, "codebook_size", -1))
    if v != c.target_vocab:
        raise ValueError(
            f"the translator predicts {c.target_vocab} target ids but the pixel tokenizer has {v} codes: pass the "
            "reconstructive tokenizer it was trained for"
        )
    if c.target_config_sha256 is not None and hasattr(pixel_tokenizer, "config"):
        from vistok.tokenizers.api import tokenizer_info

        if tokenizer_info(pixel_tokenizer)["config_sha256"] != c.target_config_sha256:
            raise ValueError("the pixel tokenizer's config differs from the one the translator was trained for")


@torch.no_grad()
def translate_to_pixels(
    translator: DigitTranslator,
    digit_ids: Tensor,
    pixel_tokenizer: Any,
    *,
    temperature: float = 0.0,
    top_k: int | None = None,
    seed: int | None = None,
) -> tuple[Tensor, Tensor]:
    """DiGIT ids (B, h, w) → (target ids (B, h, w), pixels (B, 3, H, W) from ``pixel_tokenizer.decode``, clamped to
    [−1, 1])."""
    check_target(translator, pixel_tokenizer)
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    translator.eval()
    ids = translator.translate(digit_ids.to(_device(translator)), temperature, top_k, generator)
    pixels = pixel_tokenizer.decode(ids.to(_device(pixel_tokenizer)))
    return ids, pixels.float().clamp(-1, 1)


#: ``digit-translator-tiny``: CPU tests (2 × 64); ``digit-translator-small``: the CPU measurement (4 × 128, ~1M
#: parameters with the 1,024-id head), both for K = 256 DiGIT ids → the shipped MAGVIT-v2's 1,024 ids, 8×8 grids.
DIGIT_TRANSLATOR_PRESETS: dict[str, DigitTranslatorConfig] = {
    "digit-translator-tiny": DigitTranslatorConfig(dim=64, n_layers=2, n_heads=4),
    "digit-translator-small": DigitTranslatorConfig(dim=128, n_layers=4, n_heads=4),
}

register_model("digit-translator", DigitTranslator, presets=DIGIT_TRANSLATOR_PRESETS)
