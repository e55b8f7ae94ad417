"""Sequence models over tokens: the LLaMA-style backbone (:mod:`vistok.models.transformer`) and its Hugging Face
LLaMA import/export (:mod:`vistok.models.hf_llama`)."""

from vistok.models.hf_llama import from_hf_llama, to_hf_llama
from vistok.models.transformer import KVCache, Transformer, TransformerBlock, TransformerConfig

__all__ = ["KVCache", "Transformer", "TransformerBlock", "TransformerConfig", "from_hf_llama", "to_hf_llama"]
