"""Sequence models over tokens: the LLaMA-style backbone (:mod:`vistok.models.transformer`) and its Hugging Face
LLaMA import/export (:mod:`vistok.models.hf_llama`), LVM (:mod:`vistok.models.lvm`), MaskGIT
(:mod:`vistok.models.maskgit`), Transfusion (:mod:`vistok.models.transfusion`), the Chat-UniVi understanding model
(:mod:`vistok.models.univi`) and the small ViT used for self-supervised DiGIT features (:mod:`vistok.models.vit`)."""

from vistok.models.hf_llama import from_hf_llama, to_hf_llama
from vistok.models.lvm import LVM, LVMConfig
from vistok.models.maskgit import MaskGIT, MaskGITConfig
from vistok.models.transformer import KVCache, Transformer, TransformerBlock, TransformerConfig
from vistok.models.transfusion import Transfusion, TransfusionConfig
from vistok.models.univi import UniVi, UniViConfig
from vistok.models.vit import ViT, ViTConfig

__all__ = [
    "LVM",
    "KVCache",
    "LVMConfig",
    "MaskGIT",
    "MaskGITConfig",
    "Transformer",
    "TransformerBlock",
    "TransformerConfig",
    "Transfusion",
    "TransfusionConfig",
    "UniVi",
    "UniViConfig",
    "ViT",
    "ViTConfig",
    "from_hf_llama",
    "to_hf_llama",
]
