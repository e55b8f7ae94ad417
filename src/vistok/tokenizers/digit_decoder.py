"""A pixel decoder for DiGIT's discriminative tokens (Zhu et al., NeurIPS 2024; ``PAPERS.md`` §5), option (a).

DiGIT's tokens (:mod:`vistok.tokenizers.digit`) are k-means ids of a frozen self-supervised encoder's patch features;
they come with no way back to pixels. The paper renders them with a second autoregressive model that maps the
discriminative ids to VQGAN ids, decoded by a frozen VQGAN. This module implements the simpler option: a
convolutional decoder conditioned directly on the id grid, trained for reconstruction::

    ids   = DigitTokenizer(x)                         (B, h, w)      frozen: no gradient, never updated
    e     = E[ids]                                    (B, C, h, w)   E (K, C): the k-means centroids (then trained)
                                                                     or a learned table
    x̂     = Decoder(conv1x1(e))                       (B, 3, h·f, w·f)

``Decoder`` is VQGAN's (taming's) convolutional decoder (:class:`vistok.tokenizers.vqgan.Decoder`: mid block with
self-attention, ResNet blocks and nearest ×2 upsampling per level, GroupNorm → SiLU → conv to RGB) of
``len(channel_multipliers)`` levels, so it upsamples by 2^(levels − 1). When that is not the pixels-per-token
``spatial_factor`` f (e.g. DINOv2's patch 14), the output is resized (bilinear, antialiased) to ``h·f × w·f``.

:class:`DigitAutoencoder` wraps the tokenizer and the decoder behind vistok's pixel-tokenizer interface —
``encode(x, pad) → ids``, ``decode(ids, size) → pixels``, ``forward(x) → TokenizerOutput(recon, indices,
quant_loss=0, metrics)``, ``last_layer_weight()``, ``spatial_factor``, ``codebook_size`` — so
:class:`vistok.train.tokenizer.TokenizerTrainer` trains it with its L1/L2 + LPIPS + GAN recipe unchanged (only the
decoder and the embedding table have ``requires_grad``), ``vistok.from_pretrained(dir)`` /
:func:`vistok.tokenizers.api.load_tokenizer` load it, and ``vistok decode`` / ``reconstruct`` work with it. One
``save_pretrained`` folder holds everything: the tokenizer's config (nested, ``digit``), its centroids and ViT
weights, the embeddings and the decoder. (A Hugging Face encoder is stored as its folder path, as
:class:`~vistok.tokenizers.digit.DigitTokenizer` does.) Videos are encoded and decoded frame by frame (temporal
factor 1).

Build one around a fitted tokenizer with :meth:`DigitAutoencoder.from_tokenizer`; train it with
``vistok digit decoder`` (:func:`vistok.train.digit_ar.train_digit_decoder`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.registry import PresetMixin, register_model
from vistok.tokenizers.digit import DIGIT_PRESETS, DigitConfig, DigitTokenizer
from vistok.tokenizers.magvit2 import TokenizerOutput
from vistok.tokenizers.vqgan import Decoder, VQGANConfig, _frames, _unframes, id_frames, pixel_frames

__all__ = ["DIGIT_DECODER_PRESETS", "DigitAutoencoder", "DigitDecoderConfig"]


# ---------------------------------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DigitDecoderConfig(PresetMixin):
    """The frozen DiGIT tokenizer (``digit``) and the trainable decoder over its ids.

    ``embed``: ``"centroids"`` (the table starts as the k-means centroids, C = the encoder's feature width) or
    ``"learned"`` (random N(0, 1) rows of ``embed_dim`` channels); ``freeze_embed`` keeps the table fixed.
    ``spatial_factor``: pixels per token side of the rendered picture (default: the vistok ViT's patch size; must be
    given for a Hugging Face encoder). The decoder (VQGAN's): ``base_channels × channel_multipliers`` channels per
    level, ``num_res_blocks + 1`` ResNet blocks per level, attention on ``attn_levels`` (0 = full resolution) and in
    the mid block, ``z_channels`` input channels, GroupNorm with ``norm_groups``.
    """

    digit: DigitConfig = field(default_factory=lambda: replace(DIGIT_PRESETS["digit-tokenizer-tiny"]))
    embed: Literal["centroids", "learned"] = "centroids"
    embed_dim: int | None = None
    freeze_embed: bool = False
    spatial_factor: int | None = None
    base_channels: int = 16
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 8)
    num_res_blocks: int = 1
    attn_levels: tuple[int, ...] = ()
    z_channels: int = 64
    norm_groups: int = 8

    def __post_init__(self) -> None:
        self.channel_multipliers = tuple(int(m) for m in self.channel_multipliers)
        self.attn_levels = tuple(sorted({int(a) for a in self.attn_levels}))
        if self.embed not in ("centroids", "learned"):
            raise ValueError(f"DigitDecoderConfig.embed must be 'centroids' or 'learned', got {self.embed!r}")
        if self.embed == "centroids" and self.embed_dim is not None:
            raise ValueError(
                f"embed='centroids' takes the encoder's feature width; embed_dim must be None, got {self.embed_dim}"
            )
        if self.embed == "learned" and (self.embed_dim is None or self.embed_dim < 1):
            raise ValueError(f"embed='learned' needs embed_dim >= 1, got {self.embed_dim}")
        if self.spatial_factor is None:
            if self.digit.encoder != "vit" or self.digit.image_size is not None:
                raise ValueError(
                    "spatial_factor (pixels per token side of the decoded picture) must be given for a Hugging Face "
                    "encoder or when the tokenizer resizes pictures (image_size); e.g. 16 for 256-pixel pictures "
                    "tokenized as 16x16 grids"
                )
            self.spatial_factor = self.digit.vit.patch_size
        if self.spatial_factor < 1:
            raise ValueError(f"DigitDecoderConfig.spatial_factor must be >= 1, got {self.spatial_factor}")
        self.vqgan_config()  # validates the decoder fields

    @property
    def upsampling(self) -> int:
        """The decoder's own upsampling factor 2^(levels − 1)."""
        return 2 ** (len(self.channel_multipliers) - 1)

    def vqgan_config(self) -> VQGANConfig:
        """The decoder half of a VQGAN of these fields (its encoder and quantizer are not built)."""
        return VQGANConfig(
            base_channels=self.base_channels, channel_multipliers=self.channel_multipliers,
            num_res_blocks=self.num_res_blocks, attn_levels=self.attn_levels, z_channels=self.z_channels,
            codebook_size=self.digit.num_clusters, norm_groups=self.norm_groups,
        )  # fmt: skip


#: ``digit-autoencoder-tiny``: ``digit-tokenizer-tiny`` (ViT-tiny, patch 8, K = 256) + a 4-level decoder (×8),
#: 16–128 channels — 64² pictures ⇄ 8×8 ids; runs on a CPU.
DIGIT_DECODER_PRESETS: dict[str, DigitDecoderConfig] = {
    "digit-autoencoder-tiny": DigitDecoderConfig(),
}


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


class DigitAutoencoder(nn.Module, PretrainedMixin):
    """Frozen DiGIT tokenizer (pixels → ids) + trainable convolutional decoder (ids → pixels); see the module
    docstring. ``DigitAutoencoder(config)`` builds an unfitted tokenizer from ``config.digit`` (weights come from
    ``from_pretrained``); ``DigitAutoencoder(config, tokenizer)`` wraps a given one (``config.digit`` is taken from
    it). :meth:`from_tokenizer` also copies the centroids into the embedding table."""

    config_class = DigitDecoderConfig
    temporal_factor = 1

    def __init__(self, config: DigitDecoderConfig, tokenizer: DigitTokenizer | None = None) -> None:
        super().__init__()
        if tokenizer is not None:
            if not isinstance(tokenizer, DigitTokenizer):
                raise TypeError(f"tokenizer must be a DigitTokenizer, got {type(tokenizer).__name__}")
            config = replace(config, digit=tokenizer.config)
        self.config = config
        self.tokenizer = (tokenizer if tokenizer is not None else DigitTokenizer(config.digit)).eval()
        self.tokenizer.requires_grad_(False)
        self.codebook_size: int = config.digit.num_clusters
        self.spatial_factor: int = int(config.spatial_factor)
        dim = self.tokenizer.dim if config.embed == "centroids" else int(config.embed_dim)
        self.latent_channels = dim
        self.embed = nn.Embedding(self.codebook_size, dim)
        if config.embed == "learned":
            nn.init.normal_(self.embed.weight)
        self.embed.weight.requires_grad_(not config.freeze_embed)
        self.post_quant_conv = nn.Conv2d(dim, config.z_channels, 1)
        self.decoder = Decoder(config.vqgan_config())

    @classmethod
    def from_tokenizer(cls, tokenizer: DigitTokenizer, **fields: Any) -> DigitAutoencoder:
        """A decoder around fitted ``tokenizer`` (fields: :class:`DigitDecoderConfig`'s, ``digit`` excepted); with
        ``embed="centroids"`` (the default) the table starts as the tokenizer's centroids."""
        if not bool(tokenizer.quantizer.initted):
            raise ValueError("the DigitTokenizer has no centroids yet: fit it (or load a fitted one) first")
        if "digit" in fields:
            raise TypeError("from_tokenizer takes the digit config from the tokenizer; do not pass digit=")
        model = cls(DigitDecoderConfig(digit=tokenizer.config, **fields), tokenizer)
        model.to(tokenizer.device)
        if model.config.embed == "centroids":
            with torch.no_grad():
                model.embed.weight.copy_(tokenizer.quantizer.centroids.float())
        return model

    def train(self, mode: bool = True) -> DigitAutoencoder:
        super().train(mode)
        self.tokenizer.eval()  # frozen: always in eval mode
        return self

    @property
    def device(self) -> torch.device:
        return self.embed.weight.device

    # -- shapes and checks ---------------------------------------------------------------------------------------

    def token_grid(self, shape: Sequence[int], pad: bool = False) -> tuple[int, ...]:
        """Token grid for an input of shape (H, W) → (h, w), or (T, H, W) → (T, h, w)."""
        if len(shape) not in (2, 3):
            raise ValueError(f"expected an input shape (T, H, W) or (H, W), got {tuple(shape)}")
        h, w = self._padded_size(*shape[-2:], pad=pad)
        return (*shape[:-2], *self.tokenizer.token_grid(h, w))

    def _padded_size(self, h: int, w: int, pad: bool) -> tuple[int, int]:
        if self.config.digit.image_size is not None:  # the encoder resizes: any size gives its fixed grid
            return h, w
        p = self.tokenizer.patch_size
        ph, pw = -h % p, -w % p
        if (ph or pw) and not pad:
            raise ValueError(
                f"expected H and W to be multiples of the patch size {p}, got {h}x{w} "
                f"(pass pad=True to pad by replication to {h + ph}x{w + pw})"
            )
        return h + ph, w + pw

    def _as_frames(self, x: Tensor, pad: bool) -> tuple[Tensor, int | None]:
        return pixel_frames(x, 3, self._padded_size, pad)

    def _check_ids(self, ids: Tensor) -> tuple[Tensor, int | None]:
        return id_frames(ids, self.codebook_size)

    # -- encoding ------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, x: Tensor, pad: bool = False, chunk_frames: int | None = None) -> Tensor:
        """Token ids of the frozen tokenizer: image (B, 3, H, W) → (B, h, w); video → (B, T, h, w) frame by frame.
        ``pad`` pads H, W by replication to multiples of the patch size; ``chunk_frames`` frames at a time."""
        frames, batch = self._as_frames(x, pad)
        ids = self.tokenizer.encode(frames.float(), batch_size=chunk_frames).to(self.device)
        return ids if batch is None else ids.unflatten(0, (batch, -1))

    def indices_to_latents(self, ids: Tensor) -> Tensor:
        """Embeddings (B, C, h, w) of ids (B, h, w)."""
        return self.embed(ids.long()).permute(0, 3, 1, 2)

    # -- decoding ------------------------------------------------------------------------------------------------

    def decode_latents(self, e: Tensor) -> Tensor:
        """Embeddings (B, C, h, w) → pixels (B, 3, h·f, w·f); (B, C, T, h, w) → (B, 3, T, h·f, w·f)."""
        c = self.latent_channels
        if e.ndim not in (4, 5) or e.shape[1] != c:
            raise ValueError(f"expected latents (B, {c}, h, w) or (B, {c}, T, h, w), got {tuple(e.shape)}")
        if e.ndim == 5:
            return _unframes(self.decode_latents(_frames(e)), e.shape[0])
        x = self.decoder(self.post_quant_conv(e.to(self.post_quant_conv.weight.dtype)))
        size = (e.shape[-2] * self.spatial_factor, e.shape[-1] * self.spatial_factor)
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x

    def decode(self, ids: Tensor, size: Sequence[int] | None = None, chunk_frames: int | None = None) -> Tensor:
        """Token ids → pixels: (B, h, w) → (B, 3, h·f, w·f); (B, T, h, w) → (B, 3, T, h·f, w·f); cropped to
        ``size`` ((H, W), or (T, H, W) for video) when given; ``chunk_frames`` frames at a time."""
        id_frames, batch = self._check_ids(ids)
        id_frames = id_frames.to(self.device)
        step = chunk_frames or max(len(id_frames), 1)
        parts = [self.decode_latents(self.indices_to_latents(part)) for part in id_frames.split(step)]
        x = torch.cat(parts) if parts else torch.empty(0, 3, 0, 0, device=self.device)
        x = x if batch is None else _unframes(x, batch)
        if size is None:
            return x
        size = tuple(int(s) for s in size)
        dims = tuple(x.shape[x.ndim - len(size) :])
        if len(size) not in (2, 3) or (len(size) == 3 and x.ndim != 5) or any(s > d for s, d in zip(size, dims)):
            raise ValueError(f"size must be (H, W) or, for video, (T, H, W) no larger than {dims}, got {size}")
        return x[(..., *(slice(0, s) for s in size))]

    # -- training ------------------------------------------------------------------------------------------------

    def forward(self, x: Tensor, pad: bool = False) -> TokenizerOutput:
        """Ids of ``x`` (no gradient) → reconstruction (the shape of ``x``); ``quant_loss`` is 0 (nothing to
        regularise), ``metrics``: ``usage``, the fraction of the K ids the batch uses."""
        frames, batch = self._as_frames(x, pad)
        with torch.no_grad():
            ids = self.tokenizer.encode(frames.detach().float()).to(self.device)
        h, w = x.shape[-2:]
        recon = self.decode_latents(self.indices_to_latents(ids))[..., :h, :w]
        if batch is not None:
            recon, ids = _unframes(recon, batch), ids.unflatten(0, (batch, -1))
        usage = torch.unique(ids).numel() / self.codebook_size
        zero = self.embed.weight.new_zeros(())
        return TokenizerOutput(recon, ids, zero, {"usage": torch.tensor(usage, device=self.device)})

    def last_layer_weight(self) -> Tensor:
        """The decoder's final conv weight (for the adaptive GAN loss weight)."""
        return self.decoder.conv_out.weight

    def extra_repr(self) -> str:
        return f"K={self.codebook_size}, embed={self.config.embed}, f={self.spatial_factor}"


register_model("digit-autoencoder", DigitAutoencoder, presets=DIGIT_DECODER_PRESETS)
