"""MAGVIT-v2 tokenizer — Yu et al., "Language Model Beats Diffusion: Tokenizer is Key to Visual Generation",
ICLR 2024, §3.2 (architecture) and §3.1 (lookup-free quantization, :class:`vistok.quantizers.LFQ`).

A causal 3-D CNN autoencoder with a discrete bottleneck:

    x (B, C, T, H, W) → Encoder → z (B, K, T', H', W') → quantizer → ids (B, T', H', W') / q → Decoder → x̂

Conventions:

- **Pixels** are floats in [−1, 1]; video is ``(B, C, T, H, W)``, an image ``(B, C, H, W)`` is a 1-frame video.
  Token ids follow the same rule: ``(B, T', H', W')`` for video, ``(B, H', W')`` for an image; their bit order is the
  quantizer's (LFQ: least significant bit = latent channel 0, the paper's order).
- **Causal in time.** Every convolution is a :class:`~vistok.layers.CausalConv3d` (time padded in front only) and
  every normalization is computed per frame, so an output frame never depends on later input frames.
- **Frame counts.** The encoder downsamples space by 2 at every level transition (strided convolution) and time by 2
  at the transitions listed in ``temporal_downsample`` (the late ones: 4× for video). With temporal factor s,
  1 + s·k frames → 1 + k latent frames; latent frame 0 sees frame 0 alone, latent frame j ≥ 1 sees frames ≤ s·j.
  Hence the tokens of an image equal the first-frame tokens of any video that starts with it.
- **Decoder** mirrors the encoder with depth-to-space upsampling: a causal conv makes C·s_t·4 channels, which are
  rearranged into s_t frames and 2×2 pixels; latent frame 0 gives one frame (the first s_t − 1 frames of the first
  chunk are dropped), so 1 + k latent frames → 1 + s_t·k frames. Its norms are **adaptive GroupNorms**: per-frame
  GroupNorm without affine, then ``y·(1 + γ(q)) + β(q)`` where γ, β are (1, 3, 3) convs of the quantized latent q
  resized to the feature's size. Time alignment is causal: at a stage u times finer in time than the latent, feature
  frame t uses latent frame ⌈t/u⌉ — the frame it is decoded from, never a later one.
- **Streaming.** ``encode(x, chunk_frames=N)`` / ``decode(ids, chunk_frames=N)`` run a long video in temporal chunks
  through :class:`StreamState`: one ``CausalConv3d.forward_chunk`` cache per convolution (a dict keyed by the conv
  module) plus, for the decoder, whether the first chunk is done (which decides the frame drop of depth-to-space
  and the alignment of the latent conditioning). Chunk outputs concatenated equal the one-shot result; memory is
  bounded by the chunk, not the video. ``encode_chunk`` / ``decode_chunk`` expose the same for true streaming.
- **Sizes.** H and W must be multiples of the spatial factor and T of the form 1 + s_t·k, or ``pad=True`` pads by
  replication (bottom/right edges, last frame). ``forward`` crops its reconstruction back itself; ``encode`` returns
  the ids of the padded input and ``decode(ids, size=(H, W) or (T, H, W))`` crops — the caller keeps the size.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.hub import PretrainedMixin
from vistok.layers import CausalConv3d
from vistok.quantizers import FSQ, LFQ, QuantizerOutput, VectorQuantizer
from vistok.registry import PresetMixin, register_model

__all__ = [
    "QUANTIZERS",
    "MagvitConfig",
    "MagvitTokenizer",
    "StreamState",
    "TokenizerOutput",
    "build_quantizer",
]

# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


class StreamState:
    """Streaming state of one video in one direction (use one for encoding, another for decoding).

    ``caches`` maps each :class:`CausalConv3d` to its ``forward_chunk`` cache; ``started`` turns True once the decoder
    has produced its first chunk (the first chunk is the one whose depth-to-space drops frames).
    """

    def __init__(self) -> None:
        self.caches: dict[nn.Module, Tensor] = {}
        self.started = False

    def conv(self, conv: CausalConv3d, x: Tensor) -> Tensor:
        """Run ``conv`` on the next chunk ``x``, updating its cache."""
        y, self.caches[conv] = conv.forward_chunk(x, self.caches.get(conv))
        return y


def run_conv(conv: CausalConv3d, x: Tensor, state: StreamState | None) -> Tensor:
    """``conv(x)`` on a whole video, or on the next chunk of a stream when ``state`` is given."""
    return conv(x) if state is None else state.conv(conv, x)


def is_first_chunk(state: StreamState | None) -> bool:
    """A whole video (no state) counts as its own first chunk."""
    return state is None or not state.started


def group_norm_per_frame(
    x: Tensor, num_groups: int, weight: Tensor | None = None, bias: Tensor | None = None, eps: float = 1e-6
) -> Tensor:
    """GroupNorm of every frame on its own: (B, C, T, H, W) → (B·T, C, H, W) → GroupNorm → back. Never mixes time."""
    b, c, t, h, w = x.shape
    y = F.group_norm(x.transpose(1, 2).reshape(b * t, c, h, w), num_groups, weight, bias, eps)
    return y.reshape(b, t, c, h, w).transpose(1, 2)


def num_groups_for(channels: int, groups: int) -> int:
    """The largest group count ≤ ``groups`` that divides ``channels``."""
    return math.gcd(channels, groups)


def expand_time(q: Tensor, factor: int, first: bool) -> Tensor:
    """Latent frames → the frames of a feature ``factor`` times finer in time: frame t ↦ latent frame ⌈t/factor⌉.

    Each latent frame is repeated ``factor`` times; in the first chunk the first ``factor − 1`` copies are dropped, so
    latent frame 0 gives one frame (the same rule as the decoder's depth-to-space).
    """
    if factor == 1:
        return q
    q = q.repeat_interleave(factor, dim=2)
    return q[:, :, factor - 1 :] if first else q


def depth_to_space(x: Tensor, time_factor: int, space_factor: int) -> Tensor:
    """(B, C·st·s·s, T, H, W) → (B, C, T·st, H·s, W·s); channel index = ((c·st + dt)·s + dh)·s + dw."""
    b, c, t, h, w = x.shape
    st, s = time_factor, space_factor
    x = x.reshape(b, c // (st * s * s), st, s, s, t, h, w)
    return x.permute(0, 1, 5, 2, 6, 3, 7, 4).reshape(b, -1, t * st, h * s, w * s)


class LatentCondition:
    """The quantized latent chunk the decoder is conditioned on, aligned on demand to a feature's frames and size.

    Alignments are memoized per (time factor, H, W), so the norms of one stage share one resize.
    """

    def __init__(self, q: Tensor, first: bool) -> None:
        self.q, self.first = q, first
        self._aligned: dict[tuple[int, int, int], Tensor] = {}

    def aligned(self, time_factor: int, size: Sequence[int]) -> Tensor:
        """q expanded in time by ``time_factor`` (causal rule of :func:`expand_time`), nearest-resized to ``size``."""
        key = (time_factor, int(size[0]), int(size[1]))
        if key not in self._aligned:
            q = expand_time(self.q, time_factor, self.first)
            self._aligned[key] = F.interpolate(q, size=(q.shape[2], *key[1:]), mode="nearest")
        return self._aligned[key]


# ---------------------------------------------------------------------------------------------------------------------
# Blocks — every block is called as block(x, cond, state): cond is the decoder's LatentCondition (None in the
# encoder), state the StreamState of a chunked run (None for a whole video).
# ---------------------------------------------------------------------------------------------------------------------


class FrameGroupNorm(nn.Module):
    """GroupNorm with a learned affine, applied to each frame separately (the encoder's norm)."""

    def __init__(self, channels: int, groups: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_groups, self.eps = num_groups_for(channels, groups), eps
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, cond: LatentCondition | None = None) -> Tensor:
        return group_norm_per_frame(x, self.num_groups, self.weight, self.bias, self.eps)


class AdaptiveGroupNorm(nn.Module):
    """Per-frame GroupNorm without affine, modulated by the quantized latent: y·(1 + γ(q)) + β(q).

    γ and β come from one (1, 3, 3) conv of the latent aligned to the feature (see :class:`LatentCondition`);
    it starts at zero, so the block starts as a plain GroupNorm. ``time_factor`` is how many times finer in time the
    feature is than the latent.
    """

    def __init__(self, channels: int, groups: int, cond_channels: int, time_factor: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.num_groups, self.eps, self.time_factor = num_groups_for(channels, groups), eps, time_factor
        self.to_scale_shift = CausalConv3d(cond_channels, 2 * channels, (1, 3, 3))
        nn.init.zeros_(self.to_scale_shift.conv.weight)
        nn.init.zeros_(self.to_scale_shift.conv.bias)

    def forward(self, x: Tensor, cond: LatentCondition | None = None) -> Tensor:
        if cond is None:
            raise ValueError("AdaptiveGroupNorm needs the quantized latent (cond)")
        scale, shift = self.to_scale_shift(cond.aligned(self.time_factor, x.shape[-2:])).chunk(2, dim=1)
        return group_norm_per_frame(x, self.num_groups, eps=self.eps) * (1 + scale) + shift


NormFactory = Callable[[int], nn.Module]


class ResBlock(nn.Module):
    """norm → SiLU → conv → norm → SiLU → conv, plus the input (through a 1×1×1 conv when channels change)."""

    def __init__(self, in_channels: int, out_channels: int, make_norm: NormFactory, **conv_kwargs: Any) -> None:
        super().__init__()
        self.norm1, self.norm2 = make_norm(in_channels), make_norm(out_channels)
        self.conv1 = CausalConv3d(in_channels, out_channels, **conv_kwargs)
        self.conv2 = CausalConv3d(out_channels, out_channels, **conv_kwargs)
        self.skip = CausalConv3d(in_channels, out_channels, 1) if in_channels != out_channels else None

    def forward(self, x: Tensor, cond: LatentCondition | None = None, state: StreamState | None = None) -> Tensor:
        h = run_conv(self.conv1, F.silu(self.norm1(x, cond)), state)
        h = run_conv(self.conv2, F.silu(self.norm2(h, cond)), state)
        return h + (x if self.skip is None else run_conv(self.skip, x, state))


class Downsample(nn.Module):
    """Strided causal conv: space ÷ 2, time ÷ ``time_factor`` (1 + s·k frames → 1 + k)."""

    def __init__(self, channels: int, time_factor: int, **conv_kwargs: Any) -> None:
        super().__init__()
        self.conv = CausalConv3d(channels, channels, stride=(time_factor, 2, 2), **conv_kwargs)

    def forward(self, x: Tensor, cond: LatentCondition | None = None, state: StreamState | None = None) -> Tensor:
        return run_conv(self.conv, x, state)


class Upsample(nn.Module):
    """Causal conv to C_out·st·4 channels, then depth-to-space (time × st, space × 2); the first chunk drops its first
    st − 1 frames, so 1 + k frames → 1 + st·k.

    The conv starts ICNR-style (the st·4 sub-positions share weights), i.e. as nearest-neighbour upsampling.
    """

    def __init__(self, in_channels: int, out_channels: int, time_factor: int, **conv_kwargs: Any) -> None:
        super().__init__()
        self.time_factor = time_factor
        copies = time_factor * 4
        self.conv = CausalConv3d(in_channels, out_channels * copies, **conv_kwargs)
        with torch.no_grad():
            weight, bias = self.conv.conv.weight, self.conv.conv.bias
            weight.copy_(weight[::copies].repeat_interleave(copies, dim=0))
            bias.copy_(bias[::copies].repeat_interleave(copies, dim=0))

    def forward(self, x: Tensor, cond: LatentCondition | None = None, state: StreamState | None = None) -> Tensor:
        x = depth_to_space(run_conv(self.conv, x, state), self.time_factor, 2)
        drop = self.time_factor - 1 if is_first_chunk(state) else 0
        return x[:, :, drop:]


# ---------------------------------------------------------------------------------------------------------------------
# Encoder / decoder
# ---------------------------------------------------------------------------------------------------------------------


def level_channels(config: MagvitConfig) -> list[int]:
    """Channels of each level, shallowest first."""
    return [config.base_channels * m for m in config.channel_multipliers]


def conv_options(config: MagvitConfig) -> dict[str, Any]:
    """The kernel and padding modes of the main 3×3×3 (or kt×3×3) convolutions."""
    return {
        "kernel_size": (config.temporal_kernel_size, 3, 3),
        "padding_mode": config.padding_mode,
        "time_padding_mode": config.time_padding_mode,
    }


class Encoder(nn.Module):
    """conv → [ResBlock × n, Downsample] per level (no downsample after the last) → ResBlock × n → norm → SiLU → conv.

    Output: pre-quantization latents (B, latent_channels, 1 + (T − 1)/s_t, H/f, W/f).
    """

    def __init__(self, config: MagvitConfig) -> None:
        super().__init__()
        kw, channels = conv_options(config), level_channels(config)
        make_norm = lambda c: FrameGroupNorm(c, config.norm_groups)
        self.conv_in = CausalConv3d(config.in_channels, channels[0], **kw)
        blocks: list[nn.Module] = []
        c_prev = channels[0]
        for level, c in enumerate(channels):
            for _ in range(config.num_res_blocks):
                blocks.append(ResBlock(c_prev, c, make_norm, **kw))
                c_prev = c
            if level < len(channels) - 1:
                blocks.append(Downsample(c, 2 if config.temporal_downsample[level] else 1, **kw))
        blocks += [ResBlock(c_prev, c_prev, make_norm, **kw) for _ in range(config.num_res_blocks)]
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = make_norm(c_prev)
        self.conv_out = CausalConv3d(c_prev, config.latent_channels, 1)

    def forward(self, x: Tensor, state: StreamState | None = None) -> Tensor:
        h = run_conv(self.conv_in, x, state)
        for block in self.blocks:
            h = block(h, None, state)
        return run_conv(self.conv_out, F.silu(self.norm_out(h)), state)


class Decoder(nn.Module):
    """conv → ResBlock × n → [ResBlock × n, Upsample] per level, deepest first → norm → SiLU → conv.

    Mirrors :class:`Encoder`; every norm is an :class:`AdaptiveGroupNorm` conditioned on the quantized latent.
    Each Upsample changes the channels to those of the next (shallower) level.
    """

    def __init__(self, config: MagvitConfig) -> None:
        super().__init__()
        kw, channels, n = conv_options(config), level_channels(config), config.num_res_blocks
        time_factor = 1  # how many times finer in time the current stage is than the latent

        def make_norm(c: int) -> nn.Module:  # reads time_factor when called: the stage's current value
            return AdaptiveGroupNorm(c, config.norm_groups, config.latent_channels, time_factor)

        self.conv_in = CausalConv3d(config.latent_channels, channels[-1], **kw)
        blocks: list[nn.Module] = [ResBlock(channels[-1], channels[-1], make_norm, **kw) for _ in range(n)]
        for level in reversed(range(len(channels))):
            blocks += [ResBlock(channels[level], channels[level], make_norm, **kw) for _ in range(n)]
            if level > 0:
                st = 2 if config.temporal_downsample[level - 1] else 1
                blocks.append(Upsample(channels[level], channels[level - 1], st, **kw))
                time_factor *= st
        self.blocks = nn.ModuleList(blocks)
        self.norm_out = make_norm(channels[0])
        self.conv_out = CausalConv3d(channels[0], config.in_channels, **kw)

    def forward(self, q: Tensor, state: StreamState | None = None) -> Tensor:
        cond = LatentCondition(q, is_first_chunk(state))
        h = run_conv(self.conv_in, q, state)
        for block in self.blocks:
            h = block(h, cond, state)
        return run_conv(self.conv_out, F.silu(self.norm_out(h, cond)), state)


# ---------------------------------------------------------------------------------------------------------------------
# Config and model
# ---------------------------------------------------------------------------------------------------------------------

QUANTIZERS: dict[str, type[nn.Module]] = {"lfq": LFQ, "fsq": FSQ, "vq": VectorQuantizer}
"""Quantizer kinds a config can name; each is built as ``cls(dim=latent_channels, **quantizer_kwargs)``."""


@dataclass
class MagvitConfig(PresetMixin):
    """Architecture and quantizer of a MAGVIT-v2 tokenizer (plain JSON in ``config.json``).

    Levels: ``len(channel_multipliers)``, with ``base_channels × multiplier`` channels and ``num_res_blocks`` residual
    blocks each (and as many again at the bottleneck). Every level transition halves H and W (spatial factor
    2^(levels − 1)); transition i also halves time when ``temporal_downsample[i]`` (temporal factor 2^count).
    ``temporal_kernel_size`` 1 makes a purely 2-D (frame-by-frame) model. The quantizer is ``QUANTIZERS[quantizer]``
    built with ``dim=latent_channels`` and ``quantizer_kwargs`` (LFQ's ``num_bits`` defaults to ``latent_channels``);
    the kwargs must be JSON values.
    """

    in_channels: int = 3
    base_channels: int = 128
    channel_multipliers: tuple[int, ...] = (1, 2, 2, 4)
    num_res_blocks: int = 4
    temporal_downsample: tuple[bool, ...] = (False, True, True)
    temporal_kernel_size: int = 3
    latent_channels: int = 18
    quantizer: str = "lfq"
    quantizer_kwargs: dict[str, Any] = field(default_factory=dict)
    norm_groups: int = 32
    padding_mode: str = "zeros"
    time_padding_mode: str = "replicate"
    spatial_factor: int = field(init=False)
    temporal_factor: int = field(init=False)

    def __post_init__(self) -> None:
        self.channel_multipliers = tuple(int(m) for m in self.channel_multipliers)
        self.temporal_downsample = tuple(bool(t) for t in self.temporal_downsample)
        self._validate()
        self.spatial_factor = 2 ** (len(self.channel_multipliers) - 1)
        self.temporal_factor = 2 ** sum(self.temporal_downsample)

    def _validate(self) -> None:
        sizes = (self.in_channels, self.base_channels, self.latent_channels, self.norm_groups)
        if min(sizes) < 1 or not self.channel_multipliers or min(self.channel_multipliers) < 1:
            raise ValueError(
                f"in_channels, base_channels, channel_multipliers, latent_channels and norm_groups must be positive, "
                f"got {sizes[:2]}, {self.channel_multipliers}, {sizes[2:]}"
            )
        if self.num_res_blocks < 0:
            raise ValueError(f"num_res_blocks must be >= 0, got {self.num_res_blocks}")
        if len(self.temporal_downsample) != len(self.channel_multipliers) - 1:
            raise ValueError(
                f"temporal_downsample needs one flag per level transition ({len(self.channel_multipliers) - 1} for "
                f"{len(self.channel_multipliers)} levels), got {self.temporal_downsample}"
            )
        if self.temporal_kernel_size < (2 if any(self.temporal_downsample) else 1):
            raise ValueError(
                f"temporal downsampling needs temporal_kernel_size >= 2 (windows must overlap), "
                f"got {self.temporal_kernel_size}"
            )
        if self.quantizer not in QUANTIZERS:
            raise ValueError(f"quantizer must be one of {sorted(QUANTIZERS)}, got {self.quantizer!r}")


def build_quantizer(kind: str, dim: int, kwargs: dict[str, Any]) -> nn.Module:
    """``QUANTIZERS[kind](dim=dim, **kwargs)``; LFQ's ``num_bits`` defaults to ``dim`` (no projection)."""
    kwargs = {"num_bits": dim, **kwargs} if kind == "lfq" else dict(kwargs)
    try:
        return QUANTIZERS[kind](dim=dim, **kwargs)
    except TypeError as e:
        raise ValueError(f"quantizer_kwargs {kwargs} do not fit {QUANTIZERS[kind].__name__}: {e}") from e


class TokenizerOutput(NamedTuple):
    """What a tokenizer's ``forward`` returns.

    recon: the reconstruction, same shape as the input; indices: token ids (image or video layout);
    quant_loss: the quantizer's weighted loss (scalar); metrics: the quantizer's metrics (detached 0-d tensors).
    """

    recon: Tensor
    indices: Tensor
    quant_loss: Tensor
    metrics: dict[str, Tensor]


def _check_chunk_frames(chunk_frames: int) -> int:
    if not isinstance(chunk_frames, int) or chunk_frames < 1:
        raise ValueError(f"chunk_frames must be a positive int, got {chunk_frames!r}")
    return chunk_frames


class MagvitTokenizer(nn.Module, PretrainedMixin):
    """MAGVIT-v2 tokenizer: pixels ⇄ token ids for images and videos (conventions in the module docstring).

    Build it from a preset with ``create_model("magvit2-tiny")`` or ``MagvitTokenizer(MagvitConfig.from_name(...))``.
    ``encode``/``decode`` are inference calls (use ``.eval()``: in training mode the quantizer updates its statistics).
    """

    config_class = MagvitConfig
    model_type = "magvit2"

    def __init__(self, config: MagvitConfig) -> None:
        super().__init__()
        self.config = config
        self.encoder, self.decoder = Encoder(config), Decoder(config)
        self.quantizer = build_quantizer(config.quantizer, config.latent_channels, config.quantizer_kwargs)
        self.spatial_factor, self.temporal_factor = config.spatial_factor, config.temporal_factor
        self.latent_channels = config.latent_channels
        self.codebook_size: int = self.quantizer.codebook_size

    # -- shapes and checks

    def token_grid(self, shape: Sequence[int], pad: bool = False) -> tuple[int, ...]:
        """Token grid for an input of shape (T, H, W) → (T', H', W'), or (H, W) → (H', W') (padded size with pad)."""
        if len(shape) not in (2, 3):
            raise ValueError(f"expected an input shape (T, H, W) or (H, W), got {tuple(shape)}")
        t, h, w = self._padded_size(*([1] * (3 - len(shape))), *shape, pad=pad)
        grid = (1 + (t - 1) // self.temporal_factor, h // self.spatial_factor, w // self.spatial_factor)
        return grid if len(shape) == 3 else grid[1:]

    def _padded_size(self, t: int, h: int, w: int, pad: bool) -> tuple[int, int, int]:
        """(T, H, W) after padding to H, W multiples of f and T = 1 + s·k; without pad, a mismatch raises."""
        f, s = self.spatial_factor, self.temporal_factor
        if min(t, h, w) < 1:
            raise ValueError(f"expected at least 1 frame and 1×1 pixels, got T={t}, {h}×{w}")
        ph, pw, pt = -h % f, -w % f, -(t - 1) % s
        if (ph or pw) and not pad:
            raise ValueError(
                f"expected H and W to be multiples of the spatial factor {f}, got {h}×{w} "
                f"(pass pad=True to pad by replication to {h + ph}×{w + pw})"
            )
        if pt and not pad:
            raise ValueError(
                f"expected 1 + {s}·k frames (1, {1 + s}, {1 + 2 * s}, ...), got {t} "
                f"(pass pad=True to repeat the last frame up to {t + pt})"
            )
        return t + pt, h + ph, w + pw

    def _as_video(self, x: Tensor) -> tuple[Tensor, bool]:
        """Check pixels; an image (B, C, H, W) becomes a 1-frame video. Returns (video, was_image)."""
        if not isinstance(x, Tensor) or not x.is_floating_point():
            got = x.dtype if isinstance(x, Tensor) else type(x).__name__
            raise TypeError(f"expected float pixels in [-1, 1], got {got} (convert uint8 with x.float() / 127.5 - 1)")
        c = self.config.in_channels
        if x.ndim not in (4, 5) or x.shape[1] != c:
            raise ValueError(f"expected an image (B, {c}, H, W) or a video (B, {c}, T, H, W), got {tuple(x.shape)}")
        return (x.unsqueeze(2), True) if x.ndim == 4 else (x, False)

    def _fit(self, x: Tensor, pad: bool) -> Tensor:
        """Check (and with pad, replicate-pad) a video to a valid size."""
        t, h, w = self._padded_size(*x.shape[2:], pad=pad)
        if (t, h, w) == tuple(x.shape[2:]):
            return x
        return F.pad(x, (0, w - x.shape[4], 0, h - x.shape[3], 0, t - x.shape[2]), mode="replicate")

    def _as_id_video(self, ids: Tensor) -> tuple[Tensor, bool]:
        """Check token ids; image ids (B, H', W') become (B, 1, H', W'). Returns (ids, was_image)."""
        if not isinstance(ids, Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            got = ids.dtype if isinstance(ids, Tensor) else type(ids).__name__
            raise TypeError(f"expected integer token ids, got {got}")
        if ids.ndim not in (3, 4):
            raise ValueError(f"expected image ids (B, H', W') or video ids (B, T', H', W'), got {tuple(ids.shape)}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.codebook_size):
            raise ValueError(
                f"token ids must be in [0, {self.codebook_size}), got range [{int(ids.min())}, {int(ids.max())}]"
            )
        return (ids.unsqueeze(1), True) if ids.ndim == 3 else (ids, False)

    # -- encoding

    def encode_latents(self, x: Tensor, pad: bool = False) -> Tensor:
        """Pre-quantization latents, channel-first: (B, K, T', H', W') for a video, (B, K, H', W') for an image."""
        video, is_image = self._as_video(x)
        z = self.encoder(self._fit(video, pad))
        return z[:, :, 0] if is_image else z

    def quantize(self, z: Tensor) -> QuantizerOutput:
        """The quantizer on channel-first latents of any layout."""
        return self.quantizer(z)

    def encode(self, x: Tensor, pad: bool = False, chunk_frames: int | None = None) -> Tensor:
        """Token ids: video (B, C, T, H, W) → (B, T', H', W'); image (B, C, H, W) → (B, H', W').

        ``pad``: pad H, W (and T) by replication to a valid size (the ids then cover the padded size; pass the
        original ``size`` to :meth:`decode`). ``chunk_frames``: encode ``chunk_frames`` input frames at a time with
        causal caches (any positive number; the ids equal the one-shot ids).
        """
        video, is_image = self._as_video(x)
        video = self._fit(video, pad)
        if chunk_frames is None:
            ids = self.quantizer(self.encoder(video)).indices
        else:
            state, chunks = StreamState(), video.split(_check_chunk_frames(chunk_frames), dim=2)
            ids = torch.cat([self.encode_chunk(chunk, state) for chunk in chunks], dim=1)
        return ids[:, 0] if is_image else ids

    def encode_chunk(self, x: Tensor, state: StreamState) -> Tensor:
        """Ids (B, n, H', W') of the latent frames completed by the next chunk (B, C, t, H, W) of a stream.

        n may be 0 (a strided window is still open). Frames past the last complete window stay in the cache.
        """
        if x.ndim != 5:
            raise ValueError(f"expected a video chunk (B, {self.config.in_channels}, t, H, W), got {tuple(x.shape)}")
        video, _ = self._as_video(x)
        self._padded_size(1, *video.shape[3:], pad=False)
        z = self.encoder(video, state)
        if z.shape[2] == 0:
            return torch.zeros((z.shape[0], *z.shape[2:]), dtype=torch.long, device=z.device)
        return self.quantizer(z).indices

    # -- decoding

    def decode_latents(self, q: Tensor) -> Tensor:
        """Quantized latents → pixels: (B, K, T', H', W') → video, (B, K, H', W') → image."""
        if q.ndim not in (4, 5) or q.shape[1] != self.latent_channels:
            k = self.latent_channels
            raise ValueError(f"expected latents (B, {k}, H', W') or (B, {k}, T', H', W'), got {tuple(q.shape)}")
        return self.decoder(q.unsqueeze(2))[:, :, 0] if q.ndim == 4 else self.decoder(q)

    def decode(self, ids: Tensor, size: Sequence[int] | None = None, chunk_frames: int | None = None) -> Tensor:
        """Token ids → pixels: (B, T', H', W') → (B, C, 1 + s·(T' − 1), H, W); (B, H', W') → (B, C, H, W).

        ``size``: crop to (H, W) or, for video, (T, H, W) — the input size of an ``encode(..., pad=True)``.
        ``chunk_frames``: decode ``chunk_frames`` token frames at a time with causal caches (equal to one-shot).
        """
        id_video, is_image = self._as_id_video(ids)
        if chunk_frames is None:
            x = self.decoder(self._ids_to_latents(id_video))
        else:
            state, chunks = StreamState(), id_video.split(_check_chunk_frames(chunk_frames), dim=1)
            x = torch.cat([self.decode_chunk(chunk, state) for chunk in chunks], dim=2)
        x = x[:, :, 0] if is_image else x
        return x if size is None else self._crop(x, size)

    def decode_chunk(self, ids: Tensor, state: StreamState) -> Tensor:
        """Pixels of the next chunk (B, n, H', W') of token frames of a stream (n ≥ 1 token frames → frames)."""
        if ids.ndim != 4 or ids.shape[1] < 1:
            raise ValueError(f"expected a chunk of video ids (B, n >= 1, H', W'), got {tuple(ids.shape)}")
        x = self.decoder(self._ids_to_latents(self._as_id_video(ids)[0]), state)
        state.started = True
        return x

    def _ids_to_latents(self, ids: Tensor) -> Tensor:
        return self.quantizer.indices_to_quantized(ids).to(self.decoder.conv_in.conv.weight.dtype)

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
        video, is_image = self._as_video(x)
        out = self.quantizer(self.encoder(self._fit(video, pad)))
        t, h, w = video.shape[2:]
        recon = self.decoder(out.quantized)[:, :, :t, :h, :w]
        indices = out.indices[:, 0] if is_image else out.indices
        return TokenizerOutput(recon[:, :, 0] if is_image else recon, indices, out.loss, out.metrics)

    def last_layer_weight(self) -> Tensor:
        """The decoder's final conv weight (for the adaptive GAN loss weight)."""
        return self.decoder.conv_out.conv.weight


# ---------------------------------------------------------------------------------------------------------------------
# Presets
# ---------------------------------------------------------------------------------------------------------------------

PRESETS: dict[str, MagvitConfig] = {
    # 8× spatial (64² → 8×8 tokens), 4× temporal, 2^10 LFQ codes, ~1.1 M parameters; trains on a CPU in minutes.
    "magvit2-tiny": MagvitConfig(
        base_channels=16, channel_multipliers=(1, 2, 2, 2), num_res_blocks=1, latent_channels=10, norm_groups=8
    ),
    # Same factors, wider and deeper, 2^14 codes.
    "magvit2-small": MagvitConfig(
        base_channels=64, channel_multipliers=(1, 2, 2, 4), num_res_blocks=2, latent_channels=14
    ),
    # The paper's video tokenizer: 8× spatial, 4× temporal (17 frames → 5), 2^18 codes (two 2^9 sub-tokens).
    "magvit2-video": MagvitConfig(
        base_channels=128,
        channel_multipliers=(1, 2, 2, 4),
        num_res_blocks=4,
        temporal_downsample=(False, True, True),
        latent_channels=18,
        quantizer_kwargs={"num_subtokens": 2},
    ),
    # The paper's image tokenizer: 16× spatial (256² → 16×16 tokens), 2^18 codes; frame-by-frame (2-D) convolutions.
    "magvit2-image": MagvitConfig(
        base_channels=128,
        channel_multipliers=(1, 1, 2, 2, 4),
        num_res_blocks=4,
        temporal_downsample=(False, False, False, False),
        temporal_kernel_size=1,
        latent_channels=18,
        quantizer_kwargs={"num_subtokens": 2},
    ),
}

register_model("magvit2", MagvitTokenizer, presets=PRESETS)
