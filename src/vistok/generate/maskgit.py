"""MaskGIT decoding (Chang et al., CVPR 2022, §3.2 "Iterative decoding"; MAGVIT-v2, Yu et al., ICLR 2024, §3.3): a whole
token grid in T parallel steps (12 by default) with a :class:`vistok.models.maskgit.MaskGIT`.

Start with every token masked (except the conditioning frames of a video model, which hold the given ids and are
never masked). With N maskable tokens, at step t = 1 … T:

1. run the model on the current grid (with classifier-free guidance when asked) and **sample** every masked token:
   each sub-token head independently, from softmax(top-k(logits) / temperature) (``temperature=0``: argmax);
2. **confidence** of a newly sampled token: log p(sampled) + τ_c·(1 − t/T)·g, g ~ Gumbel(0, 1), τ_c =
   ``choice_temperature`` (4.5), log p the sum of the sub-token log-probs under the distribution sampled from; tokens
   already unmasked get confidence +∞: they are fixed and never change again;
3. **re-mask** the m_t lowest-confidence tokens, m_t = ⌊γ(t/T)·N⌋ with γ(r) = cos(πr/2)
   (:func:`vistok.models.maskgit.num_masked_after_step`): exactly m_t tokens stay masked after step t, m_t never
   grows, and m_T = 0, so the last step leaves no [MASK]. (Steps where m_t does not fall reveal nothing, which only
   happens with T > N.)

**Classifier-free guidance** (Ho & Salimans, 2022; the form used by Muse and MAGVIT-v2's MaskGIT): the model runs on
the batch twice in one call, with the given classes and with the null class, and each sub-token head's logits become

    logits = cond + s·(cond − uncond) = (1 + s)·cond − s·uncond,      s = ``guidance_scale``

so s = 0 is the plain conditional model (one forward, no unconditional pass). The scale is constant over the steps.

**Determinism**: all randomness (token samples, Gumbel noise) is drawn from one ``torch.Generator`` (``generator=`` or
one seeded with ``seed``, on the model's device), so the same seed gives the same grid on the same device.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from vistok.models.maskgit import MaskGIT, num_masked_after_step

__all__ = ["MaskGITSample", "guided_logits", "maskgit_generate"]


class MaskGITSample(NamedTuple):
    """What :func:`maskgit_generate` returns with ``return_history=True``.

    ``ids`` (B, *grid) the final grid; ``history_ids`` (T, B, *grid) the grid after each step (the mask id V at
    still-masked positions); ``history_mask`` (T, B, *grid) bool, True where a token is still masked after that step.
    """

    ids: Tensor
    history_ids: Tensor
    history_mask: Tensor


def guided_logits(model: MaskGIT, ids: Tensor, class_ids: Tensor | None, guidance_scale: float = 0.0) -> Tensor:
    """Sub-token logits (B, N, S, K) with classifier-free guidance: (1 + s)·cond − s·uncond (s = 0: cond alone)."""
    if guidance_scale == 0:
        return model(ids, class_ids)
    if not model.config.num_classes:
        raise ValueError("classifier-free guidance needs a class-conditional model (this one has num_classes=0)")
    if class_ids is None:
        raise ValueError("classifier-free guidance needs class_ids (the unconditional logits are the null class)")
    b = ids.shape[0]
    class_ids = torch.as_tensor(class_ids, device=ids.device).long().reshape(-1).expand(b)
    null = torch.full_like(class_ids, model.null_class)
    both = model(torch.cat([ids, ids]), torch.cat([class_ids, null])).float()
    cond, uncond = both[:b], both[b:]
    return cond + guidance_scale * (cond - uncond)


def _gumbel(shape: Sequence[int], generator: torch.Generator, device: torch.device) -> Tensor:
    u = torch.rand(shape, generator=generator, device=device).clamp_min(torch.finfo(torch.float32).tiny)
    return -torch.log(-torch.log(u))


def _top_k(logits: Tensor, k: int | None) -> Tensor:
    """Keep the k largest logits of each sub-token head (the rest −inf); None or k ≥ K keeps all."""
    if k is None or k >= logits.shape[-1]:
        return logits
    if k < 1:
        raise ValueError(f"top_k must be >= 1, got {k}")
    kth = logits.topk(k, dim=-1).values[..., -1:]
    return logits.masked_fill(logits < kth, float("-inf"))


def _resolve_batch(
    model: MaskGIT, batch: int | None, class_ids: Tensor | int | Sequence[int] | None, cond_ids: Tensor | None
) -> tuple[int, Tensor | None]:
    device = model.positions.device
    sizes = {}
    if batch is not None:
        sizes["batch"] = int(batch)
    if class_ids is not None:
        class_ids = torch.as_tensor(class_ids, device=device).long().reshape(-1)
        if class_ids.numel() > 1 or batch is None:
            sizes["class_ids"] = class_ids.numel()
    if cond_ids is not None and cond_ids.ndim == len(model.config.grid) + 1:
        sizes["cond_ids"] = cond_ids.shape[0]
    if len(set(sizes.values())) > 1:
        raise ValueError(f"inconsistent batch sizes: {sizes}")
    b = next(iter(sizes.values()), 1)
    if b < 1:
        raise ValueError(f"batch must be >= 1, got {b}")
    if class_ids is not None and class_ids.numel() == 1:
        class_ids = class_ids.expand(b)
    return b, class_ids


def _start_grid(model: MaskGIT, b: int, cond_ids: Tensor | None, device: torch.device) -> Tensor:
    """(B, N) all [MASK], except the conditioning frames (the first ``cond_frames`` of ``cond_ids``)."""
    c = model.config
    ids = torch.full((b, c.num_tokens), model.mask_id, dtype=torch.long, device=device)
    if not c.cond_frames:
        if cond_ids is not None:
            raise ValueError("cond_ids given, but this model has no conditioning frames (cond_frames=0)")
        return ids
    if cond_ids is None:
        raise ValueError(f"this model predicts video from its first {c.cond_frames} latent frame(s): pass cond_ids")
    cond = torch.as_tensor(cond_ids, device=device).long()
    if cond.ndim == 3:
        cond = cond.unsqueeze(0).expand(b, *cond.shape)
    hw = tuple(c.grid[1:])
    if cond.ndim != 4 or tuple(cond.shape[2:]) != hw or cond.shape[1] < c.cond_frames:
        raise ValueError(
            f"cond_ids must be (B, T', {hw[0]}, {hw[1]}) or (T', {hw[0]}, {hw[1]}) ids with T' >= {c.cond_frames} "
            f"(the conditioning frames come first), got {tuple(cond.shape)}"
        )
    cond = cond[:, : c.cond_frames].flatten(1)
    if int(cond.min()) < 0 or int(cond.max()) >= c.codebook_size:
        raise ValueError(f"cond_ids must be in [0, {c.codebook_size}), got [{int(cond.min())}, {int(cond.max())}]")
    ids[:, : c.cond_tokens] = cond
    return ids


@torch.no_grad()
def maskgit_generate(
    model: MaskGIT,
    batch: int | None = None,
    *,
    steps: int = 12,
    class_ids: Tensor | int | Sequence[int] | None = None,
    cond_ids: Tensor | None = None,
    guidance_scale: float = 0.0,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    top_k: int | None = None,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    return_history: bool = False,
) -> Tensor | MaskGITSample:
    """Generate token grids (B, *grid) with MaskGIT's iterative decoding (see the module docstring).

    ``batch``: number of grids (default: from ``class_ids`` or ``cond_ids``, else 1). ``class_ids``: one id or B ids
    for a class-conditional model (None = the null class: unconditional samples). ``cond_ids``: the ids of the
    conditioning frames, (B or nothing, T' ≥ cond_frames, H, W) — the first ``cond_frames`` frames are used and copied
    to the output unchanged. ``generator`` (on the model's device) or ``seed`` (default 0) fixes every random draw.
    ``return_history=True`` returns a :class:`MaskGITSample` with the grid and mask after each step.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    if temperature < 0 or choice_temperature < 0:
        raise ValueError(f"temperatures must be >= 0, got {temperature}, {choice_temperature}")
    was_training = model.training
    model.eval()
    c = model.config
    device = model.positions.device
    b, class_ids = _resolve_batch(model, batch, class_ids, cond_ids)
    if generator is None:
        generator = torch.Generator(device).manual_seed(0 if seed is None else int(seed))
    ids = _start_grid(model, b, cond_ids, device)
    n = c.num_tokens - c.cond_tokens
    hist_ids, hist_mask = [], []
    try:
        for t in range(1, steps + 1):
            masked = ids == model.mask_id
            logits = _top_k(guided_logits(model, ids, class_ids, guidance_scale).float(), top_k)
            if temperature > 0:
                logits = logits / temperature
                sub = (logits + _gumbel(logits.shape, generator, device)).argmax(-1)
            else:
                sub = logits.argmax(-1)
            logp = logits.log_softmax(-1).gather(-1, sub[..., None]).squeeze(-1).sum(-1)  # (B, N)
            sampled = torch.where(masked, model.from_sub(sub), ids)
            noise = _gumbel(logp.shape, generator, device)
            confidence = torch.where(masked, logp + choice_temperature * (1 - t / steps) * noise, torch.inf)
            keep_masked = num_masked_after_step(t, steps, n)
            remask = torch.zeros_like(masked)
            if keep_masked:
                lowest = confidence.argsort(dim=1, stable=True)[:, :keep_masked]
                remask.scatter_(1, lowest, True)
            ids = sampled.masked_fill(remask, model.mask_id)
            if return_history:
                hist_ids.append(ids.view(b, *c.grid).clone())
                hist_mask.append(remask.view(b, *c.grid))
    finally:
        model.train(was_training)
    out = ids.view(b, *c.grid)
    if return_history:
        return MaskGITSample(out, torch.stack(hist_ids), torch.stack(hist_mask))
    return out
