"""Evaluation: reconstruction metrics (PSNR, SSIM, MS-SSIM), token statistics, Fréchet distance.

See :mod:`vistok.eval.metrics`. ``vistok tokenizer eval`` (in :mod:`vistok.tokenizers.api`) puts them together.
"""

from vistok.eval.metrics import (
    MS_SSIM_WEIGHTS,
    CodebookStats,
    bits_per_pixel,
    code_histogram,
    codebook_stats,
    codebook_usage,
    entropy_bits_per_pixel,
    feature_statistics,
    frechet_distance,
    load_feature_network,
    ms_ssim,
    ms_ssim_scales,
    psnr,
    ssim,
)

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
