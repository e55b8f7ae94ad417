"""DINO self-distillation (Caron et al., ICCV 2021) for vistok's ViT, and the ``vistok digit fit`` command.

**DINO.** A student ``g_θs`` and a teacher ``g_θt`` (same ViT + :class:`~vistok.models.vit.DINOHead`, the teacher
starting as a copy) see different crops of the same pictures. The teacher's outputs on the two *global* crops are
centred and sharpened, the student's on every crop are softened, and the student is trained to match (eq. 1–2)::

    P_t(x) = softmax((g_θt(x) − c) / τ_t),    P_s(x) = softmax(g_θs(x) / τ_s)
    L = mean over pairs (x ∈ global crops, x' ∈ all crops, x' ≠ x) of  − P_t(x) · log P_s(x')

- the teacher is not trained by gradients: after every step ``θt ← m θt + (1 − m) θs`` with ``m`` following a
  cosine schedule from ``momentum_teacher`` to 1 (eq. 4);
- centering: ``c ← λ c + (1 − λ) mean_batch g_θt(x)`` (λ = ``center_momentum``, averaged over ranks), after each
  teacher pass; it prevents one dimension from dominating, sharpening (τ_t < τ_s) prevents the uniform collapse.
  ``c`` starts at 0 as in DINO's code, so for the first few dozen steps (until ``c`` has caught up with the
  teacher's mean output) the targets keep the part all pictures share and the loss *rises* before it falls;
  ``center_momentum=1`` turns centering off (an ablation; with ``momentum_teacher=1`` too the teacher is frozen);
- τ_t warms up linearly from ``warmup_teacher_temp`` to ``teacher_temp`` over ``warmup_teacher_temp_steps``;
- the last (weight-normalised) layer of the student head can be frozen for the first ``freeze_last_layer`` steps;
- AdamW without weight decay on biases, norms, position embedding and ``[CLS]`` (a constant decay elsewhere where
  DINO ramps it from 0.04 to 0.4), the shared loop's warm-up + cosine learning-rate schedule, gradient clipping 3.

**Multi-crop** (:class:`MultiCrop`, torch ops only, batched, one generator): per picture 2 global crops
(``global_scale`` of the area, ``global_size``²) and ``n_local`` local crops (``local_scale``, ``local_size``²),
random aspect ratio in [3/4, 4/3], horizontal flips; colour jitter (brightness 0.4, contrast 0.4, saturation 0.2,
hue 0.1, with probability 0.8, applied in that fixed order — hue as a rotation of the YIQ chroma plane) and grayscale
(0.2); Gaussian blur with probability 1.0 / 0.1 / 0.5 (global 1 / global 2 / locals), σ ∈ [0.1, 2.0] scaled from 224
pixels to the crop size; solarisation (0.2) on the second global crop. Crops are resampled bilinearly from the
source pictures with affine grids. A batch is a pure function of ``(seed, micro-batch index, rank)``, so a resumed
run continues exactly.

**Evaluation.** :func:`linear_probe` fits a multinomial logistic regression (L-BFGS, L2 penalty as scikit-learn's
``C``) on standardised features and reports the held-out accuracy; :func:`photo_probe` runs it on the built-in
photos (which of the 7 training photos a crop comes from) with mean-pooled patch features and with single tokens.

**``vistok digit fit``** (:func:`fit_digit`): train the ViT with DINO on the data (unless ``--encoder hf:/path`` or a
saved ViT folder is given), save the teacher backbone, probe it against its random initialisation, fit the k-means
codebook over its features (:class:`~vistok.tokenizers.digit.DigitTokenizer`), write the tokenizer, a token-map
picture and a summary. Its DINO recipe is sized for a few photos and a few hundred CPU steps: lr 5e-4 (20 warm-up
steps), teacher momentum 0.99 → 1, the last head layer frozen for the first 10 % of the steps, and weaker colour
jitter (:data:`SMALL_DATA_RECIPE`).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vistok.eval.pictures import save_png
from vistok.models.vit import DINOHead, ViT, ViTConfig
from vistok.train.distributed import all_reduce_mean, unwrap_model
from vistok.train.loop import TrainConfig, Trainer, TrainResult
from vistok.train.metrics import read_jsonl

__all__ = [
    "PROBE_SCALE_RANGE",
    "SMALL_DATA_RECIPE",
    "DigitFitConfig",
    "DigitFitResult",
    "DinoConfig",
    "DinoLoss",
    "DinoResult",
    "DinoStudentTeacher",
    "MultiCrop",
    "MultiCropBatches",
    "add_digit_parser",
    "color_jitter",
    "dino_loss",
    "fit_digit",
    "format_digit_summary",
    "gaussian_blur",
    "linear_probe",
    "photo_probe",
    "pooled_features",
    "random_resized_crops",
    "teacher_momentum",
    "teacher_temperature",
    "train_dino",
]

FIT_EXAMPLE = "vistok digit fit --data samples --size 64 --k 256 --ssl-steps 300 --out runs/digit"
FIT_DESCRIPTION = """\
Fit a DiGIT tokenizer (discriminative tokens: k-means over self-supervised patch features).

Without --encoder, vistok's small ViT (--preset) is trained with DINO on the pictures first (OUT/ssl: checkpoints,
metrics.jsonl, the teacher backbone in OUT/ssl/teacher; an interrupted run resumes) and, on the built-in photos,
linear-probed against its random initialisation. With --encoder hf:/path a local Hugging Face DINOv2 / ViT is read
instead (nothing is downloaded). Then K centroids are fitted over the patch features of hidden state --layer (after
the final norm) and the command writes OUT/tokenizer (DigitTokenizer.from_pretrained), OUT/token_map.png (pictures
beside their token ids, coloured by cluster) and OUT/summary.json (inertia, cluster usage and perplexity, probe)."""


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DinoConfig:
    """DINO's recipe (the paper's defaults, crop sizes scaled from 224 / 96 to 64 / 32 pixels): crops, augmentations,
    temperatures, centering and the teacher's momentum."""

    global_size: int = 64
    local_size: int = 32
    n_local: int = 8
    global_scale: tuple[float, float] = (0.4, 1.0)
    local_scale: tuple[float, float] = (0.05, 0.4)
    hflip_p: float = 0.5
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.2
    hue: float = 0.1
    jitter_p: float = 0.8
    gray_p: float = 0.2
    blur_p: tuple[float, float, float] = (1.0, 0.1, 0.5)  # global 1, global 2, locals
    blur_sigma: tuple[float, float] = (0.1, 2.0)  # at 224 pixels; scaled to the crop size
    solarize_p: float = 0.2  # second global crop
    student_temp: float = 0.1
    teacher_temp: float = 0.04
    warmup_teacher_temp: float = 0.04
    warmup_teacher_temp_steps: int = 0
    center_momentum: float = 0.9
    momentum_teacher: float = 0.996
    freeze_last_layer: int = 0

    def __post_init__(self) -> None:
        self.global_scale, self.local_scale = tuple(self.global_scale), tuple(self.local_scale)
        self.blur_p, self.blur_sigma = tuple(self.blur_p), tuple(self.blur_sigma)
        if self.global_size < 1 or self.local_size < 1 or self.n_local < 0:
            raise ValueError("DinoConfig: global_size and local_size must be >= 1 and n_local >= 0")
        for name in ("global_scale", "local_scale"):
            lo, hi = getattr(self, name)
            if not 0 < lo <= hi <= 1:
                raise ValueError(f"DinoConfig.{name} must be (low, high) with 0 < low <= high <= 1, got {(lo, hi)}")
        if not (0 <= self.momentum_teacher <= 1 and 0 <= self.center_momentum <= 1):
            raise ValueError("DinoConfig: momentum_teacher and center_momentum must be in [0, 1]")
        if min(self.student_temp, self.teacher_temp, self.warmup_teacher_temp) <= 0:
            raise ValueError("DinoConfig: temperatures must be positive")

    @property
    def n_crops(self) -> int:
        return 2 + self.n_local


def teacher_temperature(step: int, cfg: DinoConfig) -> float:
    """τ_t at ``step``: linear warm-up from ``warmup_teacher_temp`` to ``teacher_temp``, then constant."""
    n = cfg.warmup_teacher_temp_steps
    if n <= 0 or step >= n:
        return cfg.teacher_temp
    return cfg.warmup_teacher_temp + (cfg.teacher_temp - cfg.warmup_teacher_temp) * step / n


def teacher_momentum(step: int, total: int, base: float) -> float:
    """``m`` after ``step`` of ``total`` steps: cosine from ``base`` (step 0) to 1 (the last step)."""
    if total <= 1:
        return base
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(step, total - 1) / (total - 1)) + 1) / 2


# ---------------------------------------------------------------------------------------------------------------------
# Multi-crop augmentation (torch ops, batched)
# ---------------------------------------------------------------------------------------------------------------------


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator) -> Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)


def random_resized_crops(
    images: Tensor,
    size: int,
    scale: tuple[float, float],
    gen: torch.Generator,
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip_p: float = 0.5,
) -> Tensor:
    """One random crop per picture of ``images`` ``(N, 3, H, W)``: area fraction in ``scale``, aspect ratio
    log-uniform in ``ratio``, flipped with probability ``hflip_p``, resampled (bilinear) to ``size × size``."""
    n, _, h, w = images.shape
    area = _uniform(n, *scale, gen)
    aspect = _uniform(n, math.log(ratio[0]), math.log(ratio[1]), gen).exp()
    fw = (area * aspect * h / w).sqrt().clamp(max=1.0)  # crop width / picture width
    fh = (area / aspect * w / h).sqrt().clamp(max=1.0)
    cx = _uniform(n, -1.0, 1.0, gen) * (1 - fw)  # centre in normalised coordinates
    cy = _uniform(n, -1.0, 1.0, gen) * (1 - fh)
    flip = torch.where(torch.rand(n, generator=gen) < hflip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0], theta[:, 0, 2], theta[:, 1, 1], theta[:, 1, 2] = fw * flip, cx, fh, cy
    grid = F.affine_grid(theta.to(images), [n, 3, size, size], align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="reflection", align_corners=False)


def _gray(x: Tensor) -> Tensor:
    """ITU-R 601 luma ``(N, 1, H, W)`` of RGB ``x`` in [0, 1]."""
    return (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]).clamp(0, 1)


_RGB2YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.5959, -0.2746, -0.3213], [0.2115, -0.5227, 0.3112]])


def _rotate_hue(x: Tensor, angle: Tensor) -> Tensor:
    """Rotate the chroma (I, Q) plane of YIQ by ``angle`` radians per picture."""
    yiq = torch.einsum("ij,njhw->nihw", _RGB2YIQ.to(x), x)
    c, s = angle.cos().view(-1, 1, 1), angle.sin().view(-1, 1, 1)
    i, q = yiq[:, 1], yiq[:, 2]
    yiq = torch.stack([yiq[:, 0], c * i - s * q, s * i + c * q], dim=1)
    return torch.einsum("ij,njhw->nihw", torch.linalg.inv(_RGB2YIQ).to(x), yiq)


def color_jitter(x: Tensor, cfg: DinoConfig, gen: torch.Generator) -> Tensor:
    """Brightness, contrast, saturation, hue (that order) with probability ``jitter_p``, then grayscale (``gray_p``).
    ``x`` in [0, 1]."""
    n = len(x)
    on = (torch.rand(n, generator=gen) < cfg.jitter_p).float().view(-1, 1, 1, 1)

    def factor(amount: float) -> Tensor:
        return 1 + on * _uniform(n, -amount, amount, gen).view(-1, 1, 1, 1)

    b, c, s = factor(cfg.brightness), factor(cfg.contrast), factor(cfg.saturation)
    hue = on.view(-1) * _uniform(n, -cfg.hue, cfg.hue, gen) * 2 * math.pi
    x = (x * b).clamp(0, 1)
    mean = _gray(x).mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * c + mean).clamp(0, 1)
    g = _gray(x)
    x = ((x - g) * s + g).clamp(0, 1)
    x = _rotate_hue(x, hue).clamp(0, 1)
    gray = (torch.rand(n, generator=gen) < cfg.gray_p).view(-1, 1, 1, 1)
    return torch.where(gray, _gray(x).expand_as(x), x)


def gaussian_blur(x: Tensor, sigma: Tensor) -> Tensor:
    """Separable Gaussian blur of each picture of ``x`` ``(N, C, H, W)`` with its own ``sigma`` (reflect padding)."""
    n, ch, h, w = x.shape
    r = max(1, min(math.ceil(3 * float(sigma.max())), min(h, w) - 1))
    t = torch.arange(-r, r + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-(t**2) / (2 * sigma.to(x).view(-1, 1).clamp_min(1e-3) ** 2))
    k = (k / k.sum(1, keepdim=True)).repeat_interleave(ch, 0)  # (N·C, 2r + 1)
    y = F.pad(x.reshape(1, n * ch, h, w), (r, r, r, r), mode="reflect")
    y = F.conv2d(y, k.view(n * ch, 1, 1, -1), groups=n * ch)
    y = F.conv2d(y, k.view(n * ch, 1, -1, 1), groups=n * ch)
    return y.view(n, ch, h, w)


class MultiCrop:
    """DINO's multi-crop augmentation of a batch of pictures ``(B, 3, H, W)`` in [-1, 1] (see the module docstring).

    Returns ``{"global": (2B, 3, G, G), "local": (n·B, 3, L, L)}``, view-major (all pictures' first view, then all
    second views, …), pixels in [-1, 1].
    """

    def __init__(self, cfg: DinoConfig):
        self.cfg = cfg

    def _view(self, images: Tensor, size: int, scale: tuple, blur_p: float, solarize_p: float, gen: torch.Generator):
        cfg, n = self.cfg, len(images)
        x = random_resized_crops(images, size, scale, gen, hflip_p=cfg.hflip_p)
        x = color_jitter((x + 1) / 2, cfg, gen)
        sigma = _uniform(n, *cfg.blur_sigma, gen) * size / 224
        blur = (torch.rand(n, generator=gen) < blur_p).view(-1, 1, 1, 1)
        x = torch.where(blur, gaussian_blur(x, sigma), x)
        sol = (torch.rand(n, generator=gen) < solarize_p).view(-1, 1, 1, 1)
        x = torch.where(sol & (x >= 0.5), 1 - x, x)
        return (x * 2 - 1).clamp(-1, 1)

    def __call__(self, images: Tensor, gen: torch.Generator) -> dict[str, Tensor]:
        cfg = self.cfg
        images = images.float()
        g = [
            self._view(images, cfg.global_size, cfg.global_scale, cfg.blur_p[0], 0.0, gen),
            self._view(images, cfg.global_size, cfg.global_scale, cfg.blur_p[1], cfg.solarize_p, gen),
        ]
        out = {"global": torch.cat(g)}
        if cfg.n_local:
            views = [
                self._view(images, cfg.local_size, cfg.local_scale, cfg.blur_p[2], 0.0, gen) for _ in range(cfg.n_local)
            ]
            out["local"] = torch.cat(views)
        return out


def _item_pixels(item: Any) -> Tensor:
    return item["pixels"] if isinstance(item, dict) else item[0] if isinstance(item, tuple | list) else item


class MultiCropBatches:
    """``get_batch(index, rank)`` for the shared loop: ``batch_size`` random pictures of ``dataset`` → multi-crops.

    Pictures and crops are drawn from a generator seeded with ``(seed, index, rank)``: batches are reproducible and
    a resumed run continues with the batches the uninterrupted one would have seen.
    """

    def __init__(self, dataset: Any, batch_size: int, crops: MultiCrop, seed: int = 0):
        if len(dataset) == 0:
            raise ValueError("the SSL dataset is empty")
        self.dataset, self.batch_size, self.crops, self.seed = dataset, batch_size, crops, seed

    def __call__(self, index: int, rank: int = 0) -> dict[str, Tensor]:
        gen = torch.Generator().manual_seed((self.seed * 1_000_003 + index) * 1_009 + rank)
        picks = torch.randint(len(self.dataset), (self.batch_size,), generator=gen).tolist()
        images = torch.stack([_item_pixels(self.dataset[i]) for i in picks])
        return self.crops(images, gen)


# ---------------------------------------------------------------------------------------------------------------------
# Student, teacher and loss
# ---------------------------------------------------------------------------------------------------------------------


class DinoStudentTeacher(nn.Module):
    """Student and EMA teacher (ViT + DINO head each), the centre ``c`` and the step counter (checkpointed)."""

    def __init__(self, vit_config: ViTConfig, cfg: DinoConfig | None = None, backbone: ViT | None = None):
        super().__init__()
        self.cfg = cfg or DinoConfig()
        backbone = backbone if backbone is not None else ViT(vit_config)
        self.student = nn.ModuleDict({"backbone": backbone, "head": DINOHead.from_config(backbone.config)})
        self.teacher = copy.deepcopy(self.student).requires_grad_(False)
        self.register_buffer("center", torch.zeros(1, backbone.config.head_out_dim))
        self.register_buffer("step", torch.zeros((), dtype=torch.int64))
        self.student["head"].last_weight.register_hook(self._freeze_last_layer)

    def _freeze_last_layer(self, grad: Tensor) -> Tensor:
        return torch.zeros_like(grad) if int(self.step) < self.cfg.freeze_last_layer else grad

    @property
    def teacher_backbone(self) -> ViT:
        return self.teacher["backbone"]

    @staticmethod
    def _run(net: nn.ModuleDict, x: Tensor) -> Tensor:
        return net["head"](net["backbone"](x))

    def forward(self, global_crops: Tensor, local_crops: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """``(student outputs on global then local crops, teacher outputs on the global crops)``, logits ``(·, K)``."""
        with torch.no_grad():
            teacher = self._run(self.teacher, global_crops)
        student = [self._run(self.student, global_crops)]
        if local_crops is not None and len(local_crops):
            student.append(self._run(self.student, local_crops))
        return torch.cat(student), teacher

    @torch.no_grad()
    def update_teacher(self, momentum: float) -> None:
        """``θt ← m θt + (1 − m) θs``."""
        s = list(self.student.parameters())
        t = list(self.teacher.parameters())
        torch._foreach_mul_(t, momentum)
        torch._foreach_add_(t, [p.detach() for p in s], alpha=1 - momentum)


def dino_loss(
    student: Tensor, teacher: Tensor, center: Tensor, n_crops: int, student_temp: float, teacher_temp: float
) -> Tensor:
    """DINO's cross-entropy between the teacher's global views and the student's *other* views (see the docstring).

    ``student``: ``(n_crops·B, K)`` view-major, globals first; ``teacher``: ``(2·B, K)``.
    """
    log_p = F.log_softmax(student.float() / student_temp, dim=-1).chunk(n_crops)
    q = F.softmax((teacher.float() - center) / teacher_temp, dim=-1).detach().chunk(2)
    total, pairs = student.new_zeros((), dtype=torch.float32), 0
    for iq, qv in enumerate(q):
        for v, lp in enumerate(log_p):
            if v != iq:
                total = total - (qv * lp).sum(-1).mean()
                pairs += 1
    return total / pairs


def _entropy(p: Tensor) -> Tensor:
    return -(p * p.clamp_min(1e-12).log()).sum(-1)


class DinoLoss:
    """``loss_fn(model, batch)`` for the shared loop: the DINO loss, then the centre update; keeps ``history``.

    Metrics: ``teacher_entropy`` (mean per-picture entropy of P_t: 0 = one-hot, log K = uniform collapse),
    ``teacher_batch_entropy`` (entropy of the batch-mean P_t: low = everything in one dimension) and ``teacher_temp``.
    """

    def __init__(self, cfg: DinoConfig):
        self.cfg = cfg
        self.history: list[float] = []

    def __call__(self, model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        raw = unwrap_model(model)
        cfg = self.cfg
        student, teacher = model(batch["global"], batch.get("local"))
        temp = teacher_temperature(int(raw.step), cfg)
        loss = dino_loss(student, teacher, raw.center, cfg.n_crops, cfg.student_temp, temp)
        with torch.no_grad():
            t = teacher.float()
            p = F.softmax((t - raw.center) / temp, dim=-1)
            batch_center = all_reduce_mean(t.mean(0, keepdim=True))
            raw.center.mul_(cfg.center_momentum).add_(batch_center, alpha=1 - cfg.center_momentum)
            metrics = {
                "teacher_entropy": _entropy(p).mean(),
                "teacher_batch_entropy": _entropy(p.mean(0)),
                "teacher_temp": torch.tensor(temp),
            }
        self.history.append(float(loss.detach()))
        return loss, metrics


def _optimizer(cfg: TrainConfig):
    """AdamW over the student: weight decay on matrices only (not biases, norms, position embedding, [CLS])."""

    def build(model: nn.Module) -> torch.optim.Optimizer:
        decay, no_decay = [], []
        for name, p in model.named_parameters():
            if not p.requires_grad:
                continue
            plain = p.ndim < 2 or name.endswith(("pos_embed", "cls_token"))
            (no_decay if plain else decay).append(p)
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return torch.optim.AdamW(groups, lr=cfg.lr, betas=cfg.betas)

    return build


def _teacher_hook(cfg: DinoConfig, total: int):
    def hook(trainer: Trainer) -> None:
        raw = trainer.raw_model
        raw.update_teacher(teacher_momentum(trainer.step - 1, total, cfg.momentum_teacher))
        raw.step.fill_(trainer.step)

    return hook


@dataclass
class DinoResult:
    """What :func:`train_dino` returns: the student/teacher pair, the teacher backbone, the loop's result, losses."""

    model: DinoStudentTeacher
    teacher: ViT
    train: TrainResult
    losses: list[float]


def train_dino(
    dataset: Any,
    vit_config: ViTConfig,
    dino: DinoConfig | None = None,
    train: TrainConfig | None = None,
    *,
    backbone: ViT | None = None,
    info: Any = None,
    hooks: Sequence[Callable[[Trainer], None]] = (),
) -> DinoResult:
    """Train a ViT with DINO on the pictures of ``dataset`` (items ``{"pixels": (3, H, W)}`` in [-1, 1]).

    ``train.batch_size`` pictures per step and rank (each gives ``dino.n_crops`` crops); checkpoints, resume, DDP,
    progress and logging come from :class:`vistok.train.loop.Trainer` (``train.out_dir``). ``backbone``: start from
    this ViT instead of a random one. ``hooks``: more ``hook(trainer)`` calls after every step (after the teacher's).
    """
    dino = dino or DinoConfig()
    train = train or TrainConfig(steps=100, batch_size=16, lr=1e-3, weight_decay=0.04, warmup=10, clip_grad=3.0)
    model = DinoStudentTeacher(vit_config, dino, backbone)
    loss = DinoLoss(dino)
    batches = MultiCropBatches(dataset, train.batch_size, MultiCrop(dino), seed=train.seed)
    run = {"vit": asdict(model.teacher_backbone.config), "dino": asdict(dino)}
    trainer = Trainer(
        model, _optimizer(train), loss, batches, train, info=info, hooks=[_teacher_hook(dino, train.steps), *hooks],
        run_config=run,
    )  # fmt: skip
    result = trainer.fit()
    model.eval()
    return DinoResult(model, model.teacher_backbone, result, loss.history)


# ---------------------------------------------------------------------------------------------------------------------
# Linear probe
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def pooled_features(
    encoder: Any, dataset: Any, batch_size: int = 64, tokens_per_picture: int = 0, seed: int = 0
) -> tuple[Tensor, Tensor] | tuple[tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Mean-pooled patch features ``(N, C)`` and labels ``(N,)`` of a dataset of ``{"pixels", "label"}`` items.

    ``encoder``: anything with ``features(pixels) → (B, h, w, C)`` (a :class:`~vistok.tokenizers.digit.FeatureEncoder`
    or a tokenizer). With ``tokens_per_picture > 0`` it also returns that many single-token features per picture
    (random positions drawn from ``seed``) with the picture's label: ``((pooled, labels), (tokens, token_labels))``.
    """
    feats, labels, toks, tok_labels = [], [], [], []
    gen = torch.Generator().manual_seed(seed)
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        f = encoder.features(torch.stack([it["pixels"] for it in items])).float().cpu()
        y = torch.tensor([int(it["label"]) for it in items])
        feats.append(f.mean(dim=(1, 2)))
        labels.append(y)
        if tokens_per_picture:
            b, h, w, c = f.shape
            pick = torch.randint(h * w, (b, tokens_per_picture), generator=gen)
            toks.append(f.reshape(b, h * w, c).gather(1, pick[..., None].expand(-1, -1, c)).reshape(-1, c))
            tok_labels.append(y.repeat_interleave(tokens_per_picture))
    pooled = torch.cat(feats), torch.cat(labels)
    return (pooled, (torch.cat(toks), torch.cat(tok_labels))) if tokens_per_picture else pooled


def linear_probe(
    train: tuple[Tensor, Tensor], test: tuple[Tensor, Tensor], *, C: float = 1.0, max_iter: int = 500
) -> float:
    """Held-out accuracy of a multinomial logistic regression on standardised features.

    Minimises ``mean CE + ‖W‖² / (2·C·n)`` with L-BFGS — scikit-learn's ``LogisticRegression(C=C)`` objective
    divided by ``C·n``; the bias is not penalised. Standardisation uses the training set's mean and std.
    """
    (x, y), (xt, yt) = train, test
    x, xt = x.double(), xt.double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    x, xt = (x - mu) / sd, (xt - mu) / sd
    classes = torch.unique(torch.cat([y, yt]))
    y_idx, yt_idx = torch.searchsorted(classes, y), torch.searchsorted(classes, yt)
    w = torch.zeros(x.shape[1], len(classes), dtype=torch.float64, requires_grad=True)
    b = torch.zeros(len(classes), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, tolerance_grad=1e-9, line_search_fn="strong_wolfe")
    lam = 1.0 / (2 * C * len(x))

    def closure() -> Tensor:
        opt.zero_grad()
        loss = F.cross_entropy(x @ w + b, y_idx) + lam * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float(((xt @ w + b).argmax(1) == yt_idx).double().mean())


#: Zoom range of the probe's crops. At the k-means zoom (1–3) a colour histogram alone names the photo of a crop
#: except for the motorcycle stereo pair (two views of one scene), so every feature scores about the same; zoomed-in
#: crops make the probe depend on local content.
PROBE_SCALE_RANGE = (3.0, 8.0)


def photo_probe(
    encoders: dict[str, Any],
    size: int,
    n: int = 700,
    scale_range: tuple[float, float] = PROBE_SCALE_RANGE,
    seed: int = 0,
) -> dict[str, Any]:
    """Linear probes of each encoder's features on the built-in photos: which photo (7 classes) a crop comes from.

    Train and test crops are different random crops (seeds ``seed + 2`` / ``seed + 3``) of the 7 training photos,
    ``n`` each. Reports per encoder the accuracy on mean-pooled patch features (``pooled``) and on single patch
    tokens (``tokens``, 4 random tokens per crop: what a DiGIT token sees).
    """
    from vistok.data.samples import SamplePhotos

    train = SamplePhotos(size=size, split="train", length=n, scale_range=scale_range, seed=seed + 2)
    test = SamplePhotos(size=size, split="train", length=n, scale_range=scale_range, seed=seed + 3)
    out: dict[str, Any] = {"train_crops": n, "test_crops": n, "classes": len(train.names), "zoom": list(scale_range)}
    for name, enc in encoders.items():
        (p_tr, t_tr), (p_te, t_te) = (pooled_features(enc, d, tokens_per_picture=4, seed=seed) for d in (train, test))
        out[name] = {"pooled": linear_probe(p_tr, p_te), "tokens": linear_probe(t_tr, t_te)}
    return out


# ---------------------------------------------------------------------------------------------------------------------
# vistok digit fit
# ---------------------------------------------------------------------------------------------------------------------


#: ``vistok digit fit``'s changes to DINO's augmentations for a few photos and a few hundred steps: weaker colour
#: jitter and grayscale (the built-in photos differ mostly by colour, which a tokenizer's ids should keep too). With
#: the paper's jitter the tiny ViT's loss sat near log K for the whole run and its features did not beat random ones.
SMALL_DATA_RECIPE: dict[str, Any] = {"brightness": 0.2, "contrast": 0.2, "saturation": 0.1, "hue": 0.02, "gray_p": 0.05}


@dataclass
class DigitFitConfig:
    """Everything ``vistok digit fit`` needs (see ``vistok digit fit --help``)."""

    out: str = "runs/digit"
    data: str = "samples"
    size: int = 64
    k: int = 256
    encoder: str | None = None
    layer: int = -3
    image_size: int | None = None
    preset: str = "vit-tiny"
    ssl_steps: int = 300
    batch_size: int = 16
    n_local: int = 4
    lr: float = 5e-4
    warmup: int = 20
    momentum_teacher: float = 0.99
    fit_images: int = 1000
    fit_batch_size: int = 64
    n_iter: int = 20
    metric: str = "l2"
    backend: str = "torch"
    cache: str = "memory"
    probe: bool = True
    probe_images: int = 700
    picture_images: int = 6
    seed: int = 0
    resume: bool = True
    progress: bool = True
    dino_overrides: dict[str, Any] = field(default_factory=lambda: dict(SMALL_DATA_RECIPE))

    def __post_init__(self) -> None:
        for name in ("size", "k", "batch_size", "fit_images", "fit_batch_size", "picture_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.ssl_steps < 0 or self.n_iter < 0:
            raise ValueError(f"ssl_steps and n_iter must be >= 0, got {self.ssl_steps}, {self.n_iter}")


@dataclass
class DigitFitResult:
    tokenizer_dir: Path
    picture: Path
    summary: dict[str, Any]
    text: str


def _datasets(c: DigitFitConfig) -> dict[str, Any]:
    """SSL pictures (larger, to crop from), k-means pictures, and pictures to show."""
    from vistok.data.samples import SamplePhotos

    if c.data == "samples":
        source = round(c.size * 1.5)
        return {
            "ssl": SamplePhotos(size=source, split="train", scale_range=(1.0, 3.0), seed=c.seed),
            "fit": SamplePhotos(
                size=c.size, split="train", length=c.fit_images, scale_range=(1.0, 3.0), seed=c.seed + 1
            ),
            "show": [SamplePhotos(size=c.size, split=s, crop="center") for s in ("heldout", "train")],
        }
    from vistok.data.images import ImageFolder

    root = Path(c.data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data must be 'samples' or an image folder; {root} is not a folder")
    ssl = ImageFolder(root, size=round(c.size * 1.5), crop="random", hflip_p=0.5, seed=c.seed)
    fit = ImageFolder(root, size=c.size, crop="random", hflip_p=0.5, seed=c.seed + 1)
    return {"ssl": ssl, "fit": fit, "show": [ImageFolder(root, size=c.size)]}


def _show_pixels(datasets: list[Any], n: int) -> tuple[Tensor, list[str]]:
    items = []
    for ds in datasets:
        items += [ds[i] for i in range(min(len(ds), n - len(items)))]
    names = [str(it.get("path", "")).removeprefix("builtin:").rsplit("/", 1)[-1] for it in items]
    return torch.stack([it["pixels"] for it in items]), names


def _encoder(c: DigitFitConfig, datasets: dict[str, Any], out: Path, info: Any) -> tuple[Any, dict[str, Any]]:
    """The feature encoder: a Hugging Face folder, a saved vistok ViT, or a ViT trained here with DINO."""
    from vistok.hub import save_pretrained
    from vistok.tokenizers.digit import HFFeatureEncoder, ViTFeatureEncoder

    if c.encoder and c.encoder.startswith("hf:"):
        enc = HFFeatureEncoder(c.encoder[3:], c.layer, image_size=c.image_size, device=info.device)
        return enc, {"encoder": f"hf:{enc.path}", "layer": c.layer}
    if c.encoder:
        path = Path(c.encoder)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(
                f"--encoder must be 'hf:/path/to/model' or a folder holding a vistok ViT (config.json + "
                f"model.safetensors); {path} has no config.json"
            )
        vit = ViT.from_pretrained(path, map_location=info.device)
        return ViTFeatureEncoder(vit, c.layer), {"encoder": str(path), "layer": c.layer}
    vit_cfg = ViTConfig.from_name(c.preset, image_size=c.size)
    record: dict[str, Any] = {"encoder": f"{c.preset} trained with DINO", "layer": c.layer, "ssl_steps": c.ssl_steps}
    torch.manual_seed(c.seed)
    random_vit = ViT(vit_cfg)
    if c.ssl_steps == 0:
        return ViTFeatureEncoder(random_vit.to(info.device), c.layer), record | {"encoder": f"{c.preset} (random)"}
    p = vit_cfg.patch_size
    local = max(p, c.size // 2 // p * p)
    recipe = {"freeze_last_layer": c.ssl_steps // 10, **c.dino_overrides}
    dino = DinoConfig(
        global_size=c.size, local_size=local, n_local=c.n_local, momentum_teacher=c.momentum_teacher, **recipe
    )
    train = TrainConfig(
        steps=c.ssl_steps, batch_size=c.batch_size, lr=c.lr, weight_decay=0.04, warmup=min(c.warmup, c.ssl_steps // 2),
        clip_grad=3.0, log_every=max(1, min(20, c.ssl_steps // 10)), ckpt_every=max(c.ssl_steps // 2, 1),
        out_dir=str(out / "ssl"), resume=c.resume, seed=c.seed, progress=c.progress,
    )  # fmt: skip
    res = train_dino(datasets["ssl"], vit_cfg, dino, train, backbone=copy.deepcopy(random_vit), info=info)
    teacher = res.teacher
    if info.is_main:
        record["teacher_dir"] = str(save_pretrained(teacher, out / "ssl" / "teacher"))
    log = out / "ssl" / "metrics.jsonl"
    logged = [r["loss"] for r in read_jsonl(log) if r.get("loss") is not None] if info.is_main and log.is_file() else []
    losses = logged or res.losses  # the log covers the steps before a resume too
    if losses:
        m = max(1, len(losses) // 10)
        record["ssl_loss_first"], record["ssl_loss_last"] = sum(losses[:m]) / m, sum(losses[-m:]) / m
    if c.probe and c.data == "samples" and info.is_main:
        encoders = {"ssl": ViTFeatureEncoder(teacher, c.layer), "random": ViTFeatureEncoder(random_vit, c.layer)}
        record["probe"] = photo_probe(encoders, c.size, c.probe_images, seed=c.seed)
    return ViTFeatureEncoder(teacher, c.layer), record


def fit_digit(config: DigitFitConfig, info: Any = None) -> DigitFitResult:
    """Train (or load) the encoder, fit the codebook, write the tokenizer, a token-map picture and a summary."""
    from vistok.tokenizers.digit import DigitConfig, DigitTokenizer, token_map_picture
    from vistok.train.distributed import barrier, init_distributed

    c, t0 = config, time.perf_counter()
    info = info or init_distributed()
    out = Path(c.out)
    datasets = _datasets(c)
    encoder, record = _encoder(c, datasets, out, info)
    tok_dir, picture = out / "tokenizer", out / "token_map.png"
    summary: dict[str, Any] = {}
    if info.is_main:
        kcfg = DigitConfig(num_clusters=c.k, metric=c.metric, n_iter=c.n_iter, seed=c.seed, backend=c.backend)
        tok = DigitTokenizer(kcfg, encoder).to(info.device)
        tok.fit(
            datasets["fit"], batch_size=c.fit_batch_size, max_images=c.fit_images, cache=c.cache, progress=c.progress
        )
        tok.save_pretrained(tok_dir)
        show, names = _show_pixels(datasets["show"], c.picture_images)
        save_png(token_map_picture(tok, show, titles=names), picture)
        from vistok.tokenizers.digit import cluster_stats

        ids = tok.encode(show)
        shown = cluster_stats(torch.bincount(ids.flatten().cpu(), minlength=c.k))
        summary = {
            **record, "k": c.k, "fit": tok.fit_stats_, "shown_pictures": {"count": len(show), **shown},
            "grid": list(ids.shape[1:]), "tokenizer_dir": str(tok_dir), "picture": str(picture),
            "elapsed_s": round(time.perf_counter() - t0, 1),
        }  # fmt: skip
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    barrier()
    return DigitFitResult(tok_dir, picture, summary, format_digit_summary(summary) if summary else "")


def format_digit_summary(s: dict[str, Any]) -> str:
    """One paragraph (plus the probe line) saying what ``vistok digit fit`` made and wrote where."""
    f = s["fit"]
    text = (
        f"Fitted a DiGIT tokenizer: K={s['k']} k-means centroids over layer {s['layer']} patch features of "
        f"{s['encoder']}, on {f['images']} pictures ({f['rows']} feature rows, {s['grid'][0]}x{s['grid'][1]} tokens "
        f"each); inertia {f['inertia']:.4g} (mean squared distance {f['mean_sq_distance']:.4g}), {f['n_iter']} "
        f"iterations; clusters used {f['used']}/{s['k']} ({f['usage']:.0%}), perplexity {f['perplexity']:.1f}. "
        f"Tokenizer in {s['tokenizer_dir']} (DigitTokenizer.from_pretrained), token map in {s['picture']}, "
        f"summary.json beside it."
    )
    if "ssl_loss_first" in s:
        text += f"\nDINO loss {s['ssl_loss_first']:.3f} → {s['ssl_loss_last']:.3f} over {s['ssl_steps']} steps"
        text += f"; teacher backbone in {s.get('teacher_dir', '?')}."
    if "probe" in s:
        p = s["probe"]
        text += (
            f"\nLinear probe (which of {p['classes']} photos a held-out crop comes from; {p['train_crops']} train / "
            f"{p['test_crops']} test crops at zoom {p['zoom'][0]:g}-{p['zoom'][1]:g}): mean-pooled features "
            f"SSL {p['ssl']['pooled']:.1%} vs random-init {p['random']['pooled']:.1%}; single tokens SSL "
            f"{p['ssl']['tokens']:.1%} vs random-init {p['random']['tokens']:.1%}."
        )
    return text


def _cmd_fit(args: argparse.Namespace) -> int:
    cfg = DigitFitConfig(
        out=args.out, data=args.data, size=args.size, k=args.k, encoder=args.encoder, layer=args.layer,
        image_size=args.image_size, preset=args.preset, ssl_steps=args.ssl_steps, batch_size=args.batch_size,
        n_local=args.local_crops, lr=args.lr, fit_images=args.fit_images, n_iter=args.n_iter, metric=args.metric,
        backend=args.backend, cache=args.cache, probe=not args.no_probe, seed=args.seed, resume=not args.no_resume,
        progress=not args.quiet,
    )  # fmt: skip
    print(fit_digit(cfg).text)
    return 0


def add_digit_parser(subparsers: Any) -> None:
    """The ``vistok digit fit`` command."""
    fmt = argparse.RawDescriptionHelpFormatter
    g = subparsers.add_parser(
        "digit",
        help="DiGIT: discriminative tokens from k-means over self-supervised features",
        description="Fit DiGIT tokenizers: k-means over the patch features of a self-supervised ViT.",
    )
    gs = g.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = gs.add_parser(
        "fit",
        help="train a small ViT with DINO (or use a local DINOv2), fit k-means on its features, write the tokenizer",
        description=FIT_DESCRIPTION,
        epilog=f"example:\n  {FIT_EXAMPLE}\n  vistok digit fit --encoder hf:/models/dinov2-with-registers-base "
        f"--image-size 224 --size 256 --k 8192 --data ~/imagenet-subset --backend faiss",
        formatter_class=fmt,
    )
    p.add_argument("--data", default="samples", help="'samples' (built-in photos) or an image folder")
    p.add_argument("--size", type=int, default=64, help="picture side in pixels (default 64)")
    p.add_argument("--k", type=int, default=256, help="number of k-means clusters = vocabulary size (default 256)")
    p.add_argument(
        "--encoder", default=None, help="'hf:/path/to/dinov2' (a local Hugging Face folder), a saved vistok ViT "
        "folder, or nothing: train vistok's ViT with DINO here",
    )  # fmt: skip
    p.add_argument("--layer", type=int, default=-3, help="hidden state to read (default -3: third block from the end)")
    p.add_argument("--image-size", type=int, default=None, help="resize pictures to this side for an HF encoder")
    p.add_argument("--preset", default="vit-tiny", help="ViT preset trained with DINO (default vit-tiny)")
    p.add_argument("--ssl-steps", type=int, default=300, help="DINO training steps (default 300; 0 = random init)")
    p.add_argument("--batch-size", type=int, default=16, help="pictures per DINO step (default 16)")
    p.add_argument("--local-crops", type=int, default=4, help="local crops per picture (default 4)")
    p.add_argument("--lr", type=float, default=5e-4, help="DINO learning rate (default 5e-4)")
    p.add_argument("--fit-images", type=int, default=1000, help="pictures whose features k-means sees (default 1000)")
    p.add_argument("--n-iter", type=int, default=20, help="k-means iterations (default 20)")
    p.add_argument("--metric", default="l2", choices=("l2", "cosine"))
    p.add_argument("--backend", default="torch", choices=("torch", "faiss"))
    p.add_argument("--cache", default="memory", help="'memory', 'stream' or a folder for the features (default memory)")
    p.add_argument("--no-probe", action="store_true", help="skip the linear probe (SSL vs random-init features)")
    p.add_argument("--out", default="runs/digit", help="output folder (default runs/digit)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start the DINO training afresh")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_fit)

    from vistok.train.digit_ar import add_digit_train_parser

    add_digit_train_parser(gs)  # `digit train` (a GPT over DiGIT tokens) and `digit compare`
