"""Autoregressive decoding with the backbone's static KV cache: prefill once, then one token per step.

A causal LM factorizes p(x) = ∏ₜ p(xₜ | x₍<t₎) (LVM: Bai et al., 2023, eq. 1, over visual sentences). Sampling a
continuation of a prompt x₁ … x_L:

    prefill:  logits_L = f(x₁ … x_L)              one forward over the prompt, keys/values cached at positions 0 … L−1
    step t:   x_{L+t} ~ sampler(logits_{L+t−1}),  logits_{L+t} = f(x_{L+t} | cache)   one token, position L + t

so step t runs the projections and MLPs on one token and attends from it to the n = L + t cached keys (O(n) work),
instead of a forward over the whole growing sequence (O(n) tokens through the MLPs and O(n²) attention). The cache
is the model's own (:meth:`~vistok.models.transformer.Transformer.setup_caches`, gpt-fast's static buffers): shapes
never change between steps and no step branches on tensor values, so ``torch.compile`` captures the one-token step
once and replays it (with CUDA graphs under ``mode="reduce-overhead"``). The prompt is never re-run.

**Sliding window** (``window=W``): the cache is a ring of W slots and each token attends to the last W positions, so a
rollout can run past ``max_seq_len`` (positions grow without bound; RoPE only sees differences). This equals a full
forward with a banded causal mask (see :mod:`vistok.models.transformer`), *not* re-encoding the last W tokens from
scratch: LVM's public inference re-prefills the context for every new frame, which costs a full prefill per frame;
here one prefill serves the whole rollout.

**Token plans** constrain each new token: ``plan(t)`` for the t-th new token (0-based) returns

- an ``int`` or an integer tensor (scalar or (B,)): that id is forced — no sampling, and *no random draw is consumed*,
  so a plan that forces ids never shifts the random stream of the sampled steps (same seed → same output);
- a bool tensor (V,) or (B, V): only the True ids may be sampled (the allowed filter of :mod:`.sampling`); each new
  mask object is checked (every row allows some id) and moved to the device once, so return the same tensor for
  repeated constraints and a new tensor, not an in-place edit, for a different one;
- ``None``: free sampling.

LVM's frame plan: BOI forced, then 256 steps restricted to the visual ids, then EOI forced (:func:`frame_plan`).

**EOS**: with ``eos_id`` a row that emitted it keeps emitting it; once every row has, decoding stops early and the rest
is padded with eos (the output shape is fixed; the ids are the same as without the early stop).

Building blocks for custom loops: :func:`prefill` and :func:`decode_step` (both return float logits of the last
position, in the model's dtype) and the samplers of :mod:`vistok.generate.sampling`.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from vistok.generate.sampling import check_sampling_args, sample_logits
from vistok.models.transformer import Transformer

__all__ = ["TokenPlan", "decode_step", "frame_plan", "generate", "prefill"]

TokenPlan = Callable[[int], "int | Tensor | None"]


# ---------------------------------------------------------------------------------------------------------------------
# Building blocks
# ---------------------------------------------------------------------------------------------------------------------


def prefill(model: Transformer, ids: Tensor, start_pos: int = 0, *, positions: Tensor | None = None) -> Tensor:
    """Run ``ids`` (B, L) through the KV cache at positions start_pos … start_pos + L − 1; logits of the last (B, V).

    The model must have a cache (``setup_caches``). ``positions``: rotary positions, when they differ from the cache
    positions (e.g. N-D coordinates for ``rope_axes > 1``).
    """
    if ids.ndim != 2 or ids.shape[1] < 1:
        raise ValueError(f"ids must be (B, L) token ids with L >= 1, got shape {tuple(ids.shape)}")
    input_pos = torch.arange(start_pos, start_pos + ids.shape[1], device=ids.device)
    return model(ids, input_pos=input_pos, positions=positions)[:, -1]


def decode_step(model: Transformer, ids: Tensor, pos: Tensor | int, *, positions: Tensor | None = None) -> Tensor:
    """One token per row: ``ids`` (B, 1) at cache position ``pos`` (a (1,) int64 tensor, or an int) → logits (B, V).

    Branch-free on tensor values (no ``.item()``), so ``torch.compile`` can capture it; pass ``pos`` as a tensor to
    avoid one recompilation per position.
    """
    if not isinstance(pos, Tensor):
        pos = torch.tensor([pos], device=ids.device)
    return model(ids, input_pos=pos.reshape(1), positions=positions)[:, -1]


def frame_plan(boi_id: int, eoi_id: int, tokens_per_frame: int, allowed: Tensor) -> TokenPlan:
    """The plan of whole frames: BOI, ``tokens_per_frame`` tokens restricted to ``allowed`` (bool (V,)), EOI, BOI, …"""
    if tokens_per_frame < 1:
        raise ValueError(f"tokens_per_frame must be >= 1, got {tokens_per_frame}")
    period = tokens_per_frame + 2

    def plan(t: int) -> int | Tensor:
        i = t % period
        return boi_id if i == 0 else eoi_id if i == period - 1 else allowed

    return plan


_compiled: dict[str, Callable] = {}


def _compiled_decode_step(device: torch.device) -> Callable:
    """``decode_step`` under ``torch.compile``: CUDA graphs on CUDA ("reduce-overhead"), inductor's default on CPU."""
    mode = "reduce-overhead" if device.type == "cuda" else "default"
    if mode not in _compiled:
        _compiled[mode] = torch.compile(decode_step, mode=mode, fullgraph=True)
    return _compiled[mode]


# ---------------------------------------------------------------------------------------------------------------------
# The loop
# ---------------------------------------------------------------------------------------------------------------------


def _model_device(model: Transformer) -> torch.device:
    return model.tok_embeddings.weight.device


def _prepare_cache(model: Transformer, batch: int, length: int, window: int | None) -> None:
    """Reuse the model's cache when it fits (same window; enough batch rows and, without a window, positions)."""
    if model.has_caches:
        cache = model.layers[0].kv_cache
        max_batch, slots = cache.k.shape[0], cache.k.shape[2]
        fits = model.window == window and max_batch >= batch and (window is not None or slots >= length)
        if fits:
            model.reset_caches()
            return
    model.setup_caches(batch, length, window=window)


class _PlanReader:
    """Turns ``plan(t)`` into (forced ids (B,) or None, allowed mask or None); checks each new mask once."""

    def __init__(self, plan: TokenPlan | None, batch: int, vocab: int, device: torch.device) -> None:
        self.plan, self.batch, self.vocab, self.device = plan, batch, vocab, device
        self._last: tuple[Tensor, Tensor] | None = None  # (mask as given, checked mask on the device)
        self._forced_ids: dict[int, Tensor] = {}  # forced int id → (B,) tensor on the device, made once

    def __call__(self, t: int) -> tuple[Tensor | None, Tensor | None]:
        rule = self.plan(t) if self.plan is not None else None
        if rule is None:
            return None, None
        if isinstance(rule, bool) or not isinstance(rule, int | Tensor):
            raise TypeError(f"plan({t}) must return an int, an int tensor, a bool mask or None, got {type(rule)}")
        if isinstance(rule, int) or rule.dtype != torch.bool:
            return self._forced(t, rule), None
        return None, self._mask(t, rule)

    def _forced(self, t: int, rule: int | Tensor) -> Tensor:
        if isinstance(rule, int) and rule in self._forced_ids:
            return self._forced_ids[rule]
        ids = torch.as_tensor(rule, device=self.device)
        if ids.is_floating_point() or ids.is_complex() or ids.shape not in ((), (self.batch,)):
            raise ValueError(
                f"plan({t}) forced ids must be an int or an integer tensor of shape () or ({self.batch},), "
                f"got dtype {ids.dtype}, shape {tuple(ids.shape)}"
            )
        if isinstance(rule, int) and not 0 <= rule < self.vocab:
            raise ValueError(f"plan({t}) forced id {rule} is outside the vocabulary [0, {self.vocab})")
        ids = ids.long().expand(self.batch)
        if isinstance(rule, int):
            self._forced_ids[rule] = ids
        return ids

    def _mask(self, t: int, mask: Tensor) -> Tensor:
        if self._last is not None and self._last[0] is mask:
            return self._last[1]
        if tuple(mask.shape) not in ((self.vocab,), (self.batch, self.vocab)):
            raise ValueError(
                f"plan({t}) mask must have shape ({self.vocab},) or ({self.batch}, {self.vocab}), "
                f"got {tuple(mask.shape)}"
            )
        if not bool(mask.any(dim=-1).all()):
            raise ValueError(f"plan({t}) mask allows no id at all (in at least one row)")
        self._last = (mask, mask.to(self.device))
        return self._last[1]


def _check_generate_args(model: Transformer, prompt: Tensor, max_new_tokens: int, window: int | None) -> None:
    if not isinstance(prompt, Tensor) or prompt.ndim != 2 or prompt.shape[1] < 1 or prompt.shape[0] < 1:
        got = tuple(prompt.shape) if isinstance(prompt, Tensor) else type(prompt).__name__
        raise ValueError(f"prompt must be a (B, L) tensor of token ids with B, L >= 1, got {got}")
    if prompt.is_floating_point() or prompt.dtype == torch.bool:
        raise TypeError(f"prompt must hold integer token ids, got dtype {prompt.dtype}")
    if isinstance(max_new_tokens, bool) or not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be an int >= 0, got {max_new_tokens!r}")
    c = model.config
    if not c.causal:
        raise ValueError("generate needs a causal model (config.causal=True); this one is bidirectional")
    if c.rope_axes != 1:
        raise ValueError(
            f"generate handles 1-D positions only (rope_axes=1), got rope_axes={c.rope_axes}; write a loop with "
            "prefill/decode_step and pass positions"
        )
    if window is not None and (isinstance(window, bool) or not isinstance(window, int) or window < 1):
        raise ValueError(f"window must be an int >= 1 or None, got {window!r}")
    total = prompt.shape[1] + max_new_tokens
    if window is None and total > c.max_seq_len:
        raise ValueError(
            f"prompt ({prompt.shape[1]}) + max_new_tokens ({max_new_tokens}) = {total} exceeds the model's "
            f"max_seq_len={c.max_seq_len}; pass window=W (W <= max_seq_len) for a sliding-window rollout"
        )


def generate(
    model: Transformer,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    plan: TokenPlan | None = None,
    window: int | None = None,
    eos_id: int | None = None,
    compile: bool = False,
    return_logits: bool = False,
) -> Tensor | tuple[Tensor, Tensor]:
    """Continue ``prompt`` (B, L) by ``max_new_tokens`` tokens → ids (B, L + max_new_tokens) on the model's device.

    - Sampling: ``temperature`` (0 = greedy), ``top_k``, ``top_p`` as in :func:`~vistok.generate.sample_logits`;
      randomness from ``generator`` (on the model's device) or a fresh one seeded with ``seed`` (not both; neither =
      torch's global RNG).
    - ``plan``: per-step constraints (module docstring). ``eos_id``: stop rows at EOS (module docstring).
    - ``window``: sliding-window cache of ``window`` slots (no length limit); without it the cache holds
      L + max_new_tokens positions, which must fit ``config.max_seq_len``.
    - The model's cache: reused (after a reset) when it fits, else (re)allocated; if the model had none before the
      call, it is removed afterwards.
    - ``compile``: run the one-token step under ``torch.compile`` (fullgraph; CUDA graphs on CUDA).
    - ``return_logits``: also return the (B, max_new_tokens, V) logits each token was chosen from (model dtype, before
      any filter); with it decoding never stops early.

    The loop runs under ``torch.inference_mode()``; the cache is allocated outside it and the results are returned as
    ordinary tensors, so both can be used with autograd afterwards.
    """
    _check_generate_args(model, prompt, max_new_tokens, window)
    check_sampling_args(temperature, top_k, top_p)
    if generator is not None and seed is not None:
        raise ValueError("pass generator or seed, not both")
    device = _model_device(model)
    if seed is not None:
        generator = torch.Generator(device).manual_seed(seed)
    if eos_id is not None and not 0 <= eos_id < model.config.vocab_size:
        raise ValueError(f"eos_id {eos_id} is outside the vocabulary [0, {model.config.vocab_size})")
    prompt = prompt.to(device=device, dtype=torch.long)
    b, n = prompt.shape
    if max_new_tokens == 0:
        empty = torch.empty(b, 0, model.config.vocab_size, device=device)
        return (prompt.clone(), empty) if return_logits else prompt.clone()

    had_cache = model.has_caches
    _prepare_cache(model, b, n + max_new_tokens, window)
    try:
        with torch.inference_mode():
            out, logits = _decode_loop(
                model,
                prompt,
                max_new_tokens,
                sampling={"temperature": temperature, "top_k": top_k, "top_p": top_p, "generator": generator},
                plan=plan,
                eos_id=eos_id,
                step=_compiled_decode_step(device) if compile else decode_step,
                return_logits=return_logits,
            )
    finally:
        if not had_cache:
            model.remove_caches()
    return (out.clone(), logits.clone()) if return_logits else out.clone()  # clones outside inference mode


def _decode_loop(
    model: Transformer,
    prompt: Tensor,
    max_new_tokens: int,
    *,
    sampling: dict,
    plan: TokenPlan | None,
    eos_id: int | None,
    step: Callable,
    return_logits: bool,
) -> tuple[Tensor, Tensor | None]:
    """The loop of :func:`generate` (arguments checked, cache ready): ids (B, L + N) and the stacked logits or None."""
    (b, n), device = prompt.shape, prompt.device
    out = torch.empty(b, n + max_new_tokens, dtype=torch.long, device=device)
    out[:, :n] = prompt
    read_plan = _PlanReader(plan, b, model.config.vocab_size, device)
    all_logits = [] if return_logits else None
    done = torch.zeros(b, dtype=torch.bool, device=device)
    pos = torch.tensor([n], device=device)
    logits = prefill(model, prompt)
    for t in range(max_new_tokens):
        forced, allowed = read_plan(t)
        nxt = forced if forced is not None else sample_logits(logits, allowed=allowed, **sampling)
        if eos_id is not None:
            nxt = torch.where(done, eos_id, nxt)
            done = done | (nxt == eos_id)
        out[:, n + t] = nxt
        if all_logits is not None:
            all_logits.append(logits.clone())  # a CUDA-graph output is overwritten by the next replay
        if t == max_new_tokens - 1:
            break
        if eos_id is not None and all_logits is None and bool(done.all()):  # one host sync per step, EOS only
            out[:, n + t + 1 :] = eos_id
            break
        logits = step(model, nxt[:, None], pos)
        pos += 1
    return out, (torch.stack(all_logits, dim=1) if all_logits is not None else None)
