"""The demo's stages: one function per system, each returning a :class:`~vistok.demo.report.StageResult`.

Every stage runs vistok's own public training / evaluation functions (the same ones the ``vistok`` commands call) on
the built-in data, with the sizes of the chosen profile (:data:`PROFILES`), writes its files into its own folder and
reports held-out metrics next to trivial baselines. Nothing here has its own model code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vistok.demo.report import Metric, Picture, StageResult

__all__ = ["PROFILES", "STAGES", "Stage", "StageContext"]


@dataclass
class StageContext:
    """What a stage gets: its folder, the demo's root folder, its profile's sizes, the seed, the device."""

    name: str
    out: Path
    root: Path
    params: dict[str, Any]
    profile: str
    seed: int = 0
    device: str = "cpu"
    progress: bool = True
    tokenizer_path: str | None = None
    cache: dict[str, Any] = field(default_factory=dict)

    def rel(self, path: str | Path) -> str:
        return str(Path(path).resolve().relative_to(self.root.resolve()))

    def tokenizer(self) -> Any:
        if "tokenizer" not in self.cache:
            from vistok.tokenizers.api import load_tokenizer

            self.cache["tokenizer"] = load_tokenizer(self.tokenizer_path, device=self.device)
        return self.cache["tokenizer"]

    def tokenizer_arg(self) -> str:
        return f" --tokenizer {self.tokenizer_path}" if self.tokenizer_path else ""


# Sizes per profile. "smoke" is for the test suite (seconds), "default" for `vistok demo` (≤ 5 min on 2 cores in
# all), "full" trains longer for better results.
PROFILES: dict[str, dict[str, dict[str, Any]]] = {
    "smoke": {
        "tokenizer": {"items": 2, "show": 2},
        "lvm": {
            "val": 4,
            "unigram": 8,
            "eval": 1,
            "sentences": 12,
            "frames": 3,
            "pairs": 1,
            "steps": 2,
            "batch": 2,
            "seq_len": 256,
        },
        "maskgit": {"train": 32, "heldout": 8, "steps": 2, "batch": 4, "n": 1, "decode_steps": 4},
        "transfusion": {"scenes": 16, "val": 4, "vae_steps": 2, "steps": 2, "batch": 4, "eval": 2, "eval_steps": 2},
        "univi": {
            "images": 24,
            "videos": 8,
            "eval_images": 4,
            "eval_videos": 2,
            "steps": (1, 1, 2),
            "questions": 2,
            "majority_images": 16,
            "majority_videos": 8,
            "shipped_eval_images": 4,
            "shipped_eval_videos": 2,
        },
        "digit": {
            "ssl_steps": 1,
            "k": 8,
            "fit": 32,
            "probe": 16,
            "train": 32,
            "val": 8,
            "gpt_steps": 2,
            "decoder_steps": 2,
            "n": 2,
            "fd": 4,
        },
    },
    "default": {
        "tokenizer": {"items": 16, "show": 6},
        "lvm": {"val": 32, "unigram": 64, "eval": 32, "steps": 0},
        "maskgit": {"train": 2048, "heldout": 128, "steps": 350, "batch": 32, "n": 4, "decode_steps": 12},
        "transfusion": {
            "scenes": 800,
            "val": 64,
            "vae_steps": 250,
            "steps": 500,
            "batch": 16,
            "eval": 24,
            "eval_steps": 20,
        },
        "univi": {
            "images": 200,
            "videos": 48,
            "eval_images": 16,
            "eval_videos": 8,
            "steps": (30, 30, 120),
            "questions": 4,
            "majority_images": 200,
            "majority_videos": 60,
            "shipped_eval_images": 48,
            "shipped_eval_videos": 24,
        },
        "digit": {
            "ssl_steps": 40,
            "k": 1024,
            "fit": 320,
            "probe": 160,
            "train": 320,
            "val": 48,
            "gpt_steps": 100,
            "decoder_steps": 80,
            "n": 8,
            "fd": 48,
        },
    },
    "full": {
        "tokenizer": {"items": 64, "show": 8},
        "lvm": {
            "val": 48,
            "unigram": 400,
            "eval": 48,
            "sentences": 1500,
            "frames": 8,
            "pairs": 3,
            "steps": 1500,
            "batch": 8,
            "seq_len": 1024,
        },
        "maskgit": {"train": 4096, "heldout": 256, "steps": 2000, "batch": 32, "n": 8, "decode_steps": 12},
        "transfusion": {
            "scenes": 1500,
            "val": 128,
            "vae_steps": 1200,
            "steps": 6000,
            "batch": 16,
            "eval": 48,
            "eval_steps": 25,
        },
        "univi": {
            "images": 1200,
            "videos": 400,
            "eval_images": 64,
            "eval_videos": 48,
            "steps": (300, 200, 800),
            "questions": 8,
            "majority_images": 1000,
            "majority_videos": 300,
            "shipped_eval_images": 64,
            "shipped_eval_videos": 48,
        },
        "digit": {
            "ssl_steps": 300,
            "k": 256,
            "fit": 1000,
            "probe": 700,
            "train": 2000,
            "val": 256,
            "gpt_steps": 600,
            "decoder_steps": 1500,
            "n": 8,
            "fd": 256,
        },
    },
}


# ---------------------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------------------


def _loss_curve(metrics_file: Path, key: str = "loss") -> dict[str, list[float]] | None:
    """``{"x": steps, "y": values}`` of ``key`` from a trainer's ``metrics.jsonl`` (None when there is none)."""
    if not metrics_file.is_file():
        return None
    xs, ys = [], []
    for line in metrics_file.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if key in row and "step" in row and isinstance(row[key], int | float) and math.isfinite(row[key]):
            xs.append(float(row["step"]))
            ys.append(float(row[key]))
    return {"x": xs, "y": ys} if xs else None


def _picture(ctx: StageContext, path: str | Path | None, caption: str, result: StageResult) -> None:
    if path is not None and Path(path).is_file():
        result.pictures.append(Picture(ctx.rel(path), caption))


def _psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two pictures in [−1, 1] (mean over a video's frames)."""
    from vistok.eval.metrics import psnr

    a, b = a.float().clamp(-1, 1), b.float().clamp(-1, 1)
    return float(psnr(a[None], b[None], data_range=2.0)[0])


def _thumbnail(x: torch.Tensor, bits: float) -> torch.Tensor:
    """The equal-bit-budget baseline of a tokenizer: each frame shrunk to the largest n×n RGB thumbnail (8 bits per
    channel) that fits ``bits`` per frame, then resized back bilinearly."""
    import torch.nn.functional as F

    frames = x if x.ndim == 4 else x[None]  # (T, 3, H, W)
    n = max(1, math.floor(math.sqrt(bits / frames.shape[0] / 24)))
    small = F.interpolate(frames.float(), size=(n, n), mode="area")
    small = torch.round((small.clamp(-1, 1) + 1) * 127.5) / 127.5 - 1  # 8-bit
    back = F.interpolate(small, size=frames.shape[-2:], mode="bilinear", align_corners=False)
    return back if x.ndim == 4 else back[0]


# ---------------------------------------------------------------------------------------------------------------------
# MAGVIT-v2 tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def stage_tokenizer(ctx: StageContext) -> StageResult:
    from vistok.data.samples import SamplePhotos, SyntheticVideos
    from vistok.eval.pictures import image_grid
    from vistok.tokenizers.api import decode_ids, encode_pixels, evaluate_tokenizer, tokenizer_info

    p = ctx.params
    tok = ctx.tokenizer()
    info = tokenizer_info(tok)
    bits_per_id = math.log2(info["codebook_size"])
    res = StageResult(
        "tokenizer",
        "MAGVIT-v2 tokenizer: images and video to tokens and back",
        what=(
            f"The {'shipped default' if ctx.tokenizer_path is None else 'given'} tokenizer ({info.get('model_type')}, "
            f"{info['codebook_size']:,} codes) encodes held-out photos and synthetic clips into token grids and "
            "decodes them back. Baseline: a thumbnail that uses the same number of bits as the tokens "
            "(n×n RGB, 8 bits per channel), resized back."
        ),
        config={"tokenizer": ctx.tokenizer_path or "shipped default", **info, **p},
    )
    report = evaluate_tokenizer(tok, "samples", size=64, frames=9, max_items=p["items"], progress=ctx.progress)
    (ctx.out / "eval.json").write_text(json.dumps(report, indent=2, default=str))
    # pictures and the equal-bits baseline, computed on the same held-out items
    photos = SamplePhotos(64, "heldout", length=p["items"], seed=ctx.seed + 1)
    rows, ours, base = [], [], []
    for i in range(len(photos)):
        x = photos[i]["pixels"]
        ids = encode_pixels(tok, x)
        y = decode_ids(tok, ids, size=x.shape[-2:])
        t = _thumbnail(x, ids.numel() * bits_per_id)
        ours.append(_psnr(y, x))
        base.append(_psnr(t, x))
        if i < p["show"]:
            rows.append([x, y, t])
    grid = image_grid(rows, col_labels=["held-out", "reconstruction", "same-bits thumbnail"], scale=2)
    _picture(
        ctx,
        _save(grid, ctx.out / "reconstructions.png"),
        "held-out photo crops, their reconstructions and the equal-bits thumbnail baseline",
        res,
    )
    clip = SyntheticVideos(9, 64, length=1, split="heldout", seed=ctx.seed)[0]["pixels"]  # (3, T, H, W)
    vid_ids = encode_pixels(tok, clip)
    vid = decode_ids(tok, vid_ids, size=clip.shape[-3:])
    frames = clip.permute(1, 0, 2, 3)
    thumbs = _thumbnail(frames, vid_ids.numel() * bits_per_id)
    recon = vid.permute(1, 0, 2, 3)
    strip = image_grid(
        [list(frames), list(recon), list(thumbs)],
        row_labels=["clip", "recon", "thumbnail"],
        scale=2,
    )
    _picture(
        ctx,
        _save(strip, ctx.out / "video.png"),
        f"a held-out 9-frame clip ({tuple(vid_ids.shape)} tokens) and its reconstruction",
        res,
    )
    v_psnr, v_base = _psnr(recon, frames), _psnr(thumbs, frames)
    sections = report["sections"]
    img = next((s for k, s in sections.items() if "image" in k or "photo" in k), None)
    res.metrics += [
        Metric(
            "image PSNR (held-out photo crops)",
            float(np.mean(ours)),
            {"same-bits thumbnail": float(np.mean(base))},
            unit=" dB",
        ),
        Metric("video PSNR (held-out clip)", v_psnr, {"same-bits thumbnail": v_base}, unit=" dB"),
    ]
    if img is not None:
        book = img["codebook"]
        usage = book.get("usage") or book.get("used_fraction")
        if usage is not None:
            res.metrics.append(
                Metric(
                    "codebook usage on held-out images", float(usage), unit="", note="fraction of the codes that appear"
                )
            )
        res.notes.append(
            "evaluate_tokenizer on the held-out sections: "
            + "; ".join(
                f"{k}: PSNR {s['psnr']:.2f} dB, SSIM {s['ssim']:.3f}, {s['bpp_raw']:.3f} bits/pixel"
                for k, s in sections.items()
                if s.get("psnr") is not None
            )
        )
    if ctx.tokenizer_path is None:
        res.notes.append(
            "The shipped tokenizer is a small placeholder trained for 10 minutes on a 2-core CPU (its MODEL_CARD.md); "
            "PSNR rewards blur, so a same-bits thumbnail can beat it on smooth photo crops. Train your own with the "
            "command below (longer, larger, on your data, on a GPU)."
        )
    res.headline = (
        f"reconstruction {np.mean(ours):.1f} dB vs {np.mean(base):.1f} dB for a thumbnail of the same "
        f"bits; {64 // 8}×{64 // 8} tokens per 64² image"
    )
    res.commands = [
        "vistok reconstruct photo.png --out recon.png",
        "vistok tokenizer eval --data samples --size 64 --frames 9",
        "vistok tokenizer train --preset magvit2-tiny --data samples --image-size 64 --frames 9 --steps 20000 "
        "--out runs/tokenizer   # on a GPU: larger presets, --image-size 128",
    ]
    return res


# ---------------------------------------------------------------------------------------------------------------------
# LVM
# ---------------------------------------------------------------------------------------------------------------------


def _lvm_metrics(ev: Mapping[str, Any], prefix: str, res: StageResult) -> None:
    """The held-out numbers of an ``evaluate_lvm``-shaped report, each next to its trivial baseline."""
    nid = ev.get("next_id") or {}
    if nid:
        res.metrics.append(
            Metric(f"{prefix}next visual id perplexity", nid["perplexity"], {"unigram": nid["unigram_perplexity"]},
                   higher_is_better=False)
        )  # fmt: skip
        res.metrics.append(
            Metric(f"{prefix}next visual id accuracy", nid["accuracy"], {"unigram": nid["unigram_accuracy"]})
        )
    for key, what, copy in (("next_frame", "next frame", "copy last frame"), ("analogy", "analogy B₃", "copy A₃")):
        if key in ev:
            m = ev[key]
            res.metrics.append(
                Metric(f"{prefix}{what}: token accuracy (greedy)", m["token_accuracy"],
                       {copy: m["copy_last_token_accuracy"]}, note=f"{m['items']} held-out items")
            )  # fmt: skip
            res.metrics.append(
                Metric(
                    f"{prefix}{what}: PSNR of the decoded prediction", m["psnr"],
                    {copy: m["copy_last_psnr"], f"{copy} through the tokenizer": m["copy_last_tokens_psnr"]},
                    unit=" dB", note=f"{m['items']} held-out items; tokenizer ceiling {m['tokenizer_psnr']:.2f} dB",
                )
            )  # fmt: skip
    curve = ev.get("perplexity_vs_context")
    if curve and len(curve["perplexity"]) > 1:
        res.curves.setdefault("perplexity of a clip's last frame vs context frames", {})[
            prefix.strip(": ") or "LVM"
        ] = {
            "x": [float(v) for v in curve["context_frames"]],
            "y": curve["perplexity"],
        }
        res.metrics.append(
            Metric(f"{prefix}perplexity of the last frame given all context frames", curve["perplexity"][-1],
                   {"no context frame": curve["perplexity"][0]}, higher_is_better=False)
        )  # fmt: skip


def _shipped_lvm(ctx: StageContext, res: StageResult) -> dict[str, Any]:
    """Evaluate the LVM shipped with vistok on new clips (and analogy prompts) of the training photos."""
    from vistok.data.sentences import builtin_sentences, tokenize_sentences
    from vistok.eval.pictures import image_grid
    from vistok.hub import from_pretrained
    from vistok.models.lvm import shipped_lvm_dir
    from vistok.train.lvm import evaluate_lvm, prediction_metrics

    p = ctx.params
    tok = ctx.tokenizer()
    model = from_pretrained(shipped_lvm_dir(), map_location=ctx.device).eval()
    out = ctx.out / "shipped"
    dirs = {split: out / "tokens" / split for split in ("train", "val")}
    # new clips of the training photos (another seed than the model's training clips); training-distribution clips
    # only to estimate the unigram baseline
    val = builtin_sentences("train", 64, ["video"], p["val"], frames=8, seed=ctx.seed + 100_003)
    uni = builtin_sentences("train", 64, ["video"], p["unigram"], frames=8, seed=ctx.seed)
    for ds, d in ((uni, dirs["train"]), (val, dirs["val"])):
        tokenize_sentences(ds, tok, d, tokenizer_name="magvit2", progress=ctx.progress)
    ev = evaluate_lvm(model, tok, dirs["val"], dirs["train"], val, out, items=p["eval"], seed=ctx.seed)
    pairs = builtin_sentences("train", 64, ["pairs"], p["eval"], pairs=3, seed=ctx.seed + 100_003)
    items = [pairs[i] for i in range(len(pairs))]
    ana, rows = prediction_metrics(model, tok, items, "pairs", seed=ctx.seed)
    ev["analogy"] = ana
    k = len(rows[0]) - 2
    grid = image_grid(rows, row_labels=[it["task"] for it in items],
                      col_labels=[f"ctx {j + 1}" for j in range(k)] + ["predicted", "truth"])  # fmt: skip
    ev.setdefault("pictures", {})["analogy"] = str(_save(grid, out / "analogy.png"))
    _lvm_metrics(ev, "shipped LVM: ", res)
    pics = ev.get("pictures", {})
    _picture(ctx, pics.get("next_frame"), "shipped LVM, next frame of held-out clips: context, greedy prediction, "
             "truth", res)  # fmt: skip
    _picture(ctx, pics.get("analogy"), "shipped LVM on in-context analogies: three pairs, greedy answer, truth", res)
    res.notes.append(
        f"The shipped LVM ({model.num_params() / 1e6:.1f}M parameters) was trained on 40,000 clips and 40,000 analogy "
        "sentences for 2,500 steps on a GPU (its MODEL_CARD.md); evaluated here on new clips and prompts of the "
        "training photos."
    )
    return ev


def stage_lvm(ctx: StageContext) -> StageResult:
    from vistok.models.lvm import shipped_lvm_dir
    from vistok.train.lvm import LVMTrainConfig, train_lvm

    p = ctx.params
    res = StageResult(
        "lvm",
        "LVM: visual sentences and in-context prompts",
        what=(
            "An LVM (a LLaMA-style decoder over visual sentences of MAGVIT-v2 tokens) continues held-out clips frame "
            "by frame and is prompted with in-context analogy pairs (A₁:B₁, A₂:B₂, A₃:?). "
            + ("The shipped LVM is evaluated; " if ctx.tokenizer_path is None else "")
            + (f"an lvm-tiny is trained here for {p['steps']} steps on clips and analogy pairs." if p["steps"] else "")
        ),
        config=dict(p),
    )
    heads = []
    if ctx.tokenizer_path is None and (shipped_lvm_dir() / "config.json").is_file():
        ev = _shipped_lvm(ctx, res)
        nid = ev["next_id"]
        heads.append(f"shipped LVM: perplexity {nid['perplexity']:.1f} vs unigram {nid['unigram_perplexity']:.1f}")
    if p["steps"]:
        c = LVMTrainConfig(
            out=str(ctx.out / "trained"),
            tokenizer=ctx.tokenizer_path,
            kinds=("video", "pairs"),
            sentences=p["sentences"],
            val_sentences=p["val"],
            frames=p["frames"],
            pairs=p["pairs"],
            seq_len=p["seq_len"],
            steps=p["steps"],
            batch_size=p["batch"],
            warmup=max(1, p["steps"] // 10),
            log_every=max(1, p["steps"] // 20),
            ckpt_every=max(1, p["steps"] // 2),
            eval_items=p["eval"],
            val_photos="train",
            seed=ctx.seed,
            progress=ctx.progress,
        )
        r = train_lvm(c)
        _lvm_metrics(r.eval, "trained here: ", res)
        pics = r.eval.get("pictures", {})
        _picture(ctx, pics.get("next_frame"), "LVM trained here: next frame of held-out clips", res)
        _picture(ctx, pics.get("analogy"), "LVM trained here: in-context analogies", res)
        loss = _loss_curve(ctx.out / "trained" / "metrics.jsonl")
        if loss:
            res.curves["training loss (next-id cross-entropy)"] = {"trained here": loss}
        res.notes.append(r.summary.splitlines()[0])
        nid = r.eval.get("next_id")
        if nid:
            heads.append(f"trained here: {nid['perplexity']:.1f} vs {nid['unigram_perplexity']:.1f}")
    res.headline = "next-id perplexity — " + "; ".join(heads) if heads else ""
    res.commands = [
        "vistok lvm train --kinds video --sentences 3000 --seq-len 544 --batch-size 32 --steps 2000 "
        "--val-photos train --out runs/lvm   # the shipped model; 1 min on a GPU",
        "vistok lvm train --kinds pairs --sentences 3000 --loss-on outputs --steps 2000 --out runs/lvm-pairs",
        "vistok lvm generate --model runs/lvm/model --prompt f1.png f2.png f3.png --frames 2 --out next.png",
        "vistok lvm eval --model runs/lvm/model --out runs/lvm/eval",
    ]
    return res


# ---------------------------------------------------------------------------------------------------------------------
# MaskGIT
# ---------------------------------------------------------------------------------------------------------------------


def stage_maskgit(ctx: StageContext) -> StageResult:
    from vistok.train.maskgit import (
        MaskGITTrainConfig,
        generate_image_grid,
        load_maskgit_run,
        train_maskgit,
    )

    p = ctx.params
    c = MaskGITTrainConfig(
        preset="maskgit-tiny",
        model_overrides={"num_classes": 7},
        tokenizer=ctx.tokenizer_path,
        size=64,
        train_items=p["train"],
        heldout_items=p["heldout"],
        steps=p["steps"],
        batch_size=p["batch"],
        warmup=max(1, p["steps"] // 10),
        out_dir=str(ctx.out),
        log_every=max(1, p["steps"] // 20),
        ckpt_every=max(1, p["steps"] // 2),
        seed=ctx.seed,
        device=ctx.device,
        progress=ctx.progress,
    )
    r = train_maskgit(c, tokenizer=ctx.tokenizer())
    run = load_maskgit_run(ctx.out, device=ctx.device)
    classes = list(range(run.model.config.num_classes))
    grid, strip, _ = generate_image_grid(
        run,
        ctx.tokenizer(),
        classes,
        p["n"],
        steps=p["decode_steps"],
        guidance_scale=2.0,
        seed=ctx.seed,
        real=1,
        history=True,
    )
    res = StageResult(
        "maskgit",
        "MaskGIT: class-conditional masked-token generation",
        what=(
            "maskgit-tiny (bidirectional transformer) trained on MAGVIT-v2 tokens of photo crops with the cosine mask "
            "schedule; class = source photo, with a null class for classifier-free guidance. Decoding fills the "
            f"{run.model.config.grid} token grid in {p['decode_steps']} parallel steps."
        ),
        config={k: v for k, v in vars(c).items() if k not in ("out_dir", "progress")},
    )
    m = r.metrics
    if m.get("masked_accuracy") is not None:
        res.metrics.append(
            Metric("masked-token accuracy (held-out crops)", m["masked_accuracy"], {"unigram": m["unigram_accuracy"]})
        )
        res.metrics.append(
            Metric(
                "masked-token perplexity", m["perplexity"], {"unigram": m["unigram_perplexity"]}, higher_is_better=False
            )
        )
        if "uncond_masked_accuracy" in m:
            res.metrics.append(
                Metric(
                    "masked-token accuracy without the class",
                    m["uncond_masked_accuracy"],
                    note="the class should help: compare with the first row",
                )
            )
        res.headline = f"masked-token accuracy {m['masked_accuracy']:.3f} vs unigram {m['unigram_accuracy']:.3f}"
    _picture(
        ctx,
        _save(grid, ctx.out / "samples.png"),
        "samples, one row per class (source photo), guidance 2.0; the last column is a real crop",
        res,
    )
    if strip is not None:
        _picture(
            ctx,
            _save(strip, ctx.out / "decoding_steps.png"),
            "decoding steps: the token grid filled in parallel, step by step",
            res,
        )
    loss = _loss_curve(ctx.out / "metrics.jsonl")
    if loss:
        res.curves["training loss (masked tokens)"] = {"train": loss}
    res.commands = [
        "vistok maskgit train --preset maskgit-tiny --steps 2000 --out runs/maskgit",
        "vistok maskgit generate --model runs/maskgit --class 0 --out grid.png --history steps.png",
    ]
    return res


# ---------------------------------------------------------------------------------------------------------------------
# Transfusion
# ---------------------------------------------------------------------------------------------------------------------


def _transfusion_metrics(ev: Mapping[str, Any], prefix: str, res: StageResult) -> None:
    i2t, t2i = ev.get("image_to_text", {}), ev.get("text_to_image", {})
    if i2t:
        res.metrics.append(
            Metric(f"{prefix}image → text: byte accuracy of the caption", i2t["byte_accuracy"],
                   {"majority caption": i2t["majority_byte_accuracy"]})
        )  # fmt: skip
        res.metrics.append(
            Metric(f"{prefix}image → text: exact caption (any paraphrase)", i2t["paraphrase_match"],
                   {"majority caption": i2t["majority_paraphrase_match"]})
        )  # fmt: skip
    probes = (
        ("colour", "the generated image has the captioned colour", f"{t2i.get('items')} one-colour captions"),
        ("shape", "the largest blob has the captioned shape", f"{t2i.get('shape_items')} captions of one shape; "
         "fill-ratio probe"),
    )  # fmt: skip
    for kind, what, items in probes if t2i.get("items") else ():
        if t2i.get(f"{kind}_match") is None:
            continue
        res.metrics.append(
            Metric(
                f"{prefix}text → image: {what}",
                t2i[f"{kind}_match"],
                {"a random held-out scene": t2i[f"random_scene_{kind}_match"]},
                note=(
                    f"{items}; ceilings: the true scene {t2i[f'true_image_{kind}_match']:.2f}, its VAE "
                    f"reconstruction {t2i[f'vae_reconstruction_{kind}_match']:.2f}"
                ),
            )
        )
    for ex in (i2t.get("examples") or [])[:3]:
        res.notes.append(f"{prefix}caption — truth: “{ex['truth']}”; predicted: “{ex['predicted']}”")


def _train_scene_vae(ctx: StageContext, p: Mapping[str, Any]) -> Path:
    """A tiny KL-VAE trained on the spot on scene pictures (when vistok ships none)."""
    from vistok.data.scenes import Scenes
    from vistok.train.tokenizer import TokenizerTrainConfig, train_tokenizer

    scene_dir = ctx.out / "scene_pngs"
    scenes = Scenes(64, p["scenes"], "train", seed=ctx.seed, objects=(1, 2))
    if not (scene_dir / "done").is_file():
        scene_dir.mkdir(parents=True, exist_ok=True)
        for i in range(len(scenes)):
            _save(scenes[i]["pixels"], scene_dir / f"scene_{i:05d}.png")
        (scene_dir / "done").write_text(str(len(scenes)))
    vc = TokenizerTrainConfig(
        preset="vae-tiny-f4", data=str(scene_dir), image_size=64, batch_size=8, steps=p["vae_steps"], lr=2e-3,
        recon_focus=16.0, warmup=max(1, p["vae_steps"] // 10), kl_weight=1e-6, perceptual_weight=0.0,
        disc_start=10**9, disc_warmup_start=10**9, ema_decay=None, out_dir=str(ctx.out / "vae"),
        log_every=max(1, p["vae_steps"] // 10), ckpt_every=max(1, p["vae_steps"]), seed=ctx.seed, device=ctx.device,
        progress=ctx.progress,
    )  # fmt: skip
    return Path(train_tokenizer(vc).final_dir)


def stage_transfusion(ctx: StageContext) -> StageResult:
    from dataclasses import replace

    from vistok.data.scenes import Scenes
    from vistok.models.transfusion import shipped_transfusion_dir
    from vistok.train.transfusion_cli import TransfusionRunConfig, evaluate_run, load_run, train_transfusion_run

    p = ctx.params
    shipped = shipped_transfusion_dir()
    has_shipped = (shipped / "config.json").is_file()
    res = StageResult(
        "transfusion",
        "Transfusion: one transformer for text and images",
        what=(
            "One transformer reads and writes both: next-byte prediction on captions and flow matching on the "
            "latent patches of a small KL-VAE (4× downsampling), with causal attention across the sequence and "
            "bidirectional attention inside each image. On held-out scenes of coloured shapes it captions images "
            "(image → text) and draws captions (text → image, checked by a colour probe and a shape probe). "
            + (
                "The shipped model (trained for 6,000 steps) is evaluated, and a fresh one is trained here for "
                f"{p['steps']} steps on the shipped VAE's latents."
                if has_shipped
                else f"A VAE ({p['vae_steps']} steps) and a Transfusion model ({p['steps']} steps) are trained here."
            )
        ),
        config=dict(p),
    )
    base = TransfusionRunConfig(
        out=str(ctx.out / "shipped"), scenes=p["scenes"], val_scenes=p["val"], max_objects=2, eval_items=p["eval"],
        eval_steps=p["eval_steps"], guidance=5.0, model_args={"objective": "flow"}, seed=ctx.seed,
        progress=ctx.progress,
    )  # fmt: skip
    heads = []
    if has_shipped:
        model, vae, _ = load_run(shipped)
        (ctx.out / "shipped").mkdir(parents=True, exist_ok=True)
        captions = [it["caption"] for it in Scenes(64, p["scenes"], "train", seed=ctx.seed, objects=(1, 2))]
        ev = evaluate_run(model, vae, base, captions, ctx.out / "shipped")
        _transfusion_metrics(ev, "shipped Transfusion: ", res)
        caption = (
            "shipped Transfusion — T2I rows: held-out scene, the image generated from its caption; I2T rows: scene, "
            "its VAE reconstruction, (left) the generated caption"
        )
        _picture(ctx, ev.get("samples_png"), caption, res)
        t2i = ev.get("text_to_image", {})
        if t2i.get("items"):
            heads.append(f"shipped model: text → image colour {t2i['colour_match']:.2f} vs random scene "
                         f"{t2i['random_scene_colour_match']:.2f}")  # fmt: skip
        vae_dir = shipped / "vae"
    else:
        vae_dir = _train_scene_vae(ctx, p)
    if p["steps"]:
        c = replace(
            base, out=str(ctx.out / "trained"), vae=str(vae_dir), steps=p["steps"], batch_size=p["batch"],
            warmup=max(1, p["steps"] // 10), log_every=max(1, p["steps"] // 20), ckpt_every=max(1, p["steps"] // 2),
        )  # fmt: skip
        r = train_transfusion_run(c)
        _transfusion_metrics(r.eval, "trained here: ", res)
        _picture(ctx, r.eval.get("samples_png"), f"Transfusion trained here for {p['steps']} steps: T2I and I2T rows",
                 res)  # fmt: skip
        loss = _loss_curve(ctx.out / "trained" / "metrics.jsonl")
        if loss:
            res.curves["training loss (LM + 5·diffusion)"] = {"trained here": loss}
        i2t = r.eval.get("image_to_text", {})
        if i2t:
            heads.append(f"trained here: caption byte accuracy {i2t['byte_accuracy']:.3f} vs majority "
                         f"{i2t['majority_byte_accuracy']:.3f}")  # fmt: skip
    res.headline = "; ".join(heads)
    res.commands = [
        "vistok data scenes scenes/ --n 1500 --size 64 --clips 0   # or use any folder of images",
        "vistok tokenizer train --preset vae-tiny-f4 --data scenes/scenes --image-size 64 --steps 1200 --lr 2e-3 "
        "--warmup 50 --recon-focus 16 --kl-weight 1e-3 --out runs/vae-f4",
        "vistok transfusion train --vae runs/vae-f4/final --model-arg objective=flow --model-arg dim=128 "
        "--model-arg n_layers=4 --scenes 1500 --max-objects 2 --steps 6000 --guidance 5 --out runs/transfusion"
        "   # the shipped model",
        'vistok transfusion generate --model runs/transfusion/model --prompt "a red circle" --out red.png',
        "vistok transfusion caption --model runs/transfusion/model scene.png",
    ]
    return res


# ---------------------------------------------------------------------------------------------------------------------
# Chat-UniVi
# ---------------------------------------------------------------------------------------------------------------------


def _merge_pictures(ctx: StageContext, res: StageResult) -> None:
    """Cluster maps of one held-out scene and the event segmentation of one held-out clip (``vistok merge show``)."""
    from vistok.data.samples import SyntheticVideos
    from vistok.data.scenes import Scenes
    from vistok.data.transforms import to_uint8
    from vistok.tokenizers.merge import magvit_features
    from vistok.tokenizers.merge_cli import merge_picture

    tok = ctx.tokenizer()

    def encode(px: torch.Tensor) -> Any:
        return magvit_features(px.to(ctx.device), tok)

    img = Scenes(128, 1, "heldout", seed=ctx.seed + 7)[0]["pixels"]
    picture, detail = merge_picture(img, "image", to_uint8(img), encode)
    _picture(ctx, _save(picture, ctx.out / "clusters.png"), f"DPC-KNN merging of a held-out scene: {detail}", res)
    clip = SyntheticVideos(17, 64, length=1, split="heldout", seed=ctx.seed + 3)[0]["pixels"]
    picture, detail = merge_picture(clip, "video", to_uint8(clip), encode, events="auto", thumb=64)
    _picture(ctx, _save(picture, ctx.out / "events.png"), f"a held-out clip: {detail}", res)


def _u8(x: torch.Tensor) -> np.ndarray:
    from vistok.eval.pictures import to_uint8_image

    if x.ndim == 4:
        return np.stack([to_uint8_image(f) for f in x])
    return to_uint8_image(x)


def _save(picture: Any, path: Path) -> Path:
    """Write a PIL image, an (H, W, 3) uint8 array or a (3, H, W) tensor in [−1, 1] as a PNG (atomically)."""
    from PIL import Image

    from vistok.eval.pictures import save_png, to_uint8_image

    if isinstance(picture, torch.Tensor):
        picture = to_uint8_image(picture)
    if isinstance(picture, np.ndarray):
        picture = Image.fromarray(picture)
    return save_png(picture, path)


def _shipped_univi(ctx: StageContext, res: StageResult) -> dict[str, Any]:
    """Evaluate the UniVi model shipped with vistok on held-out scenes and clips, for every token budget."""
    from vistok.models.univi import shipped_univi_dir
    from vistok.train.univi import (
        UniViTrainConfig,
        _dataset,
        cache_features,
        evaluate_univi,
        load_univi,
        write_accuracy_png,
        write_answers_png,
    )

    p = ctx.params
    out = ctx.out / "shipped"
    out.mkdir(parents=True, exist_ok=True)
    model = load_univi(shipped_univi_dir()).eval()
    c = UniViTrainConfig(
        out=str(out), train_images=p["majority_images"], train_videos=p["majority_videos"],
        eval_images=p["shipped_eval_images"], eval_videos=p["shipped_eval_videos"], eval_questions=p["questions"],
        seed=ctx.seed, progress=ctx.progress,
    )  # fmt: skip
    cache = {
        (kind, split): cache_features(
            model, _dataset(kind, split, c, n), out / f"{kind}-{split}.pt", progress=ctx.progress
        )
        for kind, split, n in (
            ("image", "train", c.train_images),
            ("video", "train", c.train_videos),
            ("image", "heldout", c.eval_images),
            ("video", "heldout", c.eval_videos),
        )
    }
    train = {k: cache[k, "train"] for k in ("image", "video") if cache[k, "train"]["qa"]}  # majority answers only
    held = {k: cache[k, "heldout"] for k in ("image", "video") if cache[k, "heldout"]["qa"]}
    report = evaluate_univi(model, held, train, c.eval_reductions, None, c.eval_questions, ctx.seed, ctx.progress)
    (out / "eval.json").write_text(json.dumps(report, indent=1))
    if "image" in held:
        _picture(ctx, write_answers_png(model, held, c, out / "answers.png"),
                 "shipped model: held-out scenes with questions, its answers and the truth", res)  # fmt: skip
    _picture(ctx, write_accuracy_png(report, out / "accuracy.png"),
             "shipped model: answer accuracy against the number of visual tokens", res)  # fmt: skip
    return report


def stage_univi(ctx: StageContext) -> StageResult:
    from vistok.models.univi import shipped_univi_dir
    from vistok.train.univi import UniViTrainConfig, train_univi

    p = ctx.params
    has_shipped = ctx.tokenizer_path is None and (shipped_univi_dir() / "config.json").is_file()
    res = StageResult(
        "univi",
        "Chat-UniVi: dynamic visual tokens for an understanding model",
        what=(
            "Patch features of the MAGVIT-v2 encoder are merged by parameter-free DPC-KNN (multi-scale; videos split "
            "into temporal events first) and fed, through a projector, to a small language model that answers "
            "questions about held-out scenes and clips, trained in the paper's stages (projector only, then all). "
            "Accuracy is compared across token budgets: all patches, merged, and uniform pooling to the same count. "
            + ("The shipped model is evaluated; " if has_shipped else "")
            + f"a model is trained here for {sum(p['steps'])} steps."
        ),
        config=dict(p),
    )
    heads = []
    if has_shipped:
        heads.append("shipped model — " + _univi_metrics(_shipped_univi(ctx, res), "shipped model: ", res))
    s0, s1, s2 = p["steps"]
    c = UniViTrainConfig(
        out=str(ctx.out / "trained"),
        encoder_path=ctx.tokenizer_path,
        train_images=p["images"],
        train_videos=p["videos"],
        eval_images=p["eval_images"],
        eval_videos=p["eval_videos"],
        eval_questions=p["questions"],
        steps0=s0,
        steps1=s1,
        steps2=s2,
        projector_lr_scale=5.0,
        log_every=max(1, s2 // 10),
        ckpt_every=max(1, max(s0, s1, s2)),
        seed=ctx.seed,
        progress=ctx.progress,
    )
    r = train_univi(c)
    heads.append("trained here — " + _univi_metrics(r.report, "trained here: ", res))
    try:
        _merge_pictures(ctx, res)
    except Exception as e:  # the pictures are a bonus; the numbers above stand without them
        res.notes.append(f"cluster pictures not drawn: {type(e).__name__}: {e}")
    _picture(ctx, ctx.out / "trained" / "answers.png", "trained here: held-out scenes, answers and the truth", res)
    for stage in (0, 1, 2):
        loss = _loss_curve(ctx.out / "trained" / f"stage{stage}" / "metrics.jsonl")
        if loss:
            res.curves.setdefault("training loss per stage (trained here)", {})[f"stage {stage}"] = loss
    res.headline = "answer accuracy: " + "; ".join(heads)
    res.commands = [
        "vistok merge show photo.png --out clusters.png",
        "vistok univi train --steps 550 --steps0 150 --steps1 200 --projector-lr-scale 5 --train-images 1000 "
        "--train-videos 300 --eval-images 48 --eval-videos 32 --eval-questions 6 --out runs/univi   # shipped model",
        'vistok univi ask --model runs/univi/model scene.png "how many red circles?"',
    ]
    return res


_UNIVI_BASELINES = {
    "shuffled image (merge)": "another item's image (merged)",
    "no-image (final model)": "same model without the image",
    "majority": "majority answer per question type",
}


def _univi_metrics(rep: Mapping[str, Any], prefix: str, res: StageResult) -> str:
    """Accuracy per token budget vs the shuffled-image control, no image and the majority answer (``train_univi``)."""
    heads = []
    for kind, rows in (rep.get("kinds") or {}).items():
        base = {
            label: float(rows[key]["accuracy"])
            for key, label in _UNIVI_BASELINES.items()
            if isinstance(rows.get(key), Mapping) and rows[key].get("accuracy") is not None
        }
        for name, row in rows.items():
            if name in _UNIVI_BASELINES or name.startswith("text-only") or not isinstance(row, Mapping):
                continue
            if row.get("accuracy") is None:
                continue
            events = row.get("events")
            per_event = f" = {events}×{row['tokens_per_event']:.0f}" if events and events > 1 else ""
            res.metrics.append(
                Metric(
                    f"{prefix}{kind}s: answer accuracy, {name} ({row['tokens']:.0f}{per_event} visual tokens)",
                    float(row["accuracy"]),
                    dict(base),
                    note=f"{row.get('n', '?')} held-out questions",
                )
            )
        acc = {n: r["accuracy"] for n, r in rows.items() if n in ("all", "merge", "pool") and isinstance(r, Mapping)}
        if acc:
            shuffled = base.get(_UNIVI_BASELINES["shuffled image (merge)"])
            heads.append(
                f"{kind}s: " + ", ".join(f"{n} {v:.2f}" for n, v in acc.items())
                + (f" (another item's image {shuffled:.2f})" if shuffled is not None else "")
            )  # fmt: skip
    return "; ".join(heads)


# ---------------------------------------------------------------------------------------------------------------------
# DiGIT
# ---------------------------------------------------------------------------------------------------------------------


def stage_digit(ctx: StageContext) -> StageResult:
    from dataclasses import replace

    from vistok.data.samples import SamplePhotos
    from vistok.eval.pictures import image_grid
    from vistok.hub import from_pretrained
    from vistok.tokenizers.digit import DigitTokenizer
    from vistok.train.digit_ar import (
        CompareConfig,
        DigitARConfig,
        DigitDecoderTrainConfig,
        compare_tokenizers,
        feature_distance,
        generate_pictures,
        load_token_gpt,
        sample_grids,
        train_digit_decoder,
    )
    from vistok.train.dino import DigitFitConfig, fit_digit

    p = ctx.params
    fc = DigitFitConfig(
        out=str(ctx.out / "fit"),
        k=p["k"],
        ssl_steps=p["ssl_steps"],
        fit_images=p["fit"],
        probe_images=p["probe"],
        warmup=max(1, p["ssl_steps"] // 10),
        seed=ctx.seed,
        progress=ctx.progress,
    )
    fit = fit_digit(fc)
    digit = from_pretrained(fit.tokenizer_dir).eval()
    magvit = ctx.tokenizer()
    k, k_magvit = int(digit.codebook_size), int(magvit.codebook_size)
    names = {"digit": f"DiGIT-K{k}", "same_k": f"DiGIT-K{k_magvit}", "magvit": f"MAGVIT-v2-K{k_magvit}"}
    tokenizers = {names["digit"]: digit}
    if k_magvit != k:  # the same features clustered at MAGVIT-v2's vocabulary size, for a comparison at equal K
        same_k = DigitTokenizer(replace(digit.config, num_clusters=k_magvit), encoder=digit.encoder)
        photos = SamplePhotos(size=64, split="train", length=p["fit"], seed=ctx.seed + 1)
        tokenizers[names["same_k"]] = same_k.fit(photos, batch_size=64, max_images=p["fit"]).eval()
    tokenizers[names["magvit"]] = magvit
    gpt = DigitARConfig(conditional=False, progress=False, steps=p["gpt_steps"], warmup=max(1, p["gpt_steps"] // 10))
    cc = CompareConfig(
        out=str(ctx.out / "compare"),
        train_images=p["train"],
        val_images=p["val"],
        probe_images=p["probe"],
        seed=ctx.seed,
        gpt=gpt,
    )
    report = compare_tokenizers(tokenizers, cc, log=lambda *a, **kw: None)
    # the pixel decoder for the DiGIT tokens, then samples of both GPTs decoded to pixels
    dc = DigitDecoderTrainConfig(
        out=str(ctx.out / "decoder"),
        steps=p["decoder_steps"],
        warmup=max(1, p["decoder_steps"] // 10),
        eval_images=p["val"],
        baseline_images=p["fit"],
        seed=ctx.seed,
        progress=ctx.progress,
    )
    dec = train_digit_decoder(digit, dc)
    n = max(p["n"], p["fd"])
    gen = generate_pictures(
        ctx.out / "compare" / f"gpt_{names['digit']}" / "model", dec.model_dir, ctx.out / "samples", n=n,
        seed=ctx.seed,
    )  # fmt: skip
    model, layout = load_token_gpt(ctx.out / "compare" / f"gpt_{names['magvit']}" / "model")
    ids = sample_grids(model, layout, n, seed=ctx.seed)
    with torch.no_grad():
        magvit_pixels = torch.cat([magvit.decode(b.to(ctx.device)).float().cpu() for b in ids.split(64)])
        ae = from_pretrained(dec.model_dir).eval()
        rand_ids = torch.randint(k, tuple(gen.grids.shape), generator=torch.Generator().manual_seed(ctx.seed))
        random_pixels = ae.decode(rand_ids).float().cpu()
    shown = p["n"]
    sample_grid = image_grid(
        [list(gen.pixels[:shown]), list(magvit_pixels[:shown])],
        row_labels=[f"DiGIT K={k} + decoder", f"MAGVIT-v2 K={k_magvit}"],
        scale=2,
    )
    # sample quality: Fréchet distance to real crops in the DINO ViT's feature space (FID's recipe, our encoder)
    real = torch.stack([it["pixels"] for it in SamplePhotos(64, "train", length=n, seed=ctx.seed + 5000)])
    real2 = torch.stack([it["pixels"] for it in SamplePhotos(64, "train", length=n, seed=ctx.seed + 6000)])
    fd = {
        "digit": feature_distance(digit.encoder, gen.pixels, real),
        "magvit": feature_distance(digit.encoder, magvit_pixels, real),
        "random": feature_distance(digit.encoder, random_pixels, real),
        "real": feature_distance(digit.encoder, real2, real),
    }
    res = StageResult(
        "digit",
        "DiGIT: discriminative tokens from k-means over self-supervised features",
        what=(
            "A small ViT is trained on the spot with DINO self-distillation; k-means over its patch features gives "
            "the DiGIT tokens. The same GPT (same size, steps and crops) is then trained on DiGIT tokens and on "
            "MAGVIT-v2 tokens and scored on held-out crops: how predictable the tokens are (bits per token / log2 K: "
            "1 = a uniform guess, 0 = perfect), and how well a linear probe reads the source photo from the GPT's "
            "features. A convolutional decoder learns to render DiGIT token grids as pixels, so the GPT's samples "
            "can be looked at."
        ),
        config={
            "fit": {k: v for k, v in vars(fc).items() if k not in ("out", "progress", "dino_overrides")},
            "compare": {"train_images": cc.train_images, "val_images": cc.val_images, "gpt_steps": p["gpt_steps"]},
            "decoder_steps": p["decoder_steps"],
        },
    )
    probe = fit.summary.get("probe") or {}
    if probe.get("ssl") and probe.get("random"):
        res.metrics.append(
            Metric(
                "SSL features: linear probe of the source photo (pooled)",
                probe["ssl"]["pooled"],
                {"random-init ViT": probe["random"]["pooled"]},
            )
        )
    _digit_compare_metrics(report, names, res)
    for split, row in (dec.metrics.get("heldout") or {}).items():
        if isinstance(row, Mapping) and row.get("decoder") is not None:
            base = {"each picture's mean colour": row.get("mean_colour")}
            if row.get("cluster_mean_patch") is not None:
                base["per-token mean patch (lookup table)"] = row["cluster_mean_patch"]
            res.metrics.append(
                Metric(f"pixel decoder PSNR, {split.replace('_', ' ')}", row["decoder"], base, unit=" dB")
            )
    res.metrics.append(
        Metric(
            f"generated samples: Fréchet distance to real crops in DINO-feature space ({n} samples)",
            fd["digit"],
            {
                f"MAGVIT-v2 K={k_magvit} samples, same GPT": fd["magvit"],
                "random DiGIT token grids, decoded": fd["random"],
            },
            higher_is_better=False,
            note=(
                f"real crops vs other real crops: {fd['real']:.3f} (the floor); the feature network is the DiGIT "
                "tokenizer's own ViT, which may favour DiGIT tokens"
            ),
        )
    )
    _picture(ctx, fit.picture, "DiGIT token maps: crops and their k-means token ids (colour = cluster)", res)
    _picture(ctx, dec.picture, "pixel decoder: held-out crops, decoded from their DiGIT tokens, lookup baseline", res)
    _picture(
        ctx, _save(sample_grid, ctx.out / "samples.png"),
        "unconditional samples of the same GPT trained on each tokenizer's ids, decoded to pixels", res,
    )  # fmt: skip
    _picture(ctx, ctx.out / "samples" / "token_maps.png", "the sampled DiGIT token grids", res)
    res.commands = [
        "vistok digit fit --data samples --size 64 --k 256 --ssl-steps 300 --out runs/digit",
        "vistok digit compare --digit runs/digit/tokenizer --k 64,256,1024 --out runs/digit/compare",
        "vistok digit decoder --digit runs/digit/tokenizer --steps 2000 --out runs/digit/decoder",
        "vistok digit train --tokenizer runs/digit/tokenizer --steps 2000 --class-dropout 0.1 --out runs/digit/gpt",
        "vistok digit generate --gpt runs/digit/gpt/model --decoder runs/digit/decoder/final --cfg 3 --out samples",
    ]
    return res


def _digit_compare_metrics(report: Mapping[str, Any], names: Mapping[str, str], res: StageResult) -> None:
    rows = {r["tokenizer"]: r for r in report.get("rows", [])}
    ours, base = rows.get(names["same_k"]) or rows.get(names["digit"]), rows.get(names["magvit"])
    if ours is None or base is None:
        return
    k = ours["K"]
    label = f"MAGVIT-v2 tokens (K={base['K']}), same GPT"
    for split, what in (("val_crops", "new crops of the training photos"), ("val_photos", "the held-out photos")):
        res.metrics.append(
            Metric(
                f"DiGIT tokens (K={k}): bits per token / log2 K on {what}",
                ours[split]["bits_per_log2k"],
                {label: base[split]["bits_per_log2k"]},
                higher_is_better=False,
                note=f"unigram of the DiGIT ids: {ours[split + '_unigram']['bits_per_log2k']:.3f}",
            )
        )
    res.metrics.append(
        Metric(
            f"DiGIT tokens (K={k}): linear probe of the GPT's features (source photo)",
            ours["probe"]["final"],
            {label: base["probe"]["final"]},
            note=f"bag of DiGIT tokens alone: {ours['probe']['bag_of_tokens']:.3f}",
        )
    )
    for name, row in rows.items():
        if name.startswith("DiGIT") and row is not ours:
            res.notes.append(
                f"{name}: bits per token / log2 K {row['val_crops']['bits_per_log2k']:.3f} on new crops, "
                f"probe {row['probe']['final']:.3f}"
            )
    res.headline = (
        f"bits per token / log2 K at K = {k}: DiGIT {ours['val_crops']['bits_per_log2k']:.3f} vs MAGVIT-v2 "
        f"{base['val_crops']['bits_per_log2k']:.3f} (same GPT, same crops)"
    )


Stage = Callable[[StageContext], StageResult]

STAGES: dict[str, tuple[str, Stage]] = {
    "tokenizer": ("MAGVIT-v2 tokenizer", stage_tokenizer),
    "lvm": ("LVM", stage_lvm),
    "maskgit": ("MaskGIT", stage_maskgit),
    "transfusion": ("Transfusion", stage_transfusion),
    "univi": ("Chat-UniVi", stage_univi),
    "digit": ("DiGIT", stage_digit),
}
"""name → (title, function), in the order the demo runs them."""
