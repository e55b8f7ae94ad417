"""Sampling loops over token models: next-token samplers (:mod:`vistok.generate.sampling`) and autoregressive decoding
with the backbone's static KV cache, token plans and sliding windows (:mod:`vistok.generate.ar`)."""

from vistok.generate.ar import TokenPlan, decode_step, frame_plan, generate, prefill
from vistok.generate.sampling import check_sampling_args, logits_to_probs, sample_from_probs, sample_logits

__all__ = [
    "TokenPlan",
    "check_sampling_args",
    "decode_step",
    "frame_plan",
    "generate",
    "logits_to_probs",
    "prefill",
    "sample_from_probs",
    "sample_logits",
]
