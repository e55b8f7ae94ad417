"""DiGIT's discriminative tokenizer (Zhu et al., NeurIPS 2024): k-means over a self-supervised encoder's patch features.

A picture's token ids are the nearest k-means centroids of its patch features::

    f = LN(z_l(x))[patches]          (B, h, w, C)   hidden state l of a frozen SSL ViT, final LayerNorm applied
    id(i, j) = argmin_k ‖f_ij − c_k‖²                 c_1 … c_K fitted by k-means on features of many pictures

The tokenizer has no decoder: DiGIT renders pixels with a separately trained model conditioned on these ids
(:mod:`vistok.tokenizers.digit_decoder`: a convolutional decoder over the id grid, ``vistok digit decoder``).

**Which features.** DiGIT reads DINOv2 ViT-B/14 (with registers) at the third block from the end, patch tokens only,
and fits K = 8,192 centroids (16k for large) with faiss k-means (its ``preprocess/run.sh`` dumps features with
``--layer 3`` into ``dino_short_224_l3`` and clusters them with ``--backend faiss --cluster-num 8192``). ``layer``
indexes the hidden states as
Hugging Face numbers them (``hidden_states[0]`` = the embeddings, ``hidden_states[l]`` = the output of block l), so
the default ``layer=-3`` is the output of the third block from the end. The final LayerNorm is applied to that
intermediate block (``norm=True``), as DINOv2's own ``get_intermediate_layers(x, n, norm=True)`` does (and Hugging
Face's ``Dinov2Backbone`` with ``apply_layernorm=True``); DiGIT's ``dump_features.py`` itself was not available to
check, so this follows the DINOv2 convention the paper's encoder ships with (``norm=False`` gives the raw block).
Note that in Hugging Face's ``Dinov2Model`` ``hidden_states[-1]`` is *before* the norm and only
``last_hidden_state`` after it, so the norm is applied here explicitly (the tests compare against
``output_hidden_states=True`` and a forward hook on the block). ``[CLS]`` and register tokens are dropped: the patch
tokens are the last ``h·w`` tokens of the sequence.

**Encoders** share one interface, :class:`FeatureEncoder`: ``features(pixels (B, 3, H, W) in [-1, 1]) → (B, h, w,
C)``. :class:`HFFeatureEncoder` loads a Hugging Face DINOv2 / DINOv2-with-registers / ViT (any ``AutoModel`` vision
transformer) from a *local* folder (nothing is downloaded) and converts [-1, 1] pixels to its expected
normalisation (``image_mean`` / ``image_std`` from the folder's ``preprocessor_config.json``, else ImageNet's);
:class:`ViTFeatureEncoder` wraps vistok's own ViT (:mod:`vistok.models.vit`, trained with
:mod:`vistok.train.dino`), which reads [-1, 1] pixels directly. With ``image_size`` set, pictures are resized
(bicubic, antialiased) to ``image_size²`` first (DiGIT: 256 → 224 for patch 14, a 16×16 grid); otherwise their
sides must be multiples of the patch size.

**Fitting** (:meth:`DigitTokenizer.fit`) streams the pictures batch by batch through the encoder. The k-means++
seeding sample is drawn the same way whatever the storage: each feature batch ``j`` gets uniform keys from a
generator seeded with ``(seed, j)`` and the rows with the smallest keys are kept (bottom-k sampling); the
centroids are then fitted by :class:`vistok.quantizers.kmeans.KMeans` from those seeds on all the features, kept in
memory (``cache="memory"``), recomputed by the encoder in every pass (``"stream"``: memory bounded by one batch), or
written once to a float32 file in a folder and read back in chunks (``cache=FOLDER``: DiGIT's feature dump). The
three give the same centroids (up to float summation order) and the same ids.

**Saving.** ``save_pretrained`` writes ``config.json`` + ``model.safetensors`` with the centroids; a vistok ViT's
weights go into the same file; a Hugging Face encoder is stored as its folder's absolute path and layer, and loading
refuses clearly when that folder is gone (``from_pretrained(dir, hf_path=NEW)`` points it elsewhere).
:func:`tokenize_to_shards` pre-tokenizes a dataset once into resumable token shards with labels.
"""

from __future__ import annotations

import colorsys
import hashlib
import inspect
import json
import os
import sys
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw
from torch import Tensor, nn

from vistok._optional import require
from vistok.hub import PretrainedMixin, config_to_dict
from vistok.models.vit import ViT, ViTConfig
from vistok.quantizers.kmeans import KMeans
from vistok.registry import PresetMixin, register_model

__all__ = [
    "DIGIT_PRESETS",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "DigitConfig",
    "DigitTokenizer",
    "FeatureEncoder",
    "HFFeatureEncoder",
    "ViTFeatureEncoder",
    "build_encoder",
    "check_pixels",
    "cluster_stats",
    "palette",
    "pixel_batches",
    "token_map_picture",
    "tokenize_to_shards",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_RANGE_SLACK = 1e-3  # pixels may overshoot [-1, 1] by this much (resampling); more is a range error
Cache = Literal["memory", "stream"] | str | os.PathLike


# ---------------------------------------------------------------------------------------------------------------------
# Pixels
# ---------------------------------------------------------------------------------------------------------------------


def check_pixels(pixels: Any) -> Tensor:
    """``pixels`` if it is a float ``(B, 3, H, W)`` tensor in [-1, 1]; else a ValueError / TypeError saying why."""
    if not isinstance(pixels, Tensor):
        raise TypeError(f"expected pixels as a torch.Tensor (B, 3, H, W) in [-1, 1], got {type(pixels).__name__}")
    if pixels.ndim != 4 or pixels.shape[1] != 3:
        raise ValueError(f"expected pixels of shape (B, 3, H, W), got {tuple(pixels.shape)}")
    if not pixels.is_floating_point():
        raise TypeError(f"expected float pixels in [-1, 1], got dtype {pixels.dtype} (uint8 images: x / 127.5 - 1)")
    if pixels.numel():
        lo, hi = float(pixels.min()), float(pixels.max())
        if not (lo >= -1 - _RANGE_SLACK and hi <= 1 + _RANGE_SLACK):
            raise ValueError(f"expected pixels in [-1, 1], got values in [{lo:.4g}, {hi:.4g}]")
    return pixels


def _resize(pixels: Tensor, size: int | None) -> Tensor:
    if size is None or tuple(pixels.shape[-2:]) == (size, size):
        return pixels
    out = F.interpolate(pixels.float(), size=(size, size), mode="bicubic", align_corners=False, antialias=True)
    return out.clamp_(-1, 1)


def _grid(height: int, width: int, patch: int, image_size: int | None, what: str) -> tuple[int, int]:
    if image_size is not None:
        height = width = image_size
    if height % patch or width % patch or height < patch or width < patch:
        raise ValueError(
            f"image size {height}x{width} is not a multiple of the {what} patch size {patch}: crop or resize the "
            f"pictures to multiples of {patch}, or set image_size to resize them first"
        )
    return height // patch, width // patch


# ---------------------------------------------------------------------------------------------------------------------
# Feature encoders
# ---------------------------------------------------------------------------------------------------------------------


class FeatureEncoder(ABC):
    """Patch features of a frozen encoder: ``features(pixels (B, 3, H, W) in [-1, 1]) → (B, h, w, C)`` float32."""

    kind: str = ""
    layer: int
    norm: bool
    image_size: int | None

    @property
    @abstractmethod
    def dim(self) -> int:
        """Feature channels C."""

    @property
    @abstractmethod
    def patch_size(self) -> int:
        """Pixels per token side."""

    @property
    @abstractmethod
    def device(self) -> torch.device:
        """Where the encoder runs."""

    @abstractmethod
    def _features(self, pixels: Tensor) -> Tensor:
        """Checked pixels on the encoder's device, resized as configured → ``(B, h, w, C)``."""

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid ``(h, w)`` of ``height × width`` pictures (after the ``image_size`` resize, if any)."""
        return _grid(height, width, self.patch_size, self.image_size, f"{self.kind} encoder's")

    @torch.no_grad()
    def features(self, pixels: Tensor) -> Tensor:
        """Float32 patch features ``(B, h, w, C)`` of pixels ``(B, 3, H, W)`` in [-1, 1], on the encoder's device."""
        check_pixels(pixels)
        self.token_grid(pixels.shape[2], pixels.shape[3])
        x = _resize(pixels.to(self.device, torch.float32), self.image_size)
        return self._features(x).float()

    def config_fields(self) -> dict[str, Any]:
        """The :class:`DigitConfig` fields that rebuild this encoder."""
        return {"encoder": self.kind, "layer": self.layer, "norm": self.norm, "image_size": self.image_size}


class ViTFeatureEncoder(nn.Module, FeatureEncoder):
    """vistok's :class:`~vistok.models.vit.ViT`: hidden state ``layer`` after the final norm, ``[CLS]`` dropped."""

    kind = "vit"

    def __init__(self, vit: ViT, layer: int = -3, norm: bool = True, image_size: int | None = None):
        super().__init__()
        if not isinstance(vit, ViT):
            raise TypeError(f"ViTFeatureEncoder wraps a vistok.models.vit.ViT, got {type(vit).__name__}")
        vit._index(layer)  # validates the layer
        self.vit = vit.eval().requires_grad_(False)
        self.layer, self.norm, self.image_size = int(layer), bool(norm), image_size

    @property
    def dim(self) -> int:
        return self.vit.config.dim

    @property
    def patch_size(self) -> int:
        return self.vit.config.patch_size

    @property
    def device(self) -> torch.device:
        return self.vit.pos_embed.device

    def train(self, mode: bool = True) -> ViTFeatureEncoder:
        return super().train(False)  # frozen: always in eval mode

    def _features(self, pixels: Tensor) -> Tensor:
        return self.vit.patch_features(pixels.to(self.vit.pos_embed.dtype), self.layer, self.norm)

    def config_fields(self) -> dict[str, Any]:
        return {**super().config_fields(), "vit": self.vit.config, "hf_path": None}


def _read_norm(path: Path) -> tuple[tuple[float, ...], tuple[float, ...], str]:
    """(mean, std, source) from the folder's ``preprocessor_config.json``, else ImageNet's."""
    proc = path / "preprocessor_config.json"
    if proc.is_file():
        try:
            data = json.loads(proc.read_text(encoding="utf-8"))
            mean, std = tuple(float(v) for v in data["image_mean"]), tuple(float(v) for v in data["image_std"])
            if len(mean) == 3 and len(std) == 3:
                return mean, std, str(proc)
        except (KeyError, TypeError, ValueError):
            pass
    return IMAGENET_MEAN, IMAGENET_STD, "ImageNet defaults"


def _quiet_load(transformers: Any, path: Path) -> nn.Module:
    """``AutoModel.from_pretrained(path, local_files_only=True)`` without transformers' weight-loading progress bar."""
    bars = transformers.utils.logging
    was_on = bars.is_progress_bar_enabled()
    bars.disable_progress_bar()
    try:
        return transformers.AutoModel.from_pretrained(str(path), local_files_only=True)
    finally:
        if was_on:
            bars.enable_progress_bar()


class HFFeatureEncoder(FeatureEncoder):
    """A Hugging Face vision transformer from a local folder: hidden state ``layer``, final norm, patch tokens only.

    ``path``: a folder written by ``save_pretrained`` (``Dinov2Model``, ``Dinov2WithRegistersModel``, ``ViTModel``,
    or any ``AutoModel`` whose ``config`` has ``patch_size``; CLIP-like dual encoders use their ``vision_model``).
    ``layer`` indexes ``outputs.hidden_states`` (default ``-3``, the third block from the end). ``norm`` applies the
    model's final LayerNorm (``layernorm``, or ``post_layernorm`` for CLIP-like towers) to that block, as DiGIT does.
    Pixels in [-1, 1] become ``((x + 1) / 2 − mean) / std``. The model is not part of any vistok state dict.
    """

    kind = "hf"

    def __init__(
        self,
        path: str | os.PathLike,
        layer: int = -3,
        *,
        norm: bool = True,
        image_size: int | None = None,
        device: str | torch.device | None = None,
    ):
        transformers = require("transformers", "hf", "Hugging Face feature encoders (DiGIT with DINOv2)")
        self.path = Path(path).expanduser().absolute()
        if not self.path.is_dir():
            raise FileNotFoundError(
                f"Hugging Face encoder folder {self.path} does not exist: DiGIT reads features from a local copy of "
                f"the encoder (e.g. Dinov2WithRegistersModel.from_pretrained('facebook/dinov2-with-registers-base')"
                f".save_pretrained(DIR) on a machine with network access); vistok never downloads it"
            )
        if not (self.path / "config.json").is_file():
            raise FileNotFoundError(f"{self.path} has no config.json: not a Hugging Face model folder")
        model = _quiet_load(transformers, self.path)
        self.model = getattr(model, "vision_model", model).eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)
        cfg = self.model.config
        patch = getattr(cfg, "patch_size", None)
        if patch is None:
            raise ValueError(f"{self.path}: {type(self.model).__name__} has no patch_size; not a vision transformer")
        self._patch = int(patch[0] if isinstance(patch, list | tuple) else patch)
        self._dim = int(cfg.hidden_size)
        self.n_layers = int(cfg.num_hidden_layers)
        if not -(self.n_layers + 1) <= layer <= self.n_layers:
            raise ValueError(f"layer must be in [-{self.n_layers + 1}, {self.n_layers}] for {self.path}, got {layer}")
        self.layer, self.norm, self.image_size = int(layer), bool(norm), image_size
        self.final_norm = getattr(self.model, "layernorm", None) or getattr(self.model, "post_layernorm", None)
        if norm and self.final_norm is None:
            raise ValueError(f"{type(self.model).__name__} has no final layernorm to apply; use norm=False")
        mean, std, self.norm_source = _read_norm(self.path)
        self.mean, self.std = torch.tensor(mean).view(1, 3, 1, 1), torch.tensor(std).view(1, 3, 1, 1)
        params = inspect.signature(self.model.forward).parameters
        self._extra = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}

    @property
    def dim(self) -> int:
        return self._dim

    @property
    def patch_size(self) -> int:
        return self._patch

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def to(self, *args: Any, **kwargs: Any) -> HFFeatureEncoder:
        self.model.to(*args, **kwargs)
        return self

    def _features(self, pixels: Tensor) -> Tensor:
        b, _, hh, ww = pixels.shape
        h, w = hh // self._patch, ww // self._patch
        dtype = next(self.model.parameters()).dtype
        x = ((pixels + 1) / 2 - self.mean.to(pixels.device)) / self.std.to(pixels.device)
        out = self.model(pixel_values=x.to(dtype), output_hidden_states=True, **self._extra)
        hidden = out.hidden_states[self.layer]
        if self.norm:
            hidden = self.final_norm(hidden)
        return hidden[:, hidden.shape[1] - h * w :].reshape(b, h, w, -1)

    def config_fields(self) -> dict[str, Any]:
        return {**super().config_fields(), "hf_path": str(self.path), "vit": None}


# ---------------------------------------------------------------------------------------------------------------------
# Config and presets
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class DigitConfig(PresetMixin):
    """A DiGIT tokenizer: which encoder features, and the k-means codebook over them.

    ``encoder="vit"``: vistok's ViT of config ``vit`` (default ``vit-tiny``), weights stored with the tokenizer;
    ``encoder="hf"``: the Hugging Face model in the local folder ``hf_path``. ``layer``, ``norm``, ``image_size``:
    see :class:`FeatureEncoder`. ``num_clusters`` (K), ``metric``, ``n_iter``, ``seed``, ``backend``: the k-means.
    """

    encoder: Literal["vit", "hf"] = "vit"
    vit: ViTConfig | None = None
    hf_path: str | None = None
    layer: int = -3
    norm: bool = True
    image_size: int | None = None
    num_clusters: int = 8192
    metric: Literal["l2", "cosine"] = "l2"
    n_iter: int = 20
    seed: int = 0
    backend: Literal["torch", "faiss"] = "torch"

    def __post_init__(self) -> None:
        if self.encoder not in ("vit", "hf"):
            raise ValueError(f"DigitConfig.encoder must be 'vit' or 'hf', got {self.encoder!r}")
        if self.encoder == "vit" and self.vit is None:
            self.vit = ViTConfig()
        if self.num_clusters < 2:
            raise ValueError(f"DigitConfig.num_clusters must be >= 2, got {self.num_clusters}")
        if self.image_size is not None and self.image_size < 1:
            raise ValueError(f"DigitConfig.image_size must be positive or None, got {self.image_size}")


#: ``digit-tokenizer-tiny``: vistok's ViT-tiny (train it with ``vistok digit fit``), K = 256.
#: ``digit-tokenizer-base`` / ``-large``: the paper's DINOv2 ViT-B/14 / ViT-L/14 with registers (``hf_path`` needed),
#: third block from the end, 256 → 224 pixels (16×16 tokens), K = 8,192 / 16,384, faiss k-means, 20 iterations.
DIGIT_PRESETS: dict[str, DigitConfig] = {
    "digit-tokenizer-tiny": DigitConfig(encoder="vit", vit=ViTConfig(), num_clusters=256),
    "digit-tokenizer-base": DigitConfig(encoder="hf", image_size=224, num_clusters=8192, backend="faiss"),
    "digit-tokenizer-large": DigitConfig(encoder="hf", image_size=224, num_clusters=16384, backend="faiss"),
}


def build_encoder(config: DigitConfig) -> FeatureEncoder:
    """The encoder ``config`` describes (a vistok ViT with random weights until they are loaded)."""
    if config.encoder == "vit":
        return ViTFeatureEncoder(ViT(config.vit), config.layer, config.norm, config.image_size)
    if config.hf_path is None:
        raise ValueError(
            "this DiGIT config reads a Hugging Face encoder but has no hf_path: pass hf_path='/path/to/dinov2' "
            "(a local folder holding the model; nothing is downloaded)"
        )
    return HFFeatureEncoder(config.hf_path, config.layer, norm=config.norm, image_size=config.image_size)


# ---------------------------------------------------------------------------------------------------------------------
# Data: anything that yields pictures → batches of (B, 3, H, W) pixels
# ---------------------------------------------------------------------------------------------------------------------


def _batch_pixels(batch: Any) -> Tensor:
    if isinstance(batch, dict):
        batch = batch["pixels"]
    elif isinstance(batch, tuple | list) and batch and isinstance(batch[0], Tensor):
        batch = batch[0]
    if isinstance(batch, Tensor) and batch.ndim == 3:
        batch = batch[None]
    return check_pixels(batch)


def iter_once(data: Any) -> bool:
    """True for one-shot iterators (generators): iterating them again yields nothing."""
    return not callable(data) and not _is_dataset(data) and isinstance(data, Iterable) and iter(data) is data


def _is_dataset(data: Any) -> bool:
    return hasattr(data, "__len__") and hasattr(data, "__getitem__") and not isinstance(data, Tensor | list)


def _item_pixels(item: Any) -> Tensor:
    return item["pixels"] if isinstance(item, dict) else item[0] if isinstance(item, tuple | list) else item


def pixel_batches(data: Any, batch_size: int = 32, max_images: int | None = None) -> Callable[[], Iterator[Tensor]]:
    """A zero-argument callable giving a fresh iterator over ``(B, 3, H, W)`` pixel batches of ``data`` per call.

    ``data``: a ``(N, 3, H, W)`` tensor; a map-style dataset of items ``{"pixels": (3, H, W)}`` (or tensors), read
    in index order; a list / re-iterable of batches (tensors or dicts with ``"pixels"``); or a callable returning an
    iterator of batches. ``max_images`` stops after that many pictures.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def limited(batches: Iterable[Any]) -> Iterator[Tensor]:
        seen = 0
        for batch in batches:
            x = _batch_pixels(batch)
            if max_images is not None:
                x = x[: max_images - seen]
            if len(x):
                yield x
            seen += len(x)
            if max_images is not None and seen >= max_images:
                return

    if isinstance(data, Tensor):
        check_pixels(data)
        return lambda: limited(data.split(batch_size))
    if _is_dataset(data):
        n = len(data) if max_images is None else min(len(data), max_images)

        def from_dataset() -> Iterator[Tensor]:
            for start in range(0, n, batch_size):
                yield torch.stack([_item_pixels(data[i]) for i in range(start, min(start + batch_size, n))])

        return lambda: limited(from_dataset())
    if callable(data):
        return lambda: limited(data())
    if isinstance(data, Iterable):
        return lambda: limited(iter(data))
    raise TypeError(f"expected pixels, a dataset, an iterable of batches or a callable, got {type(data).__name__}")


class _BottomK:
    """The ``size`` rows with the smallest uniform keys; batch ``j``'s keys come from a generator seeded ``(seed, j)``.

    The kept set depends only on the rows and their batch order, never on where the rows are stored.
    """

    def __init__(self, size: int, seed: int):
        self.size, self.seed = size, seed
        self.keys = torch.empty(0, dtype=torch.float64)
        self.rows: Tensor | None = None
        self.seen = 0

    def add(self, rows: Tensor, batch_index: int) -> None:
        gen = torch.Generator().manual_seed(self.seed * 1_000_003 + batch_index)
        keys = torch.rand(len(rows), generator=gen, dtype=torch.float64)
        rows = rows.detach().float().cpu()
        self.seen += len(rows)
        keys = torch.cat([self.keys, keys])
        rows = rows if self.rows is None else torch.cat([self.rows, rows])
        keep = torch.topk(keys, min(self.size, len(keys)), largest=False, sorted=True).indices
        self.keys, self.rows = keys[keep], rows[keep]

    def sample(self) -> Tensor:
        return self.rows if self.rows is not None else torch.empty(0)


def _progress(iterable: Iterable, desc: str, enabled: bool, total: int | None = None) -> Iterable:
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, total=total, unit="batch", file=sys.stderr, leave=False)


class _DiskFeatures:
    """Features written once to ``folder/features.f32`` (float32 rows), read back in chunks as often as needed."""

    def __init__(self, folder: str | os.PathLike, dim: int, chunk_rows: int = 65536):
        self.folder, self.dim, self.chunk_rows = Path(folder), dim, chunk_rows
        self.folder.mkdir(parents=True, exist_ok=True)
        self.path = self.folder / "features.f32"
        self.tmp = self.folder / f".features.f32.tmp{os.getpid()}"
        self.file: Any = open(self.tmp, "wb")  # noqa: SIM115 - closed in finish()
        self.rows = 0

    def append(self, rows: Tensor) -> None:
        self.file.write(np.ascontiguousarray(rows.detach().float().cpu().numpy()).tobytes())
        self.rows += len(rows)

    def finish(self) -> Callable[[], Iterator[Tensor]]:
        self.file.close()
        os.replace(self.tmp, self.path)
        (self.folder / "features.json").write_text(json.dumps({"rows": self.rows, "dim": self.dim, "dtype": "float32"}))
        return self.chunks

    def chunks(self) -> Iterator[Tensor]:
        table = np.memmap(self.path, dtype=np.float32, mode="r", shape=(self.rows, self.dim))
        for start in range(0, self.rows, self.chunk_rows):
            yield torch.from_numpy(np.array(table[start : start + self.chunk_rows]))


# ---------------------------------------------------------------------------------------------------------------------
# The tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def cluster_stats(counts: Tensor) -> dict[str, float]:
    """Codebook use from per-cluster counts: ``usage`` (fraction of clusters used), ``perplexity`` (exp entropy)."""
    counts = counts.double().flatten()
    total = counts.sum()
    p = counts / total.clamp_min(1)
    entropy = -(p * p.clamp_min(1e-300).log()).sum()
    return {
        "usage": float((counts > 0).double().mean()),
        "used": int((counts > 0).sum()),
        "perplexity": float(entropy.exp()) if total > 0 else 0.0,
    }


class DigitTokenizer(nn.Module, PretrainedMixin):
    """Pictures → discriminative token ids: nearest k-means centroid of each patch's SSL feature.

    ``DigitTokenizer(config)`` builds the encoder ``config`` describes; ``DigitTokenizer(config, encoder)`` uses a
    given :class:`FeatureEncoder` (e.g. ``ViTFeatureEncoder(trained_vit)``) and takes the encoder fields of the
    config from it. ``fit(data)`` fits the codebook, ``encode(pixels) → (B, h, w)`` ids in ``[0, codebook_size)``.
    """

    config_class = DigitConfig

    def __init__(self, config: DigitConfig, encoder: FeatureEncoder | None = None):
        super().__init__()
        if encoder is not None:
            if not isinstance(encoder, FeatureEncoder):
                raise TypeError(f"encoder must be a FeatureEncoder, got {type(encoder).__name__}")
            config = replace(config, **encoder.config_fields())
        self.config = config
        self.encoder = encoder if encoder is not None else build_encoder(config)  # a submodule only for vistok's ViT
        self.quantizer = KMeans(
            config.num_clusters, self.encoder.dim, metric=config.metric, n_iter=config.n_iter, seed=config.seed,
            backend=config.backend,
        )  # fmt: skip
        self.fit_stats_: dict[str, Any] = {}

    def _apply(self, fn: Callable, recurse: bool = True) -> DigitTokenizer:
        super()._apply(fn, recurse)
        if isinstance(self.encoder, HFFeatureEncoder):  # not a submodule (its weights are not ours), moved alongside
            self.encoder.model._apply(fn)
        return self

    @property
    def codebook_size(self) -> int:
        return self.config.num_clusters

    @property
    def dim(self) -> int:
        return self.encoder.dim

    @property
    def patch_size(self) -> int:
        return self.encoder.patch_size

    @property
    def device(self) -> torch.device:
        return self.quantizer.centroids.device

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The id grid ``(h, w)`` of ``height × width`` pictures; raises for sizes the encoder cannot take."""
        return self.encoder.token_grid(height, width)

    def features(self, pixels: Tensor) -> Tensor:
        """Encoder features ``(B, h, w, C)`` float32 on the tokenizer's device."""
        return self.encoder.features(pixels).to(self.device)

    # --- fitting -----------------------------------------------------------------------------------------------

    def fit(
        self,
        data: Any,
        *,
        batch_size: int = 32,
        max_images: int | None = None,
        cache: Cache = "memory",
        sample_size: int | None = None,
        progress: bool = False,
        **kmeans_overrides: Any,
    ) -> DigitTokenizer:
        """Fit the codebook on the patch features of ``data`` (see :func:`pixel_batches`); returns ``self``.

        ``cache``: ``"memory"`` (features computed once, held in memory), ``"stream"`` (recomputed batch by batch
        in every k-means pass; ``data`` must then be re-readable) or a folder (written once as float32, read back
        in chunks). ``sample_size``: rows of the k-means++ seeding sample (default ``max(20·K, 10 000)``).
        ``kmeans_overrides`` (``n_iter``, ``tol``, ``seed``, ``method``, ``backend``, ``verbose`` …) go to
        :meth:`KMeans.fit`; ``n_iter``, ``seed`` and ``backend`` are recorded in the config.
        """
        if cache == "stream" and not isinstance(data, Tensor) and iter_once(data):
            raise TypeError(
                "cache='stream' reads the data once per k-means pass, but a generator / iterator can be read only "
                "once: pass a dataset, a list, a zero-argument callable returning a fresh iterator, or cache='memory'"
            )
        cfg = self.config
        seed = int(kmeans_overrides.get("seed", cfg.seed))
        init = kmeans_overrides.pop("init", None)  # given centroids (or an init method) replace the seeding below
        known = {k: kmeans_overrides[k] for k in ("n_iter", "seed", "backend") if k in kmeans_overrides}
        self.config = cfg = replace(cfg, **known)
        batches = pixel_batches(data, batch_size, max_images)
        k, dim = cfg.num_clusters, self.dim
        sampler = _BottomK(sample_size or max(20 * k, 10_000), seed)
        kept: list[Tensor] = []
        disk = None if cache in ("memory", "stream") else _DiskFeatures(cache, dim)
        n_images = 0
        for j, x in enumerate(_progress(batches(), "features", progress)):
            rows = self.features(x).reshape(-1, dim)
            n_images += len(x)
            sampler.add(rows, j)
            if cache == "memory":
                kept.append(rows.cpu())  # host memory: a GPU holds the model, not the whole feature set
            elif disk is not None:
                disk.append(rows)
        if sampler.seen < k:
            raise ValueError(f"k-means with K={k} needs at least {k} feature rows; the data gave {sampler.seen}")
        if cache == "memory":
            source: Any = torch.cat(kept)
        elif cache == "stream":
            source = lambda: (self.features(x).reshape(-1, dim) for x in batches())
        else:
            source = disk.finish()
        if init is None:
            seeds = KMeans(k, dim, metric=cfg.metric).to(self.device)
            init = seeds.fit(sampler.sample().to(self.device), n_iter=0, seed=seed).centroids
        self.quantizer.fit(source, init=init, **{"n_iter": cfg.n_iter, "backend": cfg.backend, **kmeans_overrides})
        q = self.quantizer
        self.fit_stats_ = {
            "images": n_images,
            "rows": q.n_samples_,
            "inertia": q.inertia_,
            "mean_sq_distance": q.inertia_ / max(q.n_samples_ or 1, 1),
            "n_iter": q.n_iter_,
            "empty": q.n_empty_,
            "reseeded": q.n_reseeded_,
            **cluster_stats(q.counts),
        }
        return self

    # --- using it ----------------------------------------------------------------------------------------------

    @torch.no_grad()
    def encode(self, pixels: Tensor, batch_size: int | None = None) -> Tensor:
        """Token ids ``(B, h, w)`` int64 of pixels ``(B, 3, H, W)`` in [-1, 1] (``batch_size`` pictures at a time)."""
        check_pixels(pixels)
        if not bool(self.quantizer.initted):
            raise RuntimeError("this DigitTokenizer has no centroids yet: call fit(pictures) or load a fitted one")
        step = batch_size or max(len(pixels), 1)
        ids = [self.quantizer.assign(self.features(x).permute(0, 3, 1, 2)) for x in pixels.split(step)]
        return torch.cat(ids) if ids else torch.empty(0, dtype=torch.int64, device=self.device)

    def forward(self, pixels: Tensor) -> Tensor:
        return self.encode(pixels)

    def indices_to_features(self, ids: Tensor) -> Tensor:
        """Centroid features ``(B, h, w, C)`` of ids ``(B, h, w)``."""
        return self.quantizer.centroids[ids.long()]

    def codebook_sha256(self) -> str:
        """A checksum of the centroids: token files made by another fit of the same config are told apart."""
        return hashlib.sha256(self.quantizer.centroids.detach().float().cpu().numpy().tobytes()).hexdigest()

    def extra_repr(self) -> str:
        where = self.config.hf_path if self.config.encoder == "hf" else "vistok ViT"
        return f"encoder={self.config.encoder} ({where}), layer={self.config.layer}, K={self.codebook_size}"


register_model("digit-tokenizer", DigitTokenizer, presets=DIGIT_PRESETS)


# ---------------------------------------------------------------------------------------------------------------------
# Pre-tokenizing and pictures
# ---------------------------------------------------------------------------------------------------------------------


def tokenize_to_shards(
    tokenizer: DigitTokenizer,
    dataset: Any,
    out_dir: str | os.PathLike,
    *,
    batch_size: int = 32,
    max_items: int | None = None,
    progress: bool = False,
    **writer_kwargs: Any,
) -> int:
    """Tokenize a map-style dataset of ``{"pixels", "label"?}`` items once into token shards; returns the item count.

    Resumable: re-running continues after the last committed item (:class:`vistok.data.shards.ShardWriter`), and
    refuses a folder written by a tokenizer with another config or codebook.
    """
    from vistok.data.shards import ShardWriter

    if not _is_dataset(dataset):
        raise TypeError(f"tokenize_to_shards needs a map-style dataset (len + indexing), got {type(dataset).__name__}")
    n = len(dataset) if max_items is None else min(len(dataset), max_items)
    if n == 0:
        raise ValueError("the dataset is empty: nothing to tokenize")
    first = _item_pixels(dataset[0])
    grid = tokenizer.token_grid(first.shape[-2], first.shape[-1])
    record = {"config": config_to_dict(tokenizer.config), "codebook_sha256": tokenizer.codebook_sha256()}
    with ShardWriter(
        out_dir, tokenizer.codebook_size, "digit-tokenizer", record, grid_shape=grid, **writer_kwargs
    ) as writer:
        starts = range(writer.num_items, n, batch_size)
        for start in _progress(starts, "tokenize", progress, total=len(starts)):
            items = [dataset[i] for i in range(start, min(start + batch_size, n))]
            ids = tokenizer.encode(torch.stack([_item_pixels(it) for it in items])).cpu()
            for tokens, item in zip(ids, items):
                label = item.get("label") if isinstance(item, dict) else None
                writer.append(tokens.numpy(), None if label is None else int(label))
        return writer.num_items


def palette(n: int) -> np.ndarray:
    """``n`` distinct colours (uint8 ``(n, 3)``): golden-ratio hues, three lightness levels."""
    out = np.empty((n, 3), np.uint8)
    for i in range(n):
        r, g, b = colorsys.hls_to_rgb((i * 0.618033988749895) % 1.0, (0.42, 0.58, 0.72)[i % 3], 0.8)
        out[i] = (round(r * 255), round(g * 255), round(b * 255))
    return out


def _panel(ids: np.ndarray, colours: np.ndarray, cell: int, numbers: bool) -> Image.Image:
    img = Image.fromarray(np.kron(colours[ids], np.ones((cell, cell, 1), np.uint8)))
    if numbers:
        draw = ImageDraw.Draw(img)
        for (i, j), v in np.ndenumerate(ids):
            r, g, b = (int(c) for c in colours[v])
            ink = (0, 0, 0) if 0.299 * r + 0.587 * g + 0.114 * b > 140 else (255, 255, 255)
            draw.text((j * cell + 2, i * cell + cell // 2 - 5), str(int(v)), fill=ink)
    return img


@torch.no_grad()
def token_map_picture(
    tokenizer: DigitTokenizer,
    pixels: Tensor,
    *,
    cell: int = 32,
    titles: Iterable[str] | None = None,
    alpha: float = 0.6,
) -> Image.Image:
    """One row per picture: the picture, its token ids on cells coloured by cluster, and the colours over the picture.

    ``cell`` is the side in output pixels of one token (ids are written in the cells when they fit).
    """
    ids = tokenizer.encode(pixels).cpu().numpy()
    colours = palette(tokenizer.codebook_size)
    titles = list(titles) if titles is not None else [""] * len(pixels)
    rows = []
    for x, grid, title in zip(pixels, ids, titles):
        h, w = grid.shape
        side = (w * cell, h * cell)
        pic = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round().byte().permute(1, 2, 0).cpu().numpy()
        pic = np.asarray(Image.fromarray(pic).resize(side, Image.Resampling.BICUBIC))
        ids_panel = _panel(grid, colours, cell, numbers=cell >= 24)
        tint = np.kron(colours[grid], np.ones((cell, cell, 1), np.uint8)).astype(np.float32)
        over = Image.fromarray((pic.astype(np.float32) * (1 - alpha) + tint * alpha).astype(np.uint8))
        row = Image.new("RGB", (3 * side[0] + 8, side[1] + 14), "white")
        for k, panel in enumerate((Image.fromarray(pic), ids_panel, over)):
            row.paste(panel, (k * (side[0] + 4), 14))
        ImageDraw.Draw(row).text((2, 1), f"{title}  ({h}x{w} tokens, K={tokenizer.codebook_size})", fill=(0, 0, 0))
        rows.append(row)
    out = Image.new("RGB", (max(r.width for r in rows), sum(r.height + 6 for r in rows)), "white")
    y = 0
    for r in rows:
        out.paste(r, (0, y))
        y += r.height + 6
    return out
