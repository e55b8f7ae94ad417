"""Training and evaluating a Chat-UniVi model (:mod:`vistok.models.univi`), and the ``vistok univi`` commands.

``train_univi(config)``:

1. renders the built-in scenes (:class:`~vistok.data.scenes.Scenes`, 128² → 16×16 = 256 patches) and clips
   (:class:`~vistok.data.scenes.SceneVideos`, T frames of 64² → T × 64 patches) for training and held out, and runs
   the **frozen** feature encoder over them **once** (``out/features/*.pt``, reused on a rerun): training steps only
   reduce cached features (parameter-free) and run projector + LM;
2. trains in the paper's stages, each with the shared :class:`~vistok.train.loop.Trainer` (checkpoints and resume in
   ``out/stage{0,1,2}``):

   - stage 0 — the LM alone on the training captions *text* (sequences ``BOS BOI EOI describe: caption EOS``, no
     visual tokens; a ``stage0_qa`` share of QA text, default none), so the LM is not random. QA text here would
     teach the answers' priors before any image is seen, and the model then learns to ignore the image. This
     stage's model is the *text-only LM* row of the evaluation (with captions only it has not seen the questions;
     the fair no-image baseline is the final model without visual tokens). With ``llm`` (``--llm DIR``, a local
     Hugging Face ``LlamaForCausalLM`` folder, its ``tokenizer.json`` used for the text when present) the LM is
     that checkpoint and stage 0 is skipped by default;
   - stage 1 — the projector only (LM frozen; the encoder is always frozen) on image captions ("describe:");
   - stage 2 — projector + LM on mixed image and video QA (several turns per sample, loss on every answer).
     Every stage-2 batch draws its visual-token reduction from ``reductions`` (default: merged 112, pooled 112, all
     patches, merged 56, pooled 56), so **one model is trained with mixed reductions and evaluated with each** —
     the same budget for every reduction;

   losses only on answer/caption bytes and EOS;
3. saves the final model (``save_pretrained``) to ``out/model`` and evaluates it (:func:`evaluate_univi`): exact-match
   accuracy of greedy answers (normalized: lower case, no punctuation or extra spaces) on held-out scenes and clips,
   by question type, per reduction (tokens per sample: for a video, events × tokens per event — "merge:56" means 56
   per event), against the majority answer per question type and the text-only model; writes ``eval.json``,
   ``summary.txt``, ``accuracy.png`` (accuracy vs visual tokens) and ``answers.png`` (held-out scenes with
   question, predicted and true answer, plus the merge cluster map of one scene).

The projector standardizes the frozen features per channel with the training features' statistics
(:class:`~vistok.models.univi.FeatureStandardizer`, set after caching).
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import re
import time
from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from vistok.models.univi import IGNORE, REDUCTIONS, UniVi, VisualTokens, scaled_stages

__all__ = [
    "UniViTrainConfig",
    "UniViTrainResult",
    "add_univi_parser",
    "cache_features",
    "evaluate_univi",
    "format_eval",
    "normalize_answer",
    "question_type",
    "train_univi",
    "univi_loss",
]

TRAIN_EXAMPLE = "vistok univi train --steps 600 --out runs/univi"
CAPTION_PROMPT = "describe:"
FEATURES_FORMAT = 1


# ---------------------------------------------------------------------------------------------------------------------
# Config
# ---------------------------------------------------------------------------------------------------------------------


def parse_reduction(spec: str) -> tuple[str, int | None]:
    """ "merge" / "pool" / "all" / "merge:56" → (reduction, number of tokens or None = the config's stages)."""
    name, _, count = spec.partition(":")
    if name not in REDUCTIONS:
        raise ValueError(f"unknown reduction {spec!r}; expected one of {REDUCTIONS}, optionally ':N' (e.g. merge:56)")
    if count and (not count.isdigit() or int(count) < 1):
        raise ValueError(f"bad token count in reduction {spec!r}; expected a positive integer after ':'")
    if count and name == "all":
        raise ValueError("reduction 'all' takes no token count")
    return name, int(count) if count else None


@dataclass
class UniViTrainConfig:
    """Everything ``vistok univi train`` needs (see ``vistok univi train --help``)."""

    out: str = "runs/univi"
    preset: str = "univi-tiny"
    encoder_path: str | None = None  # a MAGVIT-v2 tokenizer folder/preset (default: the shipped one)
    hf_encoder: str | None = None  # a local HF vision model folder instead of MAGVIT-v2 (its feature dim is used)
    vit_encoder: str | None = None  # a vistok ViT folder (or a `vistok digit fit` run) instead of MAGVIT-v2
    llm: str | None = None  # a local HF LlamaForCausalLM folder as the language model (its tokenizer.json if any)
    image_size: int = 128
    video_size: int = 64
    frames: int = 8
    train_images: int = 1200
    train_videos: int = 400
    eval_images: int = 64
    eval_videos: int = 48
    eval_questions: int = 8  # questions per held-out item (a fixed, seeded subset)
    steps0: int = 300
    steps1: int = 200
    steps2: int = 800
    batch_size: int = 16
    lr: float = 2e-3
    lr1: float = 2e-3
    lr2: float = 1e-3
    warmup: int = 30
    turns: int = 4
    video_fraction: float = 0.35
    # share of stage-0 sequences that are QA text (the rest: captions). QA text there teaches the LM the answers'
    # priors before it sees any image, and the model then learns to ignore the image (was 0.75)
    stage0_qa: float = 0.0
    projector_lr_scale: float = 1.0  # stage 2: the projector's learning rate = this × lr2 (the LM's)
    reductions: tuple[str, ...] = ("merge", "pool", "all", "merge:56", "pool:56")
    eval_reductions: tuple[str, ...] = ("all", "merge", "pool", "merge:56", "pool:56", "merge:14", "pool:14")
    log_every: int = 20
    ckpt_every: int = 200
    seed: int = 0
    resume: bool = True
    progress: bool = True

    def __post_init__(self) -> None:
        for spec in (*self.reductions, *self.eval_reductions):
            parse_reduction(spec)
        for name in ("image_size", "video_size", "train_images", "batch_size", "turns"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("steps0", "steps1", "steps2", "train_videos", "eval_images", "eval_videos"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.projector_lr_scale <= 0:
            raise ValueError(f"projector_lr_scale must be > 0, got {self.projector_lr_scale}")
        if not 0.0 <= self.stage0_qa <= 1.0:
            raise ValueError(f"stage0_qa must be in [0, 1], got {self.stage0_qa}")
        if self.frames < 5:
            raise ValueError(f"frames must be >= 5 (the built-in clips need them), got {self.frames}")
        self.reductions, self.eval_reductions = tuple(self.reductions), tuple(self.eval_reductions)


@dataclass
class UniViTrainResult:
    model_dir: Path
    report: dict[str, Any]
    summary: str


# ---------------------------------------------------------------------------------------------------------------------
# Text helpers
# ---------------------------------------------------------------------------------------------------------------------

_TYPES = (
    (r"^how many", "count"),
    (r"^what colou?r", "colour"),
    (r"^what shape", "shape"),
    (r"^is there", "exists"),
    (r"^where", "where"),
    (r"^what is (left of|right of|above|below)", "relation"),
    (r"^which way", "direction"),
    (r"^what (happened|appeared) (first|last)", "order"),
    (r"^does the .* move", "moves"),
)


def question_type(question: str) -> str:
    """A coarse type of a built-in question ("count", "colour", "where", "relation", "order", ...; else "other")."""
    q = question.strip().lower()
    return next((name for pattern, name in _TYPES if re.search(pattern, q)), "other")


def normalize_answer(text: str) -> str:
    """Lower case, punctuation dropped, whitespace collapsed (the exact-match normalization)."""
    return " ".join(re.sub(r"[^\w\s]", " ", text.lower()).split())


# ---------------------------------------------------------------------------------------------------------------------
# Cached features
# ---------------------------------------------------------------------------------------------------------------------


def _dataset(kind: str, split: str, config: UniViTrainConfig, length: int):
    from vistok.data.scenes import Scenes, SceneVideos

    if kind == "image":
        return Scenes(config.image_size, length, split, seed=config.seed)
    return SceneVideos(config.frames, config.video_size, length, split, seed=config.seed)


def _encoder_key(model: UniVi) -> list[Any]:
    """What identifies the frozen encoder's features: kind, folder and its weight files' sizes and times (a run
    folder reused with another encoder, or an encoder retrained in place, recomputes the cache)."""
    c = model.config
    key: list[Any] = [c.encoder, c.feature_dim]
    if c.encoder_path:
        root = Path(c.encoder_path)
        key.append(str(root.resolve()) if root.exists() else c.encoder_path)
        files = sorted(root.rglob("*.safetensors")) if root.is_dir() else []
        key += [[f.relative_to(root).as_posix(), f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return key


def cache_features(
    model: UniVi, dataset: Any, path: str | os.PathLike, batch_size: int = 32, progress: bool = True
) -> dict[str, Any]:
    """Run the frozen encoder over every item once; ``{"features" (N, [T,] P, C) float16, "grid", "qa", "caption",
    "kind"}`` saved to ``path`` (reused when it exists and matches the dataset)."""
    path = Path(path)
    key = {"format": FEATURES_FORMAT, "kind": dataset.kind, "split": dataset.split, "length": len(dataset)}
    key["size"] = list(dataset.size) + ([dataset.num_frames] if dataset.kind == "video" else [])
    key["encoder"] = _encoder_key(model)
    if path.is_file():
        data = torch.load(path, weights_only=True)
        if data.get("key") == key:
            return data
    from tqdm import tqdm

    feats, grid = [], None
    starts = range(0, len(dataset), batch_size)
    for s in tqdm(starts, desc=f"features {dataset.kind}/{dataset.split}", disable=not progress, unit="batch"):
        px = torch.stack([dataset[i]["pixels"] for i in range(s, min(s + batch_size, len(dataset)))])
        f, grid = model.features(px)
        feats.append(f.half())
    plans = [dataset.plan(i) for i in range(len(dataset))]
    data = {
        "key": key,
        "features": torch.cat(feats) if feats else torch.zeros(0),
        "grid": list(grid or (0, 0)),
        "qa": [[list(p) for p in plan.qa] for plan in plans],
        "caption": [dataset.describe(i)["caption"] for i in range(len(dataset))],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(data, tmp)
    os.replace(tmp, path)
    return data


# ---------------------------------------------------------------------------------------------------------------------
# Batches and loss
# ---------------------------------------------------------------------------------------------------------------------


def univi_loss(model: nn.Module, batch: dict[str, Any]) -> tuple[Tensor, dict[str, Tensor]]:
    """Next-byte cross-entropy on answer/caption bytes + EOS only. ``batch``: {"features" or None, "grid",
    "reduction", "num_tokens", "turns"}."""
    m: UniVi = getattr(model, "module", model)
    feats = batch["features"]
    if feats is None:
        vt = VisualTokens.empty(len(batch["turns"]), m.config.feature_dim)
    else:
        vt = m.visual_tokens(feats.float(), tuple(batch["grid"]), batch["reduction"], batch["num_tokens"])
    b = m.build_batch(vt, batch["turns"])
    logits = model(b)
    loss = F.cross_entropy(logits.float().flatten(0, 1), b.targets.flatten(), ignore_index=IGNORE)
    with torch.no_grad():
        hit = (logits.argmax(-1) == b.targets)[b.targets != IGNORE].float().mean()
    return loss, {"byte_acc": hit, "visual_tokens": vt.counts.float().mean()}


class _Batches:
    """``get_batch(index, rank)`` for one stage: a pure function of (seed, stage, index)."""

    def __init__(self, stage: int, images: dict, videos: dict | None, config: UniViTrainConfig) -> None:
        self.stage, self.images, self.videos, self.config = stage, images, videos, config

    def __call__(self, index: int, rank: int = 0) -> dict[str, Any]:
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, self.stage, index, rank])
        use_video = self.stage != 1 and self.videos is not None and rng.random() < cfg.video_fraction
        data = self.videos if use_video else self.images
        idx = rng.choice(len(data["qa"]), cfg.batch_size, replace=len(data["qa"]) < cfg.batch_size)
        turns = []
        for i in idx:
            if self.stage == 1:
                turns.append([(CAPTION_PROMPT, data["caption"][i])])
                continue
            qa = data["qa"][i]
            pick = rng.choice(len(qa), min(cfg.turns, len(qa)), replace=False)
            t = [tuple(qa[j]) for j in pick]
            if self.stage == 0 and rng.random() >= cfg.stage0_qa:
                t = [(CAPTION_PROMPT, data["caption"][i])]
            turns.append(t)
        if self.stage == 0:
            return {"features": None, "grid": [0, 0], "reduction": "all", "num_tokens": None, "turns": turns}
        spec = cfg.reductions[int(rng.integers(len(cfg.reductions)))] if self.stage == 2 else "merge"
        red, count = parse_reduction(spec)
        feats = data["features"][torch.as_tensor(idx)]
        return {"features": feats, "grid": data["grid"], "reduction": red, "num_tokens": count, "turns": turns}


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------


def _eval_questions(data: dict, per_item: int, seed: int) -> list[tuple[int, str, str]]:
    out = []
    for i, qa in enumerate(data["qa"]):
        rng = np.random.default_rng([seed, 99, i])
        pick = sorted(rng.choice(len(qa), min(per_item, len(qa)), replace=False))
        out += [(i, qa[j][0], qa[j][1]) for j in pick]
    return out


def _score(rows: list[tuple[str, str, str]]) -> dict[str, Any]:
    """rows of (question, predicted, true) → overall and per-type accuracy, and each question's 0/1 in order."""
    correct = [int(normalize_answer(p) == normalize_answer(a)) for _, p, a in rows]
    by = defaultdict(list)
    for (q, _, _), hit in zip(rows, correct):
        by[question_type(q)].append(hit)
    return {
        "accuracy": float(np.mean(correct)) if correct else None,
        "n": len(correct),
        "by_type": {k: {"accuracy": float(np.mean(v)), "n": len(v)} for k, v in sorted(by.items())},
        "correct": correct,
    }


def paired_comparison(a: Sequence[int], b: Sequence[int]) -> dict[str, Any]:
    """Two reductions scored on the *same* questions: accuracy difference a − b, its standard error from the paired
    differences, the discordant counts (right only with a / only with b) and the exact two-sided McNemar p-value
    (binomial test of the discordant pairs) — far more sensitive than comparing two accuracies' own errors."""
    if len(a) != len(b) or not a:
        raise ValueError(f"paired_comparison needs two equally long, non-empty score lists, got {len(a)} and {len(b)}")
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    only_a, only_b = int((d > 0).sum()), int((d < 0).sum())
    n, k = only_a + only_b, min(only_a, only_b)
    p = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2**n) if n else 1.0
    se = float(d.std(ddof=1) / math.sqrt(len(d))) if len(d) > 1 else float("nan")
    return {"diff": float(d.mean()), "se": se, "only_a": only_a, "only_b": only_b, "p_mcnemar": p, "n": len(d)}


def merge_vs_pool(rows: dict[str, Any]) -> dict[str, Any]:
    """For every token budget evaluated both ways ("merge" / "pool", "merge:N" / "pool:N"): the paired comparison of
    merged against pooled tokens on the same questions."""
    out = {}
    for spec, row in rows.items():
        if spec.split(":")[0] != "merge" or "correct" not in row:
            continue
        other = rows.get("pool" + spec[len("merge") :])
        if other is not None and "correct" in other:
            out[spec.replace("merge", "merged vs pooled", 1)] = {
                "tokens": row["tokens"],
                **paired_comparison(row["correct"], other["correct"]),
            }
    return out


@torch.no_grad()
def answer_questions(
    model: UniVi,
    data: dict,
    questions: list[tuple[int, str, str]],
    reduction: str | None,
    num_tokens: int | None = None,
    batch_size: int = 32,
) -> tuple[list[str], float]:
    """Greedy answers to (item, question, answer) rows; ``reduction`` None = no image. Returns (answers, mean
    visual tokens)."""
    answers, counts = [], []
    for s in range(0, len(questions), batch_size):
        chunk = questions[s : s + batch_size]
        if reduction is None:
            vt = VisualTokens.empty(len(chunk), model.config.feature_dim)
        else:
            feats = data["features"][torch.tensor([i for i, _, _ in chunk])].float()
            vt = model.visual_tokens(feats, tuple(data["grid"]), reduction, num_tokens)
        answers += model.answer(vt, [q for _, q, _ in chunk], max_new_tokens=32)
        counts.append(vt.counts.float())
    return answers, float(torch.cat(counts).mean()) if counts else 0.0


def token_counts(model: UniVi, data: dict, reduction: str, num_tokens: int | None, tokens: float) -> dict[str, Any]:
    """What a reduction's token count means for cached ``data``: ``tokens`` (the mean visual tokens per sample the
    model received, over all events), ``events`` per sample (1 for images; None for a video's "all"),
    ``tokens_per_event`` (``tokens`` / ``events``) and ``requested_per_event`` (the ``:N`` count, or the model's
    stage total), so a video's "merge:56" reads as 56 per event × its events, not as 56 tokens."""
    feats = data["features"][:1]
    events = model.num_events(feats, reduction)
    c = model.config
    if reduction == "all":
        requested = int(np.prod(feats.shape[1:-1]))  # every patch (of every frame)
    else:
        requested = num_tokens or sum(c.stages if feats.ndim == 3 else c.video_stages)
    return {
        "events": events,
        "tokens_per_event": tokens / events if events else None,
        "requested_per_event": requested,
    }


def _token_label(row: dict[str, Any]) -> str:
    """ "112" for an image; "112 = 2×56" for a video's events (from :func:`token_counts` fields)."""
    events = row.get("events")
    if events and events > 1:
        return f"{row['tokens']:.0f} = {events}×{row['tokens_per_event']:.0f}"
    return f"{row['tokens']:.0f}"


def majority_answers(train: Sequence[dict]) -> dict[str, str]:
    """The most frequent (normalized) answer of each question type in the training QA."""
    by = defaultdict(Counter)
    for data in train:
        for qa in data["qa"]:
            for q, a in qa:
                by[question_type(q)][normalize_answer(a)] += 1
    return {k: c.most_common(1)[0][0] for k, c in by.items()}


def evaluate_univi(
    model: UniVi,
    held: dict[str, dict],
    train: dict[str, dict],
    reductions: Sequence[str],
    text_only: UniVi | None = None,
    questions_per_item: int = 8,
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Accuracy per held-out kind ("image", "video") and reduction, plus the baselines: the majority answer per
    question type; the same model with *another* held-out item's visual tokens ("shuffled image": merged, or the
    first reduction when "merge" is not evaluated) — the control for whether the answers use the image, since a
    model trained always with images meets the no-image input out of distribution; the same model with no visual
    tokens; and the text-only LM."""
    model.eval()
    majority = majority_answers(list(train.values()))
    report: dict[str, Any] = {"majority_answers": majority, "kinds": {}}
    for kind, data in held.items():
        if not data["qa"]:
            continue
        qs = _eval_questions(data, questions_per_item, seed)
        rows: dict[str, Any] = {}
        for spec in reductions:
            red, count = parse_reduction(spec)
            t0 = time.perf_counter()
            preds, tokens = answer_questions(model, data, qs, red, count)
            rows[spec] = {"tokens": tokens, **token_counts(model, data, red, count, tokens)}
            rows[spec] |= _score([(q, p, a) for (_, q, a), p in zip(qs, preds)])
            rows[spec]["seconds"] = time.perf_counter() - t0
            if progress:
                acc = rows[spec]["accuracy"]
                print(f"  eval {kind} {spec}: {_token_label(rows[spec])} tokens, accuracy {acc:.3f}", flush=True)
        rows["majority"] = {"tokens": 0, **_score([(q, majority.get(question_type(q), ""), a) for _, q, a in qs])}
        if len(data["qa"]) > 1:  # the control for "uses the image": the same model, another item's visual tokens
            shift = max(1, len(data["qa"]) // 2)
            other = [((i + shift) % len(data["qa"]), q, a) for i, q, a in qs]
            spec = "merge" if "merge" in reductions or not reductions else reductions[0]
            red, count = parse_reduction(spec)
            preds, tokens = answer_questions(model, data, other, red, count)
            name = f"shuffled image ({spec})"
            rows[name] = {"tokens": tokens, **token_counts(model, data, red, count, tokens)}
            rows[name] |= _score([(q, p, a) for (_, q, a), p in zip(qs, preds)])
        preds, _ = answer_questions(model, data, qs, None)
        rows["no-image (final model)"] = {"tokens": 0, **_score([(q, p, a) for (_, q, a), p in zip(qs, preds)])}
        if text_only is not None:
            preds, _ = answer_questions(text_only.eval(), data, qs, None)
            rows["text-only LM (stage 0)"] = {"tokens": 0, **_score([(q, p, a) for (_, q, a), p in zip(qs, preds)])}
        report["kinds"][kind] = rows
        report.setdefault("merged_vs_pooled", {})[kind] = merge_vs_pool(rows)
    return report


def format_eval(report: dict[str, Any]) -> str:
    """A plain-text table: one line per reduction / baseline, columns overall and per question type."""
    lines = []
    for kind, rows in report["kinds"].items():
        types = sorted({t for r in rows.values() for t in r["by_type"]})
        head = f"{kind + ' (held out)':<26}{'tokens':>11}{'acc':>7}" + "".join(f"{t[:8]:>9}" for t in types)
        lines += [head, "-" * len(head)]
        for name, r in rows.items():
            cells = "".join(f"{r['by_type'][t]['accuracy']:>9.3f}" if t in r["by_type"] else f"{'-':>9}" for t in types)
            lines.append(f"{name:<26}{_token_label(r):>11}{r['accuracy']:>7.3f}{cells}")
        n = next(iter(rows.values()))["n"]
        note = "; tokens = events × tokens per event, ':N' = N per event" if kind == "video" else ""
        lines.append(f"({n} questions; exact match of the normalized greedy answer{note})")
        for name, c in report.get("merged_vs_pooled", {}).get(kind, {}).items():
            lines.append(
                f"{name:<26} {c['diff']:+.3f} ± {c['se']:.3f} (paired SE); right only merged {c['only_a']}, "
                f"only pooled {c['only_b']}; McNemar p = {c['p_mcnemar']:.3g}"
            )
        lines.append("")
    return "\n".join(lines).rstrip()


# ---------------------------------------------------------------------------------------------------------------------
# Pictures
# ---------------------------------------------------------------------------------------------------------------------


def _cluster_map(model: UniVi, feats: Tensor, grid: tuple[int, int], image: np.ndarray) -> np.ndarray:
    """The first merge stage's clusters of one image: every patch painted in a random colour per cluster, blended
    half and half with the image (so shapes stay visible)."""
    from vistok.tokenizers.merge import multiscale_merge

    h, w = grid
    ms = multiscale_merge(feats[None].float(), (h, w), model.config.stages, model.config.ks)
    a = ms.assignments[0, 0].reshape(h, w).numpy()
    ph, pw = image.shape[0] // h, image.shape[1] // w
    colours = np.random.default_rng(0).integers(40, 256, (int(a.max()) + 1, 3))
    paint = np.repeat(np.repeat(colours[a], ph, 0), pw, 1)
    return (0.55 * paint + 0.45 * image[: h * ph, : w * pw]).clip(0, 255).astype(np.uint8)


def write_accuracy_png(report: dict[str, Any], path: Path) -> Path | None:
    """Accuracy vs the visual tokens each sample gave the model (a video's: events × tokens per event), one line per
    kind and reduction family, with the shuffled-image, no-image and majority baselines dashed (None without
    matplotlib)."""
    from vistok.eval.pictures import try_line_plot

    series, hlines = {}, {}
    for kind, rows in report["kinds"].items():
        for family in REDUCTIONS:
            pts = sorted(
                (r["tokens"], r["accuracy"])
                for spec, r in rows.items()
                if spec.partition(":")[0] == family and r.get("accuracy") is not None
            )
            if pts:
                series[f"{kind} {family}"] = ([x for x, _ in pts], [y for _, y in pts])
        for base, r in rows.items():
            if base.split(" (")[0] in ("no-image", "majority", "shuffled image") and r["accuracy"] is not None:
                hlines[f"{kind} {base.split(' (')[0]}"] = r["accuracy"]
    if not series:
        return None
    return try_line_plot(
        series,
        path,
        title="answer accuracy vs visual tokens",
        xlabel="visual tokens per sample (video: events × tokens per event)",
        ylabel="exact-match accuracy",
        hlines=hlines,
    )


def write_answers_png(
    model: UniVi, held: dict, config: UniViTrainConfig, path: Path, items: int = 4, questions: int = 4
) -> Path:
    """Held-out scenes with (question, predicted with merged tokens, true), and the cluster map of the first."""
    data = held["image"]
    ds = _dataset("image", "heldout", config, len(data["qa"]))
    scale = 2
    side = config.image_size * scale
    line_h, pad = 14, 6
    n = min(items, len(data["qa"]))
    text_h = line_h * (questions * 2 + 1) + pad
    canvas = Image.new("RGB", ((n + 1) * (side + pad) + pad, side + text_h + 2 * pad), "white")
    draw = ImageDraw.Draw(canvas)
    for k in range(n):
        img = ds.render(k)
        x0 = pad + k * (side + pad)
        canvas.paste(Image.fromarray(img).resize((side, side), Image.NEAREST), (x0, pad))
        qs = [(k, q, a) for q, a in data["qa"][k][:: max(1, len(data["qa"][k]) // questions)][:questions]]
        preds, ntok = answer_questions(model, data, qs, "merge")
        y = side + 2 * pad
        draw.text((x0, y), f"held-out scene {k} ({ntok:.0f} merged tokens)", fill="black")
        for (_, q, a), p in zip(qs, preds):
            ok = normalize_answer(p) == normalize_answer(a)
            y += line_h
            draw.text((x0, y), f"Q: {q}"[:44], fill="black")
            y += line_h
            draw.text((x0, y), f"pred: {p[:18]} | true: {a}"[:44], fill=(0, 120, 0) if ok else (190, 0, 0))
    img = ds.render(0)
    cmap = _cluster_map(model, data["features"][0], tuple(data["grid"]), img)
    x0 = pad + n * (side + pad)
    canvas.paste(Image.fromarray(cmap).resize((side, side), Image.NEAREST), (x0, pad))
    draw.text((x0, side + 2 * pad), f"scene 0: {model.config.stages[0]} stage-1 clusters", fill="black")
    draw.text((x0, side + 2 * pad + line_h), "(one random colour per cluster)", fill="black")
    from vistok.eval.pictures import save_png

    return save_png(canvas, path)


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def _build_model(config: UniViTrainConfig) -> UniVi:
    """The preset's UniVi with the encoder and language model the config names (``llm``: a local HF LLaMA)."""
    from vistok.registry import create_model

    overrides: dict[str, Any] = {}
    enc = None
    if config.encoder_path:
        overrides["encoder_path"] = config.encoder_path
    if config.hf_encoder and config.vit_encoder:
        raise ValueError("give one feature encoder: hf_encoder or vit_encoder, not both")
    if config.hf_encoder:
        from vistok.tokenizers.merge import HFPatchEncoder

        enc = HFPatchEncoder(config.hf_encoder)
        dim = int(enc(torch.zeros(1, 3, 32, 32)).tokens.shape[-1])
        overrides |= {"encoder": "hf", "encoder_path": str(Path(config.hf_encoder).resolve()), "feature_dim": dim}
    if config.vit_encoder:
        from vistok.tokenizers.merge import ViTPatchEncoder

        enc = ViTPatchEncoder(config.vit_encoder)
        overrides |= {"encoder": "vit", "encoder_path": str(Path(config.vit_encoder).resolve()), "feature_dim": enc.dim}
    model = create_model(config.preset, **overrides)
    if not isinstance(model, UniVi):
        raise ValueError(f"preset {config.preset!r} is not a UniVi model (try univi-tiny)")
    if config.llm:
        model = UniVi.from_llm(config.llm, model.config)
    if enc is not None:
        model.set_encoder(enc)
    return model


def fit_stages(model: UniVi, image_grid: Sequence[int], video_grid: Sequence[int]) -> None:
    """Scale the merge stages down to the patch count when there are few patches: at most 7/16 of an image's
    patches (112 of 256) and 7/8 of a frame's patches per event (pooling needs a cell per token)."""
    c = model.config
    n = int(image_grid[0]) * int(image_grid[1])
    if n and sum(c.stages) > n * 7 // 16:
        c.stages = scaled_stages(c.stages, max(len(c.stages), n * 7 // 16))
    n = int(video_grid[0]) * int(video_grid[1])
    if n and sum(c.video_stages) > n * 7 // 8:
        c.video_stages = scaled_stages(c.video_stages, max(len(c.video_stages), n * 7 // 8))


def set_feature_stats(model: UniVi, data: Sequence[dict]) -> None:
    """Give the projector's feature standardizer the per-channel statistics of every cached training patch."""
    from vistok.models.univi import FeatureStandardizer

    norm = model.projector.norm
    feats = [d["features"].reshape(-1, d["features"].shape[-1]) for d in data if d["features"].numel()]
    if isinstance(norm, FeatureStandardizer) and feats:
        norm.set_stats(torch.cat(feats).float())


def stage_optimizer(
    model: UniVi, lr: float, projector_lr_scale: float = 1.0, betas=(0.9, 0.95), weight_decay: float = 0.0
) -> torch.optim.Optimizer:
    """AdamW over the trainable parameters: the LM's at ``lr``, the projector's at ``projector_lr_scale`` × ``lr``."""
    lm = [p for p in model.lm.parameters() if p.requires_grad]
    proj = [p for p in model.projector.parameters() if p.requires_grad]
    groups = [{"params": g, "lr": lr * k} for g, k in ((lm, 1.0), (proj, projector_lr_scale)) if g]
    return torch.optim.AdamW(groups, lr=lr, betas=betas, weight_decay=weight_decay)


def _run_stage(model: UniVi, stage: int, steps: int, lr: float, data: _Batches, config: UniViTrainConfig) -> str:
    from vistok.train.loop import TrainConfig, Trainer

    if steps == 0:
        return f"stage {stage}: skipped (0 steps)"
    model.lm.requires_grad_(stage != 1)
    model.projector.requires_grad_(stage != 0)
    tc = TrainConfig(
        steps=steps,
        batch_size=config.batch_size,
        lr=lr,
        warmup=min(config.warmup, steps // 4),
        log_every=config.log_every,
        ckpt_every=config.ckpt_every,
        out_dir=str(Path(config.out) / f"stage{stage}"),
        resume=config.resume,
        seed=config.seed + stage,
        progress=config.progress,
        clip_grad=1.0,
    )
    run = {"stage": stage, "model": asdict(model.config)}
    scale = config.projector_lr_scale if stage == 2 else 1.0
    optimizer = stage_optimizer(model, lr, scale, tc.betas, tc.weight_decay)
    result = Trainer(model, optimizer, univi_loss, data, tc, run_config=run).fit()
    model.requires_grad_(True)
    return f"stage {stage}: {result.summary}"


def train_univi(config: UniViTrainConfig) -> UniViTrainResult:
    """Cache features, run stages 0–2, save the model, evaluate; see the module docstring."""
    t0 = time.perf_counter()
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(config.seed)
    model = _build_model(config)
    fdir = out / "features"
    cache = {}
    for kind, split, n in (
        ("image", "train", config.train_images),
        ("video", "train", config.train_videos),
        ("image", "heldout", config.eval_images),
        ("video", "heldout", config.eval_videos),
    ):
        ds = _dataset(kind, split, config, n)
        cache[kind, split] = cache_features(model, ds, fdir / f"{kind}-{split}.pt", progress=config.progress)
    train = {k: cache[k, "train"] for k in ("image", "video") if cache[k, "train"]["qa"]}
    held = {k: cache[k, "heldout"] for k in ("image", "video") if cache[k, "heldout"]["qa"]}
    fit_stages(model, cache["image", "train"]["grid"], cache["video", "train"]["grid"])
    set_feature_stats(model, list(train.values()))
    lines = []
    lines.append(
        _run_stage(model, 0, config.steps0, config.lr, _Batches(0, train["image"], train.get("video"), config), config)
    )
    text_only = copy.deepcopy(model).eval()
    lines.append(_run_stage(model, 1, config.steps1, config.lr1, _Batches(1, train["image"], None, config), config))
    lines.append(
        _run_stage(model, 2, config.steps2, config.lr2, _Batches(2, train["image"], train.get("video"), config), config)
    )
    model.eval()
    model_dir = model.save_pretrained(out / "model")
    report = evaluate_univi(
        model, held, train, config.eval_reductions, text_only, config.eval_questions, config.seed, config.progress
    )
    report["train_config"] = asdict(config)
    report["model_config"] = asdict(model.config)
    report["protocol"] = (
        "one model trained with a reduction drawn per stage-2 batch from "
        f"{list(config.reductions)}, evaluated with each reduction (same model, same training budget)"
    )
    report["stages"] = lines
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    png = write_answers_png(model, held, config, out / "answers.png") if "image" in held else None
    plot = write_accuracy_png(report, out / "accuracy.png")
    table = format_eval(report)
    elapsed = time.perf_counter() - t0
    summary = (
        "\n".join(lines)
        + "\n\n"
        + table
        + f"\n\nWrote the model to {model_dir}, eval.json"
        + (f", {png.name}" if png else "")
        + (f", {plot.name}" if plot else "")
        + f" and summary.txt to {out}; cached features in {fdir}. Total {elapsed / 60:.1f} min."
    )
    (out / "summary.txt").write_text(summary + "\n")
    return UniViTrainResult(model_dir, report, summary)


# ---------------------------------------------------------------------------------------------------------------------
# Asking
# ---------------------------------------------------------------------------------------------------------------------


def load_univi(path: str | os.PathLike) -> UniVi:
    """A model saved by ``vistok univi train`` (``out/model``), with a clear error for a missing folder."""
    p = Path(path)
    if not p.is_dir() or not (p / "config.json").is_file():
        raise FileNotFoundError(f"no UniVi model at {p} (expected a folder with config.json + model.safetensors)")
    return UniVi.from_pretrained(p).eval()


def ask_file(
    model_dir: str | os.PathLike,
    path: str | os.PathLike,
    question: str,
    reduction: str = "merge",
    size: int | None = None,
    frames: int = 8,
) -> tuple[str, int]:
    """Answer a question about an image or video file: (answer, visual tokens used)."""
    from vistok.tokenizers.api import read_pixels

    red, count = parse_reduction(reduction)
    model = load_univi(model_dir)
    px = read_pixels(path, size=size, frames=frames)
    return model.ask(px.pixels, question, red, count)


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _cmd_train(args: argparse.Namespace) -> int:
    steps = args.steps
    cfg = UniViTrainConfig(
        out=args.out,
        preset=args.preset,
        encoder_path=args.tokenizer,
        hf_encoder=args.hf_encoder,
        vit_encoder=args.vit_encoder,
        llm=args.llm,
        image_size=args.image_size,
        video_size=args.video_size,
        frames=args.frames,
        train_images=args.train_images,
        train_videos=args.train_videos,
        eval_images=args.eval_images,
        eval_videos=args.eval_videos,
        eval_questions=args.eval_questions,
        steps0=args.steps0 if args.steps0 is not None else (0 if args.llm else max(1, steps // 4)),
        steps1=args.steps1 if args.steps1 is not None else max(1, steps // 5),
        steps2=steps,
        batch_size=args.batch_size,
        lr=args.lr,
        lr2=args.lr / 2,
        lr1=args.lr,
        turns=args.turns,
        stage0_qa=args.stage0_qa,
        projector_lr_scale=args.projector_lr_scale,
        reductions=_csv(args.reductions),
        eval_reductions=_csv(args.eval_reductions),
        log_every=args.log_every,
        ckpt_every=args.ckpt_every,
        seed=args.seed,
        resume=not args.no_resume,
        progress=not args.quiet,
    )
    print(train_univi(cfg).summary)
    return 0


def _cmd_ask(args: argparse.Namespace) -> int:
    answer, n = ask_file(args.model, args.file, args.question, args.reduction, args.size, args.frames)
    print(answer)
    print(f"({n} visual tokens, reduction {args.reduction})")
    return 0


def add_univi_parser(subparsers: Any) -> None:
    """The ``vistok univi {train,ask}`` commands."""
    fmt = argparse.RawDescriptionHelpFormatter
    g = subparsers.add_parser(
        "univi",
        help="Chat-UniVi: image/video question answering with merged visual tokens",
        description="Train Chat-UniVi understanding models and ask them questions about images and videos.",
    )
    gs = g.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = gs.add_parser(
        "train",
        help="cache frozen features, train stages 0-2, evaluate all vs merged vs pooled tokens",
        description=__doc__,
        epilog=f"example:\n  {TRAIN_EXAMPLE}",
        formatter_class=fmt,
    )
    p.add_argument("--out", default="runs/univi", help="run folder (default runs/univi)")
    p.add_argument("--preset", default="univi-tiny", help="model preset (univi-tiny, univi-small)")
    p.add_argument("--tokenizer", default=None, help="MAGVIT-v2 tokenizer folder/preset (default: the shipped one)")
    p.add_argument("--hf-encoder", default=None, help="a local HF CLIP/SigLIP/DINOv2 folder instead of MAGVIT-v2")
    p.add_argument(
        "--vit-encoder",
        default=None,
        metavar="DIR",
        help="a vistok ViT folder, or a `vistok digit fit` run (its DINO-trained ViT), instead of MAGVIT-v2",
    )
    p.add_argument(
        "--llm",
        default=None,
        metavar="DIR",
        help="a local Hugging Face LlamaForCausalLM folder as the language model (frozen in stage 1, trained in "
        "stage 2; its tokenizer.json is used when present, else bytes); stage 0 is skipped unless --steps0 is given",
    )
    p.add_argument("--steps", type=int, default=600, help="stage-2 steps (default 600)")
    p.add_argument("--steps0", type=int, default=None, help="stage-0 LM steps (default steps/4; 0 with --llm)")
    p.add_argument("--steps1", type=int, default=None, help="stage-1 projector steps (default steps/5)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=2e-3, help="stage 0/1 learning rate; stage 2 uses half")
    p.add_argument("--turns", type=int, default=4, help="QA turns per training sequence (default 4)")
    p.add_argument(
        "--stage0-qa",
        type=float,
        default=0.0,
        help="share of stage-0 (text-only LM) sequences that are QA rather than captions (default 0: captions only)",
    )
    p.add_argument(
        "--projector-lr-scale",
        type=float,
        default=1.0,
        help="stage-2 projector learning rate as a multiple of the LM's (default 1)",
    )
    p.add_argument("--image-size", type=int, default=128)
    p.add_argument("--video-size", type=int, default=64)
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--train-images", type=int, default=1200)
    p.add_argument("--train-videos", type=int, default=400)
    p.add_argument("--eval-images", type=int, default=64)
    p.add_argument("--eval-videos", type=int, default=48)
    p.add_argument("--eval-questions", type=int, default=8, help="questions per held-out item (default 8)")
    p.add_argument("--reductions", default="merge,pool,all,merge:56,pool:56", help="stage-2 reductions (mixed)")
    p.add_argument("--eval-reductions", default="all,merge,pool,merge:56,pool:56,merge:14,pool:14")
    p.add_argument("--log-every", type=int, default=20)
    p.add_argument("--ckpt-every", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out has checkpoints")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = gs.add_parser(
        "ask",
        help="answer a question about an image or a video",
        epilog='example:\n  vistok univi ask --model runs/univi/model scene.png "how many shapes are there?"',
        formatter_class=fmt,
    )
    p.add_argument("--model", required=True, help="a model folder written by 'vistok univi train' (runs/univi/model)")
    p.add_argument("file", help="an image or video file")
    p.add_argument("question")
    p.add_argument("--reduction", default="merge", help="merge, pool, all, or merge:N / pool:N (default merge)")
    p.add_argument("--size", type=int, default=None, help="resize + centre-crop to S×S first (default: as is)")
    p.add_argument("--frames", type=int, default=8, help="frames of a video to read (default 8)")
    p.set_defaults(func=_cmd_ask)
