"""Train and score the DiGIT → reconstructive-token translator (:mod:`vistok.tokenizers.digit_translate`, option (b) of
the DiGIT pixel decoder; ``vistok digit translate``).

:func:`train_digit_translator` tokenizes ``images`` built-in photo crops once with both tokenizers (a fitted DiGIT
tokenizer and, by default, the shipped MAGVIT-v2), trains a :class:`DigitTranslator` with AdamW (cosine schedule,
linear warm-up) on random mini-batches of the (DiGIT grid, MAGVIT grid) pairs, and scores it on crops of the held-out
photos (``heldout``) and on new crops of the training photos (``train_photos_new_crops``):

- target-token accuracy (argmax) and cross-entropy, next to two baselines fitted on the training pairs: the unigram
  of the target ids (always the most frequent id) and a per-DiGIT-id lookup (the most frequent target id of each
  DiGIT id, no context);
- PSNR (dB, uint8 pictures as saved) of the decoded translation against the crop, next to the pixel tokenizer's own
  reconstruction (encode → decode: the ceiling of this route) and each picture's mean colour (a trivial baseline).

Writes ``OUT/model`` (``save_pretrained``), ``OUT/translate.json`` (the scores) and ``OUT/translations.png`` (rows:
original, pixel-tokenizer reconstruction, DiGIT → target ids decoded).
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from vistok.tokenizers.digit_translate import DigitTranslator, DigitTranslatorConfig, aligned_grid, translate_to_pixels

__all__ = ["DigitTranslateConfig", "DigitTranslateResult", "evaluate_translator", "train_digit_translator"]


@dataclass
class DigitTranslateConfig:
    """``vistok digit translate``: crops, model size, optimisation and scoring of :func:`train_digit_translator`."""

    out: str = "runs/digit/translate"
    size: int = 64
    images: int = 1000
    eval_images: int = 128
    steps: int = 300
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup: int = 20
    min_lr_ratio: float = 0.1
    label_smoothing: float = 0.0
    dim: int = 128
    n_layers: int = 4
    n_heads: int = 4
    show_images: int = 8
    seed: int = 0
    log_every: int = 50
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("size", "images", "eval_images", "steps", "batch_size", "show_images", "log_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class DigitTranslateResult:
    model: DigitTranslator
    model_dir: Path | None
    metrics: dict[str, Any]
    picture: Path | None
    text: str


@torch.no_grad()
def _encode(tokenizer: Any, pixels: Tensor, batch_size: int = 64) -> Tensor:
    from vistok.train.digit_ar import encode_grids

    return torch.cat([encode_grids(tokenizer, x) for x in pixels.split(batch_size)])


def _as_u8(x: Tensor) -> Tensor:
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def _lookup_table(source: Tensor, target: Tensor, k: int, v: int) -> Tensor:
    """The most frequent target id of each source id (K,) over aligned grids; unseen ids → the overall mode."""
    counts = torch.zeros(k * v, dtype=torch.long)
    counts.index_add_(0, source.flatten() * v + target.flatten(), torch.ones(source.numel(), dtype=torch.long))
    counts = counts.reshape(k, v)
    return torch.where(counts.sum(1) > 0, counts.argmax(1), counts.sum(0).argmax())


@torch.no_grad()
def evaluate_translator(
    model: DigitTranslator,
    pixel_tokenizer: Any,
    pixels: Tensor,
    source: Tensor,
    target: Tensor,
    train_source: Tensor,
    train_target: Tensor,
    batch_size: int = 64,
) -> dict[str, Any]:
    """Token accuracy / cross-entropy (vs the unigram and the per-DiGIT-id lookup fitted on the training pairs) and
    PSNR (vs the pixel tokenizer's own reconstruction and the mean colour) on held-out ``pixels`` (N, 3, H, W) with
    their DiGIT ids ``source`` and target ids ``target``."""
    from vistok.eval import metrics

    model.eval()
    c = model.config
    k, v = c.source_vocab, c.target_vocab
    counts = torch.bincount(train_target.flatten(), minlength=v).double() + 1
    logp_unigram = (counts / counts.sum()).log()
    table = _lookup_table(train_source, train_target, k, v)
    t = target.flatten()
    nll, hits, psnr = [], [], {"translated": [], "pixel_tokenizer": [], "mean_colour": []}
    for x, s, tg in zip(pixels.split(batch_size), source.split(batch_size), target.split(batch_size)):
        logits = model(s.to(next(model.parameters()).device)).float().cpu()
        nll.append(torch.nn.functional.cross_entropy(logits.flatten(0, 2), tg.flatten(), reduction="none"))
        hits.append((logits.argmax(-1) == tg).flatten())
        _, decoded = translate_to_pixels(model, s, pixel_tokenizer)
        recon = pixel_tokenizer.decode(tg.to(next(iter(pixel_tokenizer.parameters())).device)).float()
        real = _as_u8(x)
        psnr["translated"] += metrics.psnr(real, _as_u8(decoded.cpu())).tolist()
        psnr["pixel_tokenizer"] += metrics.psnr(real, _as_u8(recon.cpu())).tolist()
        psnr["mean_colour"] += metrics.psnr(real, _as_u8(x.mean((2, 3), keepdim=True).expand_as(x))).tolist()
    nll_model = float(torch.cat(nll).mean())
    return {
        "images": len(pixels),
        "token_accuracy": float(torch.cat(hits).float().mean()),
        "token_nll": nll_model,
        "unigram_accuracy": float((t == logp_unigram.argmax()).double().mean()),
        "unigram_nll": float(-logp_unigram[t].mean()),
        "lookup_accuracy": float((table[source.flatten()] == t).double().mean()),
        "log_V": math.log(v),
        "psnr": {name: float(np.mean(vals)) for name, vals in psnr.items()},
    }


def _load_digit(digit: Any) -> Any:
    from vistok.tokenizers.digit import DigitTokenizer

    return (digit if isinstance(digit, DigitTokenizer) else DigitTokenizer.from_pretrained(digit)).eval()


def _load_pixel(pixel_tokenizer: Any) -> Any:
    from vistok.tokenizers.api import load_tokenizer

    if pixel_tokenizer is None or isinstance(pixel_tokenizer, str | Path):
        return load_tokenizer(pixel_tokenizer, device="cpu")
    return pixel_tokenizer.eval()


def train_digit_translator(
    digit: Any, pixel_tokenizer: Any = None, config: DigitTranslateConfig | None = None
) -> DigitTranslateResult:
    """Train a DiGIT → target-id translator for ``digit`` (a DigitTokenizer or its folder) and ``pixel_tokenizer``
    (a tokenizer, a folder, or None = the shipped MAGVIT-v2) on built-in photo crops; see the module docstring.
    ``config.out`` empty or None: nothing is written (the model is returned)."""
    from vistok.data.samples import SamplePhotos
    from vistok.eval.pictures import image_grid, save_png
    from vistok.tokenizers.api import tokenizer_info
    from vistok.train.digit_ar import _stack
    from vistok.train.schedule import lr_factor

    c, t0 = config or DigitTranslateConfig(), time.perf_counter()
    dtok, ptok = _load_digit(digit), _load_pixel(pixel_tokenizer)
    grid = aligned_grid(dtok, ptok, c.size)
    train_px = _stack(SamplePhotos(size=c.size, split="train", length=c.images, seed=c.seed))
    test_px = _stack(SamplePhotos(size=c.size, split="heldout", length=c.eval_images, seed=c.seed + 2000))
    src, tgt = _encode(dtok, train_px), _encode(ptok, train_px)
    test_src, test_tgt = _encode(dtok, test_px), _encode(ptok, test_px)
    crops_px = _stack(SamplePhotos(size=c.size, split="train", length=c.eval_images, seed=c.seed + 1000))
    crops_src, crops_tgt = _encode(dtok, crops_px), _encode(ptok, crops_px)
    t_tok = time.perf_counter() - t0

    torch.manual_seed(c.seed)
    model = DigitTranslator(
        DigitTranslatorConfig(
            source_vocab=dtok.codebook_size, target_vocab=int(ptok.codebook_size), grid=grid, dim=c.dim,
            n_layers=c.n_layers, n_heads=c.n_heads, source_codebook_sha256=dtok.codebook_sha256(),
            target_config_sha256=tokenizer_info(ptok)["config_sha256"] if hasattr(ptok, "config") else None,
        )
    )  # fmt: skip
    with torch.no_grad():  # start from the unigram of the target ids
        counts = torch.bincount(tgt.flatten(), minlength=model.config.target_vocab).float() + 1
        model.head.bias.copy_((counts / counts.sum()).log())
    decay = [p for p in model.parameters() if p.ndim >= 2]
    rest = [p for p in model.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": c.weight_decay}, {"params": rest, "weight_decay": 0.0}],
        lr=c.lr, betas=(0.9, 0.95),
    )  # fmt: skip
    gen = torch.Generator().manual_seed(c.seed)
    warmup = min(c.warmup, c.steps // 2)
    log: list[dict[str, float]] = []
    model.train()
    t1 = time.perf_counter()
    for step in range(c.steps):
        for group in opt.param_groups:
            group["lr"] = c.lr * lr_factor(step, total=c.steps, warmup=warmup, min_lr_ratio=c.min_lr_ratio)
        idx = torch.randint(len(src), (min(c.batch_size, len(src)),), generator=gen)
        loss, acc = model.loss(src[idx], tgt[idx], label_smoothing=c.label_smoothing)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if (step + 1) % c.log_every == 0 or step + 1 == c.steps:
            log.append({"step": step + 1, "loss": float(loss.detach()), "accuracy": float(acc)})
            if c.progress:
                print(f"step {step + 1}/{c.steps}  loss {float(loss.detach()):.3f}  acc {float(acc):.3f}", flush=True)
    t_train = time.perf_counter() - t1
    model.eval()
    scores = evaluate_translator(model, ptok, test_px, test_src, test_tgt, src, tgt)
    crops = evaluate_translator(model, ptok, crops_px, crops_src, crops_tgt, src, tgt)
    report = {
        "digit": {"K": dtok.codebook_size, "codebook_sha256": dtok.codebook_sha256()},
        "pixel_tokenizer": tokenizer_info(ptok) if hasattr(ptok, "config") else {"codebook_size": ptok.codebook_size},
        "grid": list(grid),
        "params": model.num_params(),
        "train_images": c.images,
        "train_log": log,
        "tokenize_s": round(t_tok, 1),
        "train_s": round(t_train, 1),
        "heldout": scores,
        "train_photos_new_crops": crops,
        "config": asdict(c),
    }
    model_dir = picture = None
    if c.out:
        out = Path(c.out)
        model_dir = model.save_pretrained(out / "model")
        report["model_dir"] = str(model_dir)
        x = test_px[: c.show_images]
        _, translated = translate_to_pixels(model, test_src[: c.show_images], ptok)
        recon = ptok.decode(test_tgt[: c.show_images].to(next(iter(ptok.parameters())).device)).float().clamp(-1, 1)
        rows = [list(x), list(recon.cpu()), list(translated.cpu())]
        name = report["pixel_tokenizer"].get("model_type", "pixel tokenizer")
        labels = ["original", f"{name} recon", "DiGIT -> ids -> decoded"]
        picture = save_png(image_grid(rows, row_labels=labels, scale=2), out / "translations.png")
        (out / "translate.json").write_text(json.dumps(report, indent=2))
    p = scores["psnr"]
    text = (
        f"Trained a DiGIT -> target-token translator ({model.num_params() / 1e6:.2f}M parameters; K="
        f"{dtok.codebook_size} -> V={model.config.target_vocab}, {grid[0]}x{grid[1]} grids) on {c.images} crops for "
        f"{c.steps} steps in {t_train:.0f}s (tokenizing {t_tok:.0f}s). Held-out ({scores['images']} crops): token "
        f"accuracy {scores['token_accuracy']:.3f} (unigram {scores['unigram_accuracy']:.3f}, per-DiGIT-id lookup "
        f"{scores['lookup_accuracy']:.3f}), cross-entropy {scores['token_nll']:.3f} nats (unigram "
        f"{scores['unigram_nll']:.3f}); PSNR {p['translated']:.2f} dB (pixel tokenizer's own reconstruction "
        f"{p['pixel_tokenizer']:.2f}, mean colour {p['mean_colour']:.2f}). New crops of the training photos: token "
        f"accuracy {crops['token_accuracy']:.3f} (unigram {crops['unigram_accuracy']:.3f}, lookup "
        f"{crops['lookup_accuracy']:.3f}); PSNR {crops['psnr']['translated']:.2f} dB (ceiling "
        f"{crops['psnr']['pixel_tokenizer']:.2f}, mean colour {crops['psnr']['mean_colour']:.2f})."
    )
    if model_dir is not None:
        text += f" Model in {model_dir}, scores in {Path(c.out) / 'translate.json'}, pictures in {picture}."
    return DigitTranslateResult(model, model_dir, report, picture, text)
