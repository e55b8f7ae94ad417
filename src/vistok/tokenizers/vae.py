"""KL-regularized VAE — Rombach et al., "High-Resolution Image Synthesis with Latent Diffusion Models", CVPR 2022
(§3 and appendix G: the "KL-reg" autoencoder, f = 8), the continuous image latents of Transfusion — Zhou et al.,
2024, §2.2 / §4.1: a VAE with 8× spatial downsampling and 8 latent channels, 256² → 32×32×8 (PAPERS.md §4).

    x (B, 3, H, W) → Encoder → quant_conv → (mean, logvar) (B, C, H/f, W/f) each → z = mean + σ·ε (or mean)
    z → post_quant_conv → Decoder → x̂ (B, 3, H, W)

- **Encoder / decoder**: the taming/LDM convolutional autoencoder — conv_in; per level ``num_res_blocks`` ResNet
  blocks (GroupNorm → SiLU → conv, twice; 1×1 "nin" shortcut when channels change), self-attention after each block
  on ``attn_levels``, a downsampling conv between levels (zero-pad right/bottom by one, 3×3 stride-2 conv); a mid
  block (res, attention, res); GroupNorm → SiLU → conv_out. The encoder ends in ``2·latent_channels`` channels (mean
  and log-variance: LDM's ``double_z``); the decoder mirrors it with ``num_res_blocks + 1`` blocks per level and
  nearest ×2 + conv upsampling. f = 2^(levels − 1). Parameter names follow LDM's ``AutoencoderKL``
  (``encoder.down.{i}.block.{j}.conv1``, ``encoder.mid.attn_1.q``, ``quant_conv``, ``post_quant_conv``, …).
- **Posterior** q(z|x) = N(mean, diag(exp(logvar))), logvar clamped to [−30, 20] as in LDM
  (:class:`DiagonalGaussian`). Its KL to the prior N(0, I), per picture, summed over the latent's elements:

      KL = ½ Σ_i (mean_i² + exp(logvar_i) − 1 − logvar_i)        (:func:`gaussian_kl`)

  The trainer (:mod:`vistok.train.tokenizer`) adds ``kl_weight · KL / (3·H·W)`` to the reconstruction losses (LDM:
  weight 10⁻⁶ on the summed KL next to a summed per-pixel loss; dividing both by the pixel count keeps that balance
  next to vistok's per-pixel mean losses).
- **Diffusion scaling**: ``encode`` returns ``(z − shift_factor) · scaling_factor`` and ``decode`` undoes it, so a
  diffusion model sees latents of about unit variance (LDM's ``scale_factor``; SD3/FLUX add a shift). Both live in
  the config (saved in ``config.json``); :meth:`KLVAE.fit_latent_scaling` computes them from data (the tokenizer
  trainer does so before writing its final model). ``normalize=False`` gives the raw latents. Optionally, per latent
  channel c, ``channel_shift``/``channel_scale`` standardize each channel on top of that: ``encode`` returns
  ``((z − shift_factor)·scaling_factor − channel_shift[c])·channel_scale[c]`` (``fit_latent_scaling(...,
  per_channel=True)``). A small VAE's channels can have very different means and spreads (vae-tiny-f4 on the
  captioned scenes: means −1 … 1.7 and spreads 0.1 … 0.75 after the one global scale), so one scale leaves most of
  the diffusion model's unit variance in constant offsets and buries the small-spread channels under the noise.

Conventions (those of :mod:`vistok.tokenizers.vqgan`): pixels are floats in [−1, 1]; images ``(B, 3, H, W)`` →
latents ``(B, C, H/f, W/f)``; a video ``(B, 3, T, H, W)`` is encoded **frame by frame** → ``(B, C, T, H/f, W/f)``.
H and W must be multiples of f, or ``pad=True`` pads by replication (``decode(z, size=(H, W))`` crops back).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.registry import PresetMixin, register_model

__all__ = ["KLVAE", "DiagonalGaussian", "VAEConfig", "VAEOutput", "gaussian_kl"]

LOGVAR_RANGE = (-30.0, 20.0)

# ---------------------------------------------------------------------------------------------------------------------
# Posterior
# ---------------------------------------------------------------------------------------------------------------------


def gaussian_kl(mean: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mean, diag(exp(logvar))) ‖ N(0, I)) per item: ½ Σ (mean² + exp(logvar) − 1 − logvar) over all dims but
    the first → shape (B,)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar).flatten(1).sum(1)


@dataclass
class DiagonalGaussian:
    """The posterior q(z|x): ``mean`` and ``logvar`` (clamped to [−30, 20]), channel-first, same shape."""

    mean: Tensor
    logvar: Tensor

    def __post_init__(self) -> None:
        self.logvar = self.logvar.clamp(*LOGVAR_RANGE)

    @property
    def std(self) -> Tensor:
        return torch.exp(0.5 * self.logvar)

    def sample(self, generator: torch.Generator | None = None) -> Tensor:
        """z = mean + std·ε, ε ~ N(0, I) (reparameterized: gradients reach mean and logvar)."""
        eps = torch.randn(self.mean.shape, generator=generator, device=self.mean.device, dtype=self.mean.dtype)
        return self.mean + self.std * eps

    def mode(self) -> Tensor:
        return self.mean

    def kl(self) -> Tensor:
        """KL to N(0, I) per item (summed over all dims but the first), shape (B,)."""
        return gaussian_kl(self.mean.float(), self.logvar.float())


class VAEOutput(NamedTuple):
    """What :meth:`KLVAE.forward` returns.

    recon: the reconstruction (shape of the input); latents: the raw z that was decoded (unscaled); kl: the KL per
    picture (a video's frames are pictures), averaged over pictures (scalar); metrics: detached 0-d tensors.
    """

    recon: Tensor
    latents: Tensor
    kl: Tensor
    metrics: dict[str, Tensor]


# ---------------------------------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------------------------------


def group_norm(channels: int, groups: int) -> nn.GroupNorm:
    """GroupNorm with ε = 1e-6 and the largest group count ≤ ``groups`` dividing ``channels`` (LDM: 32 groups)."""
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
    """Zero-pad right and bottom by one, then a 3×3 conv with stride 2 (H, W → H/2, W/2) — LDM's downsampling."""

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
    """One level: ResNet blocks (``block``), each followed by attention (``attn``) on attention levels, then
    ``downsample`` (encoder) or ``upsample`` (decoder), if any."""

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
        ins = [in_channels] + [out_channels] * (num_blocks - 1)
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
    """ResNet block → attention → ResNet block at the latent resolution."""

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


def level_channels(config: VAEConfig) -> list[int]:
    return [config.base_channels * m for m in config.channel_multipliers]


class Encoder(nn.Module):
    """conv_in → per level: ResNet blocks (+ attention), downsample (none after the last) → mid → norm → SiLU → conv
    to ``2·latent_channels`` (mean and log-variance). ``down[i]`` is level i (full resolution first)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels, groups, last = level_channels(config), config.norm_groups, len(config.channel_multipliers) - 1
        self.conv_in = conv3x3(config.in_channels, config.base_channels)
        ins = [config.base_channels, *channels[:-1]]
        attn, n = config.attn_levels, config.num_res_blocks
        self.down = nn.ModuleList(
            Level(ins[i], c, n, i in attn, groups, downsample=i < last) for i, c in enumerate(channels)
        )
        self.mid = MidBlock(channels[-1], groups)
        self.norm_out = group_norm(channels[-1], groups)
        self.conv_out = conv3x3(channels[-1], 2 * config.latent_channels)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv_in(x)
        for level in self.down:
            h = level(h)
        return self.conv_out(F.silu(self.norm_out(self.mid(h))))


class Decoder(nn.Module):
    """conv_in → mid → per level, deepest first: ResNet blocks × (n + 1) (+ attention), upsample (none after level 0)
    → norm → SiLU → conv to RGB. ``up[i]`` is level i, iterated in reverse (LDM's order)."""

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        channels, groups, last = level_channels(config), config.norm_groups, len(config.channel_multipliers) - 1
        self.conv_in = conv3x3(config.latent_channels, channels[-1])
        self.mid = MidBlock(channels[-1], groups)
        ins = [channels[min(i + 1, last)] for i in range(last + 1)]
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
# Config
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class VAEConfig(PresetMixin):
    """Architecture of a KL-VAE, and its latent normalization for diffusion (plain JSON in ``config.json``).

    ``len(channel_multipliers)`` levels of ``base_channels × multiplier`` channels; f = 2^(levels − 1).
    ``attn_levels``: 0-based levels with self-attention after every ResNet block (the mid block always has it).
    ``latent_channels``: C of the latent (mean, log-variance and z each have C channels).
    ``scaling_factor`` / ``shift_factor``: ``encode`` returns ``(z − shift) · scale`` (set by
    :meth:`KLVAE.fit_latent_scaling`; 1 and 0 leave latents raw). ``channel_shift`` / ``channel_scale`` (one value
    per latent channel, or None): a per-channel standardization applied after that (``fit_latent_scaling(...,
    per_channel=True)``).
    """

    in_channels: int = 3
    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    attn_levels: tuple[int, ...] = ()
    latent_channels: int = 8
    norm_groups: int = 32
    scaling_factor: float = 1.0
    shift_factor: float = 0.0
    channel_shift: tuple[float, ...] | None = None
    channel_scale: tuple[float, ...] | None = None
    spatial_factor: int = field(init=False)

    def __post_init__(self) -> None:
        self.channel_multipliers = tuple(int(m) for m in self.channel_multipliers)
        self.attn_levels = tuple(sorted({int(level) for level in self.attn_levels}))
        sizes = (self.in_channels, self.base_channels, self.latent_channels, self.norm_groups)
        if min(sizes) < 1 or not self.channel_multipliers or min(self.channel_multipliers) < 1:
            raise ValueError(
                f"channels, multipliers and norm_groups must be positive, got in_channels={self.in_channels}, "
                f"base_channels={self.base_channels}, channel_multipliers={self.channel_multipliers}, "
                f"latent_channels={self.latent_channels}, norm_groups={self.norm_groups}"
            )
        if self.num_res_blocks < 1:
            raise ValueError(f"num_res_blocks must be >= 1, got {self.num_res_blocks}")
        levels = len(self.channel_multipliers)
        if any(not 0 <= level < levels for level in self.attn_levels):
            raise ValueError(f"attn_levels must be in [0, {levels}) for {levels} levels, got {self.attn_levels}")
        if not (math.isfinite(self.scaling_factor) and self.scaling_factor > 0 and math.isfinite(self.shift_factor)):
            raise ValueError(
                f"scaling_factor must be finite and > 0 and shift_factor finite, got {self.scaling_factor}, "
                f"{self.shift_factor}"
            )
        if (self.channel_shift is None) != (self.channel_scale is None):
            raise ValueError("channel_shift and channel_scale must be given together (or both None)")
        if self.channel_shift is not None:
            self.channel_shift = tuple(float(v) for v in self.channel_shift)
            self.channel_scale = tuple(float(v) for v in self.channel_scale)
            c = self.latent_channels
            if len(self.channel_shift) != c or len(self.channel_scale) != c:
                raise ValueError(
                    f"channel_shift and channel_scale need {c} values (one per latent channel), got "
                    f"{len(self.channel_shift)} and {len(self.channel_scale)}"
                )
            if not all(math.isfinite(v) for v in self.channel_shift) or not all(
                math.isfinite(v) and v > 0 for v in self.channel_scale
            ):
                raise ValueError(
                    f"channel_shift must be finite and channel_scale finite and > 0, got {self.channel_shift}, "
                    f"{self.channel_scale}"
                )
        self.spatial_factor = 2 ** (levels - 1)

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(channel_shift, channel_scale), or zeros and ones when unset."""
        if self.channel_shift is None or self.channel_scale is None:
            return (0.0,) * self.latent_channels, (1.0,) * self.latent_channels
        return self.channel_shift, self.channel_scale


# ---------------------------------------------------------------------------------------------------------------------
# Model
# ---------------------------------------------------------------------------------------------------------------------


def _frames(x: Tensor) -> Tensor:
    """(B, C, T, H, W) → (B·T, C, H, W), frames of one clip adjacent."""
    return x.transpose(1, 2).flatten(0, 1)


def _unframes(x: Tensor, batch: int) -> Tensor:
    """(B·T, C, H, W) → (B, C, T, H, W)."""
    return x.unflatten(0, (batch, -1)).transpose(1, 2)


class KLVAE(nn.Module, PretrainedMixin):
    """KL-regularized VAE: pixels ⇄ continuous latents, images and (frame by frame) videos. See the module docstring.

    Build it from a preset with ``create_model("vae-tiny")`` or ``KLVAE(VAEConfig.from_name("vae-f8c8"))``.
    """

    config_class = VAEConfig
    model_type = "vae"
    temporal_factor = 1

    def __init__(self, config: VAEConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)
        c = config.latent_channels
        self.quant_conv = nn.Conv2d(2 * c, 2 * c, 1)
        self.post_quant_conv = nn.Conv2d(c, c, 1)
        self.spatial_factor = config.spatial_factor
        self.latent_channels = c

    # -- shapes and checks

    def latent_shape(self, shape: Sequence[int], pad: bool = False) -> tuple[int, ...]:
        """Latent shape for an input of shape (H, W) → (C, H', W'), or (T, H, W) → (C, T, H', W')."""
        if len(shape) not in (2, 3):
            raise ValueError(f"expected an input shape (T, H, W) or (H, W), got {tuple(shape)}")
        h, w = self._padded_size(*shape[-2:], pad=pad)
        return (self.latent_channels, *shape[:-2], h // self.spatial_factor, w // self.spatial_factor)

    def _padded_size(self, h: int, w: int, pad: bool) -> tuple[int, int]:
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
        """Check pixels and (with pad) pad them; a video becomes a batch of frames. Returns (frames, B or None)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"expected float pixels in [-1, 1], got {got} (convert uint8 with x.float() / 127.5 - 1)")
        c = self.config.in_channels
        if x.ndim not in (4, 5) or x.shape[1] != c:
            raise ValueError(f"expected an image (B, {c}, H, W) or a video (B, {c}, T, H, W), got {tuple(x.shape)}")
        if x.ndim == 5 and x.shape[2] < 1:
            raise ValueError(f"expected at least 1 frame, got a video of shape {tuple(x.shape)}")
        frames, batch = (_frames(x), x.shape[0]) if x.ndim == 5 else (x, None)
        h, w = self._padded_size(*frames.shape[-2:], pad=pad)
        if (h, w) != tuple(frames.shape[-2:]):
            frames = F.pad(frames, (0, w - frames.shape[-1], 0, h - frames.shape[-2]), mode="replicate")
        return frames, batch

    def _as_latent_frames(self, z: Tensor) -> tuple[Tensor, int | None]:
        c = self.latent_channels
        if not isinstance(z, Tensor) or not z.is_floating_point():
            got = z.dtype if isinstance(z, Tensor) else type(z).__name__
            raise TypeError(f"expected float latents, got {got}")
        if z.ndim not in (4, 5) or z.shape[1] != c:
            raise ValueError(f"expected latents (B, {c}, H', W') or (B, {c}, T, H', W'), got {tuple(z.shape)}")
        return (_frames(z), z.shape[0]) if z.ndim == 5 else (z, None)

    # -- encoding

    def _posterior(self, frames: Tensor) -> DiagonalGaussian:
        mean, logvar = self.quant_conv(self.encoder(frames)).chunk(2, dim=1)
        return DiagonalGaussian(mean, logvar)

    def posterior(self, x: Tensor, pad: bool = False) -> DiagonalGaussian:
        """q(z|x) of raw (unnormalized) latents: mean and logvar (B, C, H', W'), or (B, C, T, H', W') for a video."""
        frames, batch = self._as_frames(x, pad)
        post = self._posterior(frames)
        return post if batch is None else DiagonalGaussian(_unframes(post.mean, batch), _unframes(post.logvar, batch))

    def _channel_stats(self, z: Tensor) -> tuple[Tensor, Tensor] | None:
        """(shift, scale) shaped to broadcast over latents (B, C, ...) like ``z``, or None without channel stats."""
        cfg = self.config
        if cfg.channel_shift is None:
            return None
        shape = (1, -1, *([1] * (z.ndim - 2)))
        shift, scale = (torch.tensor(v, dtype=z.dtype, device=z.device).view(shape) for v in cfg.channel_stats())
        return shift, scale

    def normalize(self, z: Tensor) -> Tensor:
        """Raw latents → diffusion latents: ``(z − shift_factor) · scaling_factor``, then per channel
        ``(· − channel_shift) · channel_scale`` when set."""
        z = (z - self.config.shift_factor) * self.config.scaling_factor
        stats = self._channel_stats(z)
        return z if stats is None else (z - stats[0]) * stats[1]

    def denormalize(self, z: Tensor) -> Tensor:
        """Diffusion latents → raw latents (inverse of :meth:`normalize`)."""
        stats = self._channel_stats(z)
        z = z if stats is None else z / stats[1] + stats[0]
        return z / self.config.scaling_factor + self.config.shift_factor

    def encode(
        self,
        x: Tensor,
        sample: bool = False,
        generator: torch.Generator | None = None,
        pad: bool = False,
        normalize: bool = True,
    ) -> Tensor:
        """Latents of pixels: image (B, 3, H, W) → (B, C, H/f, W/f); video (B, 3, T, H, W) → (B, C, T, H/f, W/f).

        ``sample=False`` gives the posterior mean (deterministic); ``sample=True`` draws z = mean + σ·ε with
        ``generator``. ``normalize`` applies the config's shift and scale (see :meth:`normalize`). ``pad``: pad
        H, W by replication to multiples of f.
        """
        post = self.posterior(x, pad=pad)
        z = post.sample(generator) if sample else post.mode()
        return self.normalize(z) if normalize else z

    # -- decoding

    def decode(self, z: Tensor, size: Sequence[int] | None = None, normalize: bool = True) -> Tensor:
        """Latents → pixels: (B, C, H', W') → (B, 3, H, W); (B, C, T, H', W') → (B, 3, T, H, W).

        ``normalize``: ``z`` is normalized (what :meth:`encode` returns by default) and is turned back to raw first.
        ``size``: crop to (H, W) — the input size of an ``encode(..., pad=True)``.
        """
        frames, batch = self._as_latent_frames(z)
        frames = self.denormalize(frames) if normalize else frames
        x = self.decoder(self.post_quant_conv(frames))
        x = x if batch is None else _unframes(x, batch)
        if size is not None:
            size = tuple(int(s) for s in size)
            if len(size) != 2 or size[0] > x.shape[-2] or size[1] > x.shape[-1]:
                raise ValueError(f"size must be (H, W) no larger than {tuple(x.shape[-2:])}, got {size}")
            x = x[..., : size[0], : size[1]]
        return x

    # -- training

    def forward(
        self, x: Tensor, sample: bool = True, generator: torch.Generator | None = None, pad: bool = False
    ) -> VAEOutput:
        """Encode, sample z (the mean with ``sample=False``), decode. ``recon`` has the shape of ``x``; ``kl`` is
        the KL per picture averaged over pictures; ``latents`` are the raw z."""
        frames, batch = self._as_frames(x, pad)
        post = self._posterior(frames)
        z = post.sample(generator) if sample else post.mode()
        h, w = x.shape[-2:]
        recon = self.decoder(self.post_quant_conv(z))[..., :h, :w]
        kl = post.kl().mean()
        metrics = {
            "kl": kl.detach(),
            "latent_mean": post.mean.detach().float().mean(),
            "latent_std": post.mean.detach().float().std(),
            "posterior_std": post.std.detach().float().mean(),
        }
        if batch is not None:
            recon, z = _unframes(recon, batch), _unframes(z, batch)
        return VAEOutput(recon, z, kl, metrics)

    def last_layer_weight(self) -> Tensor:
        """The decoder's final conv weight (for the adaptive GAN loss weight)."""
        return self.decoder.conv_out.weight

    @torch.no_grad()
    def fit_latent_scaling(
        self, batches: Iterable[Tensor], center: bool = True, pad: bool = False, per_channel: bool = False
    ) -> tuple[float, float]:
        """Set ``config.scaling_factor`` (and ``shift_factor``) so that encoded latents have unit variance (and zero
        mean) over the pixels in ``batches`` (tensors as :meth:`encode` takes them), using the posterior mean.

        ``center=False`` keeps the shift at 0 and uses the root mean square (LDM's scale factor, 1/std of z, is the
        same up to the data's mean). ``per_channel=True`` also standardizes every latent channel on its own
        (``channel_shift`` = its mean after the global scaling, or 0 with ``center=False``; ``channel_scale`` = 1 / its
        standard deviation or root mean square); otherwise any channel statistics are cleared. Returns
        ``(scaling_factor, shift_factor)``.
        """
        c = self.latent_channels
        total = torch.zeros(c, dtype=torch.float64)
        total_sq = torch.zeros(c, dtype=torch.float64)
        count = 0
        for x in batches:
            z = self.posterior(x, pad=pad).mean.double().transpose(0, 1).reshape(c, -1).cpu()
            total += z.sum(1)
            total_sq += z.pow(2).sum(1)
            count += z.shape[1]
        if count == 0:
            raise ValueError("fit_latent_scaling needs at least one batch of pixels")
        mean = float(total.sum()) / (count * c) if center else 0.0
        var = max(float(total_sq.sum()) / (count * c) - mean * mean, 0.0)
        if not math.isfinite(var) or var <= 1e-20:
            raise ValueError(f"latents have no spread (variance {var}); cannot set a scaling factor")
        cfg = self.config
        cfg.scaling_factor, cfg.shift_factor = 1.0 / math.sqrt(var), mean
        cfg.channel_shift = cfg.channel_scale = None
        if per_channel:
            ch_mean = total / count if center else torch.zeros(c, dtype=torch.float64)
            ch_var = (total_sq / count - ch_mean.pow(2)).clamp(min=0.0)
            if not bool(torch.isfinite(ch_var).all()) or float(ch_var.min()) <= 1e-20:
                raise ValueError(f"a latent channel has no spread (variances {ch_var.tolist()})")
            # after the global step a channel's mean is (m_c − shift)·scale and its spread σ_c·scale
            s = cfg.scaling_factor
            cfg.channel_shift = tuple(float((m - mean) * s) for m in ch_mean)
            cfg.channel_scale = tuple(float(1.0 / (math.sqrt(v) * s)) for v in ch_var)
        return cfg.scaling_factor, cfg.shift_factor


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------

PRESETS: dict[str, VAEConfig] = {
    # f = 8, 8 latent channels like Transfusion's, narrow: 64² → 8×8×8; trains on a CPU in minutes at 64 px.
    "vae-tiny": VAEConfig(base_channels=32, channel_multipliers=(1, 2, 2, 4), num_res_blocks=1, norm_groups=8),
    # f = 4 for small pictures whose details are a few pixels across (the 64² captioned scenes: shapes about 12 px
    # wide cover under 2×2 latent cells at f = 8): 64² → 16×16×8 (a 2×2-patch Transfusion sees 64 patches per
    # picture, a 4×4-patch one 16). Half vae-tiny's width (0.7 M parameters): about 3× faster per step on a CPU.
    "vae-tiny-f4": VAEConfig(base_channels=16, channel_multipliers=(1, 2, 4), num_res_blocks=1, norm_groups=8),
    # Transfusion's VAE shape (8× down, 8 channels, 256² → 32×32×8) in LDM's f8 architecture (ch 128, mult
    # (1, 2, 4, 4), 2 res blocks, attention only in the mid block): about 84 M parameters.
    "vae-f8c8": VAEConfig(),
}

register_model("vae", KLVAE, presets=PRESETS)
