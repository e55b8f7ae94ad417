"""Training Transfusion (Zhou et al., 2024; PAPERS.md §4) with the shared :class:`vistok.train.loop.Trainer`.

Data: precomputed image latents (N, C, h, w) (e.g. ``KLVAE.encode`` of :class:`vistok.data.scenes.Scenes`) and one
caption per image. Each micro-batch draws ``batch_size`` items; each becomes a text → image document
``[BOS caption] image [EOS]`` or, with probability ``image_first``, an image → text document
``[BOS] image [caption EOS]`` (its image's noise is then capped, see :mod:`vistok.models.transfusion`); text → image
captions are dropped (``drop_captions``) with probability ``caption_dropout`` for classifier-free guidance. Every draw
is a pure function of (seed, micro-batch index, rank), so resumed runs see the same data.

Loss: :meth:`Transfusion.loss` (L_LM + λ·L_diff); metrics ``lm`` and ``diffusion``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import Tensor

from vistok.models.transfusion import Transfusion, TransfusionBatch, build_batch, drop_captions
from vistok.tokenizers.text import BOS, EOS, ByteTokenizer
from vistok.train.loop import TrainConfig, Trainer, TrainResult

__all__ = ["make_get_batch", "train_transfusion", "transfusion_loss_fn"]


def make_get_batch(
    latents: Tensor,
    captions: Sequence[str],
    batch_size: int,
    patch_size: int,
    *,
    image_first: float = 0.5,
    caption_dropout: float = 0.1,
    seed: int = 0,
) -> Callable[[int, int], TransfusionBatch]:
    """``get_batch(index, rank) -> TransfusionBatch`` over (latents, captions), deterministic in (seed, index, rank)."""
    if len(latents) != len(captions):
        raise ValueError(f"{len(latents)} latents but {len(captions)} captions")
    tok = ByteTokenizer()
    caps = [tok.encode(c, bos=False, eos=False) for c in captions]

    def get_batch(index: int, rank: int) -> TransfusionBatch:
        g = torch.Generator().manual_seed((seed * 1_000_003 + index) * 4099 + rank)
        items = torch.randint(len(latents), (batch_size,), generator=g).tolist()
        u = torch.rand(batch_size, 2, generator=g).tolist()
        docs = []
        for i, (u_order, u_drop) in zip(items, u, strict=True):
            z = latents[i].float()
            if u_order < image_first:
                docs.append([[BOS], z, [*caps[i], EOS]])
            else:
                doc = [[BOS, *caps[i]], z, [EOS]]
                docs.append(drop_captions(doc) if u_drop < caption_dropout else doc)
        return build_batch(docs, patch_size)

    return get_batch


def transfusion_loss_fn(model: Any, batch: TransfusionBatch) -> tuple[Tensor, dict[str, Tensor]]:
    """Trainer loss function: the model's L_LM + λ·L_diff, with ``lm`` and ``diffusion`` as metrics."""
    raw = model.module if hasattr(model, "module") else model
    device = next(raw.parameters()).device
    out = raw.loss(batch.to(device))
    return out["loss"], {"lm": out["lm"].detach(), "diffusion": out["diffusion"].detach()}


def train_transfusion(
    model: Transfusion,
    latents: Tensor,
    captions: Sequence[str],
    config: TrainConfig,
    *,
    image_first: float = 0.5,
) -> TrainResult:
    """Train ``model`` on captioned latents with the shared loop (checkpoints/metrics in ``config.out_dir``)."""
    get_batch = make_get_batch(
        latents,
        captions,
        config.batch_size,
        model.config.patch_size,
        image_first=image_first,
        caption_dropout=model.config.caption_dropout,
        seed=config.seed,
    )
    trainer = Trainer(model, None, transfusion_loss_fn, get_batch, config, run_config={"model": vars(model.config)})
    return trainer.fit()
