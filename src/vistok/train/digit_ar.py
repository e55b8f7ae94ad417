"""DiGIT's generative model at small scale: a GPT over image token grids, and the comparison that matters.

DiGIT (Zhu et al., NeurIPS 2024; ``PAPERS.md`` §5) claims that tokens from k-means over self-supervised features are
more *modelable* than reconstruction-trained ones: a GPT trained on them predicts the next token better and learns
features a linear probe reads well. This module trains that GPT on any token-shard folder and runs the comparison at
equal model size and training budget against the shipped MAGVIT-v2 tokenizer.

**Sequences.** ``[c] + ids`` with ``ids`` the ``h·w`` token ids of one picture in raster order and ``c`` one token
*above* the image vocabulary ``[0, K)``: ``K + label`` for a class-conditional model (labels from the shards), or
``BOS = K + num_classes`` for an unconditional one (also used for a dropped class, ``class_dropout``). The GPT is the
vistok :class:`~vistok.models.transformer.Transformer` (LLaMA-style, causal) with ``vocab_size = K + num_classes + 1``
and ``max_seq_len = 1 + h·w``; the loss is next-token cross-entropy over the ``h·w`` image positions, the softmax
taken over the image ids only (the model is never asked for a class token). Sampling
(:func:`sample_grids`) prefills ``[c]`` and runs :func:`vistok.generate.ar.generate` with a plan that allows image
ids only.

**The comparison** (:func:`compare_tokenizers`): the same GPT (same shape, steps, batch, lr, seed) is trained,
unconditionally, on each tokenizer's ids of the *same* random crops of the built-in training photos, then scored on

- held-out next-token accuracy, perplexity and **bits per token / log₂ K** (= mean NLL / ln K: 1 is a uniform guess
  over the vocabulary, 0 perfect), on new crops of the training photos (another seed) and on the held-out photos —
  raw perplexities of a 256-word and a 1,024-word vocabulary do not compare, the normalised number does, roughly
  (it is the fraction of the vocabulary's capacity left unexplained; a larger K's ids also carry more information,
  so equal values do not mean equal modelling); the unigram model of the training ids is given as a baseline;
- **linear probe** (:func:`vistok.train.dino.linear_probe`) of the GPT's hidden states mean-pooled over the image
  positions (final normed layer, and the middle block's output, where DiGIT reads its probe), classes = source
  photo, train/test = two new sets of zoomed-in crops of the training photos (zoom 3–8, as ``vistok digit fit``'s
  probe: at the training zoom a colour histogram alone names the photo); the probe of the tokens' own bag-of-words
  histogram is the baseline the GPT has to beat.

**Classifier-free guidance** (:func:`guided_grids`, ``sample_grids(..., cfg=s)``): a class-conditional GPT
trained with ``class_dropout`` also models the null class (BOS); each step runs the class rows and BOS rows in one
batch and samples from ``uncond + s·(cond − uncond)`` (s = 1: plain conditional sampling, same ids for the same seed).

**Pixels** (``vistok digit decoder`` / ``generate``): DiGIT decodes with a separately trained model (the paper: a
second AR model from its tokens to VQGAN tokens). Here the option of a convolutional decoder conditioned on the id
grid is implemented (:class:`~vistok.tokenizers.digit_decoder.DigitAutoencoder`: the frozen DiGIT tokenizer + a
VQGAN-style decoder, embeddings initialised from the centroids), trained by the tokenizer trainer
(:func:`train_digit_decoder`; L1 + optional LPIPS + optional GAN) and scored by held-out PSNR against a mean-colour
and a cluster-mean-patch lookup baseline. :func:`generate_pictures` samples grids (with CFG) and decodes them.
Generated-sample quality (FID) is not measured: at this scale there is no reference set worth the number.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

__all__ = [
    "CompareConfig",
    "DigitARConfig",
    "DigitDecoderTrainConfig",
    "TokenLayout",
    "TokenSequences",
    "add_digit_train_parser",
    "compare_tokenizers",
    "digit_ar_loss",
    "evaluate_digit_decoder",
    "evaluate_token_gpt",
    "feature_distance",
    "format_compare_table",
    "generate_pictures",
    "gpt_features",
    "guided_grids",
    "load_token_gpt",
    "sample_grids",
    "tokenize_pictures",
    "train_digit_decoder",
    "train_token_gpt",
]

LAYOUT_NAME = "digit_ar.json"


# ---------------------------------------------------------------------------------------------------------------------
# Sequences
# ---------------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TokenLayout:
    """Where the ids of a GPT over token grids live: image ids ``[0, K)``, classes ``K + c``, BOS ``K + C``."""

    codebook_size: int
    grid: tuple[int, int]
    num_classes: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "grid", tuple(int(g) for g in self.grid))
        if self.codebook_size < 1 or len(self.grid) != 2 or min(self.grid) < 1 or self.num_classes < 0:
            raise ValueError(f"bad layout: K={self.codebook_size}, grid={self.grid}, classes={self.num_classes}")

    @property
    def bos_id(self) -> int:
        return self.codebook_size + self.num_classes

    @property
    def vocab_size(self) -> int:
        return self.codebook_size + self.num_classes + 1

    @property
    def image_length(self) -> int:
        return self.grid[0] * self.grid[1]

    @property
    def seq_len(self) -> int:
        return 1 + self.image_length

    def class_id(self, label: int | Tensor) -> int | Tensor:
        return self.codebook_size + label

    def image_mask(self) -> Tensor:
        """Bool (vocab_size,): True for the image ids."""
        mask = torch.zeros(self.vocab_size, dtype=torch.bool)
        mask[: self.codebook_size] = True
        return mask

    def build(self, grids: Tensor, labels: Tensor | None = None) -> Tensor:
        """Sequences (B, 1 + h·w): the class token (or BOS where ``labels`` is None or < 0), then the raster ids."""
        grids = torch.as_tensor(grids).long()
        if grids.ndim == 2:
            grids = grids[None]
        if tuple(grids.shape[1:]) != self.grid:
            raise ValueError(f"grids must be (B, {self.grid[0]}, {self.grid[1]}), got {tuple(grids.shape)}")
        if grids.numel() and (int(grids.min()) < 0 or int(grids.max()) >= self.codebook_size):
            raise ValueError(f"image ids must lie in [0, {self.codebook_size})")
        first = torch.full((len(grids), 1), self.bos_id, dtype=torch.long)
        if labels is not None:
            labels = torch.as_tensor(labels).long().reshape(-1)
            if len(labels) != len(grids):
                raise ValueError(f"{len(labels)} labels for {len(grids)} grids")
            if len(labels) and int(labels.max()) >= self.num_classes:
                raise ValueError(f"labels must be < num_classes={self.num_classes}")
            first[:, 0] = torch.where(labels >= 0, self.codebook_size + labels, self.bos_id)
        return torch.cat([first, grids.flatten(1)], dim=1)

    def to_dict(self) -> dict[str, Any]:
        return {"codebook_size": self.codebook_size, "grid": list(self.grid), "num_classes": self.num_classes}


class TokenSequences(Dataset):
    """A token-shard folder as GPT sequences: item ``i`` = ``{"ids": (1 + h·w,), "label": int}`` (held in memory)."""

    def __init__(self, shards_dir: str | Path, layout: TokenLayout | None = None, conditional: bool = False):
        from vistok.data.shards import ShardReader

        reader = ShardReader(shards_dir)
        if len(reader) == 0:
            raise ValueError(f"{shards_dir} holds no items")
        grids = torch.from_numpy(np.stack([np.asarray(reader[i], dtype=np.int64) for i in range(len(reader))]))
        if grids.ndim == 4 and grids.shape[1] == 1:
            grids = grids[:, 0]
        if grids.ndim != 3:
            raise ValueError(
                f"{shards_dir}: expected one 2-D grid per item, got items of shape {tuple(grids.shape[1:])}"
            )
        labels = reader.labels
        self.labels = torch.from_numpy(labels).long() if labels is not None else torch.full((len(grids),), -1)
        if conditional and labels is None:
            raise ValueError(f"{shards_dir} has no labels: a class-conditional GPT needs them (or train unconditional)")
        n_classes = int(self.labels.max()) + 1 if conditional else 0
        self.layout = layout or TokenLayout(reader.vocab_size, tuple(grids.shape[1:]), n_classes)
        self.conditional = conditional
        self.grids, self.tokenizer, self.extra = grids, reader.tokenizer, reader.extra
        self.ids = self.layout.build(grids, self.labels if conditional else None)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {"ids": self.ids[i], "label": self.labels[i]}


def digit_ar_loss(
    model: nn.Module, batch: dict[str, Tensor], *, codebook_size: int, bos_id: int, class_dropout: float = 0.0
) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-token cross-entropy over the image positions, softmax over the image ids; metrics: accuracy."""
    ids = batch["ids"]
    if class_dropout > 0 and model.training:
        drop = torch.rand(len(ids), device=ids.device) < class_dropout
        ids = ids.clone()
        ids[drop, 0] = bos_id
    logits = model(ids[:, :-1])[..., :codebook_size].float()
    targets = ids[:, 1:]
    loss = F.cross_entropy(logits.flatten(0, 1), targets.flatten())
    with torch.no_grad():
        acc = (logits.argmax(-1) == targets).float().mean()
    return loss, {"acc": acc}


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DigitARConfig:
    """The GPT and its training (``vistok digit train --help``). The model: vistok's Transformer of this shape."""

    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    n_kv_heads: int | None = None
    conditional: bool = False
    class_dropout: float = 0.0
    steps: int = 400
    batch_size: int = 32
    lr: float = 2e-3
    warmup: int = 40
    weight_decay: float = 0.05
    min_lr_ratio: float = 0.1
    clip_grad: float | None = 1.0
    log_every: int = 50
    ckpt_every: int = 0
    seed: int = 0
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("dim", "n_layers", "n_heads", "steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"class_dropout must be in [0, 1), got {self.class_dropout}")

    def model_config(self, layout: TokenLayout) -> Any:
        from vistok.models.transformer import TransformerConfig

        return TransformerConfig(
            vocab_size=layout.vocab_size, dim=self.dim, n_layers=self.n_layers, n_heads=self.n_heads,
            n_kv_heads=self.n_kv_heads, multiple_of=16, max_seq_len=layout.seq_len, causal=True,
        )  # fmt: skip


@dataclass
class TokenGPTResult:
    model: Any
    layout: TokenLayout
    model_dir: Path | None
    final_loss: float | None
    elapsed_s: float


def train_token_gpt(
    shards_dir: str | Path,
    config: DigitARConfig | None = None,
    out: str | Path | None = None,
    *,
    info: Any = None,
) -> TokenGPTResult:
    """Train a GPT on the grids of a token-shard folder; with ``out``: checkpoints there and the model (plus
    ``digit_ar.json``, the layout) in ``out/model`` (``save_pretrained``; reload with :func:`load_token_gpt`)."""
    from vistok.models.transformer import Transformer
    from vistok.train.distributed import init_distributed
    from vistok.train.loop import TrainConfig, Trainer

    c, t0 = config or DigitARConfig(), time.perf_counter()
    info = info or init_distributed()
    data = TokenSequences(shards_dir, conditional=c.conditional)
    layout = data.layout
    torch.manual_seed(c.seed)
    model = Transformer(c.model_config(layout))
    out_path = Path(out) if out is not None else None
    tc = TrainConfig(
        steps=c.steps, batch_size=c.batch_size, lr=c.lr, weight_decay=c.weight_decay,
        warmup=min(c.warmup, c.steps // 2), min_lr_ratio=c.min_lr_ratio, clip_grad=c.clip_grad,
        log_every=c.log_every, ckpt_every=c.ckpt_every,
        out_dir=str(out_path) if out_path is not None else None, resume=c.resume, seed=c.seed, progress=c.progress,
    )  # fmt: skip

    def loss_fn(m: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        return digit_ar_loss(
            m, batch, codebook_size=layout.codebook_size, bos_id=layout.bos_id, class_dropout=c.class_dropout
        )

    run_config = {"digit_ar": asdict(c), "layout": layout.to_dict(), "shards": str(shards_dir)}
    trainer = Trainer(model, None, loss_fn, data, tc, info=info, run_config=run_config)
    res = trainer.fit()
    model.eval()
    model_dir = None
    if out_path is not None and info.is_main:
        model_dir = model.save_pretrained(out_path / "model")
        record = {
            "layout": layout.to_dict(),
            "conditional": c.conditional,
            "class_dropout": c.class_dropout,
            "tokenizer": data.tokenizer,
            "shards": str(Path(shards_dir).resolve()),
        }
        (model_dir / LAYOUT_NAME).write_text(json.dumps(record, indent=2))
    loss = res.last_metrics.get("loss")
    return TokenGPTResult(model, layout, model_dir, None if loss is None else float(loss), time.perf_counter() - t0)


def load_token_gpt(model_dir: str | Path) -> tuple[Any, TokenLayout]:
    """A GPT written by :func:`train_token_gpt` (``out/model``) and its layout."""
    from vistok.hub import from_pretrained

    record = json.loads((Path(model_dir) / LAYOUT_NAME).read_text())
    lay = record["layout"]
    return from_pretrained(model_dir).eval(), TokenLayout(lay["codebook_size"], tuple(lay["grid"]), lay["num_classes"])


@torch.no_grad()
def sample_grids(
    model: Any,
    layout: TokenLayout,
    n: int | None = None,
    *,
    labels: Sequence[int] | Tensor | None = None,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = 0,
    cfg: float = 1.0,
) -> Tensor:
    """Sample (B, h, w) image ids: after BOS (``n`` grids) or after each class token of ``labels``; greedy at
    ``temperature=0``. Only image ids can be drawn. ``cfg`` ≠ 1: classifier-free guidance of scale ``cfg`` (needs
    ``labels``; see :func:`guided_grids`); ``cfg = 1`` is plain conditional sampling (one pass per token)."""
    from vistok.generate.ar import generate

    if cfg != 1.0:
        if labels is None:
            raise ValueError(f"classifier-free guidance (cfg={cfg}) needs labels: the guided logits are per class")
        return guided_grids(model, layout, labels, cfg, temperature=temperature, top_k=top_k, seed=seed)
    if labels is not None:
        labels = torch.as_tensor(labels).long().reshape(-1)
        if layout.num_classes == 0:
            raise ValueError("this GPT is unconditional: pass n, not labels")
        if int(labels.min()) < 0 or int(labels.max()) >= layout.num_classes:
            raise ValueError(f"labels must lie in [0, {layout.num_classes})")
        prompt = (layout.codebook_size + labels)[:, None]
    else:
        if n is None or n < 1:
            raise ValueError("pass n >= 1 (unconditional) or labels")
        prompt = torch.full((n, 1), layout.bos_id, dtype=torch.long)
    allowed = layout.image_mask()
    out = generate(
        model, prompt, layout.image_length, temperature=temperature, top_k=top_k, seed=seed, plan=lambda t: allowed
    )
    return out[:, 1:].reshape(-1, *layout.grid).cpu()


def _check_labels(layout: TokenLayout, labels: Sequence[int] | Tensor) -> Tensor:
    labels = torch.as_tensor(labels).long().reshape(-1)
    if layout.num_classes == 0:
        raise ValueError("this GPT is unconditional (num_classes=0): it takes no labels")
    if len(labels) == 0:
        raise ValueError("pass at least one label")
    if int(labels.min()) < 0 or int(labels.max()) >= layout.num_classes:
        raise ValueError(
            f"labels must lie in [0, {layout.num_classes}), got range [{int(labels.min())}, {int(labels.max())}]"
        )
    return labels


@torch.no_grad()
def guided_grids(
    model: Any,
    layout: TokenLayout,
    labels: Sequence[int] | Tensor,
    cfg: float,
    *,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int | None = 0,
) -> Tensor:
    """(B, h, w) image ids sampled with **classifier-free guidance** (Ho & Salimans, 2022), one grid per label.

    Each step runs the B conditional rows (class token ``K + label``) and B unconditional rows (BOS, the null class
    ``class_dropout`` trains) in one batch through the KV cache, and samples from

        logits = uncond + cfg · (cond − uncond)

    (computed as ``torch.lerp(uncond, cond, cfg)``: exactly ``cond`` at ``cfg = 1``, exactly ``uncond`` at 0), the
    sampled id fed to both rows. The random stream is that of :func:`vistok.generate.ar.generate` on the B
    conditional rows (one ``sample_logits`` call of B rows per token), so ``cfg = 1`` gives the ids of plain
    conditional sampling with the same seed. The model's KV cache is set up here and removed afterwards.
    """
    from vistok.generate.ar import decode_step, prefill
    from vistok.generate.sampling import check_sampling_args, sample_logits

    labels = _check_labels(layout, labels)
    check_sampling_args(temperature, top_k, None)
    if not math.isfinite(cfg):
        raise ValueError(f"cfg must be a finite number, got {cfg}")
    device = _device(model)
    b, n = len(labels), layout.image_length
    prompt = torch.cat([layout.codebook_size + labels, torch.full((b,), layout.bos_id)])[:, None].to(device)
    generator = torch.Generator(device).manual_seed(seed) if seed is not None else None
    allowed = layout.image_mask().to(device)
    out = torch.empty(b, n, dtype=torch.long, device=device)
    had_cache = model.has_caches
    model.setup_caches(2 * b, 1 + n)
    try:
        with torch.inference_mode():
            logits = prefill(model, prompt)
            pos = torch.tensor([1], device=device)
            for t in range(n):
                cond, uncond = logits.float().chunk(2)
                guided = torch.lerp(uncond, cond, float(cfg))
                nxt = sample_logits(guided, temperature=temperature, top_k=top_k, allowed=allowed, generator=generator)
                out[:, t] = nxt
                if t < n - 1:
                    logits = decode_step(model, torch.cat([nxt, nxt])[:, None], pos)
                    pos += 1
    finally:
        if not had_cache:
            model.remove_caches()
    return out.clone().reshape(-1, *layout.grid).cpu()


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def evaluate_token_gpt(model: Any, layout: TokenLayout, ids: Tensor, batch_size: int = 64) -> dict[str, float]:
    """Held-out next-token metrics of sequences ``ids`` (B, 1 + h·w) over the image positions (softmax over image
    ids): accuracy, NLL (nats), perplexity, bits per token and bits per token / log₂ K."""
    model.eval()
    nll = correct = count = 0.0
    for chunk in ids.split(batch_size):
        chunk = chunk.to(_device(model))
        logits = model(chunk[:, :-1])[..., : layout.codebook_size].float()
        t = chunk[:, 1:]
        nll += float(F.cross_entropy(logits.flatten(0, 1), t.flatten(), reduction="sum"))
        correct += float((logits.argmax(-1) == t).sum())
        count += t.numel()
    return _scores(nll / count, correct / count, layout.codebook_size) | {"tokens": int(count)}


def _scores(nll: float, acc: float, k: int) -> dict[str, float]:
    bits = nll / math.log(2)
    return {
        "accuracy": acc,
        "nll": nll,
        "perplexity": math.exp(nll),
        "bits": bits,
        "bits_per_log2k": bits / math.log2(k),
    }


def unigram_scores(train_grids: Tensor, test_grids: Tensor, k: int) -> dict[str, float]:
    """The add-one-smoothed unigram of the training ids, scored on the test ids (the no-context baseline)."""
    counts = torch.bincount(train_grids.flatten(), minlength=k).double() + 1
    logp = (counts / counts.sum()).log()
    t = test_grids.flatten()
    return _scores(float(-logp[t].mean()), float((t == logp.argmax()).double().mean()), k)


@torch.no_grad()
def gpt_features(model: Any, ids: Tensor, layers: Sequence[int | None] = (None,), batch_size: int = 64) -> list[Tensor]:
    """Hidden states mean-pooled over the image positions of full sequences ``ids`` (B, 1 + h·w), one (B, dim) per
    entry of ``layers``: ``None`` = the final normed hidden state, ``i`` = the output of block ``i``."""
    model.eval()
    captured: dict[int, Tensor] = {}
    hooks = [
        model.layers[i].register_forward_hook(lambda mod, args, out, i=i: captured.__setitem__(i, out))
        for i in {i for i in layers if i is not None}
    ]
    outs: list[list[Tensor]] = [[] for _ in layers]
    try:
        for chunk in ids.split(batch_size):
            final = model.forward_hidden(chunk.to(_device(model)))
            for j, i in enumerate(layers):
                h = final if i is None else captured[i]
                outs[j].append(h[:, 1:].float().mean(1).cpu())
    finally:
        for h in hooks:
            h.remove()
    return [torch.cat(o) for o in outs]


def bag_of_tokens(grids: Tensor, k: int) -> Tensor:
    """Token histograms (B, K) normalised to frequencies."""
    flat = grids.flatten(1)
    hist = torch.zeros(len(flat), k).scatter_add_(1, flat, torch.ones_like(flat, dtype=torch.float))
    return hist / flat.shape[1]


# ---------------------------------------------------------------------------------------------------------------------
# Tokenizing pictures (any tokenizer) into shards
# ---------------------------------------------------------------------------------------------------------------------


@torch.no_grad()
def encode_grids(tokenizer: Any, pixels: Tensor) -> Tensor:
    """(B, h, w) int64 ids on the CPU from a DiGIT tokenizer or a pixel tokenizer (MAGVIT-v2: an image's single
    latent frame)."""
    from vistok.tokenizers.digit import DigitTokenizer

    device = getattr(tokenizer, "device", None)
    if not isinstance(device, torch.device):
        device = next(iter(tokenizer.parameters()), torch.empty(0)).device
    pixels = pixels.to(device)
    ids = tokenizer.encode(pixels) if isinstance(tokenizer, DigitTokenizer) else tokenizer.encode(pixels, pad=True)
    ids = ids.long().cpu()
    return ids[:, 0] if ids.ndim == 4 else ids


def tokenize_pictures(
    tokenizer: Any, dataset: Any, out_dir: str | Path, *, batch_size: int = 64, fresh: bool = True
) -> Path:
    """Tokenize a dataset of ``{"pixels", "label"}`` items into a labelled shard folder (removed first if ``fresh``)."""
    from vistok.data.shards import ShardWriter
    from vistok.hub import config_to_dict

    out = Path(out_dir)
    if fresh and out.exists():
        shutil.rmtree(out)
    first = encode_grids(tokenizer, dataset[0]["pixels"][None])
    record = {"config": config_to_dict(tokenizer.config)} if hasattr(tokenizer, "config") else None
    name = getattr(type(tokenizer), "model_type", type(tokenizer).__name__)
    with ShardWriter(
        out, int(tokenizer.codebook_size), name, record, grid_shape=first.shape[1:], commit_every=4096, fsync=False
    ) as w:
        for start in range(w.num_items, len(dataset), batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            ids = encode_grids(tokenizer, torch.stack([it["pixels"] for it in items]))
            for g, it in zip(ids, items):
                w.append(g.numpy(), int(it["label"]))
    return out


# ---------------------------------------------------------------------------------------------------------------------
# The comparison
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class CompareConfig:
    """The data and budget of :func:`compare_tokenizers`; ``gpt`` is the same for every tokenizer."""

    out: str = "runs/digit/compare"
    size: int = 64
    train_images: int = 2000
    val_images: int = 256
    probe_images: int = 700
    scale_range: tuple[float, float] = (1.0, 3.0)
    probe_scale_range: tuple[float, float] = (3.0, 8.0)
    seed: int = 0
    gpt: DigitARConfig = field(default_factory=lambda: DigitARConfig(conditional=False, progress=False))

    def __post_init__(self) -> None:
        for name in ("size", "train_images", "val_images", "probe_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        self.scale_range, self.probe_scale_range = tuple(self.scale_range), tuple(self.probe_scale_range)


def compare_datasets(c: CompareConfig) -> dict[str, Any]:
    """Training crops, held-out crops (new seed) of the training photos, crops of the held-out photos, and the two
    probe sets (zoomed-in crops of the training photos)."""
    from vistok.data.samples import SamplePhotos

    def photos(split: str, n: int, seed: int, scale: tuple[float, float]) -> Any:
        return SamplePhotos(size=c.size, split=split, length=n, scale_range=scale, seed=seed)

    return {
        "train": photos("train", c.train_images, c.seed, c.scale_range),
        "val_crops": photos("train", c.val_images, c.seed + 1000, c.scale_range),
        "val_photos": photos("heldout", c.val_images, c.seed + 2000, c.scale_range),
        "probe_train": photos("train", c.probe_images, c.seed + 3000, c.probe_scale_range),
        "probe_test": photos("train", c.probe_images, c.seed + 4000, c.probe_scale_range),
    }


def compare_tokenizers(
    tokenizers: Mapping[str, Any], config: CompareConfig | None = None, *, log: Any = print
) -> dict[str, Any]:
    """Train the same unconditional GPT on each tokenizer's ids of the same crops and score it (module docstring).

    ``tokenizers``: name → tokenizer module (a :class:`~vistok.tokenizers.digit.DigitTokenizer` or a pixel tokenizer
    with ``encode(pixels, pad=True)`` and ``codebook_size``). Writes ``compare.json`` and ``compare.md`` (the table)
    to ``config.out``; returns the report.
    """
    from vistok.train.dino import linear_probe

    c = config or CompareConfig()
    if not tokenizers:
        raise ValueError("pass at least one tokenizer")
    gpt_cfg = replace(c.gpt, conditional=False, class_dropout=0.0)
    out = Path(c.out)
    out.mkdir(parents=True, exist_ok=True)
    data = compare_datasets(c)
    rows: list[dict[str, Any]] = []
    for name, tok in tokenizers.items():
        t0 = time.perf_counter()
        dirs = {s: tokenize_pictures(tok, ds, out / "tokens" / name / s) for s, ds in data.items()}
        t_tok = time.perf_counter() - t0
        seqs = {s: TokenSequences(d) for s, d in dirs.items()}
        layout = seqs["train"].layout
        log(f"[{name}] K={layout.codebook_size}, grid {layout.grid}: tokenized in {t_tok:.1f}s; training the GPT…")
        res = train_token_gpt(dirs["train"], gpt_cfg, out / f"gpt_{name}")
        model = res.model.eval()
        row: dict[str, Any] = {
            "tokenizer": name,
            "K": layout.codebook_size,
            "grid": list(layout.grid),
            "params": model.num_params(),
            "steps": gpt_cfg.steps,
            "batch_size": gpt_cfg.batch_size,
            "train_images": len(seqs["train"]),
            "train_loss_last": res.final_loss,
            "train_s": round(res.elapsed_s, 1),
            "tokenize_s": round(t_tok, 1),
            "train_codes_used": int(torch.unique(seqs["train"].grids).numel()),
        }
        for split in ("val_crops", "val_photos"):
            m = evaluate_token_gpt(model, layout, seqs[split].ids)
            row[split] = m
            row[f"{split}_unigram"] = unigram_scores(seqs["train"].grids, seqs[split].grids, layout.codebook_size)
        mid = max(0, model.config.n_layers // 2 - 1)
        tr_final, tr_mid = gpt_features(model, seqs["probe_train"].ids, (None, mid))
        te_final, te_mid = gpt_features(model, seqs["probe_test"].ids, (None, mid))
        ytr, yte = seqs["probe_train"].labels, seqs["probe_test"].labels
        bow = [bag_of_tokens(seqs[s].grids, layout.codebook_size) for s in ("probe_train", "probe_test")]
        row["probe"] = {
            "final": linear_probe((tr_final, ytr), (te_final, yte)),
            "mid": linear_probe((tr_mid, ytr), (te_mid, yte)),
            "mid_block": mid,
            "bag_of_tokens": linear_probe((bow[0], ytr), (bow[1], yte)),
        }
        rows.append(row)
        log(format_compare_table({"rows": [row]}).splitlines()[-1])
    report = {"config": asdict(c), "rows": rows, "classes": len(torch.unique(ytr))}
    (out / "compare.json").write_text(json.dumps(report, indent=2))
    (out / "compare.md").write_text(format_compare_table(report) + "\n")
    return report


TABLE_FIELDS = (
    "tokenizer", "K", "grid", "params", "steps×batch", "crops: acc", "crops: ppl", "crops: bits/log2K",
    "crops: unigram bits/log2K", "photos: acc", "photos: ppl", "photos: bits/log2K", "photos: unigram bits/log2K",
    "probe final", "probe mid block", "probe bag-of-tokens",
)  # fmt: skip


def format_compare_table(report: Mapping[str, Any]) -> str:
    """The comparison as a Markdown table (one row per tokenizer; fields :data:`TABLE_FIELDS`)."""
    lines = ["| " + " | ".join(TABLE_FIELDS) + " |", "|" + "---|" * len(TABLE_FIELDS)]
    for r in report["rows"]:
        p = r["probe"]
        cells = [
            r["tokenizer"], str(r["K"]), f"{r['grid'][0]}x{r['grid'][1]}", f"{r['params'] / 1e6:.2f}M",
            f"{r['steps']}x{r['batch_size']}",
        ]  # fmt: skip
        for split in ("val_crops", "val_photos"):
            m, u = r[split], r[f"{split}_unigram"]
            cells += [f"{m['accuracy']:.3f}", f"{m['perplexity']:.1f}", f"{m['bits_per_log2k']:.3f}"]
            cells.append(f"{u['bits_per_log2k']:.3f}")
        cells += [f"{p['final']:.3f}", f"{p['mid']:.3f}", f"{p['bag_of_tokens']:.3f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# The pixel decoder: training, held-out scores, and generated pictures
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DigitDecoderTrainConfig:
    """``vistok digit decoder``: train a :class:`~vistok.tokenizers.digit_decoder.DigitAutoencoder`'s decoder on
    built-in photo crops with :class:`vistok.train.tokenizer.TokenizerTrainer` (L1/L2 + optional LPIPS + optional
    GAN), then score it on held-out crops. ``disc_start=None``: no discriminator (reconstruction losses only).
    ``channel_multipliers=None``: 1 + ⌈log₂ f⌉ levels for the tokenizer's f pixels per token."""

    out: str = "runs/digit/decoder"
    size: int = 64
    steps: int = 1000
    batch_size: int = 16
    lr: float = 5e-4
    warmup: int = 50
    recon_loss: str = "l1"
    perceptual_weights: list[str] | None = None
    perceptual_weight: float = 0.1
    disc_start: int | None = None
    gan_weight: float = 0.1
    ema_decay: float | None = 0.999
    embed: str = "centroids"
    embed_dim: int | None = None
    base_channels: int = 16
    channel_multipliers: tuple[int, ...] | None = None
    num_res_blocks: int = 1
    z_channels: int = 64
    eval_images: int = 64
    baseline_images: int = 500
    show_images: int = 8
    seed: int = 0
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("size", "steps", "batch_size", "eval_images", "baseline_images", "show_images"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.disc_start is not None and not 0 <= self.disc_start < self.steps:
            raise ValueError(f"disc_start must be in [0, steps={self.steps}) or None (no GAN), got {self.disc_start}")

    def decoder_fields(self, patch: int) -> dict[str, Any]:
        mults = self.channel_multipliers
        if mults is None:
            mults = (1, 2, 4, 8, 8, 8, 8)[: 1 + max(0, math.ceil(math.log2(patch)))]
        return {
            "embed": self.embed, "embed_dim": self.embed_dim, "base_channels": self.base_channels,
            "channel_multipliers": tuple(mults), "num_res_blocks": self.num_res_blocks, "z_channels": self.z_channels,
        }  # fmt: skip

    def trainer_config(self) -> Any:
        from vistok.train.tokenizer import TokenizerTrainConfig

        gan = self.disc_start is not None
        start = self.disc_start if gan else self.steps  # without a GAN the discriminator never runs
        return TokenizerTrainConfig(
            preset="", data="samples", video_ratio=0.0, image_size=self.size, batch_size=self.batch_size,
            steps=self.steps, lr=self.lr, warmup=min(self.warmup, self.steps // 2), recon_loss=self.recon_loss,
            perceptual_weights=self.perceptual_weights, perceptual_weight=self.perceptual_weight,
            gan_weight=self.gan_weight if gan else 0.0, disc_start=start,
            disc_warmup_start=max(0, start - start // 5) if gan else start,
            ema_decay=self.ema_decay, out_dir=self.out, resume=self.resume, seed=self.seed,
            log_every=max(1, min(50, self.steps // 10)), ckpt_every=max(self.steps // 2, 1), progress=self.progress,
        )  # fmt: skip


def _decoder_sets(size: int, n: int, seed: int) -> dict[str, Any]:
    from vistok.data.samples import SamplePhotos

    return {
        "heldout_photos": SamplePhotos(size=size, split="heldout", length=n, seed=seed + 2000),
        "train_photos_new_crops": SamplePhotos(size=size, split="train", length=n, seed=seed + 1000),
    }


def _stack(dataset: Any, n: int | None = None) -> Tensor:
    return torch.stack([dataset[i]["pixels"] for i in range(len(dataset) if n is None else min(n, len(dataset)))])


@torch.no_grad()
def feature_distance(encoder: Any, pictures: Tensor, reference: Tensor, batch_size: int = 64) -> float:
    """Fréchet distance between the mean-pooled patch features of two sets of pictures (3, H, W) in [−1, 1]:
    FID's recipe with ``encoder`` (anything with ``features(pixels) → (B, h, w, C)``, e.g. the self-supervised ViT of
    a DiGIT tokenizer) in place of Inception. 0 for identical feature statistics; a sample quality score where no
    Inception weights can be loaded. Needs at least two pictures per set."""
    from vistok.eval import metrics

    if pictures.ndim != 4 or reference.ndim != 4 or min(len(pictures), len(reference)) < 2:
        raise ValueError(
            f"expected two batches of >= 2 pictures (N, 3, H, W), got {tuple(pictures.shape)} and "
            f"{tuple(reference.shape)}"
        )

    def pooled(x: Tensor) -> Tensor:
        x = x.float().clamp(-1, 1)  # decoders overshoot a little; score the pictures as they would be saved
        return torch.cat([encoder.features(b).float().mean(dim=(1, 2)).cpu() for b in x.split(batch_size)])

    device = getattr(encoder, "device", "cpu")
    a, b = pooled(pictures.to(device)), pooled(reference.to(device))
    return float(metrics.frechet_distance(*metrics.feature_statistics(a), *metrics.feature_statistics(b)))


@torch.no_grad()
def cluster_mean_patches(autoencoder: Any, pixels: Tensor, batch_size: int = 64) -> Tensor:
    """The lookup-table decoder, a baseline: the mean f×f pixel patch of each id over ``pixels`` (K, 3, f, f);
    ids never seen get the mean patch of all."""
    f, k = autoencoder.spatial_factor, autoencoder.codebook_size
    sums, counts = torch.zeros(k, 3 * f * f, dtype=torch.float64), torch.zeros(k, dtype=torch.float64)
    for x in pixels.split(batch_size):
        ids = autoencoder.encode(x.to(autoencoder.device)).cpu().flatten()
        patches = F.unfold(x.double(), kernel_size=f, stride=f).transpose(1, 2).reshape(-1, 3 * f * f)
        sums.index_add_(0, ids, patches)
        counts.index_add_(0, ids, torch.ones_like(ids, dtype=torch.float64))
    mean = torch.where(counts[:, None] > 0, sums / counts.clamp_min(1)[:, None], sums.sum(0) / counts.sum())
    return mean.float().reshape(k, 3, f, f)


def render_patches(patches: Tensor, ids: Tensor) -> Tensor:
    """Pictures (B, 3, h·f, w·f) tiled from the patches (K, 3, f, f) of ids (B, h, w)."""
    _, h, w = ids.shape
    f = patches.shape[-1]
    cols = patches[ids.long().flatten(1)].flatten(2).transpose(1, 2)  # (B, 3·f·f, h·w)
    return F.fold(cols, output_size=(h * f, w * f), kernel_size=f, stride=f)


def _as_u8(x: Tensor) -> Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def evaluate_digit_decoder(
    autoencoder: Any, sets: Mapping[str, Any], baseline_pixels: Tensor | None = None, batch_size: int = 32
) -> dict[str, Any]:
    """Mean PSNR (dB, uint8 pictures as saved) of the decoder on each held-out set, against two baselines: each
    picture's mean colour, and (with ``baseline_pixels``) the cluster-mean-patch lookup table fitted on them."""
    from vistok.eval import metrics

    autoencoder.eval()
    table = cluster_mean_patches(autoencoder, baseline_pixels) if baseline_pixels is not None else None
    report: dict[str, Any] = {}
    for name, ds in sets.items():
        scores: dict[str, list[float]] = {"decoder": [], "mean_colour": [], "cluster_mean_patch": []}
        for x in _stack(ds).split(batch_size):
            ids = autoencoder.encode(x.to(autoencoder.device))
            real = _as_u8(x)
            scores["decoder"] += metrics.psnr(real, _as_u8(autoencoder.decode(ids).cpu())).tolist()
            scores["mean_colour"] += metrics.psnr(real, _as_u8(x.mean((2, 3), keepdim=True).expand_as(x))).tolist()
            if table is not None:
                scores["cluster_mean_patch"] += metrics.psnr(real, _as_u8(render_patches(table, ids.cpu()))).tolist()
        report[name] = {k: float(np.mean(v)) for k, v in scores.items() if v} | {"images": len(ds)}
    return report


@dataclass
class DigitDecoderResult:
    model_dir: Path | None
    metrics: dict[str, Any]
    picture: Path | None
    text: str


def train_digit_decoder(
    tokenizer: Any, config: DigitDecoderTrainConfig | None = None, *, info: Any = None
) -> DigitDecoderResult:
    """Train a pixel decoder for a fitted DiGIT ``tokenizer`` (a DigitTokenizer or its folder) on built-in photo
    crops; write ``OUT/final`` (the :class:`DigitAutoencoder`, ``vistok.from_pretrained``), ``OUT/decoder.json``
    (held-out PSNR vs baselines) and ``OUT/reconstructions.png`` (rows: originals, decoded, lookup-table baseline)."""
    from vistok.data.samples import SamplePhotos
    from vistok.eval.pictures import image_grid, save_png
    from vistok.hub import from_pretrained
    from vistok.tokenizers.digit import DigitTokenizer
    from vistok.tokenizers.digit_decoder import DigitAutoencoder
    from vistok.train.tokenizer import TokenizerTrainer

    c, t0 = config or DigitDecoderTrainConfig(), time.perf_counter()
    tok = tokenizer if isinstance(tokenizer, DigitTokenizer) else DigitTokenizer.from_pretrained(tokenizer)
    tok.eval()
    grid = tok.token_grid(c.size, c.size)
    if c.size % grid[0]:
        raise ValueError(f"size {c.size} is not a whole number of pixels per token for the tokenizer's grid {grid}")
    fields = c.decoder_fields(c.size // grid[0])
    if tok.config.encoder != "vit" or tok.config.image_size is not None:
        fields["spatial_factor"] = c.size // grid[0]
    torch.manual_seed(c.seed)
    model = DigitAutoencoder.from_tokenizer(tok, **fields)
    train_set = SamplePhotos(size=c.size, split="train", length=1 << 20, seed=c.seed)
    trainer = TokenizerTrainer(c.trainer_config(), model=model, datasets={"image": train_set}, info=info)
    res = trainer.fit()
    if not trainer.info.is_main or res.final_dir is None:
        return DigitDecoderResult(res.final_dir, {}, None, res.summary)
    ae = from_pretrained(res.final_dir, map_location=trainer.device).eval()
    sets = _decoder_sets(c.size, c.eval_images, c.seed)
    baseline = _stack(SamplePhotos(size=c.size, split="train", length=c.baseline_images, seed=c.seed + 3000))
    scores = evaluate_digit_decoder(ae, sets, baseline)
    table = cluster_mean_patches(ae, baseline)
    rows, labels = [], []
    for name, ds in sets.items():
        x = _stack(ds, c.show_images)
        ids = ae.encode(x.to(ae.device))
        rows += [list(x), list(ae.decode(ids).cpu()), list(render_patches(table, ids.cpu()))]
        labels += [f"{name}: original", "decoded", "lookup baseline"]
    out = Path(c.out)
    picture = save_png(image_grid(rows, row_labels=labels, scale=2), out / "reconstructions.png")
    m = res.last_metrics
    report = {
        "tokenizer": {"K": ae.codebook_size, "grid": list(grid), "codebook_sha256": ae.tokenizer.codebook_sha256()},
        "decoder_params": sum(p.numel() for p in ae.parameters() if p.requires_grad),
        "steps": res.step, "train_rec_loss_last": m.get("rec_loss"), "train_psnr_last": m.get("psnr"),
        "train_s": round(res.elapsed_s, 1), "heldout": scores, "config": asdict(c), "model_dir": str(res.final_dir),
    }  # fmt: skip
    (out / "decoder.json").write_text(json.dumps(report, indent=2))
    h = scores["heldout_photos"]
    n = scores["train_photos_new_crops"]
    text = (
        f"Trained a DiGIT pixel decoder ({report['decoder_params'] / 1e6:.2f}M trainable parameters; K="
        f"{ae.codebook_size}, {grid[0]}x{grid[1]} tokens per {c.size}px picture) for {res.step} steps in "
        f"{time.perf_counter() - t0:.0f}s. PSNR on held-out photos {h['decoder']:.2f} dB (baselines: mean colour "
        f"{h['mean_colour']:.2f}, cluster-mean-patch lookup {h['cluster_mean_patch']:.2f}); on new crops of the "
        f"training photos {n['decoder']:.2f} dB (baselines {n['mean_colour']:.2f}, {n['cluster_mean_patch']:.2f}). "
        f"Decoder in {res.final_dir} (vistok.from_pretrained / load_tokenizer), scores in {out / 'decoder.json'}, "
        f"reconstructions in {picture}."
    )
    return DigitDecoderResult(res.final_dir, report, picture, text)


def _trained_classes(gpt_dir: str | Path, layout: TokenLayout) -> list[int]:
    """The classes the GPT saw in training (labels of its token shards, when that folder is still there), else all:
    class ids are labels, and a label range can have gaps (the built-in held-out photos are never trained on)."""
    from vistok.data.shards import ShardReader

    shards = json.loads((Path(gpt_dir) / LAYOUT_NAME).read_text()).get("shards")
    if shards and Path(shards).is_dir():
        labels = ShardReader(shards).labels
        if labels is not None and len(labels):
            return [int(c) for c in np.unique(labels) if 0 <= c < layout.num_classes]
    return list(range(layout.num_classes))


@dataclass
class GenerateResult:
    grids: Tensor
    pixels: Tensor
    labels: Tensor | None
    picture: Path
    text: str


@torch.no_grad()
def generate_pictures(
    gpt_dir: str | Path,
    decoder: Any,
    out: str | Path,
    *,
    per_class: int = 4,
    classes: Sequence[int] | None = None,
    n: int = 8,
    cfg: float = 1.0,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
) -> GenerateResult:
    """Sample token grids from a GPT of :func:`train_token_gpt` (``OUT/model``) and decode them to pixels.

    Class-conditional GPT: ``per_class`` grids for each of ``classes`` (default: the classes of the GPT's training
    shards), with classifier-free guidance ``cfg``; unconditional: ``n`` grids. Writes ``samples.png`` (rows =
    classes), ``token_maps.png`` (the ids on cells coloured by cluster), ``tokens.npy`` (B, h, w) and
    ``samples.json`` (labels, settings).
    """
    from vistok.eval.pictures import image_grid, save_png
    from vistok.hub import from_pretrained
    from vistok.tokenizers.digit import palette

    model, layout = load_token_gpt(gpt_dir)
    ae = decoder if isinstance(decoder, nn.Module) else from_pretrained(decoder, map_location="cpu").eval()
    if not hasattr(ae, "decode") or not hasattr(ae, "codebook_size"):
        raise ValueError(
            f"the decoder must be a pixel tokenizer with decode and codebook_size, got {type(ae).__name__}"
        )
    if int(ae.codebook_size) != layout.codebook_size:
        raise ValueError(
            f"the GPT in {gpt_dir} models K={layout.codebook_size} ids but the decoder has codebook_size "
            f"{ae.codebook_size}: use the decoder trained on the tokenizer that made the GPT's tokens"
        )
    model.to(ae.device if isinstance(getattr(ae, "device", None), torch.device) else "cpu")
    labels = None
    if layout.num_classes:
        chosen = _trained_classes(gpt_dir, layout) if classes is None else [int(k) for k in classes]
        if per_class < 1:
            raise ValueError(f"per_class must be >= 1, got {per_class}")
        labels = torch.tensor(chosen).repeat_interleave(per_class)
        if cfg != 1.0 and json.loads((Path(gpt_dir) / LAYOUT_NAME).read_text()).get("class_dropout") == 0:
            warnings.warn(
                f"cfg={cfg}, but the GPT in {gpt_dir} was trained with class_dropout=0: its unconditional (BOS) "
                "logits were never trained with images, so guidance extrapolates from noise",
                UserWarning,
                stacklevel=2,
            )
        grids = sample_grids(model, layout, labels=labels, temperature=temperature, top_k=top_k, seed=seed, cfg=cfg)
    else:
        if cfg != 1.0:
            raise ValueError(f"this GPT is unconditional: guidance (cfg={cfg}) needs a class-conditional GPT")
        grids = sample_grids(model, layout, n, temperature=temperature, top_k=top_k, seed=seed)
    pixels = torch.cat([ae.decode(g.to(ae.device)).float().cpu() for g in grids.split(16)]).clamp(-1, 1)
    out = Path(out)
    cols = per_class if labels is not None else min(n, 8)
    rows = [list(pixels[i : i + cols]) for i in range(0, len(pixels), cols)]
    colours = palette(layout.codebook_size)
    f = pixels.shape[-1] // layout.grid[1]
    maps = [np.kron(colours[g.numpy()], np.ones((f, f, 1), np.uint8)) for g in grids]
    map_rows = [maps[i : i + cols] for i in range(0, len(maps), cols)]
    names = [f"class {int(labels[i])}" for i in range(0, len(labels), cols)] if labels is not None else None
    picture = save_png(image_grid(rows, row_labels=names, scale=2), out / "samples.png")
    save_png(image_grid(map_rows, row_labels=names, scale=2), out / "token_maps.png")
    tmp = out / ".tokens.npy.tmp"
    with open(tmp, "wb") as fh:
        np.save(fh, grids.numpy().astype(np.int64))
    tmp.replace(out / "tokens.npy")
    settings = {"gpt": str(gpt_dir), "cfg": cfg, "temperature": temperature, "top_k": top_k, "seed": seed}
    (out / "samples.json").write_text(
        json.dumps({"labels": labels.tolist() if labels is not None else None, "grid": list(layout.grid), **settings})
    )
    kind = f"{per_class} per class for {len(rows)} classes (cfg {cfg:g})" if labels is not None else f"{n}"
    text = (
        f"Sampled {len(grids)} token grids ({kind}, {layout.grid[0]}x{layout.grid[1]} ids of K="
        f"{layout.codebook_size}) from the GPT in {gpt_dir} and decoded them to {pixels.shape[-2]}x"
        f"{pixels.shape[-1]} pictures: {picture} (rows = {'classes' if labels is not None else 'samples'}), "
        f"token maps in {out / 'token_maps.png'}, ids in {out / 'tokens.npy'}, settings in {out / 'samples.json'}."
    )
    return GenerateResult(grids, pixels, labels, picture, text)


# ---------------------------------------------------------------------------------------------------------------------
# CLI: vistok digit {train, compare}
# ---------------------------------------------------------------------------------------------------------------------


def _gpt_args(p: argparse.ArgumentParser, steps: int) -> None:
    p.add_argument("--dim", type=int, default=128, help="GPT width (default 128)")
    p.add_argument("--layers", type=int, default=4, help="GPT blocks (default 4)")
    p.add_argument("--heads", type=int, default=4, help="attention heads (default 4)")
    p.add_argument("--steps", type=int, default=steps, help=f"training steps (default {steps})")
    p.add_argument("--batch-size", type=int, default=32, help="sequences per step (default 32)")
    p.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (default 2e-3)")
    p.add_argument("--warmup", type=int, default=40)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def _gpt_config(args: argparse.Namespace, **kw: Any) -> DigitARConfig:
    return DigitARConfig(
        dim=args.dim, n_layers=args.layers, n_heads=args.heads, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, warmup=args.warmup, seed=args.seed, progress=not args.quiet, **kw,
    )  # fmt: skip


def _load_digit(path: str) -> Any:
    from vistok.tokenizers.digit import DigitTokenizer

    return DigitTokenizer.from_pretrained(path).eval()


def _cmd_train(args: argparse.Namespace) -> int:
    out = Path(args.out)
    tokens = Path(args.tokens) if args.tokens else None
    if tokens is None:
        if not args.tokenizer:
            raise SystemExit("pass --tokens DIR (a token-shard folder) or --tokenizer DIR (a DiGIT tokenizer folder)")
        from vistok.data.samples import SamplePhotos

        ds = SamplePhotos(size=args.size, split="train", length=args.images, seed=args.seed)
        tokens = tokenize_pictures(_load_digit(args.tokenizer), ds, out / "tokens" / "train")
    cfg = _gpt_config(
        args, conditional=not args.unconditional, class_dropout=args.class_dropout, resume=not args.no_resume
    )
    res = train_token_gpt(tokens, cfg, out)
    lay = res.layout
    text = (
        f"Trained a {'class-conditional' if cfg.conditional else 'unconditional'} GPT "
        f"({res.model.num_params() / 1e6:.2f}M parameters) on the {lay.grid[0]}x{lay.grid[1]} grids in {tokens} "
        f"(K={lay.codebook_size}, {lay.num_classes} classes) for {cfg.steps} steps in {res.elapsed_s:.0f}s; final "
        f"loss {res.final_loss:.3f} (log K = {math.log(lay.codebook_size):.3f}). Model in {res.model_dir} "
        f"(load_token_gpt)."
    )
    if args.samples:
        labels = None
        if lay.num_classes:
            from vistok.data.shards import ShardReader

            present = torch.from_numpy(np.unique(ShardReader(tokens).labels))  # classes seen in training
            labels = present[torch.arange(args.samples) % len(present)]
        grids = sample_grids(res.model, lay, args.samples, labels=labels, temperature=1.0, seed=args.seed)
        (out / "samples.json").write_text(json.dumps({"labels": labels.tolist() if labels is not None else None,
                                                       "grids": grids.tolist()}))  # fmt: skip
        text += (
            f" {args.samples} sampled grids (ids) in {out / 'samples.json'}; render pictures with 'vistok digit "
            f"decoder' and 'vistok digit generate'."
        )
    print(text)
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    from vistok.tokenizers.api import load_tokenizer

    cfg = CompareConfig(
        out=args.out, size=args.size, train_images=args.images, val_images=args.val_images,
        probe_images=args.probe_images, seed=args.seed, gpt=_gpt_config(args, conditional=False, resume=False),
    )  # fmt: skip
    base = _load_digit(args.digit)
    tokenizers: dict[str, Any] = {}
    ks = [int(k) for k in args.k.split(",") if k.strip()] if args.k else []
    for k in ks or [base.codebook_size]:
        if k == base.codebook_size:
            tokenizers[f"digit-K{k}"] = base
            continue
        from vistok.data.samples import SamplePhotos
        from vistok.tokenizers.digit import DigitTokenizer

        tok = DigitTokenizer(replace(base.config, num_clusters=k), encoder=base.encoder)
        fit = SamplePhotos(size=args.size, split="train", length=args.fit_images, seed=args.seed + 1)
        tokenizers[f"digit-K{k}"] = tok.fit(fit, batch_size=64, max_images=args.fit_images).eval()
    if args.magvit != "none":
        tokenizers["magvit2"] = load_tokenizer(None if args.magvit == "default" else args.magvit, device="cpu")
    report = compare_tokenizers(tokenizers, cfg)
    print(format_compare_table(report))
    print(f"(held-out: {args.val_images} new crops of the training photos / of the held-out photos; probe: "
          f"{report['classes']} photos, {args.probe_images} train / test crops at zoom 3-8; sample quality is not "
          f"scored). compare.json and compare.md in {args.out}.")  # fmt: skip
    return 0


def _cmd_decoder(args: argparse.Namespace) -> int:
    mults = tuple(int(m) for m in args.channel_multipliers.split(",")) if args.channel_multipliers else None
    cfg = DigitDecoderTrainConfig(
        out=args.out, size=args.size, steps=args.steps, batch_size=args.batch_size, lr=args.lr, warmup=args.warmup,
        recon_loss=args.recon_loss, perceptual_weights=args.perceptual_weights, disc_start=args.disc_start,
        gan_weight=args.gan_weight, embed=args.embed, embed_dim=args.embed_dim, base_channels=args.base_channels,
        channel_multipliers=mults, z_channels=args.z_channels, eval_images=args.eval_images,
        baseline_images=args.baseline_images, seed=args.seed,
        resume=not args.no_resume, progress=not args.quiet,
    )  # fmt: skip
    print(train_digit_decoder(args.digit, cfg).text)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    classes = [int(c) for c in args.classes.split(",") if c.strip()] if args.classes else None
    res = generate_pictures(
        args.gpt, args.decoder, args.out, per_class=args.per_class, classes=classes, n=args.n, cfg=args.cfg,
        temperature=args.temperature, top_k=args.top_k, seed=args.seed,
    )  # fmt: skip
    print(res.text)
    return 0


def _cmd_translate(args: argparse.Namespace) -> int:
    from vistok.train.digit_translate import DigitTranslateConfig, train_digit_translator

    cfg = DigitTranslateConfig(
        out=args.out, size=args.size, images=args.images, eval_images=args.eval_images, steps=args.steps,
        batch_size=args.batch_size, lr=args.lr, warmup=args.warmup, dim=args.dim, n_layers=args.layers,
        n_heads=args.heads, seed=args.seed, progress=not args.quiet,
    )  # fmt: skip
    magvit = None if args.magvit == "default" else args.magvit
    print(train_digit_translator(args.digit, magvit, cfg).text)
    return 0


def add_digit_train_parser(digit_subparsers: Any) -> None:
    """Add ``train``, ``compare``, ``decoder``, ``generate`` and ``translate`` to the ``vistok digit`` verbs
    (``digit_subparsers``: its sub-parser group)."""
    fmt = argparse.RawDescriptionHelpFormatter
    p = digit_subparsers.add_parser(
        "train",
        help="train a GPT on DiGIT token grids (a token-shard folder, or built-in photos via a DiGIT tokenizer)",
        description=__doc__,
        epilog="example:\n  vistok digit train --tokenizer runs/digit/tokenizer --out runs/digit/gpt\n"
        "  vistok digit train --tokens runs/digit/tokens --unconditional --out runs/digit/gpt",
        formatter_class=fmt,
    )
    p.add_argument("--tokens", default=None, help="a token-shard folder (with labels for a class-conditional GPT)")
    p.add_argument("--tokenizer", default=None, help="a DiGIT tokenizer folder: tokenize built-in photo crops first")
    p.add_argument("--size", type=int, default=64, help="crop side with --tokenizer (default 64)")
    p.add_argument("--images", type=int, default=2000, help="crops to tokenize with --tokenizer (default 2000)")
    p.add_argument("--unconditional", action="store_true", help="BOS instead of the class token")
    p.add_argument("--class-dropout", type=float, default=0.1, help="class token → BOS with this probability")
    p.add_argument("--samples", type=int, default=8, help="grids to sample after training (default 8; 0 = none)")
    p.add_argument("--out", default="runs/digit/gpt", help="run folder (default runs/digit/gpt)")
    p.add_argument("--no-resume", action="store_true")
    _gpt_args(p, 400)
    p.set_defaults(func=_cmd_train)

    p = digit_subparsers.add_parser(
        "compare",
        help="same GPT, same budget, on DiGIT vs MAGVIT-v2 tokens: held-out bits/token/log2 K and linear probes",
        description=__doc__,
        epilog="example:\n  vistok digit compare --digit runs/digit/tokenizer --k 64,256,1024 --steps 300",
        formatter_class=fmt,
    )
    p.add_argument("--digit", required=True, help="a DiGIT tokenizer folder (written by 'vistok digit fit')")
    p.add_argument("--k", default=None, help="comma-separated K to refit k-means on its encoder (default: its own K)")
    p.add_argument("--fit-images", type=int, default=1000, help="crops k-means sees when refitting (default 1000)")
    p.add_argument("--magvit", default="default", help="'default' (shipped), a tokenizer folder, or 'none'")
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--images", type=int, default=2000, help="training crops (default 2000)")
    p.add_argument("--val-images", type=int, default=256, help="held-out crops per held-out set (default 256)")
    p.add_argument("--probe-images", type=int, default=700, help="probe train / test crops (default 700 each)")
    p.add_argument("--out", default="runs/digit/compare")
    _gpt_args(p, 300)
    p.set_defaults(func=_cmd_compare)

    p = digit_subparsers.add_parser(
        "decoder",
        help="train a pixel decoder for DiGIT tokens (frozen tokenizer + conv decoder) and score it on held-out crops",
        description=__doc__,
        epilog="example:\n  vistok digit decoder --digit runs/digit/tokenizer --out runs/digit/decoder --steps 1000\n"
        "  vistok digit decoder --digit runs/digit/tokenizer --disc-start 2000 --steps 4000 "
        "--perceptual-weights vgg16.pth lpips_vgg.pth",
        formatter_class=fmt,
    )
    p.add_argument("--digit", required=True, help="a DiGIT tokenizer folder (written by 'vistok digit fit')")
    p.add_argument("--out", default="runs/digit/decoder", help="run folder; the model goes to OUT/final")
    p.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    p.add_argument("--batch-size", type=int, default=16, help="crops per step (default 16)")
    p.add_argument("--lr", type=float, default=5e-4, help="peak learning rate (default 5e-4)")
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--recon-loss", default="l1", choices=("l1", "l2"))
    p.add_argument("--perceptual-weights", nargs="+", default=None, help="LPIPS weight files (never downloaded)")
    p.add_argument("--disc-start", type=int, default=None, help="step the GAN loss starts (default: no GAN)")
    p.add_argument("--gan-weight", type=float, default=0.1)
    p.add_argument("--embed", default="centroids", choices=("centroids", "learned"), help="token embedding init")
    p.add_argument("--embed-dim", type=int, default=None, help="channels of learned embeddings")
    p.add_argument("--base-channels", type=int, default=16)
    p.add_argument("--channel-multipliers", default=None, help="e.g. 1,2,4,8 (default: 1 + log2(patch) levels)")
    p.add_argument("--z-channels", type=int, default=64)
    p.add_argument("--eval-images", type=int, default=64, help="held-out crops per set scored (default 64)")
    p.add_argument("--baseline-images", type=int, default=500, help="crops the lookup baseline is fitted on")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_decoder)

    p = digit_subparsers.add_parser(
        "generate",
        help="sample token grids from a DiGIT GPT (classifier-free guidance) and decode them to a PNG grid",
        description=__doc__,
        epilog="example:\n  vistok digit generate --gpt runs/digit/gpt/model --decoder runs/digit/decoder/final "
        "--cfg 2 --per-class 6 --out runs/digit/samples",
        formatter_class=fmt,
    )
    p.add_argument("--gpt", required=True, help="a GPT folder written by 'vistok digit train' (OUT/model)")
    p.add_argument("--decoder", required=True, help="a decoder folder written by 'vistok digit decoder' (OUT/final)")
    p.add_argument("--out", default="runs/digit/samples")
    p.add_argument("--per-class", type=int, default=4, help="samples per class of a conditional GPT (default 4)")
    p.add_argument("--classes", default=None, help="comma-separated class ids (default: those trained on)")
    p.add_argument("--n", type=int, default=8, help="samples of an unconditional GPT (default 8)")
    p.add_argument("--cfg", type=float, default=1.0, help="classifier-free guidance scale (default 1 = none)")
    p.add_argument("--temperature", type=float, default=1.0)
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_generate)

    p = digit_subparsers.add_parser(
        "translate",
        help="train a DiGIT -> MAGVIT-v2 token translator (the paper's pixel route) and score it on held-out crops",
        description=__doc__,
        epilog="example:\n  vistok digit translate --digit runs/digit/tokenizer --out runs/digit/translate --steps 400",
        formatter_class=fmt,
    )
    p.add_argument("--digit", required=True, help="a DiGIT tokenizer folder (written by 'vistok digit fit')")
    p.add_argument("--magvit", default="default", help="target tokenizer: 'default' (shipped MAGVIT-v2) or a folder")
    p.add_argument("--out", default="runs/digit/translate", help="run folder; the model goes to OUT/model")
    p.add_argument("--size", type=int, default=64, help="crop side in pixels (default 64)")
    p.add_argument("--images", type=int, default=1000, help="training crops, tokenized once (default 1000)")
    p.add_argument("--eval-images", type=int, default=128, help="held-out crops scored (default 128)")
    _gpt_args(p, 300)
    p.set_defaults(func=_cmd_translate)
