"""Quantizers with one API: ``out = q(z)`` → ``QuantizerOutput(quantized, indices, loss, metrics)``.

- :class:`LFQ` — lookup-free quantization (MAGVIT-v2), exact cheap entropy penalty, BSQ variant;
- :class:`FSQ` — finite scalar quantization (Mentzer et al. 2023);
- :class:`VectorQuantizer` (alias ``VQ``) — codebook VQ, LlamaGen-style l2-normalized low-dim codes, EMA, restarts;
- :class:`KMeans` — streaming k-means codebooks (DiGIT's tokenizer), torch or faiss backend.
"""

from vistok.quantizers.base import QuantizerOutput, UsageTracker
from vistok.quantizers.fsq import FSQ
from vistok.quantizers.kmeans import KMeans, KMeansConfig
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
    "KMeans",
    "KMeansConfig",
    "QuantizerOutput",
    "UsageTracker",
    "VectorQuantizer",
    "bits_to_indices",
    "convert_bit_order",
    "indices_to_bits",
    "join_indices",
    "split_indices",
]
