"""VQGAN tokenizer — Esser, Rombach & Ommer, "Taming Transformers for High-Resolution Image Synthesis", CVPR 2021
(§3.1, eq. 4: the VQ autoencoder), in the configuration of LVM — Bai et al., "Sequential Modeling Enables Scalable
Learning for Large Vision Models", 2023: f = 16, 8,192 codes, a 256² image → 16×16 = 256 tokens.

A 2-D convolutional autoencoder with a discrete bottleneck (the taming-transformers architecture):

    x (B, 3, H, W) → Encoder → quant_conv → z (B, z_channels, H/f, W/f) → quantizer → ids (B, H/f, W/f) / q
    q → post_quant_conv → Decoder → x̂ (B, 3, H, W)

- **Encoder**: conv_in, then per level ``num_res_blocks`` ResNet blocks (GroupNorm → SiLU → conv, twice; a 1×1 "nin"
  shortcut when channels change), single-head spatial self-attention after each block of the levels in
  ``attn_levels`` (the lowest resolution by default), and a downsampling conv between levels; a mid block
  (res, attn, res); GroupNorm → SiLU → conv_out to ``z_channels``. f = 2^(levels − 1).
- **Downsampling** is taming's: pad (0, 1, 0, 1) (right and bottom by one zero) then a 3×3 conv with stride 2 and no
  padding — taming's choice, kept so that its weights see the alignment they were trained with (a stride-2 conv with
  padding 1 gives the same sizes, its grid offset by one pixel). **Upsampling**: nearest ×2, then a 3×3 conv.
- **Parameter names** are taming's (``encoder.down.{i}.block.{j}.conv1``, ``encoder.down.{i}.attn.{j}.q``,
  ``encoder.mid.attn_1``, ``decoder.up.{i}.upsample.conv`` with ``up[i]`` = level i, ``quant_conv``,
  ``post_quant_conv``), so the encoder/decoder weights of a taming checkpoint of the same shape load by name; only
  the quantizer differs (taming: ``quantize.embedding``, codes of ``z_channels`` dims).
- **Decoder** mirrors the encoder: conv_in, mid block, per level (deepest first) ``num_res_blocks + 1`` ResNet blocks
  (+ attention on ``attn_levels``) and an upsample, GroupNorm → SiLU → conv_out to RGB.
- **Quantizer** (pluggable, ``quantizer=``): ``"vq"`` (default) is the LlamaGen-style codebook of
  :class:`~vistok.quantizers.VectorQuantizer` — ``codebook_size`` l2-normalized codes of ``code_dim`` (8) channels
  behind linear projections from/to ``z_channels``, commitment β = 0.25 on the encoder term; ``"lfq"`` uses
  log2(codebook_size) bits, ``"fsq"`` the ``levels`` given in ``quantizer_kwargs`` (their product must equal
  ``codebook_size``). Token id = codebook row (VQ), the quantizer's own layout otherwise.

Conventions (those of :mod:`vistok.tokenizers.magvit2`):

- **Pixels** are floats in [−1, 1]. Images are ``(B, 3, H, W)`` → ids ``(B, H', W')``; a video ``(B, 3, T, H, W)`` is
  tokenized **frame by frame** → ids ``(B, T, H', W')`` (temporal factor 1), exactly the ids of each frame encoded as
  an image — what LVM's visual sentences are made of.
- **Sizes.** H and W must be multiples of f, or ``pad=True`` pads by replication (bottom/right). ``forward`` crops its
  reconstruction back itself; ``encode`` returns the ids of the padded input and ``decode(ids, size=(H, W))`` (or
  ``(T, H, W)`` for video) crops — the caller keeps the size.
- ``chunk_frames`` (encode/decode of videos) runs that many frames through the network at a time, bounding memory;
  the result equals the one-shot result.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.quantizers import FSQ, LFQ, QuantizerOutput, VectorQuantizer
from vistok.registry import PresetMixin, register_model
from vistok.tokenizers.magvit2 import TokenizerOutput

__all__ = ["QUANTIZER_KINDS", "VQGANConfig", "VQGANTokenizer", "build_vqgan_quantizer"]

# ---------------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------------


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ε = 1e-6 and the largest group count ≤ ``groups`` dividing ``channels`` (taming: 32 groups)."""
    return nn.GroupNorm(math.gcd(channels, groups), channels, eps=1e-6, affine=True)


def conv3x3(in_channels: int, out_channels: int) -> nn.Conv2d:
    return nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1)


class ResnetBlock(nn.Module):
    """GroupNorm → SiLU → conv → GroupNorm → SiLU → conv, plus the input (through a 1×1 conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.norm1, self.conv1 = group_norm(in_channels, groups), conv3x3(in_channels, out_channels)
        self.norm2, self.conv2 = group_norm(out_channels, groups), conv3x3(out_channels, out_channels)
        self.nin_shortcut = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.nin_shortcut(x) + h


class AttnBlock(nn.Module):
    """Single-head self-attention over the H·W positions (1×1 convs for q, k, v and the output), residual."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, groups)
        self.q, self.k, self.v = (nn.Conv2d(channels, channels, 1) for _ in range(3))
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        b, c, h, w = x.shape
        y = self.norm(x)
        q, k, v = (proj(y).reshape(b, 1, c, h * w).transpose(-1, -2) for proj in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)  # (B, 1, H·W, C), scale 1/√C
        return x + self.proj_out(out.transpose(-1, -2).reshape(b, c, h, w))


class Downsample(nn.Module):
    """Taming's downsampling: zero-pad right and bottom by one, then a 3×3 conv with stride 2 (H, W → H/2, W/2)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, kernel_size=3, stride=2, padding=0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour ×2, then a 3×3 conv."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = conv3x3(channels, channels)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class Level(nn.Module):
    """The ResNet blocks of one level (``block``), each followed by attention (``attn``) on attention levels, then the
    level's ``downsample`` (encoder) or ``upsample`` (decoder), if any — taming's module names."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        num_blocks: int,
        attention: bool,
        groups: int,
        downsample: bool = False,
        upsample: bool = False,
    ) -> None:
        super().__init__()
        ins = [in_channels] + [out_channels] * (num_blocks - 1)  # the first block changes the channels
        self.block = nn.ModuleList(ResnetBlock(c_in, out_channels, groups) for c_in in ins)
        self.attn = nn.ModuleList(AttnBlock(out_channels, groups) for _ in range(num_blocks if attention else 0))
        self.downsample = Downsample(out_channels) if downsample else None
        self.upsample = Upsample(out_channels) if upsample else None

    def forward(self, x: Tensor) -> Tensor:
        for i, block in enumerate(self.block):
            x = block(x)
            x = self.attn[i](x) if self.attn else x
        x = x if self.downsample is None else self.downsample(x)
        return x if self.upsample is None else self.upsample(x)


class MidBlock(nn.Module):
    """ResNet block → attention → ResNet block at the bottleneck resolution."""

    def __init__(self, channels: int, groups: int) -> None:
        super().__init__()
        self.block_1 = ResnetBlock(channels, channels, groups)
        self.attn_1 = AttnBlock(channels, groups)
        self.block_2 = ResnetBlock(channels, channels, groups)

    def forward(self, x: Tensor) -> Tensor:
        return self.block_2(self.attn_1(self.block_1(x)))


# ---------------------------------------------------------------------------------------------------------------------
# Encoder / decoder
# ---------------------------------------------------------------------------------------------------------------------


def level_channels(config: VQGANConfig) -> list[int]:
    return [config.base_channels * m for m in config.channel_multipliers]


class Encoder(nn.Module):
    """conv_in → per level: ResNet blocks (+ attention), downsample (none after the last) → mid → norm → SiLU → conv.

    Output: (B, z_channels, H/f, W/f), before ``quant_conv``. ``down[i]`` is level i (full resolution first).
    """

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        channels, groups, last = level_channels(config), config.norm_groups, len(config.channel_multipliers) - 1
        self.conv_in = conv3x3(config.in_channels, config.base_channels)
        ins = [config.base_channels, *channels[:-1]]  # the channels entering each level
        attn, n = config.attn_levels, config.num_res_blocks
        self.down = nn.ModuleList(
            Level(ins[i], c, n, i in attn, groups, downsample=i < last) for i, c in enumerate(channels)
        )
        self.mid = MidBlock(channels[-1], groups)
        self.norm_out = group_norm(channels[-1], groups)
        self.conv_out = conv3x3(channels[-1], config.z_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """conv_in → mid → per level, deepest first: ResNet blocks × (n + 1) (+ attention), upsample (none after level 0)
    → norm → SiLU → conv.

    Input: (B, z_channels, H/f, W/f), after ``post_quant_conv``. ``up[i]`` is level i, as in taming: the deepest level
    runs first, so ``up`` is iterated in reverse.
    """

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        channels, groups, last = level_channels(config), config.norm_groups, len(config.channel_multipliers) - 1
        self.conv_in = conv3x3(config.z_channels, channels[-1])
        self.mid = MidBlock(channels[-1], groups)
        ins = [channels[min(i + 1, last)] for i in range(last + 1)]  # the channels entering each level
        attn, n = config.attn_levels, config.num_res_blocks + 1
        self.up = nn.ModuleList(Level(ins[i], c, n, i in attn, groups, upsample=i > 0) for i, c in enumerate(channels))
        self.norm_out = group_norm(channels[0], groups)
        self.conv_out = conv3x3(channels[0], config.in_channels)

    def forward(self, z: Tensor) -> Tensor:
        h = self.mid(self.conv_in(z))
        for level in reversed(self.up):
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(h)))


# ---------------------------------------------------------------------------------------------------------------------
# Config and quantizer
# ---------------------------------------------------------------------------------------------------------------------

QUANTIZER_KINDS = ("vq", "lfq", "fsq")
"""Quantizer kinds a :class:`VQGANConfig` can name (see :func:`build_vqgan_quantizer`)."""


@dataclass
class VQGANConfig(PresetMixin):
    """Architecture and quantizer of a VQGAN tokenizer (plain JSON in ``config.json``).

    Levels: ``len(channel_multipliers)`` with ``base_channels × multiplier`` channels and ``num_res_blocks`` ResNet
    blocks each in the encoder (one more in the decoder); every level transition halves H and W, so the spatial
    factor is 2^(levels − 1). ``attn_levels``: 0-based levels with self-attention after every ResNet block (the mid
    block always has it). ``z_channels``: channels of the latent handed to the quantizer. ``codebook_size``: the
    vocabulary; ``code_dim``: VQ code channels. ``quantizer_kwargs`` (JSON values) are passed on to the quantizer,
    overriding the defaults of :func:`build_vqgan_quantizer`.
    """

    in_channels: int = 3
    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 1, 2, 2, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = (4,)
    z_channels: int = 256
    codebook_size: int = 8192
    code_dim: int = 8
    quantizer: str = "vq"
    quantizer_kwargs: dict[str, Any] = field(default_factory=dict)
    norm_groups: int = 32
    spatial_factor: int = field(init=False)

    def __post_init__(self) -> None:
        self.channel_multipliers = tuple(int(m) for m in self.channel_multipliers)
        self.attn_levels = tuple(sorted({int(level) for level in self.attn_levels}))
        self._validate()
        self.spatial_factor = 2 ** (len(self.channel_multipliers) - 1)

    def _validate(self) -> None:
        sizes = (self.in_channels, self.base_channels, self.z_channels, self.codebook_size, self.norm_groups)
        if min(sizes) < 1 or not self.channel_multipliers or min(self.channel_multipliers) < 1:
            raise ValueError(
                f"channels, multipliers, codebook_size and norm_groups must be positive, got in_channels="
                f"{self.in_channels}, base_channels={self.base_channels}, channel_multipliers="
                f"{self.channel_multipliers}, z_channels={self.z_channels}, codebook_size={self.codebook_size}, "
                f"norm_groups={self.norm_groups}"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        levels = len(self.channel_multipliers)
        if any(not 0 <= level < levels for level in self.attn_levels):
            raise ValueError(f"attn_levels must be in [0, {levels}) for {levels} levels, got {self.attn_levels}")
        if self.quantizer not in QUANTIZER_KINDS:
            raise ValueError(f"quantizer must be one of {QUANTIZER_KINDS}, got {self.quantizer!r}")
        if self.quantizer == "lfq" and self.codebook_size & (self.codebook_size - 1):
            raise ValueError(f"quantizer 'lfq' needs a power-of-two codebook_size, got {self.codebook_size}")
        if self.quantizer == "fsq":
            self._validate_fsq_levels()

    def _validate_fsq_levels(self) -> None:
        levels = self.quantizer_kwargs.get("levels")
        if not levels:
            raise ValueError("quantizer 'fsq' needs quantizer_kwargs={'levels': [...]} (e.g. [8, 8, 8, 4, 4] = 8192)")
        if math.prod(levels) != self.codebook_size:
            raise ValueError(
                f"FSQ levels {list(levels)} give {math.prod(levels)} codes, expected codebook_size {self.codebook_size}"
            )


def build_vqgan_quantizer(config: VQGANConfig) -> nn.Module:
    """The quantizer of ``config``, taking ``z_channels`` channels and yielding ``codebook_size`` ids.

    - ``"vq"``: ``VectorQuantizer(codebook_size, z_channels, code_dim, l2_normalize=True, beta=0.25)`` (LlamaGen);
    - ``"lfq"``: ``LFQ(num_bits=log2(codebook_size), dim=z_channels)``;
    - ``"fsq"``: ``FSQ(levels, dim=z_channels)``.
    """
    kwargs = dict(config.quantizer_kwargs)
    try:
        if config.quantizer == "vq":
            kwargs = {"l2_normalize": True, "beta": 0.25, **kwargs}
            return VectorQuantizer(config.codebook_size, config.z_channels, config.code_dim, **kwargs)
        if config.quantizer == "lfq":
            return LFQ(num_bits=config.codebook_size.bit_length() - 1, dim=config.z_channels, **kwargs)
        return FSQ(dim=config.z_channels, **kwargs)
    except TypeError as e:
        msg = f"quantizer_kwargs {config.quantizer_kwargs} do not fit quantizer {config.quantizer!r}: {e}"
        raise ValueError(msg) from e


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def pixel_frames(
    x: Tensor, channels: int, padded_size: Callable[[int, int, bool], tuple[int, int]], pad: bool
) -> tuple[Tensor, int | None]:
    """Check pixels of an image (B, C, H, W) or a video (B, C, T, H, W) and pad them by replication to
    ``padded_size(H, W, pad)`` (which raises when they do not fit and ``pad`` is off); a video becomes a batch of
    frames. Returns (frames, B or None)."""
    if not isinstance(x, Tensor) or not x.is_floating_point():
        got = x.dtype if isinstance(x, Tensor) else type(x).__name__
        raise TypeError(f"expected float pixels in [-1, 1], got {got} (convert uint8 with x.float() / 127.5 - 1)")
    c = channels
    if x.ndim not in (4, 5) or x.shape[1] != c:
        raise ValueError(f"expected an image (B, {c}, H, W) or a video (B, {c}, T, H, W), got {tuple(x.shape)}")
    if x.ndim == 5 and x.shape[2] < 1:
        raise ValueError(f"expected at least 1 frame, got a video of shape {tuple(x.shape)}")
    frames, batch = (_frames(x), x.shape[0]) if x.ndim == 5 else (x, None)
    h, w = padded_size(*frames.shape[-2:], pad=pad)
    if (h, w) != tuple(frames.shape[-2:]):
        frames = F.pad(frames, (0, w - frames.shape[-1], 0, h - frames.shape[-2]), mode="replicate")
    return frames, batch


def id_frames(ids: Tensor, codebook_size: int) -> tuple[Tensor, int | None]:
    """Check token ids of an image (B, H', W') or a video (B, T', H', W') against ``codebook_size``; video ids become
    (B·T', H', W'). Returns (ids, B or None). Shared by the pixel tokenizers that decode id grids frame by frame."""
    if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
        raise TypeError(f"expected integer token ids, got {got}")
    if ids.ndim not in (3, 4):
        raise ValueError(f"expected image ids (B, H', W') or video ids (B, T', H', W'), got {tuple(ids.shape)}")
    if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= codebook_size):
        raise ValueError(f"token ids must be in [0, {codebook_size}), got range [{int(ids.min())}, {int(ids.max())}]")
    return (ids.flatten(0, 1), ids.shape[0]) if ids.ndim == 4 else (ids, None)


def _frames(x: Tensor) -> Tensor:
    """(B, C, T, H, W) → (B·T, C, H, W), frames of one clip adjacent."""
    return x.transpose(1, 2).flatten(0, 1)


def _unframes(x: Tensor, batch: int) -> Tensor:
    """(B·T, C, H, W) → (B, C, T, H, W)."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)


def _check_chunk_frames(chunk_frames: int | None) -> int | None:
    if chunk_frames is not None and (not isinstance(chunk_frames, int) or chunk_frames < 1):
        raise ValueError(f"chunk_frames must be a positive int, got {chunk_frames!r}")
    return chunk_frames


def _in_chunks(fn: Callable[[Tensor], Tensor], x: Tensor, chunk: int | None) -> Tensor:
    """``fn`` over the leading dim of ``x``, ``chunk`` items at a time (all at once for None)."""
    return fn(x) if chunk is None else torch.cat([fn(part) for part in x.split(chunk)])


class VQGANTokenizer(nn.Module, PretrainedMixin):
    """VQGAN tokenizer: pixels ⇄ token ids for images, and for videos frame by frame (see the module docstring).

    Build it from a preset with ``create_model("vqgan-lvm")`` or ``VQGANTokenizer(VQGANConfig.from_name(...))``.
    ``encode``/``decode`` are inference calls (use ``.eval()``: in training mode the quantizer updates its statistics).
    """

    config_class = VQGANConfig
    model_type = "vqgan"
    temporal_factor = 1

    def __init__(self, config: VQGANConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)
        self.quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        self.quantizer = build_vqgan_quantizer(config)
        self.post_quant_conv = nn.Conv2d(config.z_channels, config.z_channels, 1)
        self.spatial_factor = config.spatial_factor
        self.latent_channels = config.z_channels
        self.codebook_size: int = self.quantizer.codebook_size

    # -- shapes and checks

    def token_grid(self, shape: Sequence[int], pad: bool = False) -> tuple[int, ...]:
        """Token grid for an input of shape (H, W) → (H', W'), or (T, H, W) → (T, H', W') (padded size with pad)."""
        if len(shape) not in (2, 3):
            raise ValueError(f"expected an input shape (T, H, W) or (H, W), got {tuple(shape)}")
        if len(shape) == 3 and shape[0] < 1:
            raise ValueError(f"expected at least 1 frame, got T={shape[0]}")
        h, w = self._padded_size(*shape[-2:], pad=pad)
        return (*shape[:-2], h // self.spatial_factor, w // self.spatial_factor)

    def _padded_size(self, h: int, w: int, pad: bool) -> tuple[int, int]:
        """(H, W) padded up to multiples of f; without pad, a mismatch raises."""
        f = self.spatial_factor
        if min(h, w) < 1:
            raise ValueError(f"expected at least 1×1 pixels, got {h}×{w}")
        ph, pw = -h % f, -w % f
        if (ph or pw) and not pad:
            raise ValueError(
                f"expected H and W to be multiples of the spatial factor {f}, got {h}×{w} "
                f"(pass pad=True to pad by replication to {h + ph}×{w + pw})"
            )
        return h + ph, w + pw

    def _as_frames(self, x: Tensor, pad: bool) -> tuple[Tensor, int | None]:
        return pixel_frames(x, self.config.in_channels, self._padded_size, pad)

    def _as_id_frames(self, ids: Tensor) -> tuple[Tensor, int | None]:
        return id_frames(ids, self.codebook_size)

    # -- encoding

    def _latents(self, frames: Tensor) -> Tensor:
        return self.quant_conv(self.encoder(frames))

    def encode_latents(self, x: Tensor, pad: bool = False) -> Tensor:
        """Pre-quantization latents, channel-first: (B, K, H', W') for an image, (B, K, T, H', W') for a video."""
        frames, batch = self._as_frames(x, pad)
        z = self._latents(frames)
        return z if batch is None else _unframes(z, batch)

    def quantize(self, z: Tensor) -> QuantizerOutput:
        """The quantizer on channel-first latents of any layout."""
        return self.quantizer(z)

    def encode(self, x: Tensor, pad: bool = False, chunk_frames: int | None = None) -> Tensor:
        """Token ids: image (B, C, H, W) → (B, H', W'); video (B, C, T, H, W) → (B, T, H', W'), frame by frame.

        ``pad``: pad H, W by replication to multiples of f (the ids then cover the padded size; pass the original
        ``size`` to :meth:`decode`). ``chunk_frames``: encode that many frames (of all clips) at a time.
        """
        frames, batch = self._as_frames(x, pad)
        ids = _in_chunks(lambda f: self.quantizer(self._latents(f)).indices, frames, _check_chunk_frames(chunk_frames))
        return ids if batch is None else ids.unflatten(0, (batch, -1))

    # -- decoding

    def decode_latents(self, q: Tensor) -> Tensor:
        """Quantized latents → pixels: (B, K, H', W') → image; (B, K, T, H', W') → video (B, C, T, H, W)."""
        k = self.latent_channels
        if q.ndim not in (4, 5) or q.shape[1] != k:
            raise ValueError(f"expected latents (B, {k}, H', W') or (B, {k}, T, H', W'), got {tuple(q.shape)}")
        if q.ndim == 4:
            return self.decoder(self.post_quant_conv(q))
        return _unframes(self.decoder(self.post_quant_conv(_frames(q))), q.shape[0])

    def decode(self, ids: Tensor, size: Sequence[int] | None = None, chunk_frames: int | None = None) -> Tensor:
        """Token ids → pixels: (B, H', W') → (B, C, H, W); (B, T, H', W') → (B, C, T, H, W).

        ``size``: crop to (H, W) or, for video, (T, H, W) — the input size of an ``encode(..., pad=True)``.
        ``chunk_frames``: decode that many frames at a time (equal to one-shot).
        """
        id_frames, batch = self._as_id_frames(ids)
        x = _in_chunks(self._decode_frames, id_frames, _check_chunk_frames(chunk_frames))
        x = x if batch is None else _unframes(x, batch)
        return x if size is None else self._crop(x, size)

    def _decode_frames(self, ids: Tensor) -> Tensor:
        q = self.quantizer.indices_to_quantized(ids).to(self.post_quant_conv.weight.dtype)
        return self.decoder(self.post_quant_conv(q))

    @staticmethod
    def _crop(x: Tensor, size: Sequence[int]) -> Tensor:
        """Crop the trailing (H, W) or (T, H, W) dims of ``x`` to ``size`` (which must not exceed them)."""
        size = tuple(int(s) for s in size)
        dims = tuple(x.shape[x.ndim - len(size) :])
        if len(size) not in (2, 3) or (len(size) == 3 and x.ndim != 5) or any(s > d for s, d in zip(size, dims)):
            raise ValueError(f"size must be (H, W) or, for video, (T, H, W) no larger than {dims}, got {size}")
        return x[(..., *(slice(0, s) for s in size))]

    # -- training

    def forward(self, x: Tensor, pad: bool = False) -> TokenizerOutput:
        """Encode, quantize and decode; ``recon`` has the shape of ``x`` (cropped back when ``pad`` padded it)."""
        frames, batch = self._as_frames(x, pad)
        out = self.quantizer(self._latents(frames))
        h, w = x.shape[-2:]
        recon = self.decoder(self.post_quant_conv(out.quantized))[..., :h, :w]
        if batch is not None:
            recon, indices = _unframes(recon, batch), out.indices.unflatten(0, (batch, -1))
        else:
            indices = out.indices
        return TokenizerOutput(recon, indices, out.loss, out.metrics)

    def last_layer_weight(self) -> Tensor:
        """The decoder's final conv weight (for the adaptive GAN loss weight)."""
        return self.decoder.conv_out.weight


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------

PRESETS: dict[str, VQGANConfig] = {
    # f = 16 like LVM's, few channels: 64² → 4×4 tokens, 1,024 codes; runs on a CPU in seconds.
    "vqgan-tiny": VQGANConfig(
        base_channels=16,
        channel_multipliers=(1, 1, 2, 2, 4),
        num_res_blocks=1,
        attn_levels=(4,),
        z_channels=32,
        codebook_size=1024,
        norm_groups=8,
    ),
    # f = 8 for small images: 64² → 8×8 tokens, 1,024 codes.
    "vqgan-tiny-f8": VQGANConfig(
        base_channels=16,
        channel_multipliers=(1, 2, 2, 4),
        num_res_blocks=1,
        attn_levels=(3,),
        z_channels=32,
        codebook_size=1024,
        norm_groups=8,
    ),
    # LVM's tokenizer: taming's f16 VQGAN (ch 128, mult (1, 1, 2, 2, 4), 2 res blocks, attention at 16² for 256²
    # input), 8,192 LlamaGen-style 8-dim l2-normalized codes: 256² → 16×16 = 256 tokens.
    "vqgan-lvm": VQGANConfig(),
}

register_model("vqgan", VQGANTokenizer, presets=PRESETS)
