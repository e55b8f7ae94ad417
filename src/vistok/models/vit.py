"""A small Vision Transformer (Dosovitskiy et al., ICLR 2021) and the DINO projection head (Caron et al., ICCV 2021).

**ViT.** An image ``(B, 3, H, W)`` in [-1, 1] is cut into ``p × p`` patches (one strided convolution), each patch
becomes a token, a learned position embedding is added and a learned ``[CLS]`` token is put in front; ``depth``
pre-norm blocks follow (eq. 2–3 of the ViT paper)::

    z₀ = [x_cls; x¹E; …; xᴺE] + E_pos
    z'ₗ = zₗ₋₁ + MSA(LN(zₗ₋₁)),   zₗ = z'ₗ + MLP(LN(z'ₗ))          l = 1 … L
    y = LN(z_L)

Images of another size than ``image_size`` (DINO's local crops) get the position embedding of the patch grid
bicubically interpolated to their grid (DINO's ``interpolate_pos_encoding``); sides must be multiples of the patch.

**Hidden states** are numbered as Hugging Face numbers them: ``hidden_states[0]`` is the embedding output ``z₀``,
``hidden_states[l]`` the output of block ``l``, so ``hidden_states[-3]`` is the output of the third block from the
end — the layer DiGIT reads. :meth:`ViT.patch_features` returns that layer's patch tokens (no ``[CLS]``) *after* the
final LayerNorm, as DINOv2's ``get_intermediate_layers(..., norm=True)`` does (see :mod:`vistok.tokenizers.digit`).

**DINO head** (:class:`DINOHead`): an MLP ``in → hidden → … → bottleneck`` with GELUs, l2-normalisation, then a
weight-normalised linear layer ``bottleneck → K`` with no bias whose gain is fixed to 1 (DINO's
``norm_last_layer=True``): ``g(x) = normalize(W_v) · normalize(MLP(x))``, i.e. K cosine similarities. The DINO loss,
teacher, centering and crops live in :mod:`vistok.train.dino`.

Presets: ``vit-tiny`` (patch 8 on 64×64 crops → 8×8 tokens, ~0.8M backbone parameters, K = 1024; trains on 2 CPU
cores), ``vit-small-p8`` (DINO's ViT-S/8 shape on 64×64 crops) and ``vit-base`` (ViT-B/16 at 224, DINO's K = 65,536).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.layers.attention import Attention
from vistok.registry import PresetMixin, register_model

__all__ = ["VIT_PRESETS", "DINOHead", "ViT", "ViTBlock", "ViTConfig"]


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class ViTConfig(PresetMixin):
    """A ViT backbone plus the shape of its DINO head (``head_*``; the head itself is built by the trainer).

    ``image_size`` is the size the position embedding is learned for (other multiples of ``patch_size`` work by
    interpolation); ``grid`` (derived) is ``image_size // patch_size``.
    """

    image_size: int = 64
    patch_size: int = 8
    dim: int = 128
    depth: int = 4
    n_heads: int = 4
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    norm_eps: float = 1e-6
    head_out_dim: int = 1024
    head_hidden_dim: int = 512
    head_bottleneck_dim: int = 128
    head_layers: int = 3
    grid: int = field(init=False)

    def __post_init__(self) -> None:
        for name in ("image_size", "patch_size", "dim", "depth", "n_heads", "head_out_dim", "head_hidden_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"ViTConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size % self.patch_size:
            raise ValueError(
                f"ViTConfig.image_size ({self.image_size}) must be a multiple of patch_size ({self.patch_size})"
            )
        if self.dim % self.n_heads:
            raise ValueError(f"ViTConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        if self.head_layers < 1 or self.head_bottleneck_dim < 1:
            raise ValueError("ViTConfig.head_layers and head_bottleneck_dim must be >= 1")
        self.grid = self.image_size // self.patch_size


# ---------------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------------


class ViTBlock(nn.Module):
    """Pre-norm transformer block: ``x + Attn(LN(x))``, then ``x + MLP(LN(x))`` with a GELU MLP."""

    def __init__(self, cfg: ViTConfig) -> None:
        super().__init__()
        hidden = int(cfg.dim * cfg.mlp_ratio)
        self.norm1 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.attn = Attention(cfg.dim, cfg.n_heads, bias=cfg.qkv_bias)
        self.norm2 = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        self.fc1 = nn.Linear(cfg.dim, hidden)
        self.fc2 = nn.Linear(hidden, cfg.dim)

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x), mask="full")
        return x + self.fc2(F.gelu(self.fc1(self.norm2(x))))


def _init_weights(module: nn.Module) -> None:
    """DINO's initialisation: truncated normal (std 0.02) linear weights, zero biases, unit LayerNorms."""
    if isinstance(module, nn.Linear):
        nn.init.trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


# ---------------------------------------------------------------------------------------------------------------------
# The backbone
# ---------------------------------------------------------------------------------------------------------------------


class ViT(nn.Module, PretrainedMixin):
    """ViT backbone; ``forward(x)`` is the ``[CLS]`` output after the final norm, ``(B, dim)`` (DINO's embedding)."""

    config_class = ViTConfig

    def __init__(self, config: ViTConfig) -> None:
        super().__init__()
        self.config = cfg = config
        self.patch_embed = nn.Conv2d(3, cfg.dim, cfg.patch_size, stride=cfg.patch_size)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.dim))
        self.pos_embed = nn.Parameter(torch.zeros(1, 1 + cfg.grid * cfg.grid, cfg.dim))
        self.blocks = nn.ModuleList(ViTBlock(cfg) for _ in range(cfg.depth))
        self.norm = nn.LayerNorm(cfg.dim, eps=cfg.norm_eps)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        self.apply(_init_weights)

    @property
    def patch_size(self) -> int:
        return self.config.patch_size

    @property
    def dim(self) -> int:
        return self.config.dim

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The patch grid ``(h, w)`` of a ``height × width`` image; raises unless both are multiples of the patch."""
        p = self.config.patch_size
        if height % p or width % p or height < p or width < p:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of the ViT patch size {p}: resize or crop the "
                f"pictures to multiples of {p} (e.g. {max(p, height // p * p)}x{max(p, width // p * p)})"
            )
        return height // p, width // p

    def _check(self, x: Tensor) -> tuple[int, int]:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"expected pixels of shape (B, 3, H, W), got {tuple(x.shape)}")
        return self.token_grid(x.shape[2], x.shape[3])

    def position_embedding(self, h: int, w: int) -> Tensor:
        """``(1, 1 + h·w, dim)``: the learned table, its patch part bicubically resized when ``(h, w)`` differs."""
        g = self.config.grid
        if (h, w) == (g, g):
            return self.pos_embed
        cls, grid = self.pos_embed[:, :1], self.pos_embed[:, 1:]
        grid = grid.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        grid = F.interpolate(grid.float(), size=(h, w), mode="bicubic", align_corners=False).to(cls.dtype)
        return torch.cat([cls, grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)], dim=1)

    def embed(self, x: Tensor) -> Tensor:
        """``z₀``: ``(B, 1 + h·w, dim)`` patch embeddings with ``[CLS]`` in front and positions added."""
        h, w = self._check(x)
        tokens = self.patch_embed(x).flatten(2).transpose(1, 2)
        tokens = torch.cat([self.cls_token.expand(len(x), -1, -1), tokens], dim=1)
        return tokens + self.position_embedding(h, w)

    def _index(self, layer: int) -> int:
        n = self.config.depth + 1
        if not -n <= layer < n:
            raise ValueError(f"layer must be in [-{n}, {n - 1}] for a ViT of depth {n - 1}, got {layer}")
        return layer % n

    def hidden_states(self, x: Tensor, upto: int = -1) -> list[Tensor]:
        """``[z₀, z₁, …, z_upto]`` (un-normalised, with ``[CLS]``); ``upto`` indexes like the list (default all)."""
        last = self._index(upto)
        states = [self.embed(x)]
        for block in self.blocks[:last]:
            states.append(block(states[-1]))
        return states

    def forward_features(self, x: Tensor, layer: int = -1, norm: bool = True) -> Tensor:
        """Tokens ``(B, 1 + h·w, dim)`` of hidden state ``layer``, after the final LayerNorm when ``norm``."""
        z = self.hidden_states(x, upto=layer)[-1]
        return self.norm(z) if norm else z

    def patch_features(self, x: Tensor, layer: int = -1, norm: bool = True) -> Tensor:
        """Patch tokens of hidden state ``layer`` as a grid ``(B, h, w, dim)`` (``[CLS]`` dropped)."""
        h, w = self._check(x)
        return self.forward_features(x, layer, norm)[:, 1:].reshape(len(x), h, w, -1)

    def forward(self, x: Tensor) -> Tensor:
        return self.forward_features(x)[:, 0]


# ---------------------------------------------------------------------------------------------------------------------
# The DINO head
# ---------------------------------------------------------------------------------------------------------------------


class DINOHead(nn.Module):
    """DINO's projection head: MLP → l2-normalise → weight-normalised linear (gain 1) to ``out_dim`` logits."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, bottleneck_dim: int = 256, n_layers: int = 3):
        super().__init__()
        if n_layers == 1:
            layers: list[nn.Module] = [nn.Linear(in_dim, bottleneck_dim)]
        else:
            layers = [nn.Linear(in_dim, hidden_dim), nn.GELU()]
            for _ in range(n_layers - 2):
                layers += [nn.Linear(hidden_dim, hidden_dim), nn.GELU()]
            layers.append(nn.Linear(hidden_dim, bottleneck_dim))
        self.mlp = nn.Sequential(*layers)
        self.last_weight = nn.Parameter(torch.empty(out_dim, bottleneck_dim))  # the direction v of W = g·v/‖v‖, g = 1
        self.apply(_init_weights)
        nn.init.trunc_normal_(self.last_weight, std=0.02)

    @classmethod
    def from_config(cls, cfg: ViTConfig) -> DINOHead:
        return cls(cfg.dim, cfg.head_out_dim, cfg.head_hidden_dim, cfg.head_bottleneck_dim, cfg.head_layers)

    @property
    def out_dim(self) -> int:
        return self.last_weight.shape[0]

    def forward(self, x: Tensor) -> Tensor:
        x = F.normalize(self.mlp(x), dim=-1, eps=1e-6)
        return F.linear(x, F.normalize(self.last_weight, dim=1, eps=1e-6))


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------

#: Named configs (``ViTConfig.from_name("vit-tiny")``, ``create_model("vit-tiny")``).
VIT_PRESETS: dict[str, ViTConfig] = {
    "vit-tiny": ViTConfig(),
    "vit-small-p8": ViTConfig(
        image_size=64,
        patch_size=8,
        dim=384,
        depth=12,
        n_heads=6,
        head_out_dim=65536,
        head_hidden_dim=2048,
        head_bottleneck_dim=256,
    ),
    "vit-base": ViTConfig(
        image_size=224,
        patch_size=16,
        dim=768,
        depth=12,
        n_heads=12,
        head_out_dim=65536,
        head_hidden_dim=2048,
        head_bottleneck_dim=256,
    ),
}

register_model("vit", ViT, presets=VIT_PRESETS)
