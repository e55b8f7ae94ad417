"""Tokenizers: pixels ⇄ tokens. Each family is one module with its config dataclass and presets, registered with
:mod:`vistok.registry` (``create_model("magvit2-tiny")``).

- :mod:`vistok.tokenizers.magvit2` — MAGVIT-v2: causal 3-D CNN for images and video, LFQ by default;
- :mod:`vistok.tokenizers.vqgan` — VQGAN (taming), LVM's f=16 / 8,192-code tokenizer; video frame by frame;
- :mod:`vistok.tokenizers.vae` — a KL-regularized continuous VAE (Transfusion's image latents);
- :mod:`vistok.tokenizers.digit` — DiGIT: k-means over self-supervised patch features;
- :mod:`vistok.tokenizers.merge` — Chat-UniVi's DPC-KNN token merging (and ToMe, pooling);
- :mod:`vistok.tokenizers.text` — byte-level and Hugging Face text tokenizers;
- :mod:`vistok.tokenizers.api` — ``load_tokenizer`` and the encode/decode/reconstruct/eval commands.

They share one interface: ``encode(x) → ids``, ``decode(ids) → pixels``, ``encode_latents``, ``quantize``,
``decode_latents``, ``forward(x) → TokenizerOutput(recon, indices, quant_loss, metrics)``, ``token_grid(shape)``,
``last_layer_weight()`` and the attributes ``spatial_factor``, ``temporal_factor``, ``codebook_size``,
``latent_channels``.
"""

from vistok.tokenizers.magvit2 import MagvitConfig, MagvitTokenizer, StreamState, TokenizerOutput
from vistok.tokenizers.text import ByteTokenizer, HFTextTokenizer, load_text_tokenizer
from vistok.tokenizers.vae import KLVAE, VAEConfig
from vistok.tokenizers.vqgan import VQGANConfig, VQGANTokenizer

__all__ = [
    "KLVAE",
    "ByteTokenizer",
    "HFTextTokenizer",
    "MagvitConfig",
    "MagvitTokenizer",
    "StreamState",
    "TokenizerOutput",
    "VAEConfig",
    "VQGANConfig",
    "VQGANTokenizer",
    "load_text_tokenizer",
]
