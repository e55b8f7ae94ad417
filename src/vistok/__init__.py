"""vistok: images and video as tokens, and sequence models over those tokens.

Systems: MAGVIT-v2 (causal 3-D CNN tokenizer with lookup-free quantization), LVM (visual sentences),
Chat-UniVi (dynamic visual tokens), Transfusion (text + diffusion in one transformer) and DiGIT
(discriminative k-means tokens). See the README for a tour.

Top-level names are imported lazily, so ``import vistok`` (and ``vistok --help``) does not load torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

_LAZY = {
    "PretrainedMixin": "vistok.hub",
    "from_pretrained": "vistok.hub",
    "save_pretrained": "vistok.hub",
    "create_model": "vistok.registry",
    "list_models": "vistok.registry",
    "register_model": "vistok.registry",
    "load_tokenizer": "vistok.tokenizers.api",
}

__all__ = [
    "PretrainedMixin",
    "__version__",
    "create_model",
    "from_pretrained",
    "list_models",
    "load_tokenizer",
    "register_model",
    "save_pretrained",
]

if TYPE_CHECKING:
    from vistok.hub import PretrainedMixin, from_pretrained, save_pretrained
    from vistok.registry import create_model, list_models, register_model
    from vistok.tokenizers.api import load_tokenizer


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'vistok' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
