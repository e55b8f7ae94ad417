"""Training and evaluating an LVM (:mod:`vistok.models.lvm`) on visual sentences, and the ``vistok lvm`` commands.

``train_lvm(config)``:

1. builds sentences (:mod:`vistok.data.sentences`: the built-in clips, in-context pairs and photo lists, or user
   videos / images / sentence folders), holds some out, and tokenizes each **once** into token shards
   (``out/tokens/{train,val}``; resumable) with the tokenizer given (default: the one shipped with vistok);
2. packs the training sentences into windows of ``seq_len`` ids, document-masked, positions restarting per sentence,
   and trains with the shared loop (:class:`vistok.train.loop.Trainer`: resume, DDP under torchrun, bf16 on CUDA);
3. writes the model with ``save_pretrained`` to ``out/model`` (plus ``tokenizer.json``: which tokenizer made the
   ids) and evaluates it on the held-out sentences (:func:`evaluate_lvm`): next-id perplexity and accuracy against a
   unigram baseline, next-frame prediction and in-context analogies against copying the last image (token accuracy
   and PSNR of the decoded prediction against the true frame), and the target perplexity as a function of the
   number of context frames (LVM's curve), written as ``eval.json``, a table, plots and image strips.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import ConcatDataset, Dataset, Subset

from vistok.data.sentences import (
    IGNORE,
    LOSS_POLICIES,
    PAIR_TASKS,
    FolderSentences,
    ListSentences,
    PackedSentences,
    PairSentences,
    SentenceFormat,
    VideoSentences,
    builtin_sentences,
    tokenize_sentences,
)
from vistok.layers import MaskSpec
from vistok.registry import parse_override

__all__ = ["LVMTrainConfig", "LVMTrainResult", "add_lvm_parser", "evaluate_lvm", "lvm_loss", "train_lvm"]

TRAIN_EXAMPLE = "vistok lvm train --data samples --steps 600 --out runs/lvm"
KINDS = ("video", "pairs", "list", "folder")


@dataclass
class LVMTrainConfig:
    """Everything ``vistok lvm train`` needs (see ``vistok lvm train --help``)."""

    out: str = "runs/lvm"
    preset: str = "lvm-tiny"
    tokenizer: str | None = None
    data: str = "samples"
    kinds: tuple[str, ...] = ("video", "pairs", "list")
    sentences: int = 300
    val_sentences: int = 24
    image_size: int = 64
    frames: int = 8
    pairs: int = 3
    seq_len: int | None = None
    loss_on: str = "all"
    steps: int = 600
    batch_size: int = 8
    lr: float = 2e-3
    warmup: int = 50
    weight_decay: float = 0.05
    min_lr_ratio: float = 0.1
    clip_grad: float | None = 1.0
    log_every: int = 20
    ckpt_every: int = 200
    seed: int = 0
    resume: bool = True
    progress: bool = True
    eval_items: int = 8
    val_photos: str = "heldout"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    data_workers: int = 0
    compile: bool = False

    def __post_init__(self) -> None:
        self.kinds = tuple(self.kinds)
        bad = [k for k in self.kinds if k not in KINDS]
        if bad or not self.kinds:
            raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {list(self.kinds)}")
        if self.loss_on not in LOSS_POLICIES:
            raise ValueError(f"loss_on must be one of {LOSS_POLICIES}, got {self.loss_on!r}")
        for name in ("sentences", "image_size", "frames", "pairs", "steps", "batch_size", "eval_items"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.data_workers < 0:
            raise ValueError(f"data_workers must be >= 0, got {self.data_workers}")
        if self.val_sentences < 0:
            raise ValueError(f"val_sentences must be >= 0, got {self.val_sentences}")
        if self.val_photos not in ("heldout", "train"):
            raise ValueError(f"val_photos must be 'heldout' or 'train', got {self.val_photos!r}")


@dataclass
class LVMTrainResult:
    model_dir: Path | None
    eval: dict[str, Any]
    summary: str
    elapsed_s: float


# ---------------------------------------------------------------------------------------------------------------------
# Data
# ---------------------------------------------------------------------------------------------------------------------


def build_sentences(config: LVMTrainConfig, split: str) -> Dataset:
    """The training (``split="train"``) or held-out sentences the config asks for.

    Built-in data: held-out sentences come from the two held-out photos (``val_photos="heldout"``, the default), or
    are new sentences of the training photos (``"train"``: other camera paths, sprites, crops and pairings, drawn with
    another seed) — unseen sentences, seen photos.
    """
    c = config
    if c.data == "samples":
        kinds = [k for k in c.kinds if k != "folder"]
        if not kinds:
            raise ValueError("--kinds folder needs --data DIR (one subfolder of images per sentence)")
        if split == "train":
            return builtin_sentences("train", c.image_size, kinds, c.sentences, c.frames, c.pairs, seed=c.seed)
        seed = c.seed + 1 if c.val_photos == "heldout" else c.seed + 100_003
        return builtin_sentences(c.val_photos, c.image_size, kinds, c.val_sentences, c.frames, c.pairs, seed=seed)
    root = Path(c.data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {c.data}: no such folder (or use --data samples)")
    parts: list[Dataset] = []
    for kind in c.kinds:
        if kind == "folder":
            parts.append(FolderSentences(root, c.image_size))
        elif kind == "video":
            from vistok.data.video import VideoFolder

            parts.append(VideoSentences(VideoFolder(root, num_frames=c.frames, size=c.image_size)))
        else:
            from vistok.data.images import ImageFolder

            images = ImageFolder(root, size=c.image_size, crop="random", scale=1.5, seed=c.seed)
            cls = PairSentences if kind == "pairs" else ListSentences
            kwargs = {"pairs": c.pairs} if kind == "pairs" else {"count": max(1, c.frames // 2)}
            parts.append(cls(images, length=c.sentences, seed=c.seed, **kwargs))
    full = ConcatDataset(parts)
    n_val = min(c.val_sentences, len(full) // 5)
    order = np.random.default_rng(c.seed).permutation(len(full))
    keep = order[:n_val] if split == "val" else order[n_val:]
    return Subset(full, sorted(int(i) for i in keep))


def lvm_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-id cross-entropy over a packed batch (document mask, restarting positions); metrics: accuracy."""
    mask = MaskSpec(causal=True, doc_ids=batch["doc_ids"], valid=batch["valid"])
    logits = model(batch["ids"], positions=batch["positions"], mask=mask)
    targets = batch["targets"]
    loss = F.cross_entropy(logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE)
    with torch.no_grad():
        keep = targets != IGNORE
        acc = (logits.argmax(-1)[keep] == targets[keep]).float().mean()
    return loss, {"acc": acc}


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def _unigram(reader: Any, fmt: SentenceFormat) -> Tensor:
    """Add-one-smoothed frequencies of the visual ids in a sentence shard folder → log-probs (visual_vocab,)."""
    counts = np.ones(fmt.visual_vocab, dtype=np.float64)
    for i in range(len(reader)):
        s = np.asarray(reader[i])
        counts += np.bincount(s[s < fmt.visual_vocab], minlength=fmt.visual_vocab)
    return torch.from_numpy(np.log(counts / counts.sum())).float()


@torch.no_grad()
def next_id_metrics(model: nn.Module, packed: PackedSentences, unigram_logp: Tensor, batch: int = 4) -> dict[str, Any]:
    """Held-out next-id metrics over the *visual* targets, the model's distribution renormalized over visual ids
    (so it compares with the unigram baseline on equal terms): perplexity, accuracy; and the unigram's."""
    fmt, device = packed.format, next(model.parameters()).device
    nll_sum = uni_sum = correct = uni_correct = count = 0.0
    uni_best = int(unigram_logp.argmax())
    for lo in range(0, len(packed), batch):
        items = [packed[i] for i in range(lo, min(lo + batch, len(packed)))]
        b = {k: torch.stack([it[k] for it in items]).to(device) for k in items[0]}
        logits = model(b["ids"], positions=b["positions"], mask=MaskSpec(True, doc_ids=b["doc_ids"], valid=b["valid"]))
        tgt = b["targets"]
        keep = (tgt != IGNORE) & (tgt < fmt.visual_vocab)
        logp = logits[keep][:, : fmt.visual_vocab].float().log_softmax(-1)
        t = tgt[keep]
        nll_sum += float(-logp.gather(1, t[:, None]).sum())
        correct += float((logp.argmax(-1) == t).sum())
        uni_sum += float(-unigram_logp.to(device)[t].sum())
        uni_correct += float((t == uni_best).sum())
        count += int(t.numel())
    return {
        "visual_ids": int(count),
        "perplexity": math.exp(nll_sum / count),
        "accuracy": correct / count,
        "unigram_perplexity": math.exp(uni_sum / count),
        "unigram_accuracy": uni_correct / count,
    }


def _psnr(a: Tensor, b: Tensor) -> float:
    from vistok.eval.metrics import psnr

    return float(psnr(a.clamp(-1, 1)[None], b.clamp(-1, 1)[None], data_range=2.0)[0])


@torch.no_grad()
def _decode(tokenizer: Any, grids: Tensor) -> Tensor:
    device = next(tokenizer.parameters()).device
    return tokenizer.decode(grids.to(device)).float().cpu().clamp(-1, 1)


@torch.no_grad()
def _encode(tokenizer: Any, images: Tensor) -> Tensor:
    device = next(tokenizer.parameters()).device
    ids = tokenizer.encode(images.to(device), pad=True).long().cpu()
    return ids[:, 0] if ids.ndim == 4 else ids


def prediction_metrics(
    model: Any, tokenizer: Any, sentences: Sequence[dict[str, Any]], task: str, seed: int = 0
) -> tuple[dict[str, Any], list[list[Tensor]]]:
    """Predict the last image of each sentence from the ones before it (greedy) and compare with copying the last
    context image: token accuracy and PSNR of the decoded prediction against the true image. Baselines: the last
    context image itself (``copy_last_psnr``) and decoded from its tokens (``copy_last_tokens_psnr``: the same
    tokenizer bottleneck the prediction goes through); ceiling: the tokenizer's reconstruction of the truth. Returns
    the metrics and picture rows (context…, prediction, truth)."""
    acc, acc_copy, p_pred, p_copy, p_copy_tok, p_ceiling, rows = [], [], [], [], [], [], []
    for item in sentences:
        images = item["images"]
        grids = _encode(tokenizer, images)
        ctx, truth = grids[:-1], grids[-1]
        pred = model.generate(ctx[None], 1, temperature=0.0, seed=seed)[0, 0].cpu()
        pix = _decode(tokenizer, torch.stack([pred, truth, ctx[-1]]))
        acc.append(float((pred == truth).float().mean()))
        acc_copy.append(float((ctx[-1] == truth).float().mean()))
        p_pred.append(_psnr(pix[0], images[-1]))
        p_copy.append(_psnr(images[-2], images[-1]))
        p_copy_tok.append(_psnr(pix[2], images[-1]))
        p_ceiling.append(_psnr(pix[1], images[-1]))
        rows.append([*images[:-1], pix[0], images[-1]])
    metrics = {
        "task": task,
        "items": len(acc),
        "token_accuracy": float(np.mean(acc)),
        "copy_last_token_accuracy": float(np.mean(acc_copy)),
        "psnr": float(np.mean(p_pred)),
        "copy_last_psnr": float(np.mean(p_copy)),
        "copy_last_tokens_psnr": float(np.mean(p_copy_tok)),
        "tokenizer_psnr": float(np.mean(p_ceiling)),
    }
    return metrics, rows


@torch.no_grad()
def perplexity_vs_context(model: Any, tokenizer: Any, sentences: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Perplexity of each sentence's last image given the c images before it, c = 0 … k − 1 (LVM's Fig. 5 curve)."""
    grids = torch.stack([_encode(tokenizer, s["images"]) for s in sentences])  # (N, k, h, w)
    k = grids.shape[1]
    target = grids[:, -1].to(next(model.parameters()).device)
    curve = []
    for c in range(k):
        ctx = grids[:, k - 1 - c : k - 1].to(target.device) if c else None
        curve.append(float(model.target_nll(ctx, target).mean().exp()))
    return {"context_frames": list(range(k)), "perplexity": curve, "items": int(grids.shape[0])}


def evaluate_lvm(
    model: Any,
    tokenizer: Any,
    val_dir: str | os.PathLike,
    train_dir: str | os.PathLike,
    val_sentences: Dataset,
    out_dir: str | os.PathLike,
    *,
    items: int = 8,
    seed: int = 0,
) -> dict[str, Any]:
    """All held-out metrics and pictures (see the module docstring); writes ``eval.json`` and PNGs to ``out_dir``."""
    from vistok.data.shards import ShardReader
    from vistok.eval.pictures import image_grid, save_png, try_line_plot

    out = Path(out_dir)
    model.eval()
    train_reader = ShardReader(train_dir)
    fmt = SentenceFormat.from_dict(train_reader.extra["sentence_format"])
    report: dict[str, Any] = {}
    packed = PackedSentences(val_dir, model.config.max_seq_len, loss_on="all", seed=seed)
    report["next_id"] = next_id_metrics(model, packed, _unigram(train_reader, fmt))
    by_task: dict[str, list[dict[str, Any]]] = {}
    for i in range(len(val_sentences)):
        item = val_sentences[i]
        task = item["task"]
        if task in PAIR_TASKS:
            task = "pairs"
        if len(by_task.setdefault(task, [])) < items:
            by_task[task].append(item)
    pictures: dict[str, str] = {}
    for task, label in (("video", "next_frame"), ("pairs", "analogy")):
        if task not in by_task:
            continue
        metrics, rows = prediction_metrics(model, tokenizer, by_task[task], task, seed)
        report[label] = metrics
        k = len(rows[0]) - 2
        cols = [f"ctx {j + 1}" for j in range(k)] + ["predicted", "truth"]
        names = [s["task"] for s in by_task[task]]
        pictures[label] = str(save_png(image_grid(rows, row_labels=names, col_labels=cols), out / f"{label}.png"))
    if "video" in by_task and len(by_task["video"][0]["images"]) > 1:
        curve = perplexity_vs_context(model, tokenizer, by_task["video"])
        report["perplexity_vs_context"] = curve
        uni = report["next_id"]["unigram_perplexity"]
        plot = try_line_plot(
            {"LVM": (curve["context_frames"], curve["perplexity"])},
            out / "perplexity_vs_context.png",
            title="perplexity of the next frame vs context",
            xlabel="context frames",
            ylabel="perplexity (visual ids)",
            logy=True,
            hlines={"unigram": uni},
        )
        if plot is not None:
            pictures["perplexity_vs_context"] = str(plot)
    report["pictures"] = pictures
    tmp = out / f".eval.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "eval.json")
    return report


def format_eval(report: dict[str, Any]) -> str:
    """The held-out metrics as a few readable lines."""
    lines = []
    if "next_id" in report:
        m = report["next_id"]
        lines.append(
            f"next id (held-out, {m['visual_ids']} visual ids): perplexity {m['perplexity']:.1f} "
            f"(unigram {m['unigram_perplexity']:.1f}), accuracy {m['accuracy']:.3f} "
            f"(unigram {m['unigram_accuracy']:.3f})"
        )
    for key, what in (("next_frame", "next frame"), ("analogy", "in-context analogy")):
        if key in report:
            m = report[key]
            lines.append(
                f"{what} ({m['items']} held-out): token accuracy {m['token_accuracy']:.3f} (copy last image "
                f"{m['copy_last_token_accuracy']:.3f}); PSNR {m['psnr']:.2f} dB (copy last image "
                f"{m['copy_last_psnr']:.2f} dB, through the tokenizer {m['copy_last_tokens_psnr']:.2f} dB; "
                f"tokenizer ceiling {m['tokenizer_psnr']:.2f} dB)"
            )
    if "perplexity_vs_context" in report:
        c = report["perplexity_vs_context"]
        lines.append(f"perplexity of the target frame vs context frames ({c['items']} held-out clips):")
        lines.append("  context frames " + "".join(f"{n:>8d}" for n in c["context_frames"]))
        lines.append("  perplexity     " + "".join(f"{p:>8.1f}" for p in c["perplexity"]))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def _tokenizer_record(tokenizer: Any, name: str | None) -> dict[str, Any]:
    from vistok.tokenizers.api import tokenizer_info

    info = tokenizer_info(tokenizer)
    info["source"] = (
        "default"
        if name is None
        else str(Path(name).expanduser().resolve())
        if Path(name).expanduser().exists()
        else name
    )
    return info


def load_run_tokenizer(model_dir: str | os.PathLike, override: str | None = None, device: Any = None) -> Any:
    """The tokenizer an LVM/MaskGIT run recorded in ``tokenizer.json`` (or ``override``), checked against the
    recorded config hash."""
    from vistok.tokenizers.api import load_tokenizer, tokenizer_info

    record_path = Path(model_dir) / "tokenizer.json"
    record = json.loads(record_path.read_text()) if record_path.is_file() else {}
    source = override if override is not None else record.get("source", "default")
    tok = load_tokenizer(None if source == "default" else source, device=device)
    if record and override is None and tokenizer_info(tok)["config_sha256"] != record.get("config_sha256"):
        raise ValueError(f"the tokenizer at {source} is not the one {model_dir} was trained with (config differs)")
    return tok


def train_lvm(config: LVMTrainConfig) -> LVMTrainResult:
    """Tokenize (once), train, save and evaluate; see the module docstring."""
    from vistok.hub import save_pretrained
    from vistok.registry import create_model
    from vistok.tokenizers.api import load_tokenizer
    from vistok.train.distributed import barrier, init_distributed
    from vistok.train.loop import TrainConfig, Trainer

    c, t0 = config, time.perf_counter()
    info = init_distributed()
    out = Path(c.out)
    tokenizer = load_tokenizer(c.tokenizer, device=info.device)
    record = _tokenizer_record(tokenizer, c.tokenizer)
    dirs = {split: out / "tokens" / split for split in ("train", "val")}
    val = build_sentences(c, "val") if c.val_sentences else None
    if info.rank == 0:
        made = {k: getattr(c, k) for k in ("data", "kinds", "image_size", "frames", "pairs", "seed")}
        tokenize_sentences(
            build_sentences(c, "train"),
            tokenizer,
            dirs["train"],
            tokenizer_name=record["model_type"],
            progress=c.progress,
            num_workers=c.data_workers,
            batch_images=256 if info.device.type == "cuda" else 32,
            source={**made, "split": "train", "sentences": c.sentences},
        )
        if val is not None:
            tokenize_sentences(
                val,
                tokenizer,
                dirs["val"],
                tokenizer_name=record["model_type"],
                progress=c.progress,
                source={**made, "split": c.val_photos, "sentences": c.val_sentences},
            )
    barrier()
    from vistok.data.shards import ShardReader

    fmt = SentenceFormat.from_dict(ShardReader(dirs["train"]).extra["sentence_format"])
    overrides = {"visual_vocab": fmt.visual_vocab, "image_tokens": fmt.image_tokens, **c.model_overrides}
    if c.seq_len is not None:
        overrides["max_seq_len"] = c.seq_len
    model = create_model(c.preset, **overrides)
    if model.format != fmt:
        raise ValueError(f"model format {model.format} differs from the tokens' {fmt}")
    packed = PackedSentences(dirs["train"], model.config.max_seq_len, loss_on=c.loss_on, seed=c.seed)
    train_config = TrainConfig(
        steps=c.steps,
        batch_size=c.batch_size,
        lr=c.lr,
        weight_decay=c.weight_decay,
        warmup=c.warmup,
        min_lr_ratio=c.min_lr_ratio,
        clip_grad=c.clip_grad,
        log_every=c.log_every,
        ckpt_every=c.ckpt_every,
        out_dir=str(out),
        resume=c.resume,
        seed=c.seed,
        progress=c.progress,
        compile=c.compile,
    )
    run_config = {"lvm": asdict(c), "model": {"preset": c.preset, **overrides}, "packing": packed.stats()}
    trainer = Trainer(model, None, lvm_loss, packed, train_config, info=info, run_config=run_config)
    trainer.fit()
    model_dir, report = None, {}
    if info.rank == 0:
        model_dir = save_pretrained(model, out / "model")
        (model_dir / "tokenizer.json").write_text(json.dumps(record, indent=2))
        if val is not None:
            report = evaluate_lvm(
                model, tokenizer, dirs["val"], dirs["train"], val, out, items=c.eval_items, seed=c.seed
            )
    barrier()
    elapsed = time.perf_counter() - t0
    stats = packed.stats()
    summary = (
        f"Trained {c.preset} ({model.num_params() / 1e6:.2f}M parameters) on {stats['sentences']} "
        f"sentences packed into {stats['windows']} windows of {model.config.max_seq_len} ids ({stats['fill']:.0%} "
        f"filled); tokens in {out / 'tokens'}; model in {model_dir} (load with vistok.from_pretrained)."
    )
    if report:
        summary += "\n" + format_eval(report) + f"\nPictures and eval.json in {out}."
    return LVMTrainResult(model_dir, report, summary, elapsed)


# ---------------------------------------------------------------------------------------------------------------------
# Generation from files
# ---------------------------------------------------------------------------------------------------------------------


def generate_from_files(
    model_dir: str | os.PathLike,
    prompt: Sequence[str | os.PathLike],
    out: str | os.PathLike,
    *,
    frames: int = 1,
    temperature: float = 1.0,
    top_k: int | None = 100,
    top_p: float | None = None,
    seed: int = 0,
    tokenizer: str | None = None,
) -> str:
    """Tokenize the prompt images, generate ``frames`` images, decode, and write prompt + generation as one strip."""
    from vistok.data.images import read_image
    from vistok.data.transforms import apply_box, crop_box, to_tensor
    from vistok.eval.pictures import image_grid, save_png
    from vistok.hub import from_pretrained

    model = from_pretrained(model_dir).eval()
    if not prompt:
        raise ValueError("--prompt needs at least one image")
    tok = load_run_tokenizer(model_dir, tokenizer, device=next(model.parameters()).device)
    fmt = model.format
    size = (fmt.image_tokens[0] * int(tok.spatial_factor), fmt.image_tokens[1] * int(tok.spatial_factor))
    pics = []
    for p in prompt:
        img = read_image(p)
        pics.append(to_tensor(apply_box(img, crop_box(img.width, img.height, size, "center"))))
    images = torch.stack(pics)
    grids = _encode(tok, images)
    if tuple(grids.shape[-2:]) != fmt.image_tokens:
        raise ValueError(
            f"the prompt images tokenize to {tuple(grids.shape[-2:])} ids but the model expects {fmt.image_tokens}"
        )
    t0 = time.perf_counter()
    new = model.generate(
        grids[None].to(next(model.parameters()).device),
        frames,
        temperature=temperature,
        top_k=top_k,
        top_p=top_p,
        seed=seed,
    )[0].cpu()
    dt = time.perf_counter() - t0
    decoded = _decode(tok, new)
    labels = [Path(p).name for p in prompt] + [f"generated {j + 1}" for j in range(frames)]
    path = save_png(image_grid([[*images, *decoded]], col_labels=labels), out)
    return (
        f"Generated {frames} image(s) after a prompt of {len(prompt)} in {dt:.1f} s "
        f"({frames * fmt.image_length / dt:.0f} ids/s); wrote the strip (prompt, then generated) to {path}."
    )


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = LVMTrainConfig(
        out=args.out,
        preset=args.preset,
        tokenizer=args.tokenizer,
        data=args.data,
        kinds=_csv(args.kinds),
        sentences=args.sentences,
        val_sentences=args.val_sentences,
        image_size=args.image_size,
        frames=args.frames,
        pairs=args.pairs,
        seq_len=args.seq_len,
        loss_on=args.loss_on,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        log_every=args.log_every,
        ckpt_every=args.ckpt_every,
        seed=args.seed,
        resume=not args.no_resume,
        progress=not args.quiet,
        eval_items=args.eval_items,
        val_photos=args.val_photos,
        model_overrides=dict(args.model_arg),
        data_workers=args.data_workers,
        compile=args.compile,
    )
    print(train_lvm(cfg).summary)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    print(
        generate_from_files(
            args.model,
            args.prompt,
            args.out,
            frames=args.frames,
            temperature=args.temperature,
            top_k=args.top_k or None,
            top_p=args.top_p,
            seed=args.seed,
            tokenizer=args.tokenizer,
        )
    )
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    from vistok.hub import from_pretrained

    model = from_pretrained(args.model).eval()
    tok = load_run_tokenizer(args.model, args.tokenizer, device=next(model.parameters()).device)
    train_dir = Path(args.model).parent / "tokens" / "train"  # the unigram baseline counts the training ids
    cfg = LVMTrainConfig(
        data=args.data,
        image_size=args.image_size,
        frames=args.frames,
        val_sentences=args.items,
        val_photos=args.val_photos,
        kinds=_csv(args.kinds),
        progress=not args.quiet,
    )
    val = build_sentences(cfg, "val")
    val_dir = Path(args.out) / "tokens-val"
    tokenize_sentences(val, tok, val_dir, progress=not args.quiet)
    if not (train_dir / "meta.json").is_file():
        train_dir = val_dir  # a model without its run folder: the unigram baseline is fitted on the held-out ids
    report = evaluate_lvm(model, tok, val_dir, train_dir, val, args.out, items=args.items)
    print(format_eval(report) + f"\nWrote eval.json and pictures to {args.out}.")
    return 0


def add_lvm_parser(subparsers: Any) -> None:
    """The ``vistok lvm {train,generate,eval}`` commands."""
    fmt = argparse.RawDescriptionHelpFormatter
    g = subparsers.add_parser(
        "lvm",
        help="LVM: autoregressive models of visual sentences",
        description="Train LVMs on visual sentences and prompt them with images.",
    )
    gs = g.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = gs.add_parser(
        "train",
        help="tokenize sentences once, train an LVM, evaluate it on held-out sentences",
        description=__doc__,
        epilog=f"example:\n  {TRAIN_EXAMPLE}",
        formatter_class=fmt,
    )
    p.add_argument("--out", default="runs/lvm", help="run folder: checkpoints, tokens, model, eval (default runs/lvm)")
    p.add_argument("--preset", default="lvm-tiny", help="model preset (lvm-tiny, lvm-300m, ...; default lvm-tiny)")
    p.add_argument("--model-arg", type=parse_override, action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --model-arg dim=256 (repeatable)")  # fmt: skip
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or preset (default: the shipped tokenizer)")
    p.add_argument(
        "--data",
        default="samples",
        help="'samples' (built-in clips and photos) or a folder of videos / images / sentence subfolders",
    )
    p.add_argument(
        "--kinds",
        default="video,pairs,list",
        help="sentence kinds, comma-separated: video, pairs, list, folder (default video,pairs,list)",
    )
    p.add_argument("--sentences", type=int, default=300, help="training sentences per kind (default 300)")
    p.add_argument("--val-sentences", type=int, default=24, help="held-out sentences per kind (default 24)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--frames", type=int, default=8, help="frames per video sentence (default 8)")
    p.add_argument("--pairs", type=int, default=3, help="input→output pairs per in-context sentence (default 3)")
    p.add_argument("--seq-len", type=int, default=None, help="context/window length in ids (default: the preset's)")
    p.add_argument("--loss-on", default="all", choices=LOSS_POLICIES, help="which ids take the loss (default all)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch-size", type=int, default=8, help="windows per step and process (default 8)")
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--eval-items", type=int, default=8, help="held-out sentences per task in the pictures/metrics")
    p.add_argument(
        "--data-workers",
        type=int,
        default=0,
        help="processes that render/load sentences while the tokenizer encodes them (default 0: in this process)",
    )
    p.add_argument("--compile", action="store_true", help="torch.compile the model's training forward pass")
    p.add_argument(
        "--val-photos",
        default="heldout",
        choices=("heldout", "train"),
        help="built-in data: held-out sentences from the held-out photos (default) or new sentences of "
        "the training photos",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out has checkpoints")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = gs.add_parser(
        "generate",
        help="continue a sequence or complete an analogy A:B::C:? from prompt images",
        description="Tokenize the prompt images, generate the next image(s), write prompt + output as one strip.",
        epilog="example:\n  vistok lvm generate --model runs/lvm/model --prompt f1.png "
        "f2.png f3.png --frames 2 --out next.png",
        formatter_class=fmt,
    )
    p.add_argument("--model", required=True, help="an LVM folder (runs/lvm/model)")
    p.add_argument("--prompt", nargs="+", required=True, help="prompt images in order (A B C for A:B::C:?)")
    p.add_argument("--frames", type=int, default=1, help="images to generate (default 1)")
    p.add_argument("--out", default="lvm_generated.png", help="output strip (PNG)")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=100, help="top-k sampling, 0 = off (default 100)")
    p.add_argument("--top-p", type=float, default=None, help="nucleus sampling threshold (default off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokenizer", default=None, help="override the tokenizer recorded with the model")
    p.set_defaults(func=_cmd_generate)

    p = gs.add_parser(
        "eval",
        help="held-out perplexity (vs unigram), next-frame / analogy accuracy and PSNR (vs "
        "copying the last image), perplexity vs context",
        formatter_class=fmt,
        epilog="example:\n  vistok lvm eval --model runs/lvm/model --out runs/lvm/eval",
    )
    p.add_argument("--model", required=True, help="an LVM folder written by 'vistok lvm train' (runs/lvm/model)")
    p.add_argument("--data", default="samples", help="held-out data: 'samples' or a folder (default samples)")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--items", type=int, default=16, help="held-out sentences per kind (default 16)")
    p.add_argument("--kinds", default="video,pairs,list", help="sentence kinds to evaluate (default video,pairs,list)")
    p.add_argument(
        "--val-photos",
        default="heldout",
        choices=("heldout", "train"),
        help="built-in data: the held-out photos, or new sentences of the training photos",
    )
    p.add_argument("--out", default="lvm_eval", help="output folder (default lvm_eval)")
    p.add_argument("--tokenizer", default=None)
    p.add_argument("-q", "--quiet", action="store_true")
    p.set_defaults(func=_cmd_eval)
