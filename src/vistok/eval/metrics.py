"""Reconstruction metrics and token statistics for evaluating tokenizers.

Pixel metrics compare two tensors of the same shape: images ``(B, C, H, W)`` or videos ``(B, C, T, H, W)``. They
return one value per item, shape ``(B,)``; a video's value is the mean of its per-frame values.

**Data range.** ``data_range=None`` follows the vistok pixel contract: ``uint8`` tensors are [0, 255], floating
tensors are [−1, 1] and are mapped to [0, 1] first, so a picture scores the same as floats and as uint8. (SSIM's
luminance term depends on the offset of the values: scikit-image given raw [−1, 1] values with ``data_range=2``
computes a different number.) An explicit ``data_range=L`` takes the values as they are, as intensities in [0, L]
(e.g. 1.0 for [0, 1] floats), like scikit-image. Both inputs must have the same dtype. Sums run in float32 (float64
when the inputs are float64).

- :func:`psnr` — 10·log10(L² / MSE), MSE over channels and pixels of one frame (``inf`` for identical frames).
- :func:`ssim` — Wang, Bovik, Sheikh & Simoncelli, "Image quality assessment: from error visibility to structural
  similarity", IEEE TIP 2004, eq. (13): 11×11 Gaussian window with σ = 1.5, K1 = 0.01, K2 = 0.03, population
  (co)variances, computed on each channel and averaged, over the pixels where the window fits ("valid"). This is
  ``skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
- :func:`ms_ssim` — Wang, Simoncelli & Bovik, "Multiscale structural similarity for image quality assessment",
  Asilomar 2003, eq. (7): contrast-structure at scales 1 … M−1, full SSIM at scale M, weighted product with the
  paper's weights; scales are 2×2 average pooling apart. Images too small for 5 scales use fewer (see there).
- :func:`codebook_stats` — how many codes a set of token ids uses, their empirical entropy (bits) and perplexity.
- :func:`bits_per_pixel` / :func:`entropy_bits_per_pixel` — the size of a token grid as bits per pixel.
- :func:`frechet_distance` — the Fréchet distance between two Gaussians (FID, Heusel et al. 2017) from feature
  statistics (:func:`feature_statistics`), with the matrix square root taken by symmetric eigen-decomposition
  (no scipy). The features themselves need a network whose weights the user supplies
  (:func:`load_feature_network`); vistok ships none.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MS_SSIM_WEIGHTS",
    "CodebookStats",
    "bits_per_pixel",
    "code_histogram",
    "codebook_stats",
    "codebook_usage",
    "entropy_bits_per_pixel",
    "feature_statistics",
    "frechet_distance",
    "load_feature_network",
    "ms_ssim",
    "ms_ssim_scales",
    "psnr",
    "ssim",
]

SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03
MS_SSIM_WEIGHTS: tuple[float, ...] = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)
"""Per-scale exponents of MS-SSIM, finest scale first (Wang et al. 2003, §3.2)."""


# ---------------------------------------------------------------------------------------------------------------------
# Inputs
# ---------------------------------------------------------------------------------------------------------------------


def _prepare(x: Tensor, y: Tensor, data_range: float | None) -> tuple[Tensor, Tensor, int]:
    """Check a pair of images or videos; return them as frames ``(N, C, H, W)`` divided by the range, plus ``B``.

    Default-range floats are shifted from [−1, 1] to [0, 1] first. Range 1 makes the SSIM constants ``K1²``, ``K2²``
    and keeps float32 sums well conditioned.
    """
    if not isinstance(x, Tensor) or not isinstance(y, Tensor):
        raise TypeError(f"expected two tensors, got {type(x).__name__} and {type(y).__name__}")
    if x.shape != y.shape:
        raise ValueError(f"expected inputs of the same shape, got {tuple(x.shape)} and {tuple(y.shape)}")
    if x.dtype != y.dtype:
        raise ValueError(f"expected inputs of the same dtype, got {x.dtype} and {y.dtype}")
    if x.ndim not in (4, 5):
        raise ValueError(f"expected images (B, C, H, W) or videos (B, C, T, H, W), got shape {tuple(x.shape)}")
    low = 0.0
    if data_range is None:
        if x.dtype == torch.uint8:
            data_range = 255.0
        elif x.is_floating_point():
            data_range, low = 2.0, -1.0
        else:
            raise ValueError(f"pass data_range for {x.dtype} inputs (uint8 means 255, float means [-1, 1])")
    if not data_range > 0:
        raise ValueError(f"data_range must be positive, got {data_range}")
    dtype = torch.float64 if torch.float64 in (x.dtype, y.dtype) else torch.float32
    b = x.shape[0]
    if x.ndim == 5:  # (B, C, T, H, W) → (B·T, C, H, W)
        x, y = (v.transpose(1, 2).flatten(0, 1) for v in (x, y))
    return (x.to(dtype) - low) / data_range, (y.to(dtype) - low) / data_range, b


def _per_item(values: Tensor, batch: int) -> Tensor:
    """Per-frame values ``(B·T,)`` → per-item means ``(B,)``."""
    return values.reshape(batch, -1).mean(dim=1)


# ---------------------------------------------------------------------------------------------------------------------
# PSNR
# ---------------------------------------------------------------------------------------------------------------------


def psnr(x: Tensor, y: Tensor, data_range: float | None = None) -> Tensor:
    """Peak signal-to-noise ratio in dB, per item ``(B,)``; a video gets the mean of its per-frame PSNRs.

    Identical frames give ``inf``. See the module docstring for shapes and ``data_range``.
    """
    a, b, batch = _prepare(x, y, data_range)
    mse = (a - b).square().flatten(1).mean(dim=1)
    return _per_item(-10.0 * torch.log10(mse), batch)  # range 1 after scaling: 10·log10(1 / mse)


# ---------------------------------------------------------------------------------------------------------------------
# SSIM and MS-SSIM
# ---------------------------------------------------------------------------------------------------------------------


def _gaussian_taps(size: int, sigma: float, dtype: torch.dtype, device: torch.device) -> Tensor:
    """A normalised 1-D Gaussian of ``size`` taps (the 2-D window is its outer product)."""
    r = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    g = torch.exp(-(r**2) / (2 * sigma**2))
    return (g / g.sum()).to(dtype=dtype, device=device)


def _filter_valid(x: Tensor, taps: Tensor) -> Tensor:
    """Separable Gaussian filtering of every channel of ``x`` (N, C, H, W), keeping only where the window fits."""
    c, k = x.shape[1], taps.numel()
    x = F.conv2d(x, taps.view(1, 1, k, 1).expand(c, 1, k, 1), groups=c)
    return F.conv2d(x, taps.view(1, 1, 1, k).expand(c, 1, 1, k), groups=c)


def _ssim_terms(a: Tensor, b: Tensor, taps: Tensor) -> tuple[Tensor, Tensor]:
    """Mean SSIM and mean contrast-structure term per frame and channel, both ``(N, C)``, for range-1 inputs."""
    c1, c2 = SSIM_K1**2, SSIM_K2**2
    c = a.shape[1]
    stats = _filter_valid(torch.cat([a, b, a * a, b * b, a * b], dim=1), taps)
    mu_a, mu_b, e_aa, e_bb, e_ab = stats.split(c, dim=1)
    var_a, var_b, cov = e_aa - mu_a**2, e_bb - mu_b**2, e_ab - mu_a * mu_b
    cs = (2 * cov + c2) / (var_a + var_b + c2)
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    return (luminance * cs).flatten(2).mean(dim=2), cs.flatten(2).mean(dim=2)


def _check_window(h: int, w: int, what: str) -> None:
    if min(h, w) < SSIM_WINDOW:
        raise ValueError(f"{what} needs frames of at least {SSIM_WINDOW}×{SSIM_WINDOW} pixels, got {h}×{w}")


def ssim(x: Tensor, y: Tensor, data_range: float | None = None) -> Tensor:
    """Structural similarity (Wang et al. 2004), per item ``(B,)``: mean over pixels, then channels (then frames).

    11×11 Gaussian window (σ = 1.5), K1 = 0.01, K2 = 0.03, population statistics, valid region only — equal to
    scikit-image's ``structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
    Frames must be at least 11×11.
    """
    a, b, batch = _prepare(x, y, data_range)
    _check_window(*a.shape[-2:], "SSIM")
    value, _ = _ssim_terms(a, b, _gaussian_taps(SSIM_WINDOW, SSIM_SIGMA, a.dtype, a.device))
    return _per_item(value.mean(dim=1), batch)


def ms_ssim_scales(height: int, width: int, max_scales: int = len(MS_SSIM_WEIGHTS)) -> int:
    """How many MS-SSIM scales (at most ``max_scales``) fit an ``height``×``width`` frame (0 when none does).

    Scale j sees the frame pooled j times by 2 (floor); the 11×11 window must fit at every scale.
    """
    n = 0
    while n < max_scales and min(height, width) // 2**n >= SSIM_WINDOW:
        n += 1
    return n


def ms_ssim(
    x: Tensor,
    y: Tensor,
    data_range: float | None = None,
    scales: int | None = None,
    weights: Sequence[float] | None = None,
) -> Tensor:
    """Multi-scale SSIM (Wang et al. 2003), per item ``(B,)``.

    For each channel: ``SSIM_M^{w_M} · Π_{j<M} cs_j^{w_j}``, where ``cs_j`` is the mean contrast-structure term at
    scale j, ``SSIM_M`` the mean SSIM (luminance included) at the coarsest scale M, and scale j+1 is scale j
    average-pooled 2×2. Negative terms are clipped to 0 before the powers (as in the TensorFlow and pytorch-msssim
    implementations); channels (then frames) are averaged.

    ``weights`` default to :data:`MS_SSIM_WEIGHTS` (5 scales: frames of at least 176×176). ``scales`` picks how many
    of them to use; the weights used are then renormalised to sum to 1. With ``scales=None`` and frames too small
    for 5 scales, as many scales as fit are used (renormalised weights, with a warning; check
    :func:`ms_ssim_scales`). Frames too small for one scale (< 11 px) raise.
    """
    a, b, batch = _prepare(x, y, data_range)
    base = tuple(MS_SSIM_WEIGHTS if weights is None else (float(v) for v in weights))
    h, w = a.shape[-2:]
    fit = ms_ssim_scales(h, w, len(base))
    if scales is None:
        if fit == 0:
            _check_window(h, w, "MS-SSIM")
        if fit < len(base):
            warnings.warn(
                f"ms_ssim: {h}×{w} frames fit only {fit} of {len(base)} scales; using the first {fit} weights, "
                "renormalised to sum to 1 (not comparable with 5-scale MS-SSIM)",
                stacklevel=2,
            )
        scales = fit
    if not 1 <= scales <= len(base):
        raise ValueError(f"scales must be in [1, {len(base)}], got {scales}")
    if scales > fit:
        need = SSIM_WINDOW * 2 ** (scales - 1)
        raise ValueError(f"MS-SSIM with {scales} scales needs frames of at least {need}×{need} pixels, got {h}×{w}")
    power = torch.tensor(base[:scales], dtype=a.dtype, device=a.device)
    if scales < len(base):
        power = power / power.sum()
    taps = _gaussian_taps(SSIM_WINDOW, SSIM_SIGMA, a.dtype, a.device)
    terms = []
    for j in range(scales):
        if j:
            a, b = F.avg_pool2d(a, 2), F.avg_pool2d(b, 2)
        full, cs = _ssim_terms(a, b, taps)
        terms.append(full if j == scales - 1 else cs)
    value = torch.stack(terms, dim=-1).clamp_min(0).pow(power).prod(dim=-1)  # (N, C)
    return _per_item(value.mean(dim=1), batch)


# ---------------------------------------------------------------------------------------------------------------------
# Token statistics
# ---------------------------------------------------------------------------------------------------------------------


def code_histogram(ids: Tensor, codebook_size: int) -> Tensor:
    """How often each code occurs in ``ids`` (any shape, integer ids in [0, codebook_size)): int64 ``(codebook_size,)``.

    Histograms of several batches add up, so a whole dataset's statistics need only one running histogram.
    """
    if not isinstance(codebook_size, int) or codebook_size < 1:
        raise ValueError(f"codebook_size must be a positive int, got {codebook_size!r}")
    ids = torch.as_tensor(ids)
    if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        raise TypeError(f"expected integer token ids, got {ids.dtype}")
    flat = ids.reshape(-1).long()
    if flat.numel() and (int(flat.min()) < 0 or int(flat.max()) >= codebook_size):
        raise ValueError(f"token ids must be in [0, {codebook_size}), got range [{int(flat.min())}, {int(flat.max())}]")
    return torch.bincount(flat, minlength=codebook_size)


@dataclass(frozen=True)
class CodebookStats:
    """Usage statistics of a codebook over a set of tokens.

    ``usage`` is ``used_codes / codebook_size``; ``entropy_bits`` is the empirical entropy −Σ p log2 p of the code
    frequencies, at most ``max_entropy_bits`` = log2(codebook_size); ``perplexity`` = 2^entropy, the number of
    equally likely codes with that entropy. With fewer tokens than codes the empirical entropy underestimates the
    true one (it cannot exceed log2 of the token count).
    """

    codebook_size: int
    num_tokens: int
    used_codes: int
    usage: float
    entropy_bits: float
    perplexity: float
    max_entropy_bits: float

    @classmethod
    def from_counts(cls, counts: Tensor) -> CodebookStats:
        """Statistics from a histogram such as :func:`code_histogram`'s."""
        counts = torch.as_tensor(counts).reshape(-1).to(torch.float64)
        if counts.numel() == 0 or bool((counts < 0).any()):
            raise ValueError("counts must be a non-empty histogram of non-negative counts")
        total = float(counts.sum())
        p = counts[counts > 0] / total if total > 0 else counts[:0]
        entropy = float(-(p * torch.log2(p)).sum()) if total > 0 else 0.0
        size = counts.numel()
        used = int((counts > 0).sum())
        return cls(size, int(total), used, used / size, entropy, 2.0**entropy, math.log2(size))

    def as_dict(self) -> dict[str, float | int]:
        return asdict(self)


def codebook_stats(ids: Tensor, codebook_size: int) -> CodebookStats:
    """Usage, empirical entropy (bits) and perplexity of the codes in ``ids`` (see :class:`CodebookStats`)."""
    return CodebookStats.from_counts(code_histogram(ids, codebook_size))


def codebook_usage(ids: Tensor, codebook_size: int) -> float:
    """Fraction of the ``codebook_size`` codes that occur at least once in ``ids``."""
    return codebook_stats(ids, codebook_size).usage


def bits_per_pixel(num_tokens: int, codebook_size: int, num_pixels: int) -> float:
    """Bits per pixel of raw tokens: ``num_tokens · log2(codebook_size) / num_pixels``.

    A pixel is one spatial position of one frame (its 3 colour values together): a 17-frame 128×128 clip has
    17·128·128 pixels. For 16×16 tokens of a 2^18 codebook over a 256×256 image that is 256·18 / 65536 ≈ 0.07.
    """
    if num_tokens < 0 or codebook_size < 1 or num_pixels < 1:
        raise ValueError(
            f"expected num_tokens >= 0, codebook_size >= 1, num_pixels >= 1, got {num_tokens}, {codebook_size}, "
            f"{num_pixels}"
        )
    return num_tokens * math.log2(codebook_size) / num_pixels


def entropy_bits_per_pixel(num_tokens: int, entropy_bits: float, num_pixels: int) -> float:
    """Bits per pixel if each token cost its empirical entropy (an ideal order-0 entropy coder's rate)."""
    if num_tokens < 0 or entropy_bits < 0 or num_pixels < 1:
        raise ValueError(
            f"expected num_tokens >= 0, entropy_bits >= 0, num_pixels >= 1, got {num_tokens}, {entropy_bits}, "
            f"{num_pixels}"
        )
    return num_tokens * entropy_bits / num_pixels


# ---------------------------------------------------------------------------------------------------------------------
# Fréchet distance (FID)
# ---------------------------------------------------------------------------------------------------------------------


def feature_statistics(features: Tensor) -> tuple[Tensor, Tensor]:
    """Mean ``(D,)`` and covariance ``(D, D)`` (unbiased, N − 1) of features ``(N, D)``, in float64."""
    features = torch.as_tensor(features)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected features (N >= 2, D), got shape {tuple(features.shape)}")
    f = features.detach().to(torch.float64)
    mu = f.mean(dim=0)
    centred = f - mu
    return mu, centred.T @ centred / (f.shape[0] - 1)


def _sqrtm_psd(a: Tensor) -> Tensor:
    """Square root of a symmetric positive semi-definite matrix (negative round-off eigenvalues clipped to 0)."""
    eigenvalues, vectors = torch.linalg.eigh((a + a.T) / 2)
    return (vectors * eigenvalues.clamp_min(0).sqrt()) @ vectors.T


def frechet_distance(mu1: Tensor, sigma1: Tensor, mu2: Tensor, sigma2: Tensor) -> float:
    """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2): ‖mu1 − mu2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½).

    tr((Σ1 Σ2)^½) is computed as tr((Σ1^½ Σ2 Σ1^½)^½) — the same eigenvalues, but of a symmetric PSD matrix, so two
    symmetric eigen-decompositions replace scipy's general ``sqrtm``. Computed in float64.
    """
    mu1, mu2 = (torch.as_tensor(m).to(torch.float64).reshape(-1) for m in (mu1, mu2))
    s1, s2 = (torch.as_tensor(s).to(torch.float64) for s in (sigma1, sigma2))
    d = mu1.numel()
    if mu2.numel() != d or s1.shape != (d, d) or s2.shape != (d, d):
        raise ValueError(
            f"expected means (D,) and covariances (D, D) of one D, got {tuple(mu1.shape)}, {tuple(s1.shape)}, "
            f"{tuple(mu2.shape)}, {tuple(s2.shape)}"
        )
    root1 = _sqrtm_psd(s1)
    middle = root1 @ s2 @ root1
    trace_root = torch.linalg.eigvalsh((middle + middle.T) / 2).clamp_min(0).sqrt().sum()
    diff = mu1 - mu2
    return float(diff @ diff + torch.trace(s1) + torch.trace(s2) - 2 * trace_root)


def load_feature_network(path: str | os.PathLike, device: str | torch.device = "cpu") -> Callable[[Tensor], Tensor]:
    """Load a TorchScript feature network for rFID from ``path``; returns ``features(uint8 (B, 3, H, W)) → (B, D)``.

    The file is a TorchScript archive whose ``forward`` takes uint8 images (B, 3, H, W) in [0, 255] at any size and
    returns (B, D) features — e.g. the FID Inception-v3 ``inception-2015-12-05.pt`` distributed with NVIDIA's
    StyleGAN2-ADA (called with ``return_features=True`` when its ``forward`` has that argument). vistok contains no
    Inception network and never downloads one.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"no feature network at {path} (expected a TorchScript .pt file)")
    try:
        with warnings.catch_warnings():  # TorchScript is deprecated in recent torch; the FID networks ship in it
            warnings.simplefilter("ignore", DeprecationWarning)
            net = torch.jit.load(str(path), map_location=device).eval()
    except (RuntimeError, ValueError) as e:
        raise ValueError(
            f"{path}: not a TorchScript feature network ({str(e).splitlines()[0] if str(e) else type(e).__name__}); "
            "rFID needs a TorchScript Inception-v3 such as StyleGAN2-ADA's inception-2015-12-05.pt"
        ) from e
    arguments = [a.name for a in net.forward.schema.arguments]
    kwargs = {"return_features": True} if "return_features" in arguments else {}

    @torch.inference_mode()
    def features(images: Tensor) -> Tensor:
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (B, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        out = net(images.to(device), **kwargs)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != images.shape[0]:
            got = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(f"{path}: expected features of shape ({images.shape[0]}, D), got {got}")
        return out.float().cpu()

    return features
