"""Tokenizer training: reconstruction + perceptual + quantizer (or KL) + adversarial losses, two optimizers, images
and video.

The recipe of MAGVIT-v2 (Yu et al., ICLR 2024, §3.2 and appendix; PAPERS.md §1), usable for any tokenizer with the
vistok tokenizer interface (``forward(x) → TokenizerOutput(recon, indices, quant_loss, metrics)`` and
``last_layer_weight()``), and for the continuous KL-VAE of :mod:`vistok.tokenizers.vae` (``forward(x) →
VAEOutput(recon, latents, kl, metrics)``): the same losses with the KL term in place of the quantizer's (LDM's
"KL-reg" autoencoder, Rombach et al. 2022). Per optimizer step s (0-based):

1. **Batch**: images (B, 3, H, W) or clips (B, 3, T, H, W) in [−1, 1]. With both sources, step s is a video step iff
   ⌊(s + 1)·r⌋ > ⌊s·r⌋ for the video ratio r (r = 0.5 alternates image, video, image, …): a pure function of s, so
   resuming never changes the mix. Images are 1-frame videos to the tokenizer (same weights, same vocabulary).
2. **Generator** (tokenizer) update, Adam(β = (0, 0.99)):
       L_G = w_rec·L1(x̂, x) + w_p·LPIPS(x̂, x) + L_quant + [s ≥ disc_start]·w_gan·λ·L_adv(D(x̂)),
   w_rec = 5 (the paper's reconstruction weight; L1 by default — sharper than L2 under a GAN, as in VQGAN-style
   recipes — ``recon_loss="l2"`` for MSE; ``recon_focus`` > 0 weights it towards pixels unlike the picture's
   background, see :func:`focus_weights`), w_p = 0.1 (only when LPIPS weights are given: they are never downloaded),
   L_quant the quantizer's own weighted loss (LFQ: commitment 0.25 + entropy 0.1, annealed inside the quantizer by
   its own forward counter), w_gan = 0.1, λ = 1 or VQGAN's adaptive weight (``adaptive_gan_weight``). For a VAE,
   L_quant is replaced by ``kl_weight``·KL/(C·H·W): KL in nats per picture (summed over its latent), per pixel value
   like the L1 term, so ``kl_weight`` = 10⁻⁶ is LDM's balance (LDM sums both terms over the picture). Video frames
   all go through LPIPS. D is the 2-D discriminator for image steps, the 3-D one for video steps
   (:mod:`vistok.train.gan`); before ``disc_start`` the adversarial term is exactly 0 and D is not run.
3. **Discriminator** update (from step ``disc_warmup_start`` ≤ ``disc_start``: D warms up first), on the real batch and
   the detached reconstruction in one forward pass:
       L_D = L_disc(D(x), D(x̂)) + w_lc·R_LeCam + (γ/2)·k·R1·[s mod k = 0],
   w_lc = 0.001 (anchors per discriminator), γ = 10, k = ``r1_every`` (lazy R1, 1 = every step).
4. EMA of the generator (0.999, with the TF warm-up d = min(0.999, (1 + n)/(10 + n)) by default so short runs get a
   useful average), both lr schedules (linear warm-up + cosine, :mod:`vistok.train.schedule`).

**Why not** :class:`vistok.train.Trainer`: it runs one loss and one optimizer per step; a GAN step is two dependent
updates (G, then D on G's output), with per-step switches (image/video, D warm-up, lazy R1) and extra state to resume
(D, its optimizer and schedule, LeCam anchors, two data positions). This loop is written with the same building
blocks instead — :func:`init_distributed`/:func:`wrap_ddp`, :class:`IndexStream`, :class:`EMA`, the schedule,
:func:`save_training_checkpoint`/:func:`restore_training_checkpoint` (with ``extra=``), :class:`MetricsLogger`,
:class:`Progress` — and mirrors the loop's conventions: bf16 autocast on CUDA, the non-finite guard (a step whose
G or D loss / gradient norm is NaN/inf on any rank skips that update; more than ``max_nonfinite`` bad steps in a row
raise :class:`NonFiniteLossError`), metrics averaged over the steps since the last log and over ranks, checkpoints
every ``ckpt_every`` steps and at the end, resume of everything (on CPU a resumed run reproduces an uninterrupted one
bit for bit), ``metrics.jsonl`` cut back to the checkpoint's step on resume.

**DDP**: the generator and each discriminator are wrapped separately. The generator step runs the *unwrapped*
discriminator with its parameters frozen (only the input gradient is needed), the discriminator step runs the
wrapped one, so each DDP module sees exactly one forward and one backward per step. Everything that mixes samples
is global: the LFQ entropy (all-reduced in the quantizer), the LeCam anchors and the adaptive weight (its two
last-layer gradients are averaged over ranks), so N ranks × B items match one process × N·B items (up to rounding).

**Logged** (``metrics.jsonl``, averaged over the steps since the last log that had the value): ``loss_g`` (L_G),
``rec_loss``, ``perceptual_loss``, ``quant_loss`` (VAE: ``kl``, ``kl_loss``, ``latent_mean``, ``latent_std``,
``posterior_std``), ``g_adv`` (L_adv, 0 before ``disc_start``), ``adv_weight``
(w_gan·λ, 0 before), ``grad_norm_g``; ``loss_d`` (L_D), ``d_loss`` (its GAN part), ``lecam``, ``r1``,
``logits_real``/``logits_fake``, ``grad_norm_d``; ``psnr`` and ``psnr_image``/``psnr_video``; the quantizer's
metrics as ``q_*`` (usage, perplexity, entropies, …); ``lr``, ``lr_d``; ``images_per_s``, ``clips_per_s``;
``skipped``, ``nonfinite_total``.

At the end the EMA generator is written with ``save_pretrained`` to ``out_dir/final/`` (config.json +
model.safetensors, load with ``vistok.from_pretrained``) and a one-paragraph summary is printed. A VAE first gets its
latent scale and shift for diffusion fitted on the first ``latent_stats_items`` training items (stored in its config).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import math
import os
import time
import warnings
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from vistok.registry import parse_override
from vistok.train.checkpoint import (
    load_resume_state,
    restore_rng_state,
    restore_training_checkpoint,
    save_training_checkpoint,
    seed_everything,
)
from vistok.train.distributed import (
    DistInfo,
    all_reduce_max,
    all_reduce_mean,
    barrier,
    init_distributed,
    unwrap_model,
    wrap_ddp,
)
from vistok.train.ema import EMA
from vistok.train.gan import (
    GAN_LOSSES,
    Discriminator,
    DiscriminatorConfig,
    GanSchedule,
    LeCamEMA,
    adaptive_weight,
    discriminator_loss,
    generator_loss,
    r1_penalty,
)
from vistok.train.loop import IndexStream, report_nonfinite
from vistok.train.metrics import MetricsLogger, Progress
from vistok.train.perceptual import LPIPS
from vistok.train.schedule import SCHEDULES, build_scheduler

__all__ = [
    "TokenizerTrainConfig",
    "TokenizerTrainResult",
    "TokenizerTrainer",
    "add_tokenizer_train_parser",
    "build_datasets",
    "psnr",
    "train_tokenizer",
]

KINDS = ("image", "video")
RECON_LOSSES = ("l1", "l2")


@dataclass
class TokenizerTrainConfig:
    """Everything a tokenizer run needs; stored (as plain data) in every checkpoint. Defaults follow MAGVIT-v2.

    Data: ``data`` is an image folder or ``"samples"`` (built-in photos *and* synthetic clips), ``video`` a video
    folder or ``"samples"``; ``video_ratio`` the fraction of steps on video (default 0.5 with both sources, else 0 or
    1). Batch sizes are per rank. Steps count optimizer steps; ``stop_after`` ends this invocation early (with a
    checkpoint) as if the job were pre-empted, for time-sliced jobs — a later run with ``resume`` goes on.
    ``disc_levels=None`` picks log2(image_size) − 3 levels (at least 1): an 8×8 logit map; ``disc_channels=None`` takes
    the tokenizer's ``base_channels`` capped at 64 (16 for ``magvit2-tiny``, 64 for the paper's sizes), so a tiny
    tokenizer does not get a discriminator many times its size. ``kl_weight`` and ``latent_stats_items`` only matter
    for VAE presets (``vae-*``).
    """

    # model
    preset: str = "magvit2-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data
    data: str | None = "samples"
    video: str | None = None
    image_size: int = 128
    frames: int = 17
    batch_size: int = 8
    video_batch_size: int = 2
    video_ratio: float | None = None
    num_workers: int = 0
    # optimization
    steps: int = 100_000
    lr: float = 1e-4
    disc_lr: float = 1e-4
    betas: tuple[float, float] = (0.0, 0.99)
    weight_decay: float = 0.0
    schedule: str = "cosine"
    warmup: int = 1000
    min_lr_ratio: float = 0.0
    clip_grad: float | None = 1.0
    ema_decay: float | None = 0.999
    ema_warmup: bool = True
    # losses
    recon_loss: str = "l1"
    recon_weight: float = 5.0
    recon_focus: float = 0.0
    kl_weight: float = 1e-6
    latent_stats_items: int = 64
    perceptual_weight: float = 0.1
    perceptual_weights: list[str] | None = None
    gan_loss: str = "hinge"
    gan_weight: float = 0.1
    adaptive_gan_weight: bool = False
    max_adaptive_weight: float = 1e4
    r1_weight: float = 10.0
    r1_every: int = 1
    lecam_weight: float = 0.001
    lecam_decay: float = 0.99
    disc_start: int = 5000
    disc_warmup_start: int = 4000
    disc_channels: int | None = None
    disc_levels: int | None = None
    disc_max_channels: int = 512
    # data augmentation
    color_augment: float = 0.0
    # run
    out_dir: str | None = "runs/tokenizer"
    resume: bool = True
    seed: int = 0
    device: str = "auto"
    bf16: bool | None = None
    log_every: int = 10
    ckpt_every: int = 1000
    keep_last: int = 3
    max_nonfinite: int = 10
    stop_after: int | None = None
    progress: bool = True
    tensorboard: bool = False

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if isinstance(self.perceptual_weights, str):
            self.perceptual_weights = [self.perceptual_weights]
        self._check_positive()
        self._check_choices()
        GanSchedule(self.disc_start, self.disc_warmup_start)  # validates the order
        if self.data is None and self.video is None:
            raise ValueError("give a data source: data (an image folder or 'samples') and/or video (a video folder)")
        if self.video_ratio is not None and not 0.0 <= self.video_ratio <= 1.0:
            raise ValueError(f"video_ratio must be in [0, 1] or None, got {self.video_ratio}")

    def _check_positive(self) -> None:
        positive = ("image_size", "frames", "batch_size", "video_batch_size", "steps", "log_every", "r1_every")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"TokenizerTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("warmup", "ckpt_every", "keep_last", "max_nonfinite", "num_workers", "latent_stats_items"):
            if getattr(self, name) < 0:
                raise ValueError(f"TokenizerTrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        if not self.kl_weight >= 0:
            raise ValueError(f"TokenizerTrainConfig.kl_weight must be >= 0, got {self.kl_weight}")
        if not (self.recon_focus >= 0 and math.isfinite(self.recon_focus)):
            raise ValueError(f"TokenizerTrainConfig.recon_focus must be finite and >= 0, got {self.recon_focus}")
        if self.ema_decay is not None and not 0.0 < self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in (0, 1) or None, got {self.ema_decay}")

    def _check_choices(self) -> None:
        for name, value, choices in (
            ("schedule", self.schedule, SCHEDULES),
            ("recon_loss", self.recon_loss, RECON_LOSSES),
            ("gan_loss", self.gan_loss, GAN_LOSSES),
        ):
            if value not in choices:
                raise ValueError(f"TokenizerTrainConfig.{name} must be one of {choices}, got {value!r}")

    def sources(self) -> dict[str, str]:
        """kind → source actually used, after resolving ``"samples"`` and the video ratio."""
        video = self.video if self.video is not None else ("samples" if self.data == "samples" else None)
        ratio = self.resolved_video_ratio()
        out = {}
        if ratio < 1.0:
            if self.data is None:
                raise ValueError(f"video_ratio {ratio} asks for image steps but no image source (data) is given")
            out["image"] = self.data
        if ratio > 0.0:
            if video is None:
                raise ValueError(f"video_ratio {ratio} asks for video steps but no video source is given")
            out["video"] = video
        return out

    def resolved_video_ratio(self) -> float:
        if self.video_ratio is not None:
            return float(self.video_ratio)
        video = self.video is not None or self.data == "samples"
        return 0.5 if (video and self.data is not None) else (1.0 if video else 0.0)

    def discriminator_config(self, dims: int, model: nn.Module | None = None) -> DiscriminatorConfig:
        """The discriminator of ``dims`` (2 images, 3 video) for this run (``model``: the tokenizer, for sizing)."""
        levels = self.disc_levels or max(1, int(math.log2(self.image_size)) - 3)
        channels = self.disc_channels
        if channels is None:
            channels = min(64, getattr(getattr(model, "config", None), "base_channels", 64))
        return DiscriminatorConfig(
            dims=dims, base_channels=channels, levels=levels, max_channels=self.disc_max_channels
        )


@dataclass
class TokenizerTrainResult:
    """What :func:`train_tokenizer` returns."""

    step: int
    start_step: int
    last_metrics: dict[str, Any]
    nonfinite_total: int
    elapsed_s: float
    images_seen: int
    clips_seen: int
    last_checkpoint: Path | None
    final_dir: Path | None
    summary: str


# ---------------------------------------------------------------------------------------------------------------------
# Data and small helpers
# ---------------------------------------------------------------------------------------------------------------------


def build_datasets(config: TokenizerTrainConfig) -> dict[str, Dataset]:
    """kind → dataset: ``ImageFolder``/``SamplePhotos`` for images, ``VideoFolder``/``SyntheticVideos`` for clips."""
    from vistok.data import ImageFolder, SamplePhotos, SyntheticVideos, VideoFolder

    size, seed = config.image_size, config.seed
    # built-in data is generated from (seed, index): a long index space means fresh crops and clips every step
    length = 1 << 20
    out: dict[str, Dataset] = {}
    for kind, source in config.sources().items():
        if kind == "image":
            out[kind] = (
                SamplePhotos(size=size, length=length, seed=seed)
                if source == "samples"
                else ImageFolder(source, size=size, crop="random", hflip_p=0.5, seed=seed)
            )
        else:
            out[kind] = (
                SyntheticVideos(num_frames=config.frames, size=size, length=length, seed=seed)
                if source == "samples"
                else VideoFolder(source, num_frames=config.frames, size=size, crop="random", hflip_p=0.5, seed=seed)
            )
    return out


def color_augment(x: Tensor, p: float, generator: torch.Generator) -> Tensor:
    """With probability ``p`` per sample: permute the RGB channels, scale each by U(0.6, 1.4) around mid-grey, and
    turn 20% of those samples grey — the same change for every frame of a clip. Widens the colours a small data set
    (the built-in photos) shows a tokenizer, so it does not learn their palettes. ``x`` in [-1, 1], (B, 3, ...)."""
    b = x.shape[0]
    pick = torch.rand(b, generator=generator) < p
    if not bool(pick.any()):
        return x
    perm = torch.stack([torch.randperm(3, generator=generator) for _ in range(b)])
    gain = torch.empty(b, 3).uniform_(0.6, 1.4, generator=generator)
    grey = torch.rand(b, generator=generator) < 0.2
    y = torch.stack([x[i, perm[i]] for i in range(b)]) * gain.view(b, 3, *([1] * (x.ndim - 2))).to(x)
    y = torch.where(grey.view(b, *([1] * (x.ndim - 1))).to(x.device), y.mean(1, keepdim=True).expand_as(y), y)
    return torch.where(pick.view(b, *([1] * (x.ndim - 1))).to(x.device), y.clamp(-1, 1), x)


def collate_pixels(items: list[Mapping[str, Any]]) -> Tensor:
    """Stack the ``"pixels"`` of dataset items (paths and other fields are dropped)."""
    return torch.stack([item["pixels"] for item in items])


def psnr(recon: Tensor, target: Tensor) -> Tensor:
    """Mean over the batch of the per-sample PSNR in dB of pixels in [−1, 1] (the reconstruction clamped)."""
    err = ((recon.detach().float().clamp(-1, 1) - target.float()) / 2).pow(2).flatten(1).mean(1)
    return (-10 * torch.log10(err.clamp_min(1e-10))).mean()


def focus_weights(target: Tensor, focus: float) -> Tensor:
    """Per-pixel reconstruction weights (B, 1, ...) ``1 + focus · d``: d is a pixel's mean absolute difference over
    channels from its picture's (per frame) median colour, in [0, 2] for pixels in [−1, 1] — large on small objects
    that stand out from a plain background, near 0 on the background itself.

    A plain per-pixel L1 on pictures of a few small objects is dominated by the background, and its minimizer (the
    per-pixel median) drops an object wherever the decoder is unsure it is there: such a tokenizer learns the layout
    long before it learns the objects' colours (vae-tiny on the 64² captioned scenes: the colour probe read 0 of the
    reconstructions after 800 steps). ``focus`` = 0 gives weights of exactly 1."""
    x = target.detach().float()
    frames = x.transpose(1, 2).flatten(0, 1) if x.ndim == 5 else x  # (N, C, H, W)
    median = frames.flatten(2).median(dim=-1).values[..., None, None]
    d = (frames - median).abs().mean(1, keepdim=True)
    if x.ndim == 5:
        d = d.unflatten(0, (x.shape[0], x.shape[2])).transpose(1, 2)
    return 1.0 + focus * d


def _recon_loss(kind: str, recon: Tensor, target: Tensor, focus: float = 0.0) -> Tensor:
    """Mean L1 or L2 per pixel value; with ``focus`` > 0 a weighted mean (weights :func:`focus_weights`, normalized
    to average 1 over the batch, so the loss keeps its scale)."""
    diff = recon.float() - target.float()
    err = diff.abs() if kind == "l1" else diff.pow(2)
    if focus <= 0:
        return err.mean()
    w = focus_weights(target, focus)
    return (err * w).mean() / w.mean()


def _check_sizes(model: nn.Module, config: TokenizerTrainConfig, kinds: list[str]) -> None:
    f, s = getattr(model, "spatial_factor", 1), getattr(model, "temporal_factor", 1)
    if config.image_size % f:
        raise ValueError(f"image_size {config.image_size} must be a multiple of the tokenizer's spatial factor {f}")
    if "video" in kinds and (config.frames - 1) % s:
        raise ValueError(
            f"frames must be 1 + {s}·k for this tokenizer (1, {1 + s}, {1 + 2 * s}, ...), got {config.frames}"
        )


@contextlib.contextmanager
def _frozen(module: nn.Module) -> Iterator[nn.Module]:
    """Parameters of ``module`` do not require grad inside the block (gradients still flow to its input)."""
    module.requires_grad_(False)
    try:
        yield module
    finally:
        module.requires_grad_(True)


class _Meter:
    """Sums and counts of metrics since the last log (keys may differ from step to step)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.values = device, {}

    def add(self, metrics: Mapping[str, Any]) -> None:
        for k, v in metrics.items():
            v = torch.as_tensor(v).detach().to(self.device, torch.float64).reshape(())
            pair = torch.stack([v, torch.ones_like(v)])
            self.values[k] = self.values[k] + pair if k in self.values else pair

    def flush(self) -> dict[str, float | None]:
        """Averages over steps and ranks (every rank must hold the same keys: the step schedule is shared)."""
        keys = sorted(self.values)
        self.values, values = {}, self.values
        if not keys:
            return {}
        sums = all_reduce_mean(torch.stack([values[k] for k in keys]))
        return {k: (s / n if n else None) for k, (s, n) in zip(keys, sums.tolist())}

    def state_dict(self) -> dict[str, Tensor]:
        return {k: v.cpu() for k, v in self.values.items()}

    def load_state_dict(self, state: Mapping[str, Tensor]) -> None:
        self.values = {k: v.to(self.device) for k, v in state.items()}


# ---------------------------------------------------------------------------------------------------------------------
# The trainer
# ---------------------------------------------------------------------------------------------------------------------


class TokenizerTrainer:
    """Trains a tokenizer with the GAN recipe of the module docstring.

    Args:
        config: :class:`TokenizerTrainConfig`.
        model: the tokenizer (default ``create_model(config.preset, **config.model_overrides)``).
        datasets: kind ("image" / "video") → dataset of dict items with ``"pixels"`` (default
            :func:`build_datasets`); only the kinds the video ratio uses are read.
        info: from :func:`init_distributed` (called with ``config.device`` when omitted).
    """

    def __init__(
        self,
        config: TokenizerTrainConfig,
        *,
        model: nn.Module | None = None,
        datasets: Mapping[str, Dataset] | None = None,
        info: DistInfo | None = None,
    ) -> None:
        self.config = cfg = config
        self.info = info or init_distributed(cfg.device)
        self.device = self.info.device
        self.kinds = list(cfg.sources())
        self.ratio = cfg.resolved_video_ratio()
        seed_everything(cfg.seed)  # the same initial weights on every rank
        self.generator = self._build_generator(model)
        _check_sizes(self.generator, cfg, self.kinds)
        self.datasets = self._pick_datasets(datasets)
        self.discriminators = nn.ModuleDict(
            {k: Discriminator(cfg.discriminator_config(2 if k == "image" else 3, self.generator)) for k in self.kinds}
        ).to(self.device)
        self.g = wrap_ddp(self.generator, self.info)
        self.d = {k: wrap_ddp(d, self.info) for k, d in self.discriminators.items()}
        self._build_optimizers()
        self.ema = EMA(self.generator, cfg.ema_decay, cfg.ema_warmup) if cfg.ema_decay else None
        self.lecam = {k: LeCamEMA(cfg.lecam_decay) for k in self.kinds}
        self.perceptual = self._build_perceptual()
        self.gan = GanSchedule(cfg.disc_start, cfg.disc_warmup_start)
        self.use_bf16 = cfg.bf16 if cfg.bf16 is not None else self._bf16_available()
        self.out_dir = Path(cfg.out_dir) if cfg.out_dir is not None else None
        self.step = 0
        self.positions = dict.fromkeys(self.kinds, 0)
        self.seen = dict.fromkeys(KINDS, 0)
        self.nonfinite_consecutive = self.nonfinite_total = 0
        self.meter = _Meter(self.device)
        self._skipped_since_log = 0
        self._lrs = (cfg.lr, cfg.disc_lr)
        self.last_metrics: dict[str, Any] = {}
        self.last_checkpoint: Path | None = None

    # -- set-up --------------------------------------------------------------------------------------------------

    def _build_generator(self, model: nn.Module | None) -> nn.Module:
        if model is None:
            from vistok.registry import create_model

            model = create_model(self.config.preset, **self.config.model_overrides)
        return model.to(self.device).train()

    def _pick_datasets(self, datasets: Mapping[str, Dataset] | None) -> dict[str, Dataset]:
        datasets = dict(datasets) if datasets is not None else build_datasets(self.config)
        missing = [k for k in self.kinds if k not in datasets]
        if missing:
            raise ValueError(f"no dataset given for {missing} steps (video_ratio {self.ratio})")
        return {k: datasets[k] for k in self.kinds}

    def _build_optimizers(self) -> None:
        cfg = self.config
        g_params = [p for p in self.generator.parameters() if p.requires_grad]
        self.opt_g = torch.optim.Adam(g_params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        d_params = list(self.discriminators.parameters())
        self.opt_d = torch.optim.Adam(d_params, lr=cfg.disc_lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
        kw = dict(total=cfg.steps, warmup=cfg.warmup, min_lr_ratio=cfg.min_lr_ratio, kind=cfg.schedule)
        self.sched_g = build_scheduler(self.opt_g, **kw)
        self.sched_d = build_scheduler(self.opt_d, **kw)

    def _build_perceptual(self) -> LPIPS | None:
        cfg = self.config
        if not cfg.perceptual_weights or cfg.perceptual_weight <= 0:
            return None
        return LPIPS.from_weights(cfg.perceptual_weights).to(self.device)

    def _bf16_available(self) -> bool:
        return self.device.type == "cuda" and torch.cuda.is_bf16_supported()

    def _autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.use_bf16)

    # -- data ----------------------------------------------------------------------------------------------------

    def batch_kind(self, step: int) -> str:
        """The kind of batch of optimizer step ``step``, "video" or "image": a pure function of the step and ratio."""
        if len(self.kinds) == 1:
            return self.kinds[0]
        r = self.ratio
        return "video" if math.floor((step + 1) * r) > math.floor(step * r) else "image"

    def _loader(self, kind: str) -> Iterator[Tensor]:
        cfg, rank = self.config, self.info.rank
        stream = IndexStream(
            len(self.datasets[kind]),
            cfg.batch_size if kind == "image" else cfg.video_batch_size,
            rank=rank,
            world_size=self.info.world_size,
            seed=cfg.seed + KINDS.index(kind),
            start=self.positions[kind],
        )
        loader = DataLoader(
            self.datasets[kind],
            batch_sampler=stream,
            collate_fn=collate_pixels,
            num_workers=cfg.num_workers,
            pin_memory=self.device.type == "cuda",
            generator=torch.Generator().manual_seed(cfg.seed + rank),  # keeps the global RNG untouched
        )
        return iter(loader)

    def _next_batch(self, loaders: dict[str, Iterator[Tensor]], kind: str) -> Tensor:
        if kind not in loaders:
            loaders[kind] = self._loader(kind)
        batch = next(loaders[kind])
        self.positions[kind] += 1
        if self.config.color_augment > 0:  # a pure function of (seed, kind, position): resumes exactly
            stream = 2 * self.positions[kind] + (kind == "video")
            g = torch.Generator().manual_seed(self.config.seed * 1_000_003 + stream)
            batch = color_augment(batch, self.config.color_augment, g)
        return batch.to(self.device, non_blocking=self.device.type == "cuda")

    # -- one step ------------------------------------------------------------------------------------------------

    def _generator_loss(self, x: Tensor, kind: str) -> tuple[Tensor, Tensor, dict[str, Tensor]]:
        """(L_G, reconstruction, metrics) for batch ``x`` at the current step."""
        cfg = self.config
        with self._autocast():
            out = self.g(x)
            rec = _recon_loss(cfg.recon_loss, out.recon, x, cfg.recon_focus)
            nll = cfg.recon_weight * rec
            metrics = {"rec_loss": rec.detach()}
            if self.perceptual is not None:
                perc = self.perceptual(out.recon, x).mean()
                nll = nll + cfg.perceptual_weight * perc
                metrics["perceptual_loss"] = perc.detach()
            reg, reg_metrics = self._latent_loss(out, x)
            adv, weight = self._adversarial(out.recon, nll, kind)
            loss = nll + reg + weight * adv
        metrics |= reg_metrics | {"g_adv": adv.detach(), "adv_weight": torch.as_tensor(weight).detach().float()}
        p = psnr(out.recon, x)
        metrics |= {"psnr": p, f"psnr_{kind}": p}
        return loss, out.recon, metrics

    def _latent_loss(self, out: Any, x: Tensor) -> tuple[Tensor, dict[str, Tensor]]:
        """The bottleneck's loss and metrics: the quantizer's ``quant_loss`` (metrics as ``q_*``), or for a VAE
        (an output with ``kl``, nats per picture) ``kl_weight · KL / (C·H·W)`` (metrics as they come, plus
        ``kl_loss``, the weighted term)."""
        kl = getattr(out, "kl", None)
        if kl is None:
            quant = out.quant_loss.float()
            return quant, {"quant_loss": quant.detach()} | {f"q_{k}": v for k, v in out.metrics.items()}
        per_picture = x.shape[1] * x.shape[-2] * x.shape[-1]
        kl_loss = self.config.kl_weight * kl.float() / per_picture
        return kl_loss, {**out.metrics, "kl_loss": kl_loss.detach()}

    def _adversarial(self, recon: Tensor, nll: Tensor, kind: str) -> tuple[Tensor, Tensor | float]:
        """(generator adversarial loss, its total weight); (0, 0) before ``disc_start``."""
        cfg = self.config
        zero = torch.zeros((), device=recon.device)
        if not self.gan.generator_adversarial(self.step) or cfg.gan_weight <= 0:
            return zero, 0.0
        with _frozen(self.discriminators[kind]) as disc:  # the unwrapped D: no DDP sync, no D gradients
            adv = generator_loss(cfg.gan_loss, disc(recon))
        if not cfg.adaptive_gan_weight:
            return adv, cfg.gan_weight
        last = unwrap_model(self.g).last_layer_weight()
        weight = adaptive_weight(nll, adv, last, cfg.max_adaptive_weight, grad_reduce=all_reduce_mean)
        return adv, cfg.gan_weight * weight

    def _discriminator_loss(self, x: Tensor, recon: Tensor, kind: str) -> tuple[Tensor, dict[str, Tensor]]:
        """L_D on the real batch and the detached reconstruction (one forward pass over both)."""
        cfg = self.config
        use_r1 = cfg.r1_weight > 0 and self.step % cfg.r1_every == 0
        real = x.detach().requires_grad_(use_r1)
        with self._autocast():
            logits = self.d[kind](torch.cat([real, recon.detach().to(real.dtype)]))
            logits_real, logits_fake = logits.float().chunk(2)
            d_loss = discriminator_loss(cfg.gan_loss, logits_real, logits_fake)
            loss = d_loss
            metrics = {"d_loss": d_loss.detach(), "logits_real": logits_real.detach().mean()}
            metrics["logits_fake"] = logits_fake.detach().mean()
            if cfg.lecam_weight > 0:
                lecam = self.lecam[kind](logits_real, logits_fake)
                loss = loss + cfg.lecam_weight * lecam
                metrics["lecam"] = lecam.detach()
            if use_r1:
                r1 = r1_penalty(logits_real, real)
                loss = loss + 0.5 * cfg.r1_weight * cfg.r1_every * r1
                metrics["r1"] = r1.detach()
        return loss, metrics

    def _update(self, loss: Tensor, params: list[nn.Parameter], opt: torch.optim.Optimizer) -> tuple[bool, Tensor]:
        """Backward, clip, and step ``opt`` unless the loss or the gradient norm is non-finite on any rank."""
        loss.backward()
        max_norm = self.config.clip_grad if self.config.clip_grad else math.inf
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm).detach()
        finite = torch.isfinite(loss.detach()) & torch.isfinite(norm)
        good = all_reduce_max((~finite).float()).item() == 0
        if good:
            opt.step()
        opt.zero_grad(set_to_none=True)
        return good, norm

    def train_step(self, loaders: dict[str, Iterator[Tensor]], progress: Progress) -> None:
        """One optimizer step of the generator and (after its warm-up start) of the discriminator."""
        kind = self.batch_kind(self.step)
        x = self._next_batch(loaders, kind)
        self.seen[kind] += x.shape[0] * self.info.world_size
        loss_g, recon, metrics = self._generator_loss(x, kind)
        good, norm = self._update(loss_g, list(self.generator.parameters()), self.opt_g)
        metrics |= {"loss_g": loss_g.detach(), "grad_norm_g": norm}
        if good and self.ema is not None:
            self.ema.update()
        if good and self.gan.train_discriminator(self.step):
            loss_d, d_metrics = self._discriminator_loss(x, recon, kind)
            good, norm = self._update(loss_d, list(self.discriminators[kind].parameters()), self.opt_d)
            metrics |= d_metrics | {"loss_d": loss_d.detach(), "grad_norm_d": norm}
        self._after_step(good, metrics, progress)

    def _after_step(self, good: bool, metrics: dict[str, Tensor], progress: Progress) -> None:
        if good:
            self.nonfinite_consecutive = 0
            self.meter.add(metrics)
        else:
            self._skip(metrics, progress)
        self._lrs = (float(self.opt_g.param_groups[0]["lr"]), float(self.opt_d.param_groups[0]["lr"]))
        with warnings.catch_warnings():  # a skipped first update makes LambdaLR warn about the call order
            warnings.filterwarnings("ignore", message=r".*lr_scheduler\.step\(\)")
            self.sched_g.step()
            self.sched_d.step()
        self.step += 1

    def _skip(self, metrics: Mapping[str, Tensor], progress: Progress) -> None:
        self.nonfinite_consecutive += 1
        self.nonfinite_total += 1
        self._skipped_since_log += 1
        losses = ", ".join(f"{k} {float(metrics[k]):.4g}" for k in ("loss_g", "loss_d") if k in metrics)
        where = f"step {self.step + 1} ({losses})"
        report_nonfinite(
            self.nonfinite_consecutive,
            self.nonfinite_total,
            self.config.max_nonfinite,
            where,
            self.last_checkpoint,
            progress,
        )

    # -- logging -------------------------------------------------------------------------------------------------

    def _log(self, logger: MetricsLogger, progress: Progress, elapsed: float, seen_before: dict[str, int]) -> None:
        metrics: dict[str, Any] = self.meter.flush()
        skipped, self._skipped_since_log = self._skipped_since_log, 0
        elapsed = max(elapsed, 1e-9)
        metrics |= {
            "lr": self._lrs[0],
            "lr_d": self._lrs[1],
            "images_per_s": (self.seen["image"] - seen_before["image"]) / elapsed,
            "clips_per_s": (self.seen["video"] - seen_before["video"]) / elapsed,
            "skipped": skipped,
            "nonfinite_total": self.nonfinite_total,
        }
        self.last_metrics = metrics
        logger.log(self.step, metrics)
        progress.show(loss_g=metrics.get("loss_g"), loss_d=metrics.get("loss_d"), psnr=metrics.get("psnr"))

    # -- checkpoints ---------------------------------------------------------------------------------------------

    def _extra_state(self) -> dict[str, Any]:
        return {
            "discriminators": self.discriminators.state_dict(),
            "opt_d": self.opt_d.state_dict(),
            "sched_d": self.sched_d.state_dict(),
            "lecam": {k: v.state_dict() for k, v in self.lecam.items()},
            "data": dict(self.positions),
            "loop": {
                "nonfinite_consecutive": self.nonfinite_consecutive,
                "nonfinite_total": self.nonfinite_total,
                "seen": dict(self.seen),
                "meter": self.meter.state_dict(),
                "skipped_since_log": self._skipped_since_log,
            },
        }

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        self.discriminators.load_state_dict(extra["discriminators"])
        self.opt_d.load_state_dict(extra["opt_d"])
        self.sched_d.load_state_dict(extra["sched_d"])
        for k, lecam in self.lecam.items():
            lecam.load_state_dict(extra["lecam"][k])
        self.positions = {k: int(extra["data"].get(k, 0)) for k in self.kinds}
        loop = extra["loop"]
        self.nonfinite_consecutive = int(loop["nonfinite_consecutive"])
        self.nonfinite_total = int(loop["nonfinite_total"])
        self.seen = {k: int(loop["seen"].get(k, 0)) for k in KINDS}
        self.meter.load_state_dict(loop["meter"])
        self._skipped_since_log = int(loop["skipped_since_log"])

    def run_config(self) -> dict[str, Any]:
        """What checkpoints store as ``config``: this run's config and the model's."""
        model_cfg = getattr(self.generator, "config", None)
        model = dataclasses.asdict(model_cfg) if dataclasses.is_dataclass(model_cfg) else {}
        return {"train": self.config, "model": model}

    def save(self) -> Path | None:
        """Write a resume checkpoint of the current state (collective: call on every rank)."""
        if self.out_dir is None:
            return None
        path = save_training_checkpoint(
            self.out_dir,
            self.step,
            model=self.generator,
            optimizer=self.opt_g,
            scheduler=self.sched_g,
            ema=self.ema,
            config=self.run_config(),
            extra=self._extra_state(),
            keep_last=self.config.keep_last,
        )
        self.last_checkpoint = path or self.last_checkpoint
        return path

    def _resume(self) -> int:
        """Restore the latest checkpoint in ``out_dir`` when resuming; returns the step to start from."""
        if self.out_dir is None:
            return 0
        found = load_resume_state(self.out_dir, self.config.resume)
        if found is None:
            return 0
        path, state = found
        self.step = restore_training_checkpoint(
            state, model=self.generator, optimizer=self.opt_g, scheduler=self.sched_g, ema=self.ema, restore_rng=False
        )
        self._load_extra_state(state["extra"])
        rng = state["rng"]
        restore_rng_state(rng[self.info.rank] if self.info.rank < len(rng) else rng[0])  # last: nothing after draws
        self.last_checkpoint = path
        return self.step

    def save_final(self) -> Path | None:
        """Write the (EMA) generator to ``out_dir/final`` with ``save_pretrained`` (rank 0; collective barrier).

        A model with ``fit_latent_scaling`` (the VAE) first gets its latent scale and shift fitted on the first
        ``latent_stats_items`` items of the training data (images if any, else clips), with the saved weights.
        """
        if self.out_dir is None:
            return None
        final = self.out_dir / "final"
        if self.info.is_main:
            from vistok.hub import save_pretrained

            with self.ema.swap() if self.ema is not None else contextlib.nullcontext():
                self._fit_latent_scaling()
                save_pretrained(self.generator, final)
        barrier()
        return final

    def _fit_latent_scaling(self) -> None:
        fit = getattr(self.generator, "fit_latent_scaling", None)
        n = self.config.latent_stats_items
        if fit is None or n == 0:
            return
        kind = "image" if "image" in self.datasets else "video"
        data = self.datasets[kind]
        items = range(min(n, len(data)))
        size = self.config.batch_size if kind == "image" else self.config.video_batch_size
        batches = (
            collate_pixels([data[i] for i in items[k : k + size]]).to(self.device) for k in range(0, len(items), size)
        )
        with self._autocast():
            fit(batches)

    # -- the loop ------------------------------------------------------------------------------------------------

    def fit(self) -> TokenizerTrainResult:
        """Train (or resume and go on) up to ``config.steps`` (or ``config.stop_after``)."""
        cfg, main = self.config, self.info.is_main
        start = self._resume()
        if start == 0:
            seed_everything(cfg.seed + self.info.rank)
        end = min(cfg.steps, cfg.stop_after) if cfg.stop_after is not None else cfg.steps
        logger = MetricsLogger(self.out_dir, enabled=main, resume_step=start, tensorboard=cfg.tensorboard)
        progress = Progress(cfg.steps, initial=start, enabled=main and cfg.progress, desc="tokenizer")
        loaders: dict[str, Iterator[Tensor]] = {}
        t0 = t_log = time.perf_counter()
        seen_start, seen_log = dict(self.seen), dict(self.seen)
        try:
            while self.step < end:
                self.train_step(loaders, progress)
                progress.update()
                if self.step % cfg.log_every == 0 or self.step == end:
                    self._log(logger, progress, time.perf_counter() - t_log, seen_log)
                    t_log, seen_log = time.perf_counter(), dict(self.seen)
                if (cfg.ckpt_every and self.step % cfg.ckpt_every == 0) or self.step == end:
                    self.save()
        finally:
            loaders.clear()
            logger.close()
            progress.close()
        final = self.save_final() if self.step >= cfg.steps else None
        return self._finish(start, time.perf_counter() - t0, seen_start, final)

    def _finish(
        self, start: int, elapsed: float, seen_start: dict[str, int], final: Path | None
    ) -> TokenizerTrainResult:
        images, clips = (self.seen[k] - seen_start[k] for k in KINDS)
        summary = self.summary(start, elapsed, images, clips, final)
        if self.info.is_main and self.config.progress:
            print(summary, flush=True)
        return TokenizerTrainResult(
            step=self.step,
            start_step=start,
            last_metrics=dict(self.last_metrics),
            nonfinite_total=self.nonfinite_total,
            elapsed_s=elapsed,
            images_seen=self.seen["image"],
            clips_seen=self.seen["video"],
            last_checkpoint=self.last_checkpoint,
            final_dir=final,
            summary=summary,
        )

    def summary(self, start: int, elapsed: float, images: int, clips: int, final: Path | None) -> str:
        """One paragraph: what was trained on what, how fast, the last numbers, and where everything is."""
        cfg, m = self.config, self.last_metrics
        name = cfg.preset if cfg.preset else type(self.generator).__name__
        resumed = f" (resumed at step {start})" if start else ""
        rate = f"{images / max(elapsed, 1e-9):.1f} images/s, {clips / max(elapsed, 1e-9):.2f} clips/s"
        last = ", ".join(f"{k} {m[k]:.4g}" for k in ("rec_loss", "psnr", "loss_d") if isinstance(m.get(k), float))
        sources = cfg.sources()
        data = " and ".join(
            f"{n} {'image' if k == 'image' else 'clip'}(s) from {sources[k]}"
            for k, n in (("image", images), ("video", clips))
            if k in sources
        )
        text = (
            f"Trained tokenizer {name} for {self.step - start} step(s) to step {self.step} of {cfg.steps}{resumed} "
            f"on {data} at {cfg.image_size}px in {elapsed:.1f} s ({rate})"
        )
        text += f"; last {last}" if last else ""
        text += f"; {self.nonfinite_total} step(s) skipped for non-finite losses."
        if self.out_dir is not None:
            text += f" Checkpoints and metrics.jsonl are in {self.out_dir}"
            text += (
                f"; the {'EMA ' if self.ema is not None else ''}tokenizer is in {final} "
                f"(load it with vistok.from_pretrained('{final}'))."
                if final is not None
                else f"; run again with resume to continue to step {cfg.steps}."
            )
        return text


def train_tokenizer(config: TokenizerTrainConfig, **kwargs: Any) -> TokenizerTrainResult:
    """``TokenizerTrainer(config, **kwargs).fit()``: train a tokenizer as the module docstring describes."""
    return TokenizerTrainer(config, **kwargs).fit()


# ---------------------------------------------------------------------------------------------------------------------
# Command line: `vistok tokenizer train`
# ---------------------------------------------------------------------------------------------------------------------

TRAIN_EXAMPLE = (
    "vistok tokenizer train --preset magvit2-tiny --data samples --steps 2000 --image-size 64 --frames 9 "
    "--disc-start 1000 --out runs/magvit2-tiny\n"
    "  torchrun --nproc_per_node=8 -m vistok.cli tokenizer train --preset magvit2-video --data ~/images "
    "--video ~/clips --image-size 128 --frames 17 --perceptual-weights vgg16.pth lpips_vgg.pth --out runs/mv2"
)


def _add_arguments(p: argparse.ArgumentParser) -> None:
    d = TokenizerTrainConfig()
    p.add_argument("--preset", default=d.preset, help=f"tokenizer preset (default {d.preset})")
    p.add_argument(
        "--model-arg",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field, e.g. --model-arg base_channels=32 (repeatable)",
    )
    p.add_argument("--data", default=None, help="image folder, or 'samples' for the built-in photos and clips")
    p.add_argument("--video", default=None, help="video folder (or 'samples')")
    p.add_argument("--video-ratio", type=float, default=None, help="fraction of steps on video (default 0.5 with both)")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="images per device per step")
    p.add_argument("--video-batch-size", type=int, default=d.video_batch_size, help="clips per device per step")
    p.add_argument("--image-size", type=int, default=d.image_size, help="crop size in pixels")
    p.add_argument("--frames", type=int, default=d.frames, help="frames per clip (1 + temporal factor · k)")
    p.add_argument("--lr", type=float, default=d.lr, help="generator learning rate")
    p.add_argument("--disc-lr", type=float, default=d.disc_lr, help="discriminator learning rate")
    p.add_argument(
        "--warmup",
        type=int,
        default=None,
        help=f"linear lr warm-up steps, then cosine (default: {d.warmup} or steps/10 if fewer)",
    )
    p.add_argument("--disc-start", type=int, default=d.disc_start, help="step the generator's GAN loss starts")
    p.add_argument(
        "--disc-warmup-start",
        type=int,
        default=None,
        help="step the discriminator starts training (default: disc-start − 1000, at least 0)",
    )
    p.add_argument("--disc-channels", type=int, default=None, help="discriminator base channels (default: auto)")
    p.add_argument("--gan-loss", choices=GAN_LOSSES, default=d.gan_loss)
    p.add_argument(
        "--kl-weight",
        type=float,
        default=d.kl_weight,
        help=f"VAE presets (vae-*): weight of the KL term, per pixel value (default {d.kl_weight:g}, as in LDM)",
    )
    p.add_argument(
        "--recon-loss", choices=RECON_LOSSES, default=d.recon_loss, help=f"reconstruction loss (default {d.recon_loss})"
    )
    p.add_argument(
        "--recon-focus",
        type=float,
        default=d.recon_focus,
        metavar="F",
        help="weight the reconstruction loss by 1 + F·(a pixel's distance to its picture's median colour): small "
        "objects on a plain background (the captioned scenes) keep their colours; 0 = plain loss (default)",
    )
    p.add_argument("--adaptive-gan-weight", action="store_true", help="VQGAN's adaptive adversarial weight")
    p.add_argument(
        "--perceptual-weights",
        nargs="+",
        default=None,
        metavar="PATH",
        help="LPIPS weight files (torchvision VGG16 + LPIPS vgg.pth); no perceptual loss without",
    )
    p.add_argument("--out", default=d.out_dir, help=f"output folder (default {d.out_dir})")
    p.add_argument(
        "--resume",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="continue from the latest checkpoint in --out (default on)",
    )
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument(
        "--color-augment",
        type=float,
        default=d.color_augment,
        metavar="P",
        help="probability of a random channel permutation + gain (+ grey) per sample; helps small data sets",
    )
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on with CUDA")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def config_from_args(args: argparse.Namespace) -> TokenizerTrainConfig:
    """The :class:`TokenizerTrainConfig` of parsed ``vistok tokenizer train`` arguments."""
    warmup_start = args.disc_warmup_start
    if warmup_start is None:
        warmup_start = max(0, args.disc_start - 1000)
    return TokenizerTrainConfig(
        preset=args.preset,
        model_overrides=dict(args.model_arg),
        data=args.data,
        video=args.video,
        video_ratio=args.video_ratio,
        image_size=args.image_size,
        frames=args.frames,
        batch_size=args.batch_size,
        video_batch_size=args.video_batch_size,
        steps=args.steps,
        lr=args.lr,
        disc_lr=args.disc_lr,
        warmup=min(TokenizerTrainConfig.warmup, args.steps // 10) if args.warmup is None else args.warmup,
        disc_start=args.disc_start,
        disc_warmup_start=warmup_start,
        disc_channels=args.disc_channels,
        gan_loss=args.gan_loss,
        kl_weight=args.kl_weight,
        recon_loss=args.recon_loss,
        recon_focus=args.recon_focus,
        adaptive_gan_weight=args.adaptive_gan_weight,
        perceptual_weights=args.perceptual_weights,
        out_dir=args.out,
        resume=args.resume,
        log_every=args.log_every,
        ckpt_every=args.ckpt_every,
        seed=args.seed,
        color_augment=args.color_augment,
        device=args.device,
        bf16=args.bf16,
        progress=not args.quiet,
    )


def run_train_command(args: argparse.Namespace) -> int:
    """Handler of ``vistok tokenizer train``."""
    from vistok.train.distributed import cleanup

    if args.data is None and args.video is None:
        raise ValueError("give --data DIR|samples and/or --video DIR")
    try:
        result = train_tokenizer(config_from_args(args))
    finally:
        cleanup()
    if args.quiet and os.environ.get("RANK", "0") == "0":  # with the progress bar on, rank 0 printed it already
        print(result.summary)
    return 0


def add_tokenizer_train_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``train`` verb to the ``vistok tokenizer`` group's subparsers; returns its parser."""
    description = (
        "Train an image/video tokenizer with the MAGVIT-v2 recipe: L1 + LPIPS + quantizer losses, a 2-D and a 3-D\n"
        "discriminator (hinge loss, LeCam, R1), EMA. Runs on one CPU process, one GPU, or under torchrun; resumes\n"
        "from the latest checkpoint in --out. Writes checkpoints, metrics.jsonl and the EMA tokenizer (--out/final)."
    )
    p = subparsers.add_parser(
        "train",
        help="train a tokenizer on images and/or videos",
        description=description,
        epilog=f"example:\n  {TRAIN_EXAMPLE}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _add_arguments(p)
    p.set_defaults(func=run_train_command)
    return p
