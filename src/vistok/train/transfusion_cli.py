"""The ``vistok transfusion`` commands: train a small Transfusion on the built-in captioned scenes, generate images
from text, caption images.

``vistok transfusion train`` (:func:`train_transfusion_run`):

1. loads the VAE (``--vae DIR`` written by ``vistok tokenizer train --preset vae-tiny ...``, or a preset name such as
   ``vae-tiny``: randomly initialised, seeded — fine for plumbing, useless for pictures); when its latent scaling is
   unset (scale 1, shift 0) it is fitted on the training pixels so the latents have unit variance; with
   ``--latent-norm channel`` every latent channel is standardized on the training pixels instead (stored in the
   run's copy of the VAE: :meth:`vistok.tokenizers.vae.KLVAE.fit_latent_scaling` with ``per_channel=True``);
2. encodes the training scenes (:class:`vistok.data.scenes.Scenes`, split "train") **once** and caches the latents
   and captions in ``out/latents.pt`` (reused when the VAE, size, count and seed match);
3. trains the Transfusion preset (latent channels taken from the VAE) with :func:`vistok.train.transfusion.
   train_transfusion` on both directions (text → image and image → text documents) — resumable from the run folder;
4. writes ``out/model`` (``save_pretrained``; the VAE it was trained with in ``out/model/vae`` and ``run.json``:
   VAE source, image / latent sizes, text tokenizer), then evaluates on held-out scenes (:func:`evaluate_run`):
   image → text caption exact match (also against any of the scene's three paraphrases) and byte accuracy versus
   the majority training caption; text → image colour probe — for held-out captions that name a single colour, does
   the generated picture's dominant non-background colour match it (versus random held-out scenes, and the probe on
   the true picture and on its VAE reconstruction as ceilings) — and shape probe — for captions of one shape, is the
   largest blob of the dominant colour a square, circle or triangle by its fill ratio of its bounding box
   (:func:`dominant_shape`; 0.99 on true held-out scenes, chance 1/3) — into ``eval.json`` and ``samples.png``.

A VAE that keeps the scenes' colours and decodes smoothly around its latents (64² scenes; its reconstructions pass
the colour probe on 0.99 of held-out one-colour scenes), then the shipped model's recipe:

    vistok data scenes scenes/ --n 1500 --size 64 --clips 0
    vistok tokenizer train --preset vae-tiny-f4 --data scenes/scenes --image-size 64 --steps 1200 --lr 2e-3 \
        --warmup 50 --recon-focus 16 --kl-weight 1e-3 --out runs/vae-f4
    vistok transfusion train --vae runs/vae-f4/final --model-arg objective=flow --model-arg dim=128 \
        --model-arg n_layers=4 --scenes 1500 --max-objects 2 --steps 6000 --guidance 5

(``vae-tiny`` with the plain L1 loss keeps the layout but not the colours: probe 0.) ``--model-arg objective=flow``
(rectified flow) keeps a tiny model's x̂₀ sane at high noise, where ε-prediction divides its error by √ᾱ ≈ 0.08:
with the recipe above the colour probe on the generated pictures is 0.52 (128 held-out one-colour captions; random
scene 0.17, VAE reconstruction 0.99); with ε-prediction at a tiny size and budget it stays at chance. With LDM's KL
weight (1e-6) the decoder turns small latent errors into coloured speckles. Shapes are not learned at this size:
shape probe 0.30, the same as a random scene (the VAE's reconstructions 0.53, the true scenes 0.99).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

__all__ = [
    "TransfusionRunConfig",
    "add_transfusion_parser",
    "caption_files",
    "dominant_colour",
    "evaluate_run",
    "generate_images",
    "load_run",
    "train_transfusion_run",
]

TRAIN_EXAMPLE = "vistok transfusion train --vae runs/vae/model --scenes 2000 --steps 2000 --out runs/transfusion"
RUN_JSON = "run.json"
LATENT_NORMS = ("vae", "channel")
LATENTS_FILE = "latents.pt"


@dataclass
class TransfusionRunConfig:
    """Everything ``vistok transfusion train`` needs (see ``vistok transfusion train --help``)."""

    out: str = "runs/transfusion"
    vae: str = "vae-tiny"
    preset: str = "transfusion-tiny"
    scenes: int = 2000
    val_scenes: int = 64
    size: int = 64
    max_objects: int = 4
    steps: int = 2000
    batch_size: int = 16
    lr: float = 1e-3
    warmup: int = 50
    image_first: float = 0.5
    log_every: int = 50
    ckpt_every: int = 500
    eval_items: int = 16
    eval_steps: int = 25
    guidance: float = 3.0
    seed: int = 0
    resume: bool = True
    progress: bool = True
    # added later (kept last so positional construction keeps working)
    patch_size: int | None = None
    model_args: dict[str, Any] = field(default_factory=dict)
    latent_norm: str = "vae"

    def __post_init__(self) -> None:
        for name in ("scenes", "size", "steps", "batch_size", "eval_items", "eval_steps", "max_objects"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.val_scenes < 0:
            raise ValueError(f"val_scenes must be >= 0, got {self.val_scenes}")
        if self.max_objects > 4:
            raise ValueError(f"max_objects must be at most 4, got {self.max_objects}")
        if not 0.0 <= self.image_first <= 1.0:
            raise ValueError(f"image_first must be in [0, 1], got {self.image_first}")
        if self.latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm must be one of {LATENT_NORMS}, got {self.latent_norm!r}")
        if self.patch_size is not None and self.patch_size not in (1, 2, 4):
            raise ValueError(f"patch_size must be 1, 2 or 4 (or None: the preset's), got {self.patch_size}")
        self.model_args = dict(self.model_args)
        for key in ("latent_channels", "patch_size"):
            if key in self.model_args:
                raise ValueError(f"model_args must not set {key} (it comes from the VAE / --patch-size)")

    def model_overrides(self, latent_channels: int) -> dict[str, Any]:
        """Config overrides of the Transfusion preset: the VAE's latent channels, ``patch_size`` if set, then
        ``model_args``."""
        extra = {} if self.patch_size is None else {"patch_size": self.patch_size}
        return {"latent_channels": int(latent_channels), **extra, **self.model_args}


# ---------------------------------------------------------------------------------------------------------------------
# VAE and latents
# ---------------------------------------------------------------------------------------------------------------------


def load_vae(source: str, seed: int = 0) -> nn.Module:
    """A KL-VAE folder (``save_pretrained`` / ``vistok tokenizer train``) or a VAE preset name (random, seeded)."""
    from vistok.hub import from_pretrained
    from vistok.registry import create_model
    from vistok.tokenizers.vae import KLVAE, PRESETS

    path = Path(source).expanduser()
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"--vae {source}: no config.json in that folder (expected a saved VAE)")
        vae = from_pretrained(path)
    elif source in PRESETS:
        torch.manual_seed(seed)
        vae = create_model(source)
    else:
        raise FileNotFoundError(f"--vae {source}: no such folder, and not a VAE preset ({', '.join(PRESETS)})")
    if not isinstance(vae, KLVAE):
        raise ValueError(f"--vae {source} is a {type(vae).__name__}, not a KL-VAE")
    return vae.eval()


def _state_sha(module: nn.Module) -> str:
    h = hashlib.sha256()
    for k, v in sorted(module.state_dict().items()):
        h.update(k.encode())
        h.update(v.detach().float().cpu().numpy().tobytes())
    return h.hexdigest()[:16]


def _scenes(config: TransfusionRunConfig, split: str, length: int):
    from vistok.data.scenes import Scenes

    return Scenes(config.size, length, split, seed=config.seed, objects=(1, config.max_objects))


@torch.no_grad()
def _encode(vae: nn.Module, pixels: Tensor, batch: int = 64) -> Tensor:
    device = next(vae.parameters()).device
    out = [vae.encode(pixels[i : i + batch].to(device)).float().cpu() for i in range(0, len(pixels), batch)]
    return torch.cat(out)


@torch.no_grad()
def _decode(vae: nn.Module, latents: Tensor, batch: int = 64) -> Tensor:
    device = next(vae.parameters()).device
    out = [vae.decode(latents[i : i + batch].to(device)).float().cpu() for i in range(0, len(latents), batch)]
    return torch.cat(out).clamp(-1, 1)


def _pixels(dataset: Any) -> tuple[Tensor, list[str]]:
    items = [dataset[i] for i in range(len(dataset))]
    return torch.stack([it["pixels"] for it in items]), [it["caption"] for it in items]


def encode_scenes(
    vae: nn.Module, config: TransfusionRunConfig, cache: Path, fit_scaling: bool
) -> tuple[Tensor, list[str], dict[str, Any]]:
    """Training latents and captions, from ``cache`` when it matches (VAE weights, size, count, seed, latent
    normalization), else encoded (after fitting the VAE's latent scaling when ``fit_scaling`` — per channel with
    ``config.latent_norm == "channel"``) and written there. Returns (latents, captions, info)."""
    per_channel = config.latent_norm == "channel"
    fit_scaling = fit_scaling or per_channel
    key = {
        "vae_sha": _state_sha(vae),
        "size": config.size,
        "scenes": config.scenes,
        "seed": config.seed,
        "max_objects": config.max_objects,
        "fit_scaling": fit_scaling,
        "latent_norm": config.latent_norm,
    }
    if cache.is_file():
        data = torch.load(cache, map_location="cpu", weights_only=False)
        if data.get("key") == key:
            vae.config.scaling_factor, vae.config.shift_factor = data["scaling"]
            shift, scale = data.get("channel_stats") or (None, None)
            vae.config.channel_shift, vae.config.channel_scale = shift, scale
            return data["latents"], list(data["captions"]), {"cached": True, **key}
    pixels, captions = _pixels(_scenes(config, "train", config.scenes))
    if fit_scaling:
        device = next(vae.parameters()).device
        batches = (pixels[i : i + 64].to(device) for i in range(0, min(len(pixels), 512), 64))
        vae.fit_latent_scaling(batches, per_channel=per_channel)
    latents = _encode(vae, pixels)
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = cache.with_name(f".{cache.name}.tmp{os.getpid()}")
    scaling = (vae.config.scaling_factor, vae.config.shift_factor)
    stats = (vae.config.channel_shift, vae.config.channel_scale) if vae.config.channel_shift is not None else None
    data = {"key": key, "latents": latents, "captions": captions, "scaling": scaling, "channel_stats": stats}
    torch.save(data, tmp)
    os.replace(tmp, cache)
    return latents, captions, {"cached": False, **key}


# ---------------------------------------------------------------------------------------------------------------------
# Loading a run
# ---------------------------------------------------------------------------------------------------------------------


def load_run(model_dir: str | os.PathLike) -> tuple[nn.Module, nn.Module, dict[str, Any]]:
    """(Transfusion, VAE, run record) of a folder written by ``vistok transfusion train`` (``out/model``)."""
    from vistok.hub import from_pretrained

    folder = Path(model_dir).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {model_dir}: no such folder (write one with 'vistok transfusion train')")
    if not (folder / "config.json").is_file() or not (folder / RUN_JSON).is_file():
        raise FileNotFoundError(
            f"--model {model_dir}: not a Transfusion run folder (expected config.json and {RUN_JSON}; "
            "'vistok transfusion train' writes them to OUT/model)"
        )
    record = json.loads((folder / RUN_JSON).read_text())
    model = from_pretrained(folder).eval()
    if type(model).__name__ != "Transfusion":
        raise ValueError(f"--model {model_dir} holds a {type(model).__name__}, not a Transfusion")
    vae_dir = folder / "vae"
    if not vae_dir.is_dir():
        raise FileNotFoundError(f"--model {model_dir}: the VAE folder {vae_dir} is missing")
    return model, from_pretrained(vae_dir).eval(), record


# ---------------------------------------------------------------------------------------------------------------------
# Evaluation
# ---------------------------------------------------------------------------------------------------------------------

_BG_MAX_SPREAD = 45.0  # background: dark, slightly tinted greys
_BG_MAX_MEAN = 120.0
_MAX_PALETTE_DIST = 110.0


def dominant_colour(image: Tensor | np.ndarray, min_fraction: float = 0.01) -> str | None:
    """The scene colour (:data:`vistok.data.samples.SPRITE_COLOURS`) covering most non-background pixels of an image
    ((3, H, W) in [−1, 1] or (H, W, 3) uint8), or None when fewer than ``min_fraction`` of the pixels are close to
    any of them. Background = dark low-saturation pixels; other pixels go to the nearest colour (RGB distance) if
    within reach."""
    from vistok.data.samples import SPRITE_COLOURS
    from vistok.eval.pictures import to_uint8_image

    px = to_uint8_image(image).reshape(-1, 3).astype(np.float32)
    names = list(SPRITE_COLOURS)
    palette = np.asarray([SPRITE_COLOURS[n] for n in names], dtype=np.float32)
    spread = px.max(1) - px.min(1)
    background = (spread < _BG_MAX_SPREAD) & (px.mean(1) < _BG_MAX_MEAN)
    dist = np.linalg.norm(px[:, None, :] - palette[None], axis=-1)
    nearest, best = dist.argmin(1), dist.min(1)
    keep = ~background & (best < _MAX_PALETTE_DIST)
    counts = np.bincount(nearest[keep], minlength=len(names))
    if counts.max() < min_fraction * len(px):
        return None
    return names[int(counts.argmax())]


# fill ratio of a shape's pixels in its bounding box: square 1, circle π/4 ≈ 0.79, upright triangle 0.5
_SHAPE_FILL = {"square": 1.0, "circle": math.pi / 4, "triangle": 0.5}


def dominant_shape(image: Tensor | np.ndarray, colour: str | None = None, min_pixels: int = 12) -> str | None:
    """The shape (square, circle or triangle) of the largest blob of ``colour`` (default: the image's
    :func:`dominant_colour`) in an image, by the blob's fill ratio of its bounding box (square 1, circle π/4,
    triangle 1/2; the nearest wins), or None when there is no blob of at least ``min_pixels`` pixels. A pixel
    statistic, not a classifier: it needs a blob drawn apart from others of its colour."""
    from skimage.measure import label, regionprops

    from vistok.data.samples import SPRITE_COLOURS
    from vistok.eval.pictures import to_uint8_image

    colour = colour or dominant_colour(image)
    if colour is None:
        return None
    px = to_uint8_image(image).astype(np.float32)
    names = list(SPRITE_COLOURS)
    palette = np.asarray([SPRITE_COLOURS[n] for n in names], dtype=np.float32)
    dist = np.linalg.norm(px[:, :, None, :] - palette[None, None], axis=-1)
    spread = px.max(-1) - px.min(-1)
    background = (spread < _BG_MAX_SPREAD) & (px.mean(-1) < _BG_MAX_MEAN)
    mask = (dist.argmin(-1) == names.index(colour)) & (dist.min(-1) < _MAX_PALETTE_DIST) & ~background
    regions = [r for r in regionprops(label(mask, connectivity=1)) if r.area >= min_pixels]
    if not regions:
        return None
    fill = max(regions, key=lambda r: r.area).extent
    return min(_SHAPE_FILL, key=lambda k: abs(_SHAPE_FILL[k] - fill))


def _single_shape(objects: Sequence[dict[str, Any]]) -> str | None:
    shapes = {o["shape"] for o in objects}
    return shapes.pop() if len(shapes) == 1 else None


def _byte_accuracy(pred: Sequence[int], truth: Sequence[int]) -> float:
    """Position-wise agreement over the true caption's bytes + EOS (a shorter prediction counts as wrong there)."""
    return sum(int(i < len(pred) and pred[i] == t) for i, t in enumerate(truth)) / max(len(truth), 1)


def _text_ids(ids: Sequence[int]) -> list[int]:
    from vistok.tokenizers.text import EOS, NUM_BYTES

    out = []
    for i in ids:
        if i == EOS:
            out.append(EOS)
            break
        if i < NUM_BYTES:
            out.append(int(i))
    return out


def _single_colour(objects: Sequence[dict[str, Any]]) -> str | None:
    colours = {o["colour"] for o in objects}
    return colours.pop() if len(colours) == 1 else None


@torch.no_grad()
def evaluate_run(
    model: nn.Module,
    vae: nn.Module,
    config: TransfusionRunConfig,
    train_captions: Sequence[str],
    out_dir: str | os.PathLike,
) -> dict[str, Any]:
    """Held-out caption and colour-probe metrics (see the module docstring); writes ``eval.json`` and
    ``samples.png`` to ``out_dir``."""
    from vistok.eval.pictures import image_grid, save_png
    from vistok.generate.transfusion import caption, generate
    from vistok.tokenizers.text import BOI, BOS, ByteTokenizer

    out = Path(out_dir)
    model.eval()
    tok = ByteTokenizer()
    val = _scenes(config, "heldout", config.val_scenes)
    items = [val[i] for i in range(len(val))]
    paraphrases = [val.describe(i)["captions"] for i in range(len(val))]
    pixels = torch.stack([it["pixels"] for it in items])
    latents = _encode(vae, pixels)
    report: dict[str, Any] = {"heldout_scenes": len(items), "vae_reconstruction_mse": None}
    recon = _decode(vae, latents)
    report["vae_reconstruction_mse"] = float((recon - pixels).pow(2).mean())

    # image → text
    max_new = max(len(c.encode()) for c in [*train_captions, *(it["caption"] for it in items)]) + 8
    n_cap = min(len(items), max(config.eval_items * 2, 32))
    preds: list[list[int]] = []
    for lo in range(0, n_cap, 16):
        preds += caption(model, latents[lo : min(lo + 16, n_cap)], max_new_tokens=max_new, seed=config.seed)
    majority = Counter(train_captions).most_common(1)[0][0]
    maj_ids = tok.encode(majority, bos=False)
    exact = anyp = acc = maj_exact = maj_any = maj_acc = 0.0
    texts = []
    for p, it, paras in zip(preds, items, paraphrases, strict=False):
        truth = tok.encode(it["caption"], bos=False)
        p = _text_ids(p)
        text = tok.decode(p)
        texts.append(text)
        exact += text == it["caption"]
        anyp += text in paras
        acc += _byte_accuracy(p, truth)
        maj_exact += majority == it["caption"]
        maj_any += majority in paras
        maj_acc += _byte_accuracy(maj_ids, truth)
    n = max(len(preds), 1)
    report["image_to_text"] = {
        "items": len(preds),
        "exact_match": exact / n,
        "paraphrase_match": anyp / n,
        "byte_accuracy": acc / n,
        "majority_caption": majority,
        "majority_exact_match": maj_exact / n,
        "majority_paraphrase_match": maj_any / n,
        "majority_byte_accuracy": maj_acc / n,
        "examples": [{"truth": it["caption"], "predicted": t} for it, t in zip(items[:8], texts[:8], strict=False)],
    }

    # text → image: colour probe
    chosen = [i for i, it in enumerate(items) if _single_colour(it["objects"])][: config.eval_items]
    t2i: dict[str, Any] = {"items": len(chosen), "guidance": config.guidance, "steps": config.eval_steps}
    gen_pix = torch.empty(0, 3, *pixels.shape[-2:])
    if chosen:
        prompts = [[[BOS, *tok.encode(items[i]["caption"], bos=False, eos=False), BOI]] for i in chosen]
        hw = tuple(latents.shape[-2:])
        sample = generate(
            model,
            prompts,
            image_size=hw,
            max_images=1,
            max_new_tokens=1,
            steps=config.eval_steps,
            guidance=config.guidance,
            seed=config.seed,
        )
        gen_lat = torch.stack([imgs[0].float().cpu() for imgs in sample.images])
        gen_pix = _decode(vae, gen_lat)
        wanted = [_single_colour(items[i]["objects"]) for i in chosen]
        rng = np.random.default_rng(config.seed)
        others = rng.integers(len(items), size=len(chosen))

        def rate(colours: Sequence[str | None]) -> float:
            return float(np.mean([c == w for c, w in zip(colours, wanted, strict=True)]))

        got = [dominant_colour(x) for x in gen_pix]
        # shape probe: the captioned shape (scenes whose objects all share one) vs the largest blob's fill ratio
        shaped = [j for j, i in enumerate(chosen) if _single_shape(items[i]["objects"])]
        want_shape = [_single_shape(items[chosen[j]]["objects"]) for j in shaped]

        def shape_rate(images: Sequence[Tensor]) -> float | None:
            if not shaped:
                return None
            return float(np.mean([dominant_shape(x) == w for x, w in zip(images, want_shape, strict=True)]))

        t2i |= {
            "shape_items": len(shaped),
            "shape_match": shape_rate([gen_pix[j] for j in shaped]),
            "random_scene_shape_match": shape_rate([pixels[others[j]] for j in shaped]),
            "true_image_shape_match": shape_rate([pixels[chosen[j]] for j in shaped]),
            "vae_reconstruction_shape_match": shape_rate([recon[chosen[j]] for j in shaped]),
        }
        t2i |= {
            "colour_match": rate(got),
            "random_scene_colour_match": rate([dominant_colour(pixels[j]) for j in others]),
            "true_image_colour_match": rate([dominant_colour(pixels[i]) for i in chosen]),
            "vae_reconstruction_colour_match": rate([dominant_colour(recon[i]) for i in chosen]),
            "no_colour_found": float(np.mean([c is None for c in got])),
            "examples": [
                {"caption": items[i]["caption"], "wanted": w, "generated_dominant": g}
                for i, w, g in zip(chosen[:8], wanted[:8], got[:8], strict=True)
            ],
        }
    report["text_to_image"] = t2i

    # picture: T2I rows (true scene, generated image); I2T rows (scene, its VAE reconstruction), predicted caption
    rows, labels = [], []
    for j, i in enumerate(chosen[:6]):
        rows.append([pixels[i], gen_pix[j]])
        labels.append(("T2I: " + items[i]["caption"])[:48])
    for i in range(min(6, len(preds))):
        rows.append([pixels[i], recon[i]])
        labels.append(("I2T: " + texts[i])[:48])
    if rows:
        grid = image_grid(rows, row_labels=labels, col_labels=["scene", "output"])
        report["samples_png"] = str(save_png(grid, out / "samples.png"))
    tmp = out / f".eval.json.tmp{os.getpid()}"
    tmp.write_text(json.dumps(report, indent=2))
    os.replace(tmp, out / "eval.json")
    return report


def format_eval(report: dict[str, Any]) -> str:
    """The held-out metrics as a few readable lines."""
    lines = []
    m = report.get("image_to_text")
    if m:
        lines.append(
            f"image → text ({m['items']} held-out scenes): exact match {m['exact_match']:.3f} (any paraphrase "
            f"{m['paraphrase_match']:.3f}), byte accuracy {m['byte_accuracy']:.3f}; majority caption: exact "
            f"{m['majority_exact_match']:.3f}, byte accuracy {m['majority_byte_accuracy']:.3f}"
        )
    m = report.get("text_to_image")
    if m and m.get("items"):
        lines.append(
            f"text → image ({m['items']} one-colour captions, {m['steps']} DDIM steps, guidance {m['guidance']}): "
            f"dominant colour matches {m['colour_match']:.3f} (random held-out scene "
            f"{m['random_scene_colour_match']:.3f}; probe on the true image {m['true_image_colour_match']:.3f}, "
            "on its VAE reconstruction "
            f"{m['vae_reconstruction_colour_match']:.3f})"
        )
        if m.get("shape_match") is not None:
            lines.append(
                f"text → image shape ({m['shape_items']} captions of one shape): the largest blob's shape matches "
                f"{m['shape_match']:.3f} (random held-out scene {m['random_scene_shape_match']:.3f}; probe on the "
                f"true image {m['true_image_shape_match']:.3f}, on its VAE reconstruction "
                f"{m['vae_reconstruction_shape_match']:.3f})"
            )
    elif m is not None:
        lines.append("text → image: no held-out caption names a single colour (raise --val-scenes)")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TransfusionRunResult:
    model_dir: Path
    eval: dict[str, Any]
    summary: str
    elapsed_s: float


def train_transfusion_run(config: TransfusionRunConfig) -> TransfusionRunResult:
    """Encode (once), train, save and evaluate; see the module docstring."""
    from vistok.hub import save_pretrained
    from vistok.registry import create_model
    from vistok.tokenizers.text import ByteTokenizer
    from vistok.train.loop import TrainConfig
    from vistok.train.transfusion import train_transfusion

    c, t0 = config, time.perf_counter()
    out = Path(c.out)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    vae = load_vae(c.vae, seed=c.seed).to(device)
    fit = (vae.config.scaling_factor == 1.0 and vae.config.shift_factor == 0.0) or c.latent_norm == "channel"
    latents, captions, cache_info = encode_scenes(vae, c, out / LATENTS_FILE, fit)
    lat_hw = tuple(latents.shape[-2:])
    tok = ByteTokenizer()
    longest = max(len(tok.encode(s)) for s in captions)
    torch.manual_seed(c.seed)
    model = create_model(c.preset, **c.model_overrides(latents.shape[1]))
    k = model.config.patch_size
    if lat_hw[0] % k or lat_hw[1] % k:
        raise ValueError(f"latents of {lat_hw} do not split into {k}×{k} patches; change --size or --patch-size")
    seq = longest + 2 + (lat_hw[0] // k) * (lat_hw[1] // k)
    if seq > model.config.max_seq_len:
        raise ValueError(f"documents of {seq} positions exceed the model's max_seq_len {model.config.max_seq_len}")
    train_config = TrainConfig(
        steps=c.steps,
        batch_size=c.batch_size,
        lr=c.lr,
        warmup=min(c.warmup, max(c.steps - 1, 0)),
        weight_decay=0.01,
        log_every=min(c.log_every, c.steps),
        ckpt_every=c.ckpt_every,
        out_dir=str(out),
        resume=c.resume,
        seed=c.seed,
        progress=c.progress,
    )
    result = train_transfusion(model, latents, captions, train_config, image_first=c.image_first)
    model.eval()
    model_dir = save_pretrained(model, out / "model")
    save_pretrained(vae, model_dir / "vae")
    vae_src = Path(c.vae).expanduser()
    record = {
        "vae": {
            "source": str(vae_src.resolve()) if vae_src.is_dir() else c.vae,
            "trained": vae_src.is_dir(),
            "scaling_factor": vae.config.scaling_factor,
            "shift_factor": vae.config.shift_factor,
            "scaling_fitted_here": fit,
            "latent_norm": c.latent_norm,
            "channel_shift": vae.config.channel_shift,
            "channel_scale": vae.config.channel_scale,
            "folder": "vae",
        },
        "image_size": [c.size, c.size],
        "latent_shape": list(latents.shape[1:]),
        "text_tokenizer": {"type": "ByteTokenizer", "vocab_size": len(tok)},
        "train": {
            "scenes": c.scenes,
            "max_objects": c.max_objects,
            "steps": result.step,
            "last_metrics": {k: float(v) for k, v in result.last_metrics.items() if isinstance(v, (int, float))},
            "latents_cached": cache_info["cached"],
        },
        "config": asdict(c),
    }
    text = json.dumps(record, indent=2)
    (model_dir / RUN_JSON).write_text(text)
    (out / RUN_JSON).write_text(text)
    report = evaluate_run(model, vae, c, captions, out) if c.val_scenes else {}
    elapsed = time.perf_counter() - t0
    n_params = sum(p.numel() for p in model.parameters())
    lm = record["train"]["last_metrics"]
    summary = (
        f"Trained {c.preset} ({n_params / 1e6:.2f}M parameters) for {result.step} steps on {len(captions)} captioned "
        f"scenes at {c.size}px, latents {tuple(latents.shape[1:])} from the VAE {record['vae']['source']}"
        f"{'' if record['vae']['trained'] else ' (an untrained preset: pictures will be noise)'}"
        f" ({'reused' if cache_info['cached'] else 'encoded into'} {out / LATENTS_FILE}); last losses: "
        + ", ".join(f"{k} {v:.3f}" for k, v in lm.items() if k in ("loss", "lm", "diffusion"))
        + f". Model, its VAE and {RUN_JSON} in {model_dir} ({elapsed:.0f} s)."
    )
    if report:
        summary += "\n" + format_eval(report) + f"\neval.json and samples.png in {out}."
    return TransfusionRunResult(model_dir, report, summary, elapsed)


# ---------------------------------------------------------------------------------------------------------------------
# Generation and captioning from the command line
# ---------------------------------------------------------------------------------------------------------------------


def generate_images(
    model_dir: str | os.PathLike,
    prompt: str,
    out: str | os.PathLike,
    *,
    n: int = 4,
    steps: int = 50,
    guidance: float = 3.0,
    sampler: str = "ddim",
    seed: int = 0,
) -> str:
    """Generate ``n`` images for ``prompt``, decode them with the run's VAE, and write them as one strip."""
    from vistok.eval.pictures import image_grid, save_png
    from vistok.generate.transfusion import generate
    from vistok.tokenizers.text import BOI, BOS, ByteTokenizer

    if not prompt.strip():
        raise ValueError("--prompt must not be empty")
    if n < 1 or steps < 1:
        raise ValueError(f"--n and --steps must be >= 1, got {n} and {steps}")
    model, vae, record = load_run(model_dir)
    ids = ByteTokenizer().encode(prompt, bos=False, eos=False)
    hw = tuple(record["latent_shape"][-2:])
    t0 = time.perf_counter()
    sample = generate(
        model,
        [[[BOS, *ids, BOI]] for _ in range(n)],
        image_size=hw,
        max_images=1,
        max_new_tokens=1,
        steps=steps,
        sampler=sampler,
        guidance=guidance,
        seed=seed,
    )
    dt = time.perf_counter() - t0
    pix = _decode(vae, torch.stack([imgs[0].float().cpu() for imgs in sample.images]))
    path = save_png(image_grid([list(pix)], col_labels=[f"#{i + 1}" for i in range(n)], scale=2), out)
    return f"Generated {n} image(s) for {prompt!r} ({steps} {sampler} steps, guidance {guidance}) in {dt:.1f} s: {path}"


def caption_files(
    model_dir: str | os.PathLike, images: Sequence[str | os.PathLike], *, temperature: float = 0.0, seed: int = 0
) -> list[str]:
    """Captions of image files (resized and centre-cropped to the run's image size), greedy by default."""
    from vistok.data.images import read_image
    from vistok.data.transforms import apply_box, crop_box, to_tensor
    from vistok.generate.transfusion import caption
    from vistok.tokenizers.text import ByteTokenizer

    if not images:
        raise ValueError("give at least one image to caption")
    for p in images:
        if not Path(p).is_file():
            raise FileNotFoundError(f"{p}: no such image file")
    model, vae, record = load_run(model_dir)
    size = tuple(record["image_size"])
    pics = []
    for p in images:
        img = read_image(p)
        pics.append(to_tensor(apply_box(img, crop_box(img.width, img.height, size, "center"))))
    latents = _encode(vae, torch.stack(pics))
    ids = caption(model, latents, max_new_tokens=160, temperature=temperature, seed=seed)
    tok = ByteTokenizer()
    return [tok.decode(_text_ids(i)) for i in ids]


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------


def _cmd_train(args: argparse.Namespace) -> int:
    cfg = TransfusionRunConfig(
        out=args.out,
        vae=args.vae,
        preset=args.preset,
        patch_size=args.patch_size,
        model_args=dict(args.model_arg),
        latent_norm=args.latent_norm,
        scenes=args.scenes,
        val_scenes=args.val_scenes,
        size=args.size,
        max_objects=args.max_objects,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        image_first=args.image_first,
        log_every=args.log_every,
        ckpt_every=args.ckpt_every,
        eval_items=args.eval_items,
        eval_steps=args.eval_steps,
        guidance=args.guidance,
        seed=args.seed,
        resume=not args.no_resume,
        progress=not args.quiet,
    )
    print(train_transfusion_run(cfg).summary)
    return 0


def _cmd_generate(args: argparse.Namespace) -> int:
    print(
        generate_images(
            args.model,
            args.prompt,
            args.out,
            n=args.n,
            steps=args.steps,
            guidance=args.guidance,
            sampler=args.sampler,
            seed=args.seed,
        )
    )
    return 0


def _cmd_caption(args: argparse.Namespace) -> int:
    caps = caption_files(args.model, args.images, temperature=args.temperature, seed=args.seed)
    for path, text in zip(args.images, caps, strict=True):
        print(text if len(args.images) == 1 else f"{path}: {text}")
    return 0


def add_transfusion_parser(subparsers: Any) -> None:
    """The ``vistok transfusion {train,generate,caption}`` commands."""
    from vistok.registry import parse_override

    fmt = argparse.RawDescriptionHelpFormatter
    g = subparsers.add_parser(
        "transfusion",
        help="Transfusion: one model that captions images and draws them from text (diffusion over VAE latents)",
        description="Train a small Transfusion on the built-in captioned scenes, generate images, caption images.",
    )
    gs = g.add_subparsers(dest="verb", metavar="VERB", required=True)

    p = gs.add_parser(
        "train",
        help="encode scenes once with a VAE, train text → image and image → text, evaluate on held-out scenes",
        description=__doc__,
        epilog=f"example:\n  {TRAIN_EXAMPLE}",
        formatter_class=fmt,
    )
    p.add_argument(
        "--vae", default="vae-tiny", help="a trained VAE folder, or a VAE preset (untrained; default vae-tiny)"
    )
    p.add_argument("--out", default="runs/transfusion", help="run folder (default runs/transfusion)")
    p.add_argument("--preset", default="transfusion-tiny", help="model preset (default transfusion-tiny)")
    p.add_argument(
        "--patch-size",
        type=int,
        choices=(1, 2, 4),
        default=None,
        help="k×k latent patches per image position (default: the preset's, 2); with an f = 4 VAE at 64 px "
        "(16×16 latents) 2 gives 64 patches per image, 4 gives 16",
    )
    p.add_argument(
        "--latent-norm",
        choices=LATENT_NORMS,
        default="vae",
        help="latent normalization for diffusion: 'vae' = the VAE's own (one scale and shift, fitted here if "
        "unset), 'channel' = standardize every latent channel on the training scenes (default vae)",
    )
    p.add_argument(
        "--model-arg",
        type=parse_override,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a model config field, e.g. --model-arg dim=128 --model-arg n_layers=4 (repeatable)",
    )
    p.add_argument("--scenes", type=int, default=2000, help="training scenes (default 2000)")
    p.add_argument("--val-scenes", type=int, default=64, help="held-out scenes for the evaluation (0 = none)")
    p.add_argument("--size", type=int, default=64, help="image size in pixels (default 64)")
    p.add_argument("--max-objects", type=int, default=4, help="at most this many shapes per scene (1-4, default 4)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=50)
    p.add_argument("--image-first", type=float, default=0.5, help="share of image → text documents (default 0.5)")
    p.add_argument("--log-every", type=int, default=50)
    p.add_argument("--ckpt-every", type=int, default=500)
    p.add_argument("--eval-items", type=int, default=16, help="one-colour prompts drawn in the evaluation")
    p.add_argument("--eval-steps", type=int, default=25, help="DDIM steps in the evaluation (default 25)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance in the evaluation")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-resume", action="store_true", help="start afresh even if --out has checkpoints")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_train)

    p = gs.add_parser(
        "generate",
        help="draw images from a caption",
        epilog='example:\n  vistok transfusion generate --model runs/transfusion/model --prompt "a red circle" '
        "--n 4 --out red.png",
        formatter_class=fmt,
    )
    p.add_argument("--model", required=True, help="a run's model folder (OUT/model of 'vistok transfusion train')")
    p.add_argument("--prompt", required=True, help="the caption")
    p.add_argument("--n", type=int, default=4, help="images to draw (default 4)")
    p.add_argument("--steps", type=int, default=50, help="denoising steps (default 50)")
    p.add_argument("--guidance", type=float, default=3.0, help="classifier-free guidance scale, 1 = off (default 3)")
    p.add_argument("--sampler", default="ddim", choices=("ddim", "ddpm"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="transfusion.png", help="output strip (PNG)")
    p.set_defaults(func=_cmd_generate)

    p = gs.add_parser(
        "caption",
        help="caption images",
        epilog="example:\n  vistok transfusion caption --model runs/transfusion/model scene.png",
        formatter_class=fmt,
    )
    p.add_argument("--model", required=True, help="a run's model folder (OUT/model of 'vistok transfusion train')")
    p.add_argument("images", nargs="+", help="image files")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_caption)
