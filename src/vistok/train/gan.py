"""Adversarial training pieces for tokenizers: discriminators, GAN losses and their regularizers.

Used by :mod:`vistok.train.tokenizer` for MAGVIT-v2 (Yu et al., ICLR 2024, §3.2 and appendix: "a 3D StyleGAN-like
discriminator with blur-pool", GAN weight 0.1, R1 10, LeCam 0.001) and VQGAN-style tokenizers (Esser et al., CVPR 2021).

**Discriminators** (:class:`Discriminator`, 2-D for images, 3-D for video): the residual discriminator of StyleGAN2
(Karras et al., CVPR 2020, Fig. 7c) without minibatch-stddev: a 3×3 stem, ``levels`` residual blocks

    y = (conv3(lrelu(conv3(x))) → lrelu → blurpool  +  conv1(blurpool(x))) / √2,

then a 3×3 conv and a 1×1 "linear" head giving one logit per output location (a logit map; at the usual sizes the
receptive field covers the whole input, and any input size works). Channels double per level from ``base_channels``
up to ``max_channels``. **Blur-pool** (Zhang, ICML 2019) is a fixed depthwise blur with the separable kernel
[1, 3, 3, 1]/8 per axis (so [1,3,3,1]⊗[1,3,3,1]/64 in 2-D), then stride 2, with one pixel of zero padding on each
side (StyleGAN2's ``upfirdn2d`` padding): even sizes halve exactly. The 3-D discriminator blurs and halves time as
well (``temporal_downsample``) as long as a level still sees two or more frames; it is *not* causal — a discriminator
sees whole clips.

**Losses** (logits are raw, unbounded discriminator outputs; means over every logit):

- hinge (Lim & Ye 2017; BigGAN): L_D = E[relu(1 − D(x))] + E[relu(1 + D(x̂))],  L_G = −E[D(x̂)]
  (taming-transformers halves L_D; vistok does not);
- non-saturating (Goodfellow et al. 2014): L_D = E[softplus(−D(x))] + E[softplus(D(x̂))],  L_G = E[softplus(−D(x̂))].

**LeCam regularization** (Tseng et al., CVPR 2021, Eq. 3): R_LC = E[‖D(x) − α_F‖²] + E[‖D(x̂) − α_R‖²], with α_R, α_F
exponential moving averages (decay 0.99) of the mean real and fake logits (:class:`LeCamEMA`; updated with the
current batch *before* the penalty is computed, as in the authors' code, which also offers a one-sided ``relu``
variant). Weight 0.001.

**R1 penalty** (Mescheder et al., ICML 2018): R1 = (γ/2)·E‖∇ₓD(x)‖² on real inputs. :func:`r1_penalty` returns the
plain E‖∇ₓD(x)‖² (the gradient of the sum of a sample's logits, squared norm, batch mean); the trainer multiplies it
by γ/2 with γ = 10. Lazy regularization (StyleGAN2 §B): applying it only every k-th discriminator step and
multiplying it by k keeps its expected strength.

**Adaptive weight** (Esser et al. 2021, Eq. 7): λ = ‖∇_L L_rec‖ / (‖∇_L L_G‖ + 10⁻⁴), L the decoder's last layer,
clamped to [0, 10⁴] and detached (:func:`adaptive_weight`; under DDP the two gradients are averaged over ranks first,
so every rank uses the global batch's weight).

**Warm-up** (:class:`GanSchedule`): the discriminator trains from step ``disc_warmup_start``; the generator's
adversarial term switches on at ``disc_start`` (≥ ``disc_warmup_start``) and is exactly 0 before — so when the
generator starts receiving adversarial gradients, it gets them from a discriminator that has already learned
something, not from a random one (the usual GAN-stability advice; taming's ``disc_start`` with an earlier start).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.train.distributed import all_reduce_mean

__all__ = [
    "DISCRIMINATOR_PRESETS",
    "GAN_LOSSES",
    "BlurPool",
    "Discriminator",
    "DiscriminatorConfig",
    "GanSchedule",
    "LeCamEMA",
    "adaptive_weight",
    "blur_kernel",
    "discriminator_loss",
    "generator_loss",
    "hinge_d_loss",
    "hinge_g_loss",
    "lecam_regularization",
    "non_saturating_d_loss",
    "non_saturating_g_loss",
    "r1_penalty",
]

GAN_LOSSES = ("hinge", "non_saturating")
BLUR_TAPS = (1.0, 3.0, 3.0, 1.0)

# ---------------------------------------------------------------------------------------------------------------------
# Blur-pool
# ---------------------------------------------------------------------------------------------------------------------


def blur_kernel(dims: int, temporal: bool = True) -> Tensor:
    """The normalized blur kernel: ``[1,3,3,1]/8`` per blurred axis, outer product over axes.

    ``dims`` 2 → (4, 4); ``dims`` 3 → (4, 4, 4), or (1, 4, 4) with ``temporal=False`` (space only).
    """
    if dims not in (2, 3):
        raise ValueError(f"dims must be 2 or 3, got {dims}")
    k = torch.tensor(BLUR_TAPS) / sum(BLUR_TAPS)
    k2 = torch.outer(k, k)
    if dims == 2:
        return k2
    return k[:, None, None] * k2 if temporal else k2[None]


class BlurPool(nn.Module):
    """Depthwise [1,3,3,1] blur then stride 2 (padding 1 per side): (…, H, W) → (…, ⌊H/2⌋, ⌊W/2⌋) for even H, W.

    ``dims=3`` works on (B, C, T, H, W); with ``temporal=True`` time is blurred and halved too, ``T → ⌊T/2⌋`` (a
    1-frame input keeps its single frame: it is blurred in space only).
    """

    def __init__(self, dims: int, temporal: bool = True) -> None:
        super().__init__()
        self.dims, self.temporal = dims, temporal and dims == 3
        self.register_buffer("kernel", blur_kernel(dims, self.temporal), persistent=False)
        if self.temporal:
            self.register_buffer("kernel_space", blur_kernel(3, temporal=False), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        if x.ndim != self.dims + 2:
            raise ValueError(f"BlurPool({self.dims}-D) expects {self.dims + 2}-D input, got {tuple(x.shape)}")
        c = x.shape[1]
        if self.dims == 2:
            weight = self.kernel.to(x.dtype).expand(c, 1, 4, 4)
            return F.conv2d(x, weight, stride=2, padding=1, groups=c)
        if self.temporal and x.shape[2] >= 2:
            weight = self.kernel.to(x.dtype).expand(c, 1, 4, 4, 4)
            return F.conv3d(x, weight, stride=2, padding=1, groups=c)
        kernel = self.kernel_space if self.temporal else self.kernel
        weight = kernel.to(x.dtype).expand(c, 1, 1, 4, 4)
        return F.conv3d(x, weight, stride=(1, 2, 2), padding=(0, 1, 1), groups=c)


# ---------------------------------------------------------------------------------------------------------------------
# Discriminators
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DiscriminatorConfig:
    """Size of a :class:`Discriminator`: ``dims`` 2 (images) or 3 (video), ``levels`` residual blocks (each halves
    space, and for 3-D time while more than one frame is left), channels ``base_channels·2^i`` capped at
    ``max_channels``. Inputs need H, W ≥ 2^levels."""

    dims: int = 2
    in_channels: int = 3
    base_channels: int = 64
    levels: int = 4
    max_channels: int = 512
    temporal_downsample: bool = True
    negative_slope: float = 0.2

    def __post_init__(self) -> None:
        if self.dims not in (2, 3):
            raise ValueError(f"DiscriminatorConfig.dims must be 2 or 3, got {self.dims}")
        if min(self.in_channels, self.base_channels, self.levels, self.max_channels) < 1:
            raise ValueError(f"channels and levels must be positive, got {self}")

    def channels(self) -> list[int]:
        """Channels after the stem and after each level (``levels + 1`` numbers)."""
        return [min(self.base_channels * 2**i, self.max_channels) for i in range(self.levels + 1)]

    @classmethod
    def from_name(cls, name: str, **overrides: Any) -> DiscriminatorConfig:
        """A preset of :data:`DISCRIMINATOR_PRESETS` with ``overrides`` (e.g. ``dims=3``)."""
        if name not in DISCRIMINATOR_PRESETS:
            raise ValueError(f"unknown discriminator preset {name!r}; presets: {sorted(DISCRIMINATOR_PRESETS)}")
        return cls(**{**DISCRIMINATOR_PRESETS[name], **overrides})


DISCRIMINATOR_PRESETS: dict[str, dict[str, int]] = {
    "tiny": {"base_channels": 8, "levels": 2, "max_channels": 32},  # seconds on a CPU, for tests
    "small": {"base_channels": 32, "levels": 3, "max_channels": 256},
    "base": {"base_channels": 64, "levels": 4, "max_channels": 512},  # 128²–256² inputs
}


def _conv(dims: int, cin: int, cout: int, kernel: int, bias: bool = True) -> nn.Module:
    conv = nn.Conv2d if dims == 2 else nn.Conv3d
    return conv(cin, cout, kernel, padding=kernel // 2, bias=bias)


class DiscBlock(nn.Module):
    """StyleGAN2 residual block with blur-pool downsampling: ((conv→lrelu→conv→lrelu→blur-pool) + skip) / √2."""

    def __init__(self, cin: int, cout: int, config: DiscriminatorConfig) -> None:
        super().__init__()
        d, slope = config.dims, config.negative_slope
        self.conv1, self.conv2 = _conv(d, cin, cin, 3), _conv(d, cin, cout, 3)
        self.act = nn.LeakyReLU(slope)
        self.pool = BlurPool(d, temporal=config.temporal_downsample)
        self.skip = _conv(d, cin, cout, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        h = self.pool(self.act(self.conv2(self.act(self.conv1(x)))))
        return (h + self.skip(self.pool(x))) / math.sqrt(2.0)


class Discriminator(nn.Module):
    """Residual blur-pool discriminator (see the module docstring): pixels → a map of logits.

    2-D: (B, C, H, W) → (B, 1, H / 2^L, W / 2^L). 3-D: (B, C, T, H, W) → (B, 1, T', H / 2^L, W / 2^L) with T'
    halved (⌊T/2⌋) per level while T ≥ 2 (``temporal_downsample``), else T' = T.
    """

    def __init__(self, config: DiscriminatorConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or DiscriminatorConfig()
        ch, d = config.channels(), config.dims
        self.stem = _conv(d, config.in_channels, ch[0], 3)
        self.blocks = nn.ModuleList(DiscBlock(ch[i], ch[i + 1], config) for i in range(config.levels))
        self.head_conv = _conv(d, ch[-1], ch[-1], 3)
        self.head = _conv(d, ch[-1], 1, 1)
        self.act = nn.LeakyReLU(config.negative_slope)

    def _check(self, x: Tensor) -> None:
        cfg = self.config
        if x.ndim != cfg.dims + 2 or x.shape[1] != cfg.in_channels:
            layout = "(B, C, H, W)" if cfg.dims == 2 else "(B, C, T, H, W)"
            raise ValueError(
                f"{cfg.dims}-D discriminator expects {layout} with C={cfg.in_channels}, got {tuple(x.shape)}"
            )
        if min(x.shape[-2:]) < 2**cfg.levels:
            raise ValueError(
                f"input {tuple(x.shape[-2:])} is too small for {cfg.levels} downsampling levels "
                f"(needs H, W >= {2**cfg.levels}); use fewer levels"
            )

    def forward(self, x: Tensor) -> Tensor:
        self._check(x)
        h = self.act(self.stem(x))
        for block in self.blocks:
            h = block(h)
        return self.head(self.act(self.head_conv(h)))


# ---------------------------------------------------------------------------------------------------------------------
# Losses
# ---------------------------------------------------------------------------------------------------------------------


def hinge_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """E[relu(1 − D(x))] + E[relu(1 + D(x̂))]."""
    return F.relu(1.0 - logits_real.float()).mean() + F.relu(1.0 + logits_fake.float()).mean()


def hinge_g_loss(logits_fake: Tensor) -> Tensor:
    """−E[D(x̂)]."""
    return -logits_fake.float().mean()


def non_saturating_d_loss(logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """E[softplus(−D(x))] + E[softplus(D(x̂))] (= −E log σ(D(x)) − E log(1 − σ(D(x̂))))."""
    return F.softplus(-logits_real.float()).mean() + F.softplus(logits_fake.float()).mean()


def non_saturating_g_loss(logits_fake: Tensor) -> Tensor:
    """E[softplus(−D(x̂))] (= −E log σ(D(x̂)))."""
    return F.softplus(-logits_fake.float()).mean()


def _check_kind(kind: str) -> str:
    if kind not in GAN_LOSSES:
        raise ValueError(f"GAN loss must be one of {GAN_LOSSES}, got {kind!r}")
    return kind


def discriminator_loss(kind: str, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
    """The discriminator loss of ``kind`` ("hinge" or "non_saturating")."""
    if _check_kind(kind) == "hinge":
        return hinge_d_loss(logits_real, logits_fake)
    return non_saturating_d_loss(logits_real, logits_fake)


def generator_loss(kind: str, logits_fake: Tensor) -> Tensor:
    """The generator's adversarial loss of ``kind`` ("hinge" or "non_saturating")."""
    return hinge_g_loss(logits_fake) if _check_kind(kind) == "hinge" else non_saturating_g_loss(logits_fake)


# ---------------------------------------------------------------------------------------------------------------------
# Regularizers
# ---------------------------------------------------------------------------------------------------------------------


def lecam_regularization(
    logits_real: Tensor, logits_fake: Tensor, ema_real: float | Tensor, ema_fake: float | Tensor
) -> Tensor:
    """LeCam (Tseng et al. 2021, Eq. 3): E[(D(x) − α_F)²] + E[(D(x̂) − α_R)²] with anchors α_R, α_F."""
    real, fake = logits_real.float(), logits_fake.float()
    return (real - ema_fake).pow(2).mean() + (fake - ema_real).pow(2).mean()


class LeCamEMA:
    """The anchors α_R, α_F of the LeCam regularizer: EMAs (``decay``) of the batch-mean real and fake logits.

    The first :meth:`update` sets them to the batch means; later ones mix ``α ← d·α + (1 − d)·mean``. Batch means
    are averaged over ranks under torch.distributed (a collective: call it on every rank), so all ranks share one
    state. Non-finite batch means are ignored. Stored in resume checkpoints through :meth:`state_dict`.
    """

    def __init__(self, decay: float = 0.99) -> None:
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"LeCam EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.ema_real = 0.0
        self.ema_fake = 0.0
        self.updates = 0

    @torch.no_grad()
    def update(self, logits_real: Tensor, logits_fake: Tensor) -> None:
        """Fold this batch's mean logits into the anchors."""
        means = all_reduce_mean(torch.stack([logits_real.float().mean(), logits_fake.float().mean()]))
        if not torch.isfinite(means).all():  # a bad batch (the step will be skipped) must not poison the anchors
            return
        real, fake = means.double().tolist()
        d = self.decay if self.updates else 0.0
        self.ema_real = d * self.ema_real + (1.0 - d) * real
        self.ema_fake = d * self.ema_fake + (1.0 - d) * fake
        self.updates += 1

    def __call__(self, logits_real: Tensor, logits_fake: Tensor) -> Tensor:
        """Update the anchors with this batch, then return :func:`lecam_regularization` against them."""
        self.update(logits_real, logits_fake)
        return lecam_regularization(logits_real, logits_fake, self.ema_real, self.ema_fake)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "ema_real": self.ema_real, "ema_fake": self.ema_fake, "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = float(state["decay"])
        self.ema_real, self.ema_fake = float(state["ema_real"]), float(state["ema_fake"])
        self.updates = int(state["updates"])


def r1_penalty(logits_real: Tensor, real_inputs: Tensor) -> Tensor:
    """E_x ‖∇ₓ Σ D(x)‖²: per sample, the squared norm of the gradient of its summed logits w.r.t. its pixels;
    mean over the batch. ``real_inputs`` must have ``requires_grad`` and be what produced ``logits_real``. The graph
    is kept (``create_graph``) so the penalty trains the discriminator. Multiply by γ/2 for Mescheder's R1."""
    if not real_inputs.requires_grad:
        raise ValueError("r1_penalty needs real_inputs.requires_grad_(True) before the discriminator's forward")
    (grad,) = torch.autograd.grad(logits_real.float().sum(), real_inputs, create_graph=True)
    return grad.float().pow(2).flatten(1).sum(1).mean()


def adaptive_weight(
    rec_loss: Tensor,
    gan_loss: Tensor,
    last_layer: Tensor,
    max_weight: float = 1e4,
    eps: float = 1e-4,
    grad_reduce: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """VQGAN's adaptive adversarial weight ‖∇_L rec_loss‖ / (‖∇_L gan_loss‖ + eps), clamped to [0, max], detached.

    ``last_layer`` is the generator's final weight (``model.last_layer_weight()``); both losses must depend on it
    (their graphs are kept for the backward pass that follows). ``grad_reduce`` (e.g. ``all_reduce_mean``) is applied
    to both gradients first, so under DDP every rank uses the weight of the global batch.
    """
    (g_rec,) = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)
    (g_gan,) = torch.autograd.grad(gan_loss, last_layer, retain_graph=True)
    if grad_reduce is not None:
        g_rec, g_gan = grad_reduce(g_rec), grad_reduce(g_gan)
    weight = g_rec.float().norm() / (g_gan.float().norm() + eps)
    return weight.clamp(0.0, max_weight).detach()


@dataclass(frozen=True)
class GanSchedule:
    """When each side of the GAN trains (steps count completed optimizer steps from 0).

    The discriminator updates at steps ≥ ``disc_warmup_start``; the generator's adversarial term is on at steps ≥
    ``disc_start`` and exactly 0 before (the discriminator is not even run for the generator then).
    """

    disc_start: int = 0
    disc_warmup_start: int = 0

    def __post_init__(self) -> None:
        if not 0 <= self.disc_warmup_start <= self.disc_start:
            raise ValueError(
                f"need 0 <= disc_warmup_start <= disc_start (the discriminator warms up before the generator's "
                f"adversarial loss starts), got disc_warmup_start={self.disc_warmup_start}, "
                f"disc_start={self.disc_start}"
            )

    def generator_adversarial(self, step: int) -> bool:
        """Whether the generator's adversarial term is on at ``step``."""
        return step >= self.disc_start

    def train_discriminator(self, step: int) -> bool:
        """Whether the discriminator updates at ``step``."""
        return step >= self.disc_warmup_start
