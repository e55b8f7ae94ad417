"""Tokenizer training side by side: vistok's ``magvit2-tiny`` against lucidrains' magvit2-pytorch ``VideoTokenizer``
configured to a similar size — training throughput (images/s, clips/s) and held-out PSNR after an equal wall-clock
training budget, on the same built-in data.

    python benchmarks/bench_tokenizer_train.py                          # 300 s per side, mixed images + clips
    python benchmarks/bench_tokenizer_train.py --budget-s 30            # quick
    python benchmarks/bench_tokenizer_train.py --mode image --threads 1 # images only, on a shared CPU
    python benchmarks/bench_tokenizer_train.py --skip-peer --json out.json
    python benchmarks/bench_tokenizer_train.py --recon-weight 5         # MAGVIT-v2's reconstruction weight

The peer (PyPI ``magvit2-pytorch``, 0.5.x) needs torchvision, kornia, opencv-python, accelerate, x-transformers, … :
install it in a separate virtual environment together with vistok (``pip install magvit2-pytorch`` and
``pip install -e .``); without it (or with ``--skip-peer``) vistok runs alone.

**Data** (the same stream for both sides, item by item): training images are ``SamplePhotos(size, split="train",
crop="random", seed)`` items 0, 1, 2, … in batches of ``--batch-size``; training clips are ``SyntheticVideos(frames,
size, split="train", seed)`` items 0, 1, 2, … in batches of ``--video-batch-size``; pixels in [−1, 1]. ``--mode
mixed`` (default) alternates image and clip steps (step s is a clip step iff ⌊(s+1)/2⌋ > ⌊s/2⌋, the rule of
:class:`vistok.train.TokenizerTrainer` at video ratio 0.5), ``image`` / ``video`` use one kind only. Batches are
built outside the timed region (deterministic in the item index, so both sides get identical batches).

**Training recipe** (identical on both sides; a plain loop, not :class:`vistok.train.TokenizerTrainer`, so that both
run exactly the same steps): loss = w·MSE(x̂, x) + the tokenizer's own quantizer loss, w = ``--recon-weight``
(default 1, the peer's own fixed weight; 5 is MAGVIT-v2's reconstruction weight and the default of vistok's trainer,
whose LFQ loss weights were chosen beside it); no perceptual loss, no GAN, no EMA, no lr schedule;
``torch.optim.Adam(lr=--lr, betas=--betas)`` without weight decay, gradient norm clipped to ``--clip-grad``; float32
on the CPU (``--threads`` torch threads for both).

- vistok: ``create_model("magvit2-tiny")`` (causal 3-D CNN, channels 16-32-32-32, one residual block per level,
  adaptive GroupNorm decoder, LFQ 2^10 with its default loss: commitment 0.25 + entropy 0.1 annealed from 3× over
  2,000 steps); forward ``TokenizerOutput`` → ``w·mse(recon, x) + quant_loss``. Images are 1-frame videos.
- peer: ``VideoTokenizer(image_size, init_dim=32, codebook_size=2**10, layers=PEER_LAYERS,
  perceptual_loss_weight=0, use_gan=False, flash_attn=False)``, the rest default (7×7×7 input conv, residual units
  with squeeze-excite, LFQ 2^10 from vector-quantize-pytorch with projections 64 → 10 → 64, entropy weight 0.1,
  commitment 1, diversity γ 2.5); ``PEER_LAYERS`` gives 8× spatial / 4× temporal compression with the time
  downsamples at the same (late) levels as vistok's, channels 32-32-64-64, ~1.0 M parameters (vistok: ~1.09 M).
  Loss = its ``forward(x, return_loss=True)`` total, MSE + quantizer auxiliary loss, plus (w − 1)·MSE from its loss
  breakdown (perceptual weight 0 → no VGG is built; ``use_gan=False`` → adversarial and multiscale terms are 0 and
  its discriminator is never run; the discriminator module is still built, but its parameters are not in
  ``parameters()`` and are not trained). Its encoder pads every input in front with 3 zero frames (4× temporal
  compression), so an image is a 4-frame video.

**Budget and throughput.** Each side trains until the summed time of its training steps (forward, backward, clip,
optimizer step) reaches ``--budget-s`` (data preparation excluded). Throughput excludes each kind's first
``--warmup-steps`` steps: images/s = images of the remaining image steps / their time, clips/s likewise for clip
steps (in mixed mode each is the rate while training on that kind). "train MSE" is the reconstruction MSE part of
the loss averaged over each kind's last 20 training steps (the total losses are not comparable: the quantizer losses
differ).

**Held-out PSNR** (eval mode, no grad, through the tokens: ``decode(encode(x))``; peer:
``decode_from_code_indices(forward(x, return_codes=True))``), one shared function
(``vistok.eval.metrics.psnr`` of the reconstruction clamped to [−1, 1], mean over items; a clip's value is the mean of
its frames'): the ``SamplePhotos(split="heldout", crop="center")`` photos (2 images), ``--eval-crops`` random crops of
the held-out photos (``crop="random"``, seed ``--seed + 1``), and ``--eval-clips`` ``SyntheticVideos(split="heldout")``
clips. Target of the issue: held-out PSNR ≥ the peer's with ≥ 1.5× its training throughput.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import math
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from _util import load_average, machine_info
from torch import Tensor, nn

PEER = "magvit2-pytorch"
KINDS = ("image", "video")
# 8× spatial (three space downsamples), 4× temporal (two time downsamples at the two deepest transitions, like
# vistok's temporal_downsample=(False, True, True)), one residual unit per level and one at the bottom.
PEER_LAYERS = (
    "residual",
    ("compress_space", 32),
    "residual",
    ("compress_space", 64),
    "residual",
    ("compress_time", 64),
    ("compress_space", 64),
    "residual",
    ("compress_time", 64),
    "residual",
)
PEER_INIT_DIM = 32

# ----------------------------------------------------------------------------------------------- data


class Data:
    """The shared training stream and held-out sets (everything deterministic in the seed and the item index)."""

    def __init__(self, args: argparse.Namespace) -> None:
        from vistok.data import SamplePhotos, SyntheticVideos

        size, frames, seed = args.image_size, args.frames, args.seed
        self.batch = {"image": args.batch_size, "video": args.video_batch_size}
        self.train = {
            "image": SamplePhotos(size, split="train", length=1 << 20, crop="random", seed=seed),
            "video": SyntheticVideos(frames, size, length=1 << 20, split="train", seed=seed),
        }
        centre = SamplePhotos(size, split="heldout", crop="center")
        crops = SamplePhotos(size, split="heldout", length=args.eval_crops, crop="random", seed=seed + 1)
        clips = SyntheticVideos(frames, size, length=args.eval_clips, split="heldout", seed=seed)
        self.heldout = {
            "image_centre": self._stack(centre, range(len(centre))),
            "image_crops": self._stack(crops, range(len(crops))),
            "video": self._stack(clips, range(len(clips))),
        }

    @staticmethod
    def _stack(dataset, indices) -> Tensor:
        return torch.stack([dataset[i]["pixels"] for i in indices])

    def batch_of(self, kind: str, position: int) -> Tensor:
        """Batch number ``position`` of ``kind``: items position·B … position·B + B − 1."""
        b = self.batch[kind]
        return self._stack(self.train[kind], range(position * b, (position + 1) * b))


def kind_of(step: int, mode: str) -> str:
    if mode != "mixed":
        return mode
    return "video" if math.floor((step + 1) * 0.5) > math.floor(step * 0.5) else "image"


# ----------------------------------------------------------------------------------------------- the two sides


class Side:
    """A tokenizer with ``loss(x)`` (training mode) and ``reconstruct(x)`` (eval mode, through the token ids)."""

    name: str
    model: nn.Module

    def parameters(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """(training loss, its reconstruction MSE part)."""
        raise NotImplementedError

    def reconstruct(self, x: Tensor) -> Tensor:
        raise NotImplementedError


class VistokSide(Side):
    name = "vistok"

    def __init__(self, args: argparse.Namespace) -> None:
        import vistok

        self.model = vistok.create_model(args.preset)
        self.recon_weight = args.recon_weight
        self.label = f"vistok {getattr(vistok, '__version__', '')} {args.preset}".strip()

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        out = self.model(x)
        mse = F.mse_loss(out.recon, x)
        return self.recon_weight * mse + out.quant_loss, mse

    def reconstruct(self, x: Tensor) -> Tensor:
        return self.model.decode(self.model.encode(x))


class PeerSide(Side):
    name = "peer"

    def __init__(self, args: argparse.Namespace) -> None:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from magvit2_pytorch import VideoTokenizer

            self.model = VideoTokenizer(
                image_size=args.image_size,
                init_dim=PEER_INIT_DIM,
                codebook_size=2**10,
                layers=PEER_LAYERS,
                perceptual_loss_weight=0.0,
                use_gan=False,
                flash_attn=False,
            )
        assert not (self.model.use_vgg or self.model.has_gan or self.model.has_multiscale_discrs)
        self.recon_weight = args.recon_weight
        self.label = f"{PEER} {importlib.metadata.version(PEER)}"

    def loss(self, x: Tensor) -> tuple[Tensor, Tensor]:
        total, parts = self.model(x, return_loss=True)  # MSE + quantizer aux loss (the other terms are 0)
        return total + (self.recon_weight - 1) * parts.recon_loss, parts.recon_loss

    def reconstruct(self, x: Tensor) -> Tensor:
        codes = self.model(x, return_codes=True)
        recon = self.model.decode_from_code_indices(codes)
        return recon[:, :, 0] if x.ndim == 4 else recon


def peer_available() -> str | None:
    """None when the peer imports, else why not."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import magvit2_pytorch  # noqa: F401
    except Exception as e:  # ImportError, or a dependency failing at import time
        return f"{type(e).__name__}: {e}"
    return None


# ----------------------------------------------------------------------------------------------- train, evaluate


def train(side: Side, data: Data, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, object]:
    """Train ``side`` for ``--budget-s`` seconds of step time; returns counts, times and throughput."""
    side.model.train()
    params = side.parameters()
    opt = torch.optim.Adam(params, lr=args.lr, betas=tuple(args.betas))
    max_norm = args.clip_grad if args.clip_grad else math.inf
    spent, step = 0.0, 0
    positions = dict.fromkeys(KINDS, 0)
    timed = {k: {"steps": 0, "items": 0, "seconds": 0.0} for k in KINDS}
    losses = {k: [] for k in KINDS}
    nonfinite = 0
    next_report = args.report_every
    while spent < args.budget_s and (args.max_steps is None or step < args.max_steps):
        kind = kind_of(step, args.mode)
        x = data.batch_of(kind, positions[kind])
        t0 = time.perf_counter()
        loss, mse = side.loss(x)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, max_norm)
        opt.step()
        dt = time.perf_counter() - t0
        spent += dt
        value = float(loss.detach())
        nonfinite += not math.isfinite(value)
        losses[kind].append(float(mse.detach()))
        if positions[kind] >= args.warmup_steps:
            t = timed[kind]
            t["steps"], t["items"], t["seconds"] = t["steps"] + 1, t["items"] + x.shape[0], t["seconds"] + dt
        positions[kind] += 1
        step += 1
        if args.report_every and spent >= next_report:
            log(f"  {side.name}: {spent:6.1f} s, step {step}, loss {value:.4f} ({kind})")
            next_report += args.report_every
    rate = {k: (t["items"] / t["seconds"] if t["seconds"] > 0 else float("nan")) for k, t in timed.items()}
    tail = {k: (sum(v[-20:]) / len(v[-20:]) if v else float("nan")) for k, v in losses.items()}
    return {
        "steps": step,
        "image_steps": positions["image"],
        "video_steps": positions["video"],
        "train_seconds": spent,
        "images_per_s": rate["image"],
        "clips_per_s": rate["video"],
        "timed": timed,
        "train_mse_image": tail["image"],
        "train_mse_video": tail["video"],
        "nonfinite_steps": nonfinite,
    }


def mean_psnr(recon: Tensor, target: Tensor) -> float:
    """The shared metric: mean over items of vistok's PSNR ([−1, 1] pixels, the reconstruction clamped)."""
    from vistok.eval.metrics import psnr

    return float(psnr(recon.detach().float().clamp(-1, 1), target.float()).mean())


@torch.no_grad()
def evaluate(side: Side, data: Data, batch: int) -> dict[str, float]:
    side.model.eval()
    out = {}
    for name, x in data.heldout.items():
        recon = torch.cat([side.reconstruct(chunk) for chunk in x.split(batch)])
        if recon.shape != x.shape:
            raise RuntimeError(f"{side.name} reconstructed {tuple(x.shape)} as {tuple(recon.shape)}")
        out[f"psnr_{name}"] = mean_psnr(recon, x)
    side.model.train()
    return out


def run_side(name: str, data: Data, args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, object]:
    torch.manual_seed(args.seed)
    side = VistokSide(args) if name == "vistok" else PeerSide(args)
    log(f"{name}: {side.label}, {side.num_params():,} parameters; training for {args.budget_s:g} s ...")
    result: dict[str, object] = {"label": side.label, "params": side.num_params(), "load_before": load_average()}
    result |= train(side, data, args, log)
    result["load_after_train"] = load_average()
    t0 = time.perf_counter()
    result |= evaluate(side, data, args.eval_batch_size)
    result["eval_seconds"] = time.perf_counter() - t0
    return result


# ----------------------------------------------------------------------------------------------- report

COLUMNS = (
    ("params", "params", "{:,}"),
    ("steps", "steps (img/vid)", None),
    ("images_per_s", "images/s", "{:.1f}"),
    ("clips_per_s", "clips/s", "{:.2f}"),
    ("psnr_image_centre", "PSNR img centre", "{:.2f}"),
    ("psnr_image_crops", "PSNR img crops", "{:.2f}"),
    ("psnr_video", "PSNR video", "{:.2f}"),
    ("train_mse", "train MSE img/vid", None),
)


def _cell(r: dict[str, object], key: str, fmt: str | None) -> str:
    if key == "steps":
        return f"{r['steps']} ({r['image_steps']}/{r['video_steps']})"
    if key == "train_mse":
        return "/".join("—" if math.isnan(r[k]) else f"{r[k]:.4f}" for k in ("train_mse_image", "train_mse_video"))
    value = r[key]
    return "—" if isinstance(value, float) and math.isnan(value) else fmt.format(value)


def table(results: dict[str, dict[str, object]]) -> str:
    rows = [["side", *(title for _, title, _ in COLUMNS)]]
    for r in results.values():
        rows.append([str(r["label"]), *(_cell(r, key, fmt) for key, _, fmt in COLUMNS)])
    if "vistok" in results and "peer" in results:
        v, p = results["vistok"], results["peer"]
        ratio = ["vistok / peer", f"{v['params'] / p['params']:.2f}×", f"{v['steps'] / max(p['steps'], 1):.2f}×"]
        for key in ("images_per_s", "clips_per_s"):
            ratio.append(f"{v[key] / p[key]:.2f}×" if p[key] > 0 and not math.isnan(v[key] / p[key]) else "—")
        for key in ("psnr_image_centre", "psnr_image_crops", "psnr_video"):
            ratio.append(f"{v[key] - p[key]:+.2f} dB")
        ratio.append("")
        rows.append(ratio)
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths)) + " |" for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


def verdict(results: dict[str, dict[str, object]], mode: str) -> str | None:
    if "vistok" not in results or "peer" not in results:
        return None
    v, p = results["vistok"], results["peer"]
    kinds = {"image": ["images_per_s"], "video": ["clips_per_s"], "mixed": ["images_per_s", "clips_per_s"]}[mode]
    speed = min(v[k] / p[k] for k in kinds)
    if math.isnan(speed):
        return "target: throughput not measured (a budget too short for the warm-up steps)"
    psnrs = ["psnr_image_centre", "psnr_image_crops", "psnr_video"]
    worst = min(v[k] - p[k] for k in psnrs)
    met = speed >= 1.5 and worst >= 0
    return (
        f"target (held-out PSNR >= peer's on every set, >= 1.5x its training throughput): "
        f"{'MET' if met else 'NOT MET'} — throughput ratio (min over trained kinds) {speed:.2f}x, "
        f"worst held-out PSNR difference {worst:+.2f} dB"
    )


# ----------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--budget-s", type=float, default=300.0, help="training step time per side (default 300)")
    p.add_argument("--mode", choices=("image", "video", "mixed"), default="mixed")
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--frames", type=int, default=9, help="frames per clip, 1 + 4k (default 9)")
    p.add_argument("--batch-size", type=int, default=8, help="images per image step")
    p.add_argument("--video-batch-size", type=int, default=2, help="clips per clip step")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.99))
    p.add_argument("--recon-weight", type=float, default=1.0, help="weight of the MSE term (default 1)")
    p.add_argument("--clip-grad", type=float, default=1.0, help="max gradient norm (0: no clipping)")
    p.add_argument("--warmup-steps", type=int, default=5, help="steps of each kind left out of the throughput")
    p.add_argument("--max-steps", type=int, default=None, help="also stop after this many steps (debugging)")
    p.add_argument("--eval-crops", type=int, default=64, help="random crops of the held-out photos")
    p.add_argument("--eval-clips", type=int, default=16, help="held-out synthetic clips")
    p.add_argument("--eval-batch-size", type=int, default=8)
    p.add_argument("--preset", default="magvit2-tiny", help="vistok preset (default magvit2-tiny)")
    p.add_argument("--order", choices=("vistok-first", "peer-first"), default="vistok-first")
    p.add_argument("--threads", type=int, default=None, help="torch threads for both sides (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--report-every", type=float, default=60.0, help="progress line every N s of training (0: off)")
    p.add_argument("--skip-peer", action="store_true", help=f"run vistok alone (also when {PEER} is missing)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if (args.frames - 1) % 4:
        p.error(f"--frames must be 1 + 4k (both tokenizers compress time 4×), got {args.frames}")
    if args.image_size % 8:
        p.error(f"--image-size must be a multiple of 8, got {args.image_size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    def log(text: str) -> None:
        print(text, file=sys.stderr, flush=True)

    sides = ["vistok"]
    skipped = None
    if not args.skip_peer:
        skipped = peer_available()
        if skipped is None:
            sides.append("peer")
        else:
            log(f"{PEER} is not available ({skipped}); running vistok alone")
    if args.order == "peer-first":
        sides.reverse()
    started = datetime.datetime.now(datetime.UTC)
    info = machine_info(torch.device("cpu"))
    data = Data(args)
    results = {name: run_side(name, data, args, log) for name in sides}
    results = {name: results[name] for name in ("vistok", "peer") if name in results}
    finished = datetime.datetime.now(datetime.UTC)

    print(
        f"Tokenizer training, {args.mode} ({args.batch_size} images {args.image_size}² / {args.video_batch_size} clips "
        f"{args.frames}×{args.image_size}² per step), {args.budget_s:g} s of step time per side, lr {args.lr:g}, "
        f"betas {tuple(args.betas)}, loss {args.recon_weight:g}·MSE + quantizer; torch {torch.__version__}, "
        f"{torch.get_num_threads()} thread(s); {started:%Y-%m-%d %H:%M}–{finished:%H:%M} UTC"
    )
    print(f"machine: {info.get('cpu')}, {info.get('cpus')} CPUs; load average at start {info.get('load_average')}")
    for name, r in results.items():
        print(f"  {name}: load {r['load_before']} before, {r['load_after_train']} after training")
    print()
    print(table(results))
    line = verdict(results, args.mode)
    if line:
        print()
        print(line)
    if args.json is not None:
        payload = {
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
            "machine": info,
            "started_utc": started.isoformat(),
            "finished_utc": finished.isoformat(),
            "peer_skipped": skipped,
            "results": results,
            "verdict": line,
        }
        args.json.write_text(json.dumps(payload, indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
