"""Training and sampling MAGVIT-v2's masked token model (:mod:`vistok.models.maskgit`): the ``vistok maskgit train``
and ``vistok maskgit generate`` commands and the functions behind them.

**A run folder** (``--out``, default ``runs/maskgit``) holds everything::

    tokens/train/, tokens/heldout/   token shards (vistok.data.shards), written once by the tokenizer, with labels
    ckpt_*.pt, metrics.jsonl         resume checkpoints and the training log (vistok.train.Trainer)
    model/                           the trained MaskGIT: config.json + model.safetensors (save_pretrained; EMA if on)
    maskgit_run.json                 the run record: which tokenizer made the ids (its folder, or "default" for the
                                     weights shipped with vistok, and its config sha256), pixel size and frames,
                                     grid, class names, held-out metrics, the train config

**Data.** ``data="samples"`` tokenizes random crops (random zoom, flips) of the 7 built-in training photos
(:class:`vistok.data.SamplePhotos`); the class of a crop is its source photo (class k = ``photo_names("train")[k]``).
Held-out items are *new* crops (another seed) of the same photos — the classes are the photos, so a class-conditional
model cannot be evaluated on other photos; they overlap the training crops in content. For a video model (a (T, H, W)
grid) ``"samples"`` means synthetic clips (:class:`vistok.data.SyntheticVideos`); an unconditional video model is
evaluated on clips of the two held-out photos. ``data=FOLDER`` takes images (or, for a video model, videos) from a
folder, labels = first-level subfolder names; a seeded ``heldout_fraction`` of the *files* is held out. ``shards=DIR``
trains on token shards written earlier (``vistok encode FOLDER -o DIR``, or a previous run's ``tokens/train``); the
held-out set is then ``heldout_shards`` or a seeded ``heldout_fraction`` of the items. Token writing resumes after
an interruption; re-running with other data settings into the same folder is refused.

**Model.** The preset's ``codebook_size`` and ``grid`` are replaced by the tokenizer's vocabulary and the data's grid,
and ``num_classes`` by the number of classes in the data (a preset with ``num_classes=0`` stays unconditional);
``model_overrides`` win over all of these (a contradiction with the data is an error).

**Training**: the shared :class:`vistok.train.Trainer` (AdamW, warm-up + cosine, gradient clipping, optional EMA,
checkpoints, resume, DDP under torchrun, bf16 on CUDA) on :meth:`MaskGIT.loss` — cosine-schedule masks, loss on the
masked tokens, class dropout ``p_uncond`` for classifier-free guidance, MaskGIT's label smoothing 0.1. Logged:
``loss``, ``masked_acc``, ``mask_ratio``.

**Held-out evaluation** (at the end, in the summary and ``maskgit_run.json``): every held-out item gets a mask drawn
as in training (r ~ U(0, 1), cosine schedule) from a fixed seed; over all masked tokens: masked-token accuracy (the
argmax id is right) and perplexity exp(mean −log p(id)), with the true class, and for a class-conditional model also
with the null class. The baseline is the unigram model: id frequencies in the training shards (add-one smoothed),
its perplexity on the same masked tokens and the accuracy of always guessing the most frequent id.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from vistok.data.shards import META_NAME, ShardMapDataset, ShardReader, ShardWriter
from vistok.registry import parse_override
from vistok.train.distributed import barrier, cleanup, init_distributed, unwrap_model
from vistok.train.loop import TrainConfig, Trainer
from vistok.train.schedule import SCHEDULES

__all__ = [
    "RUN_FILE",
    "MaskGITRun",
    "MaskGITTrainConfig",
    "MaskGITTrainResult",
    "add_maskgit_parser",
    "build",
    "evaluate_maskgit",
    "generate_image_grid",
    "generate_video",
    "load_maskgit_run",
    "prepare_tokens",
    "train_maskgit",
    "unigram_counts",
]

RUN_FILE = "maskgit_run.json"
RUN_FORMAT = 1
TOKENS_KEY = "vistok_maskgit"  # the key of the data settings in a token folder's meta.json "extra"
DEFAULT_TOKENIZER = "default"  # recorded when the ids come from the tokenizer shipped with vistok
GAP = 2  # white pixels between the pictures of a grid
MASK_GREY = 128  # colour of still-masked token cells in the decoding-steps strip


@dataclass
class MaskGITTrainConfig:
    """Everything a ``vistok maskgit train`` run needs (stored in checkpoints and in ``maskgit_run.json``).

    Data: ``data`` ("samples" or a folder) or ``shards`` (a token-shard folder; ``heldout_shards`` optional);
    ``tokenizer`` a folder / preset / None (the shipped default). ``size`` is the crop size in pixels, ``frames`` the
    clip length for a video model. ``train_items``/``heldout_items``: crops (or clips) to tokenize. Optimization
    defaults follow MaskGIT (AdamW β = (0.9, 0.96), weight decay 0.045, label smoothing 0.1) with a learning rate
    for small models.
    """

    # model
    preset: str = "maskgit-tiny"
    model_overrides: dict[str, Any] = field(default_factory=dict)
    # data
    data: str | None = "samples"
    shards: str | None = None
    heldout_shards: str | None = None
    tokenizer: str | None = None
    size: int = 64
    frames: int = 9
    train_items: int = 4096
    heldout_items: int = 256
    heldout_fraction: float = 0.05
    encode_batch: int = 32
    # optimization
    steps: int = 2000
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.045
    betas: tuple[float, float] = (0.9, 0.96)
    schedule: str = "cosine"
    warmup: int = 100
    min_lr_ratio: float = 0.1
    clip_grad: float | None = 1.0
    ema_decay: float | None = None
    label_smoothing: float = 0.1
    p_uncond: float = 0.1
    # run
    out_dir: str = "runs/maskgit"
    resume: bool = True
    seed: int = 0
    device: str = "auto"
    bf16: bool | None = None
    log_every: int = 10
    ckpt_every: int = 500
    keep_last: int = 2
    eval_batch: int = 64
    progress: bool = True

    def __post_init__(self) -> None:
        self.betas = (float(self.betas[0]), float(self.betas[1]))
        if self.data is None and self.shards is None:
            raise ValueError("give a data source: data ('samples' or a folder) or shards (a token-shard folder)")
        positive = ("size", "frames", "train_items", "encode_batch", "steps", "batch_size", "log_every", "eval_batch")
        for name in positive:
            if getattr(self, name) < 1:
                raise ValueError(f"MaskGITTrainConfig.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("heldout_items", "warmup", "ckpt_every", "keep_last"):
            if getattr(self, name) < 0:
                raise ValueError(f"MaskGITTrainConfig.{name} must be >= 0, got {getattr(self, name)}")
        for name in ("heldout_fraction", "p_uncond", "label_smoothing"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"MaskGITTrainConfig.{name} must be in [0, 1), got {getattr(self, name)}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"MaskGITTrainConfig.schedule must be one of {SCHEDULES}, got {self.schedule!r}")


@dataclass
class MaskGITTrainResult:
    """What :func:`train_maskgit` returns."""

    step: int
    model_dir: Path
    run_file: Path
    metrics: dict[str, Any]
    elapsed_s: float
    summary: str


# ---------------------------------------------------------------------------------------------------------------------
# Tokens: pixels → token shards, once
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Source:
    """Pixels to tokenize: ``item(k) → (pixels (3, H, W) or (3, T, H, W), label)`` for k < ``count``."""

    item: Callable[[int], tuple[Tensor, int]]
    count: int
    classes: list[str]
    settings: dict[str, Any]


def _is_video(config: MaskGITTrainConfig) -> bool:
    from vistok.registry import get_config

    grid = config.model_overrides.get("grid") or get_config(config.preset).grid
    return len(grid) == 3


def _conditional(config: MaskGITTrainConfig) -> bool:
    from vistok.registry import get_config

    return bool(config.model_overrides.get("num_classes", get_config(config.preset).num_classes))


def _sample_source(config: MaskGITTrainConfig, split: str, video: bool) -> _Source:
    """Crops (or clips) of the built-in photos; class = index of the source photo in ``photo_names("train")``."""
    from vistok.data.samples import PHOTOS, SamplePhotos, SyntheticVideos, photo_names

    classes = list(photo_names("train"))
    count = config.train_items if split == "train" else config.heldout_items
    seed = config.seed if split == "train" else config.seed + 1_000_003
    photos = "heldout" if (split == "heldout" and video and not _conditional(config)) else "train"
    if video:
        ds: Dataset = SyntheticVideos(config.frames, config.size, length=count, split=photos, seed=seed)
    else:
        ds = SamplePhotos(config.size, photos, length=count, crop="random", seed=seed)

    def item(k: int) -> tuple[Tensor, int]:
        x = ds[k]
        name = PHOTOS[x["label"]]
        return x["pixels"], classes.index(name) if name in classes else -1

    settings = {"source": "samples", "photos": photos, "video": video, "seed": seed, "count": count}
    return _Source(item, count, classes, settings)


def _folder_source(config: MaskGITTrainConfig, split: str, video: bool) -> _Source:
    """Random crops of the files of a folder; a seeded ``heldout_fraction`` of the files is held out."""
    from vistok.data import ImageFolder, VideoFolder

    root = Path(config.data).expanduser()
    if not root.is_dir():
        raise FileNotFoundError(f"--data {config.data}: no such folder (give a folder or 'samples')")
    if video:
        ds: Any = VideoFolder(
            root, num_frames=config.frames, size=config.size, crop="random", hflip_p=0.5, short="loop", seed=config.seed
        )
    else:
        ds = ImageFolder(root, size=config.size, crop="random", hflip_p=0.5, scale=1.0, seed=config.seed)
    n = len(ds)
    order = np.random.default_rng([config.seed, 7]).permutation(n)
    held = max(1, round(config.heldout_fraction * n)) if n > 1 and config.heldout_fraction > 0 else 0
    files = sorted(order[:held].tolist()) if split == "heldout" else sorted(order[held:].tolist())
    count = (config.train_items if split == "train" else config.heldout_items) if files else 0

    def item(k: int) -> tuple[Tensor, int]:
        ds.set_epoch(k // len(files))
        x = ds[files[k % len(files)]]
        return x["pixels"], int(x["label"])

    settings = {"source": str(root.resolve()), "video": video, "files": len(files), "seed": config.seed}
    return _Source(item, count, list(ds.classes) or ["."], settings | {"count": count})


def _tokenizer_record(tokenizer: Any, source: str | None) -> dict[str, Any]:
    from vistok.tokenizers.api import tokenizer_info

    if source is None:
        where = DEFAULT_TOKENIZER
    elif Path(source).expanduser().exists():
        where = str(Path(source).expanduser().resolve())
    else:
        where = str(source)  # a preset name
    return {"source": where, **tokenizer_info(tokenizer)}


def _encoded_grid(tokenizer: Any, config: MaskGITTrainConfig, video: bool) -> tuple[int, ...]:
    from vistok.tokenizers.api import _device_of

    shape = (1, 3, config.frames, config.size, config.size) if video else (1, 3, config.size, config.size)
    with torch.inference_mode():
        return tuple(tokenizer.encode(torch.zeros(shape, device=_device_of(tokenizer)), pad=True).shape[1:])


def _write_tokens(
    directory: Path, source: _Source, tokenizer: Any, grid: tuple[int, ...], batch: int, progress: bool, desc: str
) -> None:
    """Tokenize ``source`` into the shard folder ``directory`` (resuming a folder written with the same settings)."""
    from tqdm.auto import tqdm

    from vistok.hub import config_to_dict
    from vistok.tokenizers.api import _device_of, tokenizer_info

    info = tokenizer_info(tokenizer)
    settings = source.settings | {"classes": source.classes, "grid": list(grid)}
    if (directory / META_NAME).exists():
        before = json.loads((directory / META_NAME).read_text(encoding="utf-8")).get("extra", {}).get(TOKENS_KEY)
        if before != json.loads(json.dumps(settings)):
            raise ValueError(
                f"{directory} holds tokens written with other data settings ({before} ≠ {settings}); use a new --out "
                "or delete that folder"
            )
    config = config_to_dict(tokenizer.config) if hasattr(tokenizer, "config") else {}
    device = _device_of(tokenizer)
    with ShardWriter(
        directory, info["codebook_size"], info["model_type"], config, grid_shape=grid, extra={TOKENS_KEY: settings}
    ) as writer:
        start = writer.num_items
        with tqdm(total=source.count, initial=start, desc=desc, unit="item", disable=not progress) as bar:
            for lo in range(start, source.count, batch):
                items = [source.item(k) for k in range(lo, min(lo + batch, source.count))]
                x = torch.stack([p for p, _ in items]).to(device)
                with torch.inference_mode():
                    ids = tokenizer.encode(x, pad=True).cpu()
                for ids_k, (_, label) in zip(ids, items):
                    writer.append(ids_k, label)
                bar.update(len(items))


@dataclass
class TokenData:
    """The token shards a run trains and evaluates on, and what they are."""

    train: Dataset
    heldout: Dataset | None
    train_reader: ShardReader
    grid: tuple[int, ...]
    codebook_size: int
    classes: list[str]
    tokenizer: dict[str, Any] | None
    description: str
    folders: dict[str, str]


def _shard_classes(reader: ShardReader) -> list[str]:
    extra = reader.extra
    for key in (TOKENS_KEY, "vistok_encode"):
        if isinstance(extra.get(key), dict) and extra[key].get("classes"):
            return list(extra[key]["classes"])
    labels = reader.labels
    n = int(labels.max()) + 1 if labels is not None and len(labels) else 0
    return [f"class {k}" for k in range(n)]


def _reader_grid(reader: ShardReader, where: str) -> tuple[int, ...]:
    grid = reader.meta.get("grid_shape")
    if grid is None:
        if not len(reader):
            raise ValueError(f"{where}: the shard folder is empty")
        shapes = {reader.grid_shape(i) for i in range(len(reader))}
        if len(shapes) > 1:
            raise ValueError(
                f"{where}: items have different token grids {sorted(shapes)[:4]}; MaskGIT needs one grid "
                "(encode with a fixed --size, e.g. vistok encode FOLDER -o DIR --size 64)"
            )
        grid = next(iter(shapes))
    return tuple(int(g) for g in grid)


def prepare_tokens(config: MaskGITTrainConfig, tokenizer: Any | None = None, progress: bool = True) -> TokenData:
    """Write (rank 0, once) and open the run's token shards; ``tokenizer`` defaults to ``config.tokenizer``."""
    from vistok.train.distributed import is_main

    out = Path(config.out_dir)
    if config.shards is not None:
        return _given_shards(config, tokenizer)
    if tokenizer is None:
        from vistok.tokenizers.api import load_tokenizer

        tokenizer = load_tokenizer(config.tokenizer)
    video = _is_video(config)
    make = _sample_source if config.data == "samples" else _folder_source
    grid = _encoded_grid(tokenizer, config, video)
    sources = {"train": make(config, "train", video), "heldout": make(config, "heldout", video)}
    if sources["train"].count == 0:
        raise ValueError(f"--data {config.data}: no training files left after holding out a fraction")
    if is_main():
        for split, source in sources.items():
            if source.count:
                desc = f"tokenize {split}"
                _write_tokens(out / "tokens" / split, source, tokenizer, grid, config.encode_batch, progress, desc)
    barrier()
    train = ShardMapDataset(out / "tokens" / "train")
    heldout = ShardMapDataset(out / "tokens" / "heldout") if sources["heldout"].count else None
    kind = "clips" if video else "crops"
    what = "the built-in photos" if config.data == "samples" else str(config.data)
    size = f"{config.frames}-frame {config.size}×{config.size}" if video else f"{config.size}×{config.size}"
    return TokenData(
        train=train,
        heldout=heldout,
        train_reader=train.reader,
        grid=grid,
        codebook_size=int(tokenizer.codebook_size),
        classes=sources["train"].classes,
        tokenizer=_tokenizer_record(tokenizer, config.tokenizer),
        description=f"{len(train)} tokenized {size} {kind} of {what}",
        folders={k: str(out / "tokens" / k) for k in ("train", "heldout") if sources[k].count},
    )


def _given_shards(config: MaskGITTrainConfig, tokenizer: Any | None) -> TokenData:
    """Token shards written earlier; the tokenizer is recorded when it matches the shards' tokenizer config."""
    reader = ShardReader(config.shards)
    grid = _reader_grid(reader, config.shards)
    full = ShardMapDataset(config.shards)
    if config.heldout_shards is not None:
        train, heldout = full, ShardMapDataset(config.heldout_shards)
        if _reader_grid(heldout.reader, config.heldout_shards) != grid:
            raise ValueError(f"--heldout-shards {config.heldout_shards}: another token grid than --shards {grid}")
    else:
        n = len(full)
        order = np.random.default_rng([config.seed, 7]).permutation(n)
        held = max(1, round(config.heldout_fraction * n)) if n > 1 and config.heldout_fraction > 0 else 0
        train, heldout = Subset(full, sorted(order[held:].tolist())), Subset(full, sorted(order[:held].tolist()))
        heldout = heldout if held else None
    record = None
    if tokenizer is None:
        from vistok.tokenizers.api import load_tokenizer

        with contextlib.suppress(FileNotFoundError):
            tokenizer = load_tokenizer(config.tokenizer)
    if tokenizer is not None:
        record = _tokenizer_record(tokenizer, config.tokenizer)
        if record["config_sha256"] != reader.tokenizer_config_hash:
            if config.tokenizer is not None:
                raise ValueError(
                    f"--tokenizer {config.tokenizer} is not the tokenizer that wrote --shards {config.shards} "
                    "(its config differs); give the matching --tokenizer, or none"
                )
            record = None  # the default tokenizer did not write these: generate will need --tokenizer
    return TokenData(
        train=train,
        heldout=heldout,
        train_reader=reader,
        grid=grid,
        codebook_size=reader.vocab_size,
        classes=_shard_classes(reader),
        tokenizer=record,
        description=f"{len(train)} items of the token shards {config.shards}",
        folders={"train": str(config.shards), **({"heldout": config.heldout_shards} if config.heldout_shards else {})},
    )


# ---------------------------------------------------------------------------------------------------------------------
# Model, evaluation
# ---------------------------------------------------------------------------------------------------------------------


def build_model(config: MaskGITTrainConfig, data: TokenData) -> Any:
    """The preset with the data's vocabulary, grid and classes (explicit ``model_overrides`` win; a clash raises)."""
    from vistok.registry import create_model, get_config

    base = get_config(config.preset)
    derived: dict[str, Any] = {"codebook_size": data.codebook_size, "grid": tuple(data.grid)}
    if base.num_classes:
        derived["num_classes"] = max(1, len(data.classes))
    overrides = derived | dict(config.model_overrides)
    if "grid" in overrides:
        overrides["grid"] = tuple(overrides["grid"])
    if overrides["grid"] != tuple(data.grid):
        raise ValueError(f"wrong grid: the data holds {tuple(data.grid)} token grids, the model asks for "
                         f"{overrides['grid']}; drop the grid override or change --size/--frames")  # fmt: skip
    if overrides["codebook_size"] < data.codebook_size:
        raise ValueError(
            f"codebook_size {overrides['codebook_size']} is smaller than the tokenizer's {data.codebook_size} codes"
        )
    nc = overrides.get("num_classes", base.num_classes)
    if nc and nc < len(data.classes):
        raise ValueError(f"num_classes={nc} but the data has {len(data.classes)} classes ({', '.join(data.classes)})")
    return create_model(config.preset, **overrides)


def unigram_counts(reader: ShardReader, vocab_size: int | None = None) -> np.ndarray:
    """How often each id occurs in a shard folder (int64, length ``vocab_size``, default the folder's vocabulary)."""
    v = vocab_size or reader.vocab_size
    counts = np.zeros(v, np.int64)
    for i in range(len(reader)):
        counts += np.bincount(np.asarray(reader[i]).ravel().astype(np.int64), minlength=v)[:v]
    return counts


def _batches(dataset: Dataset, batch: int) -> Any:
    for lo in range(0, len(dataset), batch):
        items = [dataset[i] for i in range(lo, min(lo + batch, len(dataset)))]
        yield torch.stack([x["tokens"] for x in items]), torch.tensor([int(x["label"]) for x in items])


@torch.no_grad()
def evaluate_maskgit(
    model: Any, dataset: Dataset, counts: np.ndarray, *, batch_size: int = 64, seed: int = 0
) -> dict[str, Any]:
    """Masked-token accuracy and perplexity on ``dataset`` vs the unigram baseline (see the module docstring)."""
    c = model.config
    device = model.positions.device
    was_training = model.training
    model.eval()
    gen = torch.Generator().manual_seed(seed)
    logq = torch.log(torch.as_tensor(counts[: c.codebook_size] + 1.0, dtype=torch.float64))
    logq = (logq - torch.logsumexp(logq, 0)).to(device)
    mode = int(torch.as_tensor(counts[: c.codebook_size]).argmax())
    sums = dict.fromkeys(("nll", "correct", "uni_nll", "uni_correct", "uncond_nll", "uncond_correct"), 0.0)
    tokens = items = 0
    try:
        for ids, labels in _batches(dataset, batch_size):
            ids = ids.flatten(1).to(device)
            mask = model.sample_mask(ids.shape[0], torch.device("cpu"), gen).to(device)
            inputs = ids.masked_fill(mask, model.mask_id)
            runs = {"": labels.to(device) if c.num_classes else None}
            if c.num_classes:
                runs["uncond_"] = None  # the null class
            for prefix, cls in runs.items():
                logits = model(inputs, cls).float()
                sums[prefix + "nll"] -= float(model.log_prob(logits, ids)[mask].sum())
                hit = (logits.argmax(-1) == model.to_sub(ids)).all(-1)
                sums[prefix + "correct"] += float(hit[mask].sum())
            target = ids[mask]
            sums["uni_nll"] -= float(logq[target].sum())
            sums["uni_correct"] += float((target == mode).sum())
            tokens += int(mask.sum())
            items += ids.shape[0]
    finally:
        model.train(was_training)
    if not tokens:
        return {}
    out = {
        "heldout_items": items,
        "masked_tokens": tokens,
        "masked_accuracy": sums["correct"] / tokens,
        "perplexity": math.exp(sums["nll"] / tokens),
        "unigram_accuracy": sums["uni_correct"] / tokens,
        "unigram_perplexity": math.exp(sums["uni_nll"] / tokens),
        "mask_seed": seed,
    }
    if c.num_classes:
        out["uncond_masked_accuracy"] = sums["uncond_correct"] / tokens
        out["uncond_perplexity"] = math.exp(sums["uncond_nll"] / tokens)
    return out


# ---------------------------------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------------------------------


def _write_json_atomic(path: Path, obj: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=1, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def _train_config(config: MaskGITTrainConfig) -> TrainConfig:
    return TrainConfig(
        steps=config.steps,
        batch_size=config.batch_size,
        lr=config.lr,
        weight_decay=config.weight_decay,
        betas=config.betas,
        schedule=config.schedule,
        warmup=min(config.warmup, config.steps // 2),
        min_lr_ratio=config.min_lr_ratio,
        clip_grad=config.clip_grad,
        ema_decay=config.ema_decay,
        ema_warmup=True,
        log_every=config.log_every,
        ckpt_every=config.ckpt_every,
        keep_last=config.keep_last,
        out_dir=config.out_dir,
        resume=config.resume,
        seed=config.seed,
        bf16=config.bf16,
        progress=config.progress,
    )


def _loss_fn(config: MaskGITTrainConfig) -> Callable[[Any, Any], tuple[Tensor, dict[str, Tensor]]]:
    def loss_fn(model: Any, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
        plain = unwrap_model(model)
        labels = batch["label"] if plain.config.num_classes else None
        out = plain.loss(
            batch["tokens"],
            labels,
            p_uncond=config.p_uncond,
            label_smoothing=config.label_smoothing,
            forward=model,
        )
        return out.loss, {"masked_acc": out.accuracy, "mask_ratio": out.mask.float().mean()}

    return loss_fn


def _fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _summary(
    config: MaskGITTrainConfig, model: Any, data: TokenData, steps: int, elapsed: float, metrics: dict, out: Path
) -> str:
    c = model.config
    grid = "×".join(map(str, c.grid))
    cond = f"{c.num_classes} classes" if c.num_classes else "unconditional"
    if c.cond_frames:
        cond += f", first {c.cond_frames} latent frame(s) given"
    tok = data.tokenizer["source"] if data.tokenizer else "unknown (pass --tokenizer to generate)"
    text = (
        f"Trained MaskGIT {config.preset} ({model.num_params() / 1e6:.2f}M parameters, {grid} grid of "
        f"{c.codebook_size:,} codes, {cond}) for {steps} step(s) in {elapsed:.1f} s on {data.description} "
        f"(tokenizer: {tok})."
    )
    if metrics:
        text += (
            f" Held-out ({metrics['heldout_items']} items, {metrics['masked_tokens']:,} masked tokens, cosine-schedule "
            f"masks): masked-token accuracy {_fmt_pct(metrics['masked_accuracy'])}, perplexity "
            f"{metrics['perplexity']:.1f}, vs the unigram baseline (train-shard id frequencies) "
            f"{_fmt_pct(metrics['unigram_accuracy'])} and {metrics['unigram_perplexity']:.1f}"
        )
        if "uncond_perplexity" in metrics:
            text += (
                f"; with the null class instead of the true one {_fmt_pct(metrics['uncond_masked_accuracy'])} and "
                f"{metrics['uncond_perplexity']:.1f}"
            )
        text += "."
    else:
        text += " No held-out data, so no held-out metrics."
    text += (
        f" Wrote the model to {out / 'model'} (config.json + model.safetensors), the run record to {out / RUN_FILE}, "
        f"tokens to {', '.join(data.folders.values())}, checkpoints and metrics.jsonl to {out}. "
        f"Sample with: vistok maskgit generate --model {out} "
        + (f"--frames CLIP --out {out / 'prediction.mp4'}" if c.cond_frames else f"--out {out / 'samples.png'}")
    )
    return text


def train_maskgit(config: MaskGITTrainConfig, *, tokenizer: Any | None = None) -> MaskGITTrainResult:
    """Tokenize the data (once), train, save the model, evaluate on the held-out items; see the module docstring."""
    from vistok.hub import save_pretrained

    info = init_distributed(config.device)
    out = Path(config.out_dir)
    data = prepare_tokens(config, tokenizer, progress=config.progress and info.is_main)
    model = build_model(config, data)
    run_config = {"maskgit": dataclasses.asdict(config), "model": dataclasses.asdict(model.config)}
    trainer = Trainer(
        model, None, _loss_fn(config), data.train, _train_config(config), info=info, run_config=run_config
    )
    t0 = time.perf_counter()
    result = trainer.fit()
    elapsed = time.perf_counter() - t0
    plain = trainer.raw_model
    metrics: dict[str, Any] = {}
    if info.is_main:
        with trainer.ema.swap() if trainer.ema is not None else contextlib.nullcontext():
            save_pretrained(plain, out / "model")
            if data.heldout is not None and len(data.heldout):
                counts = unigram_counts(data.train_reader, plain.config.codebook_size)
                metrics = evaluate_maskgit(plain, data.heldout, counts, batch_size=config.eval_batch, seed=config.seed)
        record = {
            "vistok_maskgit_run": RUN_FORMAT,
            "model": "model",
            "preset": config.preset,
            "tokenizer": data.tokenizer,
            "kind": "video" if len(data.grid) == 3 else "image",
            "size": config.size,
            "frames": config.frames if len(data.grid) == 3 else None,
            "grid": list(data.grid),
            "classes": data.classes if plain.config.num_classes else [],
            "tokens": data.folders,
            "steps": result.step,
            "heldout": metrics,
            "last_train_metrics": result.last_metrics,
            "train": dataclasses.asdict(config),
        }
        _write_json_atomic(out / RUN_FILE, record)
    barrier()
    summary = _summary(config, plain, data, result.step, elapsed, metrics, out)
    return MaskGITTrainResult(result.step, out / "model", out / RUN_FILE, metrics, elapsed, summary)


# ---------------------------------------------------------------------------------------------------------------------
# Sampling from a run
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class MaskGITRun:
    """A trained model and its run record (``info`` is ``{}`` for a bare model folder)."""

    model: Any
    info: dict[str, Any]
    folder: Path

    @property
    def classes(self) -> list[str]:
        names = list(self.info.get("classes") or [])
        return names or [f"class {k}" for k in range(self.model.config.num_classes)]


def load_maskgit_run(path: str | os.PathLike, device: str | torch.device = "cpu") -> MaskGITRun:
    """A run folder (with ``maskgit_run.json``) or a MaskGIT model folder (``config.json`` + weights)."""
    from vistok.hub import CONFIG_NAME, from_pretrained
    from vistok.models.maskgit import MaskGIT

    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise FileNotFoundError(f"--model {path}: no such folder (give a 'vistok maskgit train' run folder)")
    info: dict[str, Any] = {}
    model_dir = folder
    if (folder / RUN_FILE).is_file():
        info = json.loads((folder / RUN_FILE).read_text(encoding="utf-8"))
        model_dir = folder / info.get("model", "model")
    elif (folder.parent / RUN_FILE).is_file() and (folder / CONFIG_NAME).is_file():
        info = json.loads((folder.parent / RUN_FILE).read_text(encoding="utf-8"))
    if not (model_dir / CONFIG_NAME).is_file():
        raise FileNotFoundError(
            f"--model {path}: no trained model there (expected {RUN_FILE} and model/, or {CONFIG_NAME}); "
            "training writes them when it finishes"
        )
    model = from_pretrained(model_dir, map_location=device)
    if not isinstance(model, MaskGIT):
        raise ValueError(f"--model {path}: holds a {type(model).__name__}, not a MaskGIT")
    return MaskGITRun(model.eval(), info, folder)


def _load_run_tokenizer(run: MaskGITRun, tokenizer: str | None, device: Any) -> Any:
    """The tokenizer that made the run's ids (or ``tokenizer``), checked against the recorded config."""
    from vistok.tokenizers.api import load_tokenizer, tokenizer_info

    record = run.info.get("tokenizer") or {}
    source = tokenizer if tokenizer is not None else record.get("source")
    if source is None and not record and run.info:
        raise ValueError("the run does not record which tokenizer made its ids; pass --tokenizer DIR")
    tok = load_tokenizer(None if source in (None, DEFAULT_TOKENIZER) else source, device=device)
    info = tokenizer_info(tok)
    if record.get("config_sha256") and info["config_sha256"] != record["config_sha256"]:
        raise ValueError(
            f"the tokenizer {source} is not the one that made this run's ids (config sha256 "
            f"{info['config_sha256'][:12]}… vs recorded {record['config_sha256'][:12]}…)"
        )
    if info["codebook_size"] > run.model.config.codebook_size:
        raise ValueError(f"tokenizer has {info['codebook_size']} codes, the model {run.model.config.codebook_size}")
    return tok


def resolve_classes(run: MaskGITRun, classes: Sequence[str | int] | None) -> list[int] | None:
    """Class ids from ids or names (None: every class of a conditional model; [] for an unconditional one)."""
    n = run.model.config.num_classes
    if not n:
        if classes:
            raise ValueError("this MaskGIT is unconditional (trained without classes); drop --class/--classes")
        return None
    names = run.classes
    if not classes:
        return list(range(n))
    out = []
    for c in classes:
        text = str(c)
        if text.lstrip("-").isdigit():
            k = int(text)
            if not 0 <= k < n:
                raise ValueError(f"unknown class {k}: the model has classes 0 … {n - 1} ({_class_list(names)})")
        elif text in names:
            k = names.index(text)
        else:
            raise ValueError(f"unknown class {text!r}; classes: {_class_list(names)}")
        out.append(k)
    return out


def _class_list(names: Sequence[str]) -> str:
    return ", ".join(f"{k} = {name}" for k, name in enumerate(names))


@torch.no_grad()
def _decode(tokenizer: Any, ids: Tensor, batch: int = 32) -> np.ndarray:
    """uint8 pictures (B, H, W, 3) or (B, T, H, W, 3) of id grids (B, *grid)."""
    from vistok.data.transforms import to_uint8
    from vistok.tokenizers.api import _device_of

    out = []
    for chunk in ids.split(batch):
        x = tokenizer.decode(chunk.to(_device_of(tokenizer))).float().cpu()
        out.extend(to_uint8(xi) for xi in x)
    return np.stack(out)


def _tile(rows: list[list[np.ndarray]], gap: int = GAP) -> np.ndarray:
    """Pictures (H, W, 3) in rows → one uint8 image with white gaps (rows may differ in length)."""
    h, w = rows[0][0].shape[:2]
    cols = max(len(r) for r in rows)
    canvas = np.full((len(rows) * (h + gap) - gap, cols * (w + gap) - gap, 3), 255, np.uint8)
    for i, row in enumerate(rows):
        for j, pic in enumerate(row):
            canvas[i * (h + gap) : i * (h + gap) + h, j * (w + gap) : j * (w + gap) + w] = pic
    return canvas


def _save_png(array: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}{path.suffix}")
    Image.fromarray(array).save(tmp, format="PNG")
    os.replace(tmp, path)
    return path


def _steps_strip(model: Any, tokenizer: Any, history_ids: Tensor, history_mask: Tensor) -> list[list[np.ndarray]]:
    """One row per sample: the grid after each step, still-masked token cells painted grey.

    Tokens are fixed once revealed, so each step is decoded with the final ids under its masked cells (a token's pixels
    depend on its neighbours through the decoder): revealed cells look exactly as they will in the final picture.
    """
    steps, b = history_ids.shape[:2]
    final = history_ids[-1:].expand_as(history_ids)
    pics = _decode(tokenizer, torch.where(history_mask, final, history_ids).flatten(0, 1))
    pics = pics.reshape(steps, b, *pics.shape[1:])
    gh, gw = model.config.grid[-2:]
    h, w = pics.shape[-3:-1]
    cell = np.kron(history_mask.view(steps, b, gh, gw).cpu().numpy(), np.ones((h // gh, w // gw), bool))
    pics = pics.copy()
    pics[cell] = MASK_GREY
    return [[pics[t, i] for t in range(steps)] for i in range(b)]


def _real_examples(run: MaskGITRun, tokenizer: Any, class_id: int | None, k: int) -> list[np.ndarray]:
    """Up to ``k`` decoded training items of a class (the tokenizer's rendering of real data), for comparison."""
    folder = (run.info.get("tokens") or {}).get("train")
    if not k or not folder or not Path(folder).is_dir():
        return []
    reader = ShardReader(folder, verify=False)
    labels = reader.labels
    pick = [i for i in range(len(reader)) if class_id is None or labels is None or labels[i] == class_id][:k]
    if not pick:
        return []
    ids = torch.stack([torch.from_numpy(reader[i].astype(np.int64)) for i in pick])
    return list(_decode(tokenizer, ids))


def generate_image_grid(
    run: MaskGITRun,
    tokenizer: Any,
    classes: list[int] | None,
    n: int,
    *,
    steps: int = 12,
    guidance_scale: float = 0.0,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    top_k: int | None = None,
    seed: int = 0,
    batch: int = 64,
    real: int = 0,
    history: bool = False,
) -> tuple[np.ndarray, np.ndarray | None, Tensor]:
    """(grid image, decoding-steps strip or None, ids): one row per class (``n`` samples; ``real`` decoded training
    items of that class after them), or rows of up to 8 for an unconditional model."""
    from vistok.generate.maskgit import maskgit_generate

    model = run.model
    device = model.positions.device
    labels = [c for c in classes for _ in range(n)] if classes is not None else None
    total = len(labels) if labels is not None else n
    gen = torch.Generator(device).manual_seed(seed)
    ids, hist = [], None
    for lo in range(0, total, batch):
        cls = labels[lo : lo + batch] if labels is not None else None
        out = maskgit_generate(
            model,
            min(batch, total - lo),
            steps=steps,
            class_ids=cls,
            guidance_scale=guidance_scale,
            temperature=temperature,
            choice_temperature=choice_temperature,
            top_k=top_k,
            generator=gen,
            return_history=history and lo == 0,
        )
        if history and lo == 0:
            hist, out = out, out.ids
        ids.append(out)
    ids_all = torch.cat(ids)
    pics = list(_decode(tokenizer, ids_all))
    if classes is not None:
        rows = [pics[i * n : (i + 1) * n] + _real_examples(run, tokenizer, c, real) for i, c in enumerate(classes)]
    else:
        rows = [pics[i : i + 8] for i in range(0, len(pics), 8)]
    strip = None
    if hist is not None:
        # the first sample of each row (up to 8 rows)
        first = [i * n for i in range(len(classes))][:8] if classes is not None else list(range(min(8, total)))
        first = [i for i in first if i < hist.ids.shape[0]]
        strip = _tile(_steps_strip(model, tokenizer, hist.history_ids[:, first], hist.history_mask[:, first]))
    return _tile(rows), strip, ids_all


def generate_video(
    run: MaskGITRun,
    tokenizer: Any,
    clip: str | os.PathLike,
    n: int = 1,
    *,
    steps: int = 12,
    temperature: float = 1.0,
    choice_temperature: float = 4.5,
    top_k: int | None = None,
    seed: int = 0,
) -> dict[str, Any]:
    """Condition on the first latent frame(s) of ``clip``, generate the rest ``n`` times; returns frames and PSNRs.

    ``truth`` (T, H, W, 3) the clip's frames, ``recon`` its tokenizer reconstruction, ``samples`` (n, T, H, W, 3),
    ``given_frames`` the pixel frames the conditioning latent frames cover, and PSNRs (dB) over the predicted frames:
    ``psnr`` per sample, ``psnr_recon`` (the tokenizer's ceiling), ``psnr_copy`` (repeating the last given frame).
    """
    from vistok.eval.metrics import psnr
    from vistok.generate.maskgit import maskgit_generate
    from vistok.tokenizers.api import encode_pixels, read_pixels

    model = run.model
    c = model.config
    size = int(run.info.get("size") or 0) or None
    frames = run.info.get("frames")
    pixels = read_pixels(clip, size=size, frames=frames)
    if pixels.kind != "video":
        raise ValueError(f"--frames {clip}: not a video file")
    ids = encode_pixels(tokenizer, pixels)
    if tuple(ids.shape) != c.grid:
        raise ValueError(
            f"wrong grid: {clip} gives a {'×'.join(map(str, ids.shape))} token grid, the model expects "
            f"{'×'.join(map(str, c.grid))} (it was trained on {frames}-frame {size}×{size} clips; the clip has "
            f"{pixels.source_size[0]} frames of {pixels.source_size[1]}×{pixels.source_size[2]})"
        )
    device = model.positions.device
    gen = torch.Generator(device).manual_seed(seed)
    out = maskgit_generate(
        model,
        n,
        steps=steps,
        cond_ids=ids.to(device),
        temperature=temperature,
        choice_temperature=choice_temperature,
        top_k=top_k,
        generator=gen,
    )
    from vistok.data.transforms import to_uint8

    truth = to_uint8(pixels.pixels)
    t = truth.shape[0]
    samples = _decode(tokenizer, out.cpu())[:, :t]
    recon = _decode(tokenizer, ids[None])[0, :t]
    tf = int(getattr(tokenizer, "temporal_factor", 1))
    given = min(t, 1 + tf * (c.cond_frames - 1))

    def score(x: np.ndarray) -> float:
        a = torch.from_numpy(np.ascontiguousarray(x[given:])).permute(3, 0, 1, 2)[None]
        b = torch.from_numpy(np.ascontiguousarray(truth[given:])).permute(3, 0, 1, 2)[None]
        return float(psnr(a, b)[0]) if given < t else float("nan")

    copy = np.repeat(truth[given - 1 : given], t, axis=0)
    return {
        "truth": truth,
        "recon": recon,
        "samples": samples,
        "ids": out.cpu(),
        "given_frames": given,
        "psnr": [score(s) for s in samples],
        "psnr_recon": score(recon),
        "psnr_copy": score(copy),
        "fps": pixels.fps,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Command line: `vistok maskgit {train,generate}`
# ---------------------------------------------------------------------------------------------------------------------

TRAIN_EXAMPLE = (
    "OMP_NUM_THREADS=1 vistok maskgit train --data samples --size 64 --preset maskgit-small --steps 1500 "
    "--out runs/maskgit\n"
    "  vistok maskgit train --data ~/images --size 128 --tokenizer runs/tok/final --out runs/mg --steps 20000\n"
    "  vistok maskgit train --preset maskgit-tiny-video --data samples --size 64 --frames 9 --out runs/mg-video"
)
GENERATE_EXAMPLE = (
    "vistok maskgit generate --model runs/maskgit --classes 0 1 2 --n 8 --steps 12 --guidance 2.0 --seed 0 "
    "--out grid.png --history steps.png\n"
    "  vistok maskgit generate --model runs/mg-video --frames clip.mp4 --n 2 --out prediction.mp4"
)


def _add_train_arguments(p: argparse.ArgumentParser) -> None:
    d = MaskGITTrainConfig()
    p.add_argument("--preset", default=d.preset, help=f"MaskGIT preset (default {d.preset}; maskgit-small for a demo)")
    p.add_argument("--model-arg", type=parse_override, action="append", default=[], metavar="KEY=VALUE",
                   help="override a model config field, e.g. --model-arg n_layers=6 (repeatable)")  # fmt: skip
    p.add_argument("--data", default=None, help="'samples' (the built-in photos) or an image/video folder")
    p.add_argument("--shards", default=None, metavar="DIR", help="train on a token-shard folder instead of --data")
    p.add_argument("--heldout-shards", default=None, metavar="DIR", help="held-out token shards (with --shards)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder or preset (default: the one shipped)")
    p.add_argument("--size", type=int, default=d.size, help=f"crop size in pixels (default {d.size})")
    p.add_argument("--frames", type=int, default=d.frames, help=f"frames per clip, video models (default {d.frames})")
    p.add_argument("--train-items", type=int, default=d.train_items, help="crops/clips to tokenize for training")
    p.add_argument("--heldout-items", type=int, default=d.heldout_items, help="held-out crops/clips to tokenize")
    p.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="token grids per device per step")
    p.add_argument("--lr", type=float, default=d.lr, help=f"peak learning rate (default {d.lr})")
    p.add_argument("--warmup", type=int, default=d.warmup, help="linear warm-up steps, then cosine")
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--label-smoothing", type=float, default=d.label_smoothing)
    p.add_argument("--p-uncond", type=float, default=d.p_uncond, help="class dropout for classifier-free guidance")
    p.add_argument("--ema", type=float, default=None, metavar="DECAY", help="keep an EMA of the weights (e.g. 0.999)")
    p.add_argument("--out", default=d.out_dir, help=f"run folder (default {d.out_dir})")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the latest checkpoint in --out (default on)")  # fmt: skip
    p.add_argument("--log-every", type=int, default=d.log_every)
    p.add_argument("--ckpt-every", type=int, default=d.ckpt_every)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--device", choices=("auto", "cpu", "cuda"), default=d.device)
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None, help="default: on with CUDA")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")


def config_from_args(args: argparse.Namespace) -> MaskGITTrainConfig:
    """The :class:`MaskGITTrainConfig` of parsed ``vistok maskgit train`` arguments."""
    return MaskGITTrainConfig(
        preset=args.preset,
        model_overrides=dict(args.model_arg),
        data=args.data if args.shards is None else None,
        shards=args.shards,
        heldout_shards=args.heldout_shards,
        tokenizer=args.tokenizer,
        size=args.size,
        frames=args.frames,
        train_items=args.train_items,
        heldout_items=args.heldout_items,
        steps=args.steps,
        batch_size=args.batch_size,
        lr=args.lr,
        warmup=args.warmup,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        p_uncond=args.p_uncond,
        ema_decay=args.ema,
        out_dir=args.out,
        resume=args.resume,
        log_every=args.log_every,
        ckpt_every=args.ckpt_every,
        seed=args.seed,
        device=args.device,
        bf16=args.bf16,
        progress=not args.quiet,
    )


def run_train_command(args: argparse.Namespace) -> int:
    """Handler of ``vistok maskgit train``."""
    if args.data is None and args.shards is None:
        raise ValueError("give --data samples|FOLDER or --shards DIR")
    from vistok.registry import UnknownModelError

    try:
        config = config_from_args(args)
        result = train_maskgit(config)
    except UnknownModelError as e:
        raise ValueError(str(e)) from None
    finally:
        cleanup()
    if os.environ.get("RANK", "0") == "0":
        print(result.summary)
    return 0


def _add_generate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", required=True, metavar="DIR", help="a 'vistok maskgit train' run folder")
    p.add_argument("--class", dest="class_", default=None, metavar="N", help="one class (id or name)")
    p.add_argument("--classes", nargs="+", default=None, metavar="N", help="several classes, one row each")
    p.add_argument("--n", type=int, default=None, help="samples per class (default 8; video: 1)")
    p.add_argument("--steps", type=int, default=12, help="decoding steps (default 12)")
    p.add_argument("--guidance", type=float, default=0.0, help="classifier-free guidance scale s (default 0)")
    p.add_argument("--temperature", type=float, default=1.0, help="sampling temperature (0 = argmax)")
    p.add_argument("--choice-temperature", type=float, default=4.5, help="Gumbel noise on the confidences")
    p.add_argument("--top-k", type=int, default=None, help="sample from the k most likely ids of each head")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="maskgit_samples.png", help="output PNG (video: .mp4 plus a .png strip)")
    p.add_argument("--history", default=None, metavar="PNG", help="also write the decoding steps as a strip")
    p.add_argument("--real", type=int, default=0, metavar="K", help="append K decoded training items per class")
    p.add_argument("--frames", default=None, metavar="CLIP", help="video model: the clip whose first frames are given")
    p.add_argument("--tokenizer", default=None, help="override the tokenizer recorded in the run")
    p.add_argument("--device", default=None, help="cpu / cuda (default: CUDA when available)")


def _video_outputs(result: dict[str, Any], out: Path) -> list[Path]:
    """MP4 (truth | tokenizer reconstruction | samples, side by side) and a PNG strip (one row each)."""
    from vistok.data.video import write_video

    pictures = [result["truth"], result["recon"], *result["samples"]]
    t = pictures[0].shape[0]
    written = []
    if out.suffix.lower() != ".png":
        frames = np.stack([_tile([[p[i] for p in pictures]]) for i in range(t)])
        frames = frames[:, : frames.shape[1] // 2 * 2, : frames.shape[2] // 2 * 2]
        written.append(write_video(out, frames, fps=result["fps"] or 8.0))
    written.append(_save_png(_tile([list(p) for p in pictures]), out.with_suffix(".png")))
    return written


def run_generate_command(args: argparse.Namespace) -> int:
    """Handler of ``vistok maskgit generate``."""
    from vistok.tokenizers.api import _pick_device

    device = _pick_device(args.device)
    run = load_maskgit_run(args.model, device)
    tokenizer = _load_run_tokenizer(run, args.tokenizer, device)
    out = Path(args.out)
    c = run.model.config
    if c.cond_frames:
        if args.frames is None:
            raise ValueError(
                f"this model predicts video from its first {c.cond_frames} latent frame(s): give --frames CLIP"
            )
        n = args.n or 1
        res = generate_video(run, tokenizer, args.frames, n, steps=args.steps, temperature=args.temperature,
                             choice_temperature=args.choice_temperature, top_k=args.top_k, seed=args.seed)  # fmt: skip
        written = _video_outputs(res, out)
        scores = ", ".join(f"{p:.2f}" for p in res["psnr"])
        print(
            f"Predicted {len(res['samples'])} continuation(s) of {args.frames} from its first {res['given_frames']} "
            f"frame(s) ({c.cond_frames} latent frame(s)) in {args.steps} MaskGIT steps: PSNR over the predicted "
            f"frames {scores} dB vs the tokenizer's own reconstruction {res['psnr_recon']:.2f} dB and repeating the "
            f"last given frame {res['psnr_copy']:.2f} dB. Wrote {', '.join(map(str, written))} (rows/columns: truth, "
            "reconstruction, samples)."
        )
        return 0
    if args.frames is not None:
        raise ValueError("--frames is for video models (trained with cond_frames); this model makes images")
    wanted = ([args.class_] if args.class_ is not None else []) + list(args.classes or [])
    classes = resolve_classes(run, wanted)
    n = args.n or 8
    if n < 1:
        raise ValueError(f"--n must be >= 1, got {n}")
    grid, strip, _ = generate_image_grid(
        run, tokenizer, classes, n, steps=args.steps, guidance_scale=args.guidance, temperature=args.temperature,
        choice_temperature=args.choice_temperature, top_k=args.top_k, seed=args.seed, real=args.real,
        history=args.history is not None,
    )  # fmt: skip
    written = [_save_png(grid, out)]
    if strip is not None:
        written.append(_save_png(strip, Path(args.history)))
    names = run.classes
    what = f"{n} per class for {', '.join(names[k] for k in classes)}" if classes is not None else f"{n} unconditional"
    real = f", each row followed by {args.real} decoded training item(s)" if args.real else ""
    print(
        f"Generated {what} ({c.num_tokens} tokens each, {args.steps} steps, guidance {args.guidance}, seed "
        f"{args.seed}){real}; wrote {', '.join(map(str, written))}."
    )
    return 0


def add_maskgit_parser(subparsers: Any) -> argparse.ArgumentParser:
    """Add the ``maskgit`` group with its ``train`` and ``generate`` verbs to the top-level ``vistok`` subparsers."""
    fmt = argparse.RawDescriptionHelpFormatter
    g = subparsers.add_parser(
        "maskgit",
        help="train and sample MAGVIT-v2's masked token model (MaskGIT)",
        description="Train and sample MAGVIT-v2's masked token model (MaskGIT) on token grids.",
    )
    gs = g.add_subparsers(dest="verb", metavar="VERB", required=True)
    p = gs.add_parser(
        "train",
        help="tokenize images/videos once and train a MaskGIT on the token grids",
        description=(
            "Tokenize the data once into token shards (--out/tokens), train a bidirectional masked token model\n"
            "(cosine mask schedule, class dropout for guidance), save it to --out/model and report held-out\n"
            "masked-token accuracy and perplexity against the unigram baseline. Resumes from --out."
        ),
        epilog=f"example:\n  {TRAIN_EXAMPLE}",
        formatter_class=fmt,
    )
    _add_train_arguments(p)
    p.set_defaults(func=run_train_command)
    p = gs.add_parser(
        "generate",
        help="sample token grids with MaskGIT decoding and decode them to a PNG grid (or a video prediction)",
        description=(
            "Sample with MaskGIT's iterative decoding (cosine schedule, Gumbel-perturbed confidences,\n"
            "classifier-free guidance) and decode the ids with the run's tokenizer: a PNG grid, one row per class;\n"
            "for a video model, continue the first frame(s) of --frames CLIP and compare with the truth (PSNR)."
        ),
        epilog=f"example:\n  {GENERATE_EXAMPLE}",
        formatter_class=fmt,
    )
    _add_generate_arguments(p)
    p.set_defaults(func=run_generate_command)
    return g


build = add_maskgit_parser
