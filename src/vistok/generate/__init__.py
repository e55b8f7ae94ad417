"""Sampling loops over token models: next-token samplers (:mod:`vistok.generate.sampling`), autoregressive decoding
with the backbone's static KV cache, token plans and sliding windows (:mod:`vistok.generate.ar`), and MaskGIT's
confidence-based parallel decoding (:mod:`vistok.generate.maskgit`)."""

from vistok.generate.ar import TokenPlan, decode_step, frame_plan, generate, prefill
from vistok.generate.maskgit import MaskGITSample, guided_logits, maskgit_generate
from vistok.generate.sampling import check_sampling_args, logits_to_probs, sample_from_probs, sample_logits

__all__ = [
    "MaskGITSample",
    "TokenPlan",
    "check_sampling_args",
    "decode_step",
    "frame_plan",
    "generate",
    "guided_logits",
    "logits_to_probs",
    "maskgit_generate",
    "prefill",
    "sample_from_probs",
    "sample_logits",
]
