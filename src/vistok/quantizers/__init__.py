"""Quantizers with one API: ``out = q(z)`` → ``QuantizerOutput(quantized, indices, loss, metrics)``.

- :class:`LFQ` — lookup-free quantization (MAGVIT-v2), exact cheap entropy penalty, BSQ variant;
- :class:`FSQ` — finite scalar quantization (Mentzer et al. 2023);
- :class:`VectorQuantizer` (alias ``VQ``) — codebook VQ, LlamaGen-style l2-normalized low-dim codes, EMA, restarts;
- ``KMeans`` — k-means tokens (DiGIT), from :mod:`vistok.quantizers.kmeans`, imported on first access.
"""

from vistok.quantizers.base import QuantizerOutput, UsageTracker
from vistok.quantizers.fsq import FSQ
from vistok.quantizers.lfq import (
    LFQ,
    bits_to_indices,
    convert_bit_order,
    indices_to_bits,
    join_indices,
    split_indices,
)
from vistok.quantizers.vq import VQ, VectorQuantizer

__all__ = [
    "FSQ",
    "LFQ",
    "VQ",
    "QuantizerOutput",
    "UsageTracker",
    "VectorQuantizer",
    "bits_to_indices",
    "convert_bit_order",
    "indices_to_bits",
    "join_indices",
    "split_indices",
]


def __getattr__(name: str):
    # KMeans lives in kmeans.py (written separately); import it lazily so this package works without it.
    if name == "KMeans":
        from vistok.quantizers.kmeans import KMeans

        return KMeans
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
