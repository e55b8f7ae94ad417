"""Using a tokenizer: load one, encode files to token ids, decode them, reconstruct, evaluate.

These functions sit behind the ``vistok encode``, ``vistok decode``, ``vistok reconstruct`` and
``vistok tokenizer eval`` commands (their parsers are built here too, by :func:`add_use_parsers` and
:func:`add_tokenizer_eval_parser`), and work the same from Python::

    tok = load_tokenizer("runs/tok/release")           # a save_pretrained folder, a preset name, or None
    encode_path(tok, "photo.jpg", "photo.npy")          # photo.npy (ids) + photo.npy.json (sidecar)
    decode_path(tok, "photo.npy", "photo_rec.png")

**Token files.** One picture's ids are a ``.npy`` array, ``(H', W')`` for an image or ``(T', H', W')`` for a video,
in the smallest unsigned dtype that holds the vocabulary (uint16 up to 65,536 codes, else uint32). Beside it,
``NAME.npy.json`` records what decoding needs and what guards it: ``kind`` (image / video), ``grid``, ``size`` (the
pixel size that was encoded, which ``decode`` crops back to after the model's padding), ``fps``, the source file's
name and size, the tokenizer's ``model_type``, ``codebook_size`` and ``config_sha256`` (sha256 of its config as
canonical JSON — :func:`vistok.data.shards.config_hash`), and ``ids_sha256``, a checksum of the ids. Decoding refuses
a file whose ids do not match their checksum, or that a tokenizer of another config made. A bare ``.npy`` of ids
(no sidecar) decodes too: 2-D as an image, 3-D as a video, at the grid's full size.

**Folders.** Encoding a folder writes a token-shard folder (:mod:`vistok.data.shards`): labels are the first-level
subfolders, and ``items.jsonl`` holds one line per item (source file, kind, size, fps) so decoding writes each item
back under its own name at its own size. A folder with videos stores every item as a video grid (an image is a
1-frame video). Unreadable files are skipped, counted and listed in the summary. An interrupted run resumes where
its last commit ended when re-run with the same arguments.

**Sizes.** Pictures whose height or width is not a multiple of the tokenizer's spatial factor (or videos whose frame
count is not 1 + s·k) are padded by replication and cropped back after decoding; ``size=S`` instead resizes the
shorter side to S and centre-crops S×S first. ``frames=T`` keeps a video's first T frames.

**Outputs are atomic.** Every file is written under a temporary name and renamed into place once complete, and a
verb that writes several files renames them together at the end, so a failure never leaves a half-written output.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import hashlib
import json
import math
import os
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn

from vistok.data.errors import BadFileError, BadFiles
from vistok.data.images import IMAGE_EXTS, list_files, read_image, subfolder_labels
from vistok.data.shards import META_NAME, ShardReader, ShardWriter, config_hash, token_dtype
from vistok.data.transforms import apply_box, crop_box, frames_to_tensor, to_tensor, to_uint8
from vistok.data.video import VIDEO_EXTS, VIDEO_WRITE_CODECS, read_video, write_video
from vistok.eval import metrics
from vistok.hub import CONFIG_NAME, config_to_dict, from_pretrained
from vistok.registry import UnknownModelError, create_model, list_models

__all__ = [
    "MANIFEST_NAME",
    "TOKEN_FORMAT",
    "Pixels",
    "Result",
    "TokenFile",
    "add_tokenizer_eval_parser",
    "add_use_parsers",
    "decode_ids",
    "decode_path",
    "default_weights_dir",
    "encode_path",
    "encode_pixels",
    "evaluate_tokenizer",
    "format_eval_report",
    "load_tokenizer",
    "load_tokens",
    "read_pixels",
    "reconstruct_path",
    "save_tokens",
    "tokenizer_info",
]

TOKEN_FORMAT = 1  # version of the .npy + .npy.json token file layout
SIDECAR_SUFFIX = ".json"  # appended to the .npy name: photo.npy → photo.npy.json
MANIFEST_NAME = "items.jsonl"  # per-item records of a shard folder written by encode_path
ENCODE_KEY = "vistok_encode"  # the key of the encode settings in a shard folder's meta.json "extra"
DEFAULT_FPS = 8.0
COMMIT_EVERY = 32  # items per shard commit when encoding a folder (encoding is slow; commit often)
STRIP_FRAMES = 8  # frames shown in a video reconstruction's PNG strip
GAP = 4  # white pixels between the pictures of a comparison
PICTURE_EXTS = IMAGE_EXTS + VIDEO_EXTS


# ---------------------------------------------------------------------------------------------------------------------
# Loading a tokenizer
# ---------------------------------------------------------------------------------------------------------------------


def default_weights_dir() -> Path:
    """The folder of the tokenizer weights shipped inside the package (``vistok/tokenizers/weights/default``)."""
    return Path(__file__).resolve().parent / "weights" / "default"


def _pick_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"unknown device {device!r} (try 'cpu', 'cuda' or 'cuda:1')") from e


def _check_is_tokenizer(model: nn.Module, source: str) -> nn.Module:
    missing = [a for a in ("encode", "decode", "codebook_size", "spatial_factor") if not hasattr(model, a)]
    if missing:
        raise ValueError(f"{source} is a {type(model).__name__}, not a tokenizer (it has no {', '.join(missing)})")
    return model


def _from_folder(folder: str | os.PathLike, device: torch.device) -> nn.Module:
    """``from_pretrained`` of a local folder or Hub id, with a registry miss reported as a user error."""
    try:
        model = from_pretrained(folder, map_location=device)
    except UnknownModelError as e:
        raise ValueError(f"--model {folder}: {e}") from None
    return _check_is_tokenizer(model, str(folder)).eval()


def load_tokenizer(path_or_preset: str | os.PathLike | None = None, device: str | torch.device | None = None):
    """A tokenizer in eval mode on ``device`` (default: CUDA when available, else CPU).

    ``path_or_preset`` is a folder written by ``save_pretrained`` (``config.json`` + ``model.safetensors``), a
    registered preset name such as ``"magvit2-tiny"`` (randomly initialised: a warning says it is untrained), a
    Hugging Face Hub id ``"org/name"`` (with ``vistok[hub]``), or ``None`` for the weights shipped with vistok
    (:func:`default_weights_dir`).
    """
    dev = _pick_device(device)
    if path_or_preset is None:
        folder = default_weights_dir()
        if not (folder / CONFIG_NAME).is_file():
            raise FileNotFoundError(
                f"this vistok ships no default tokenizer weights yet (nothing in {folder}); pass --model DIR, a "
                "folder written by save_pretrained or 'vistok tokenizer train' (or a preset name such as "
                "magvit2-tiny for an untrained, randomly initialised tokenizer)"
            )
        return _from_folder(folder, dev)
    name = os.fspath(path_or_preset)
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ValueError(f"--model {name}: expected a folder holding {CONFIG_NAME} + model.safetensors, got a file")
        return _from_folder(path, dev)
    if name in list_models():
        warnings.warn(
            f"{name} is a preset with random weights: an untrained tokenizer (pass --model DIR for trained weights)",
            UserWarning,
            stacklevel=2,
        )
        return _check_is_tokenizer(create_model(name), name).to(dev).eval()
    if "/" in name.strip("/") and not name.startswith((".", "/", "~")):  # "org/name": a Hugging Face Hub id
        return _from_folder(name, dev)
    close = difflib.get_close_matches(name, list_models(), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(close)}?" if close else f"; presets: {', '.join(list_models())}"
    raise FileNotFoundError(f"--model {name}: no such folder, and not a tokenizer preset{hint}")


def tokenizer_info(tokenizer: nn.Module) -> dict[str, Any]:
    """What identifies a tokenizer's tokens: model type, codebook size, factors and the sha256 of its config."""
    config = getattr(tokenizer, "config", None)
    config_dict = config_to_dict(config) if config is not None else {}
    return {
        "model_type": getattr(type(tokenizer), "model_type", type(tokenizer).__name__),
        "codebook_size": int(tokenizer.codebook_size),
        "spatial_factor": int(tokenizer.spatial_factor),
        "temporal_factor": int(getattr(tokenizer, "temporal_factor", 1)),
        "config_sha256": config_hash(config_dict),
    }


def _device_of(tokenizer: nn.Module) -> torch.device:
    param = next(tokenizer.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


# ---------------------------------------------------------------------------------------------------------------------
# Atomic outputs
# ---------------------------------------------------------------------------------------------------------------------


class _Outputs:
    """Files written under temporary names beside their targets, renamed into place together when all succeeded.

    On any error the temporary files, and the folders this created for them, are removed.
    """

    def __init__(self) -> None:
        self._pending: list[tuple[Path, Path]] = []
        self._made_dirs: list[Path] = []
        self.written: list[Path] = []

    def temp(self, target: str | os.PathLike) -> Path:
        target = Path(target)
        missing = [p for p in [target.parent, *target.parent.parents] if not p.exists()]
        target.parent.mkdir(parents=True, exist_ok=True)
        self._made_dirs.extend(missing)  # deepest first
        tmp = target.with_name(f".{target.stem}.tmp-{uuid.uuid4().hex[:8]}{target.suffix}")
        self._pending.append((tmp, target))
        return tmp

    def commit(self) -> None:
        for tmp, target in self._pending:
            os.replace(tmp, target)
            self.written.append(target)
        self._pending.clear()

    def discard(self) -> None:
        for tmp, _ in self._pending:
            tmp.unlink(missing_ok=True)
        self._pending.clear()
        for d in self._made_dirs:
            with contextlib.suppress(OSError):  # not empty: something else lives there now
                d.rmdir()


@contextlib.contextmanager
def _atomic_outputs() -> Iterator[_Outputs]:
    out = _Outputs()
    try:
        yield out
        out.commit()
    except BaseException:
        out.discard()
        raise


def _write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file + rename); non-finite floats become null."""
    with _atomic_outputs() as out:
        out.temp(path).write_text(json.dumps(_finite(obj), indent=1) + "\n", encoding="utf-8")


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj


def _save_image(array: np.ndarray, path: Path) -> None:
    """uint8 (H, W, 3) → an image file; the format follows the suffix (PNG, JPEG at quality 95, ...)."""
    fmt = Image.registered_extensions().get(path.suffix.lower())
    options = {"quality": 95} if fmt == "JPEG" else {}
    Image.fromarray(array).save(path, format=fmt, **options)


# ---------------------------------------------------------------------------------------------------------------------
# Pixels in and out
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Pixels:
    """A picture ready for a tokenizer: float ``(3, H, W)`` (image) or ``(3, T, H, W)`` (video) in [−1, 1].

    ``source_size`` is the file's own size ((H, W) or (T, H, W) of the frames read), before any resize.
    """

    pixels: Tensor
    kind: str
    fps: float | None = None
    source: str = ""
    source_size: tuple[int, ...] = ()

    @property
    def size(self) -> tuple[int, ...]:
        """(H, W) or (T, H, W): the size that was encoded, and the size decoding crops back to."""
        return tuple(self.pixels.shape[1:])


def _kind_of(path: Path) -> str:
    ext = path.suffix.lower()
    if ext in IMAGE_EXTS:
        return "image"
    if ext in VIDEO_EXTS:
        return "video"
    raise ValueError(
        f"{path}: unsupported file type {ext or '(no extension)'!r}; images: {' '.join(IMAGE_EXTS)}; "
        f"videos: {' '.join(VIDEO_EXTS)}"
    )


def _fps(times: np.ndarray) -> float:
    """Frame rate from frame timestamps (the median frame interval), or the default for a single frame."""
    if len(times) < 2:
        return DEFAULT_FPS
    step = float(np.median(np.diff(times)))
    return 1.0 / step if step > 0 else DEFAULT_FPS


def read_pixels(path: str | os.PathLike, size: int | None = None, frames: int | None = None) -> Pixels:
    """Read an image or video file (by extension) for encoding; ``size`` resizes + centre-crops to S×S.

    ``frames`` keeps a video's first T frames. Raises ``FileNotFoundError`` for a missing file and
    :class:`BadFileError` (naming the file and the reason) for an unreadable one.
    """
    path = Path(path)
    kind = _kind_of(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}" if not path.exists() else f"{path} is not a file")
    if (size is not None and size < 1) or (frames is not None and frames < 1):
        raise ValueError(f"size and frames must be positive, got size={size}, frames={frames}")
    if kind == "image":
        img = read_image(path)
        source_size = (img.height, img.width)
        if size is not None:
            img = apply_box(img, crop_box(img.width, img.height, size, "center"))
        return Pixels(to_tensor(img), kind, None, path.name, source_size)
    video, times = read_video(path, max_frames=frames)
    if len(video) == 0:
        raise BadFileError(path, "no frames decoded (truncated or corrupt data)")
    source_size = tuple(video.shape[:3])
    if size is not None:
        box = crop_box(video.shape[2], video.shape[1], size, "center")
        video = np.stack([np.asarray(apply_box(Image.fromarray(f), box)) for f in video])
    return Pixels(frames_to_tensor(video), kind, _fps(times), path.name, source_size)


def _crop(x: Tensor, size: Sequence[int]) -> Tensor:
    """Crop the trailing (H, W) or (T, H, W) dims of ``x`` to ``size`` (the encoder's padding is bottom/right/last)."""
    return x[(..., *(slice(0, int(s)) for s in size))]


@torch.inference_mode()
def encode_pixels(tokenizer: nn.Module, pixels: Pixels | Tensor, chunk_frames: int | None = None) -> Tensor:
    """Token ids (CPU, int64) of one picture: ``(H', W')`` for an image, ``(T', H', W')`` for a video.

    Pads to the tokenizer's size rules (see the module docstring); ``chunk_frames`` streams a video in chunks of
    that many input frames (same ids, bounded memory).
    """
    x = pixels.pixels if isinstance(pixels, Pixels) else pixels
    kwargs = {"chunk_frames": chunk_frames} if chunk_frames is not None and x.ndim == 4 else {}
    return tokenizer.encode(x.unsqueeze(0).to(_device_of(tokenizer)), pad=True, **kwargs)[0].long().cpu()


@torch.inference_mode()
def decode_ids(
    tokenizer: nn.Module, ids: Tensor, size: Sequence[int] | None = None, chunk_frames: int | None = None
) -> Tensor:
    """Pixels (CPU float, [−1, 1]-ish) of one id grid, cropped to ``size`` ((H, W) or (T, H, W)) when given.

    ``chunk_frames`` decodes a video that many token frames at a time.
    """
    ids = torch.as_tensor(ids).long()
    kwargs = {"chunk_frames": chunk_frames} if chunk_frames is not None and ids.ndim == 3 else {}
    x = tokenizer.decode(ids.unsqueeze(0).to(_device_of(tokenizer)), **kwargs)[0].float().cpu()
    return x if size is None else _crop(x, size)


def _u8_batch(frames: np.ndarray) -> Tensor:
    """uint8 (H, W, 3) or (T, H, W, 3) → a batch of one for the metrics: (1, 3, H, W) or (1, 3, T, H, W)."""
    t = torch.from_numpy(np.ascontiguousarray(frames))
    return (t.permute(2, 0, 1) if t.ndim == 3 else t.permute(3, 0, 1, 2)).unsqueeze(0)


def _quality(original: np.ndarray, recon: np.ndarray) -> dict[str, float | None]:
    """PSNR and SSIM of two uint8 pictures (SSIM is None for frames under 11 pixels)."""
    a, b = _u8_batch(original), _u8_batch(recon)
    h, w = original.shape[-3:-1]
    return {
        "psnr": float(metrics.psnr(a, b)[0]),
        "ssim": float(metrics.ssim(a, b)[0]) if min(h, w) >= metrics.SSIM_WINDOW else None,
    }


def _side_by_side(pictures: Sequence[np.ndarray], axis: int) -> np.ndarray:
    """uint8 pictures (…, H, W, 3) of one shape joined along ``axis`` (-2: left to right, -3: top to bottom)."""
    gap_shape = list(pictures[0].shape)
    gap_shape[axis] = GAP
    gap = np.full(gap_shape, 255, np.uint8)
    parts = [p for pic in pictures for p in (pic, gap)][:-1]
    return np.concatenate(parts, axis=axis)


def _frame_strip(original: np.ndarray, recon: np.ndarray) -> np.ndarray:
    """Up to :data:`STRIP_FRAMES` evenly spaced frames: originals on top, reconstructions below."""
    pick = np.unique(np.linspace(0, len(original) - 1, min(STRIP_FRAMES, len(original))).round().astype(int))
    rows = [_side_by_side(list(v[pick]), axis=-2) for v in (original, recon)]
    return _side_by_side(rows, axis=-3)


# ---------------------------------------------------------------------------------------------------------------------
# Token files
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class TokenFile:
    """The ids of one picture and their sidecar record (``meta`` is ``{}`` for a bare ``.npy``)."""

    ids: Tensor
    meta: dict[str, Any]
    path: Path

    @property
    def kind(self) -> str:
        return self.meta.get("kind") or ("image" if self.ids.ndim == 2 else "video")

    @property
    def size(self) -> tuple[int, ...] | None:
        size = self.meta.get("size")
        return tuple(size) if size else None


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name + SIDECAR_SUFFIX)


def _ids_sha256(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def save_tokens(path: str | os.PathLike, ids: Tensor, pixels: Pixels, tokenizer: nn.Module) -> list[Path]:
    """Write ``ids`` to ``path`` (``.npy``) and its sidecar ``path.json`` atomically; returns both paths."""
    path = Path(path)
    if path.suffix.lower() != ".npy":
        raise ValueError(f"token output {path} must end in .npy")
    info = tokenizer_info(tokenizer)
    array = ids.numpy().astype(token_dtype(info["codebook_size"]))
    meta = {
        "vistok_tokens": TOKEN_FORMAT,
        "kind": pixels.kind,
        "grid": list(array.shape),
        "dtype": array.dtype.name,
        "size": list(pixels.size),
        "fps": pixels.fps,
        "source": pixels.source,
        "source_size": list(pixels.source_size),
        "tokenizer": info,
        "ids_sha256": _ids_sha256(array),
    }
    with _atomic_outputs() as out:
        np.save(out.temp(path), array, allow_pickle=False)
        out.temp(_sidecar(path)).write_text(json.dumps(meta, indent=1) + "\n", encoding="utf-8")
    return [path, _sidecar(path)]


def _read_sidecar(path: Path) -> dict[str, Any]:
    side = _sidecar(path)
    if not side.exists():
        return {}
    try:
        meta = json.loads(side.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadFileError(side, f"unreadable JSON sidecar ({e})") from e
    if not isinstance(meta, dict) or "vistok_tokens" not in meta:
        raise BadFileError(side, "not a vistok token sidecar (no 'vistok_tokens' key)")
    if meta["vistok_tokens"] != TOKEN_FORMAT:
        raise BadFileError(side, f"token file format {meta['vistok_tokens']}; this vistok reads {TOKEN_FORMAT}")
    return meta


def load_tokens(path: str | os.PathLike) -> TokenFile:
    """Read a ``.npy`` token file and check it against its sidecar (grid and checksum) when there is one.

    Raises ``FileNotFoundError`` for a missing file and :class:`BadFileError` for anything that is not a valid,
    unmodified token file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such token file: {path}" if not path.exists() else f"{path} is not a file")
    if path.suffix.lower() != ".npy":
        raise ValueError(f"{path}: expected a .npy token file (from 'vistok encode') or a token-shard folder")
    try:
        array = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError) as e:
        raise BadFileError(path, f"not a readable .npy array ({e})") from e
    if not isinstance(array, np.ndarray) or not np.issubdtype(array.dtype, np.integer):
        raise BadFileError(path, f"holds {getattr(array, 'dtype', type(array).__name__)} values, not token ids")
    if array.ndim not in (2, 3) or array.size == 0:
        raise BadFileError(path, f"expected an image (H', W') or video (T', H', W') id grid, got {array.shape}")
    meta = _read_sidecar(path)
    if meta:
        if list(array.shape) != list(meta.get("grid", [])):
            raise BadFileError(path, f"id grid {list(array.shape)} does not match the sidecar's {meta.get('grid')}")
        if _ids_sha256(array) != meta.get("ids_sha256"):
            raise BadFileError(path, "checksum mismatch: the ids were modified or corrupted since they were written")
    if int(array.min()) < 0:
        raise BadFileError(path, f"negative token id {int(array.min())}")
    return TokenFile(torch.from_numpy(array.astype(np.int64)), meta, path)


def _check_tokens_fit(tokens: TokenFile, tokenizer: nn.Module) -> None:
    """Refuse ids made by another tokenizer config, or ids outside this tokenizer's vocabulary."""
    info = tokenizer_info(tokenizer)
    made_by = tokens.meta.get("tokenizer", {})
    if made_by and made_by.get("config_sha256") != info["config_sha256"]:
        raise ValueError(
            f"{tokens.path}: these tokens were made by a {made_by.get('model_type')} tokenizer with config sha256 "
            f"{str(made_by.get('config_sha256'))[:12]}…, but --model is a {info['model_type']} with "
            f"{info['config_sha256'][:12]}…; decode with the tokenizer that encoded them"
        )
    top = int(tokens.ids.max())
    if top >= info["codebook_size"]:
        raise ValueError(f"{tokens.path}: token id {top} is outside the vocabulary of {info['codebook_size']} codes")


# ---------------------------------------------------------------------------------------------------------------------
# Results and progress
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class Result:
    """What a verb did: a one-paragraph ``summary``, the files it ``written``, skipped inputs, metrics."""

    summary: str
    written: list[Path] = field(default_factory=list)
    skipped: BadFiles | None = None
    metrics: dict[str, Any] = field(default_factory=dict)


def _progress(total: int, desc: str, enabled: bool, initial: int = 0):
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=desc, unit="file", file=sys.stderr, disable=not enabled)


def _skipped_text(bad: BadFiles) -> str:
    if not len(bad):
        return ""
    reasons = ", ".join(f"{n} {r}" for r, n in sorted(bad.counts.items(), key=lambda kv: -kv[1]))
    first = "; ".join(Path(p).name for p, _ in bad.items[:3]) + (" …" if len(bad) > 3 else "")
    return f" Skipped {len(bad)} unreadable file(s) [{reasons}]: {first}."


def _fmt(value: float | None, digits: int = 2) -> str:
    if value is None:
        return "n/a"
    return "inf" if math.isinf(value) else f"{value:.{digits}f}"


def _size_text(size: Sequence[int]) -> str:
    return "×".join(str(s) for s in size[-2:]) + (f", {size[0]} frames" if len(size) == 3 else "")


# ---------------------------------------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------------------------------------


def encode_path(
    tokenizer: nn.Module,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int | None = None,
    frames: int | None = None,
    chunk_frames: int | None = None,
    progress: bool = True,
) -> Result:
    """Encode a picture to ``out`` (``.npy`` + sidecar), or a folder to the token-shard folder ``out``."""
    src, out = Path(src), Path(out)
    if src.is_dir():
        return _encode_folder(tokenizer, src, out, size, frames, chunk_frames, progress)
    if out.suffix.lower() != ".npy":
        raise ValueError(f"-o {out}: the tokens of one file go to a .npy file (a folder is encoded to a folder)")
    pixels = read_pixels(src, size, frames)
    ids = encode_pixels(tokenizer, pixels, chunk_frames)
    written = save_tokens(out, ids, pixels, tokenizer)
    info = tokenizer_info(tokenizer)
    bpp = metrics.bits_per_pixel(ids.numel(), info["codebook_size"], math.prod(pixels.size))
    summary = (
        f"Encoded the {pixels.kind} {src} ({_size_text(pixels.size)}) with the {info['model_type']} tokenizer into a "
        f"{'×'.join(map(str, ids.shape))} grid of {ids.numel()} token ids ({info['codebook_size']} codes, "
        f"{bpp:.4f} bits per pixel raw), written to {out}, with the sizes and checksums decoding needs in "
        f"{_sidecar(out)}."
    )
    return Result(summary, written)


@dataclass
class _FolderPlan:
    """The files of a folder to encode and the settings a resumed run must share."""

    files: list[Path]
    labels: list[int]
    settings: dict[str, Any]


def _plan_folder(src: Path, size: int | None, frames: int | None) -> _FolderPlan:
    files = list_files(src, PICTURE_EXTS)
    if not files:
        raise ValueError(f"no image or video files under {src} (looked for {' '.join(PICTURE_EXTS)})")
    classes, labels = subfolder_labels(src, files)
    rank = 3 if any(f.suffix.lower() in VIDEO_EXTS for f in files) else 2
    settings = {"size": size, "frames": frames, "grid_rank": rank, "classes": classes}
    return _FolderPlan(files, labels, settings)


def _check_resumable(out: Path, settings: dict[str, Any]) -> bool:
    """True when ``out`` is a shard folder of an earlier encode with the same settings; False when it is new/empty."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: exists and is not a folder (a folder is encoded to a token-shard folder)")
    if not out.exists():
        return False
    if not (out / META_NAME).exists():
        if any(out.iterdir()):
            raise ValueError(f"-o {out}: the folder exists and is not empty; choose a new output folder")
        return False
    try:
        meta = json.loads((out / META_NAME).read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BadFileError(out / META_NAME, f"unreadable JSON ({e})") from e
    before = meta.get("extra", {}).get(ENCODE_KEY) if isinstance(meta, dict) else None
    if before is None:
        raise ValueError(f"-o {out}: a token-shard folder not written by 'vistok encode'; choose a new output folder")
    changed = {k: (before.get(k), v) for k, v in settings.items() if before.get(k) != v}
    if changed:
        what = "; ".join(f"{k} was {a!r}, now {b!r}" for k, (a, b) in changed.items())
        raise ValueError(f"-o {out}: cannot resume an encode made with other settings ({what}); use a new folder")
    return True


def _resume_manifest(path: Path, committed: int, plan: _FolderPlan, src: Path) -> int:
    """Cut the manifest back to the committed items; returns the index of the next file to encode."""
    lines: list[dict] = []
    if path.exists():
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                lines.append(json.loads(line))
            except json.JSONDecodeError:
                break  # a torn last line
    if len(lines) < committed:
        raise ValueError(f"{path} lists {len(lines)} items but the shards hold {committed}; cannot resume")
    lines = lines[:committed]
    _write_lines(path, lines)
    if not lines:
        return 0
    last = lines[-1]
    k = int(last["file_index"])
    if k >= len(plan.files) or plan.files[k].relative_to(src).as_posix() != last["file"]:
        raise ValueError(f"the files under {src} changed since this encode started; use a new output folder")
    return k + 1


def _write_lines(path: Path, lines: list[dict]) -> None:
    with _atomic_outputs() as out:
        out.temp(path).write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")


def _encode_folder(
    tokenizer: nn.Module,
    src: Path,
    out: Path,
    size: int | None,
    frames: int | None,
    chunk_frames: int | None,
    progress: bool,
) -> Result:
    plan = _plan_folder(src, size, frames)
    resuming = _check_resumable(out, plan.settings)
    created = not out.exists()
    info = tokenizer_info(tokenizer)
    config = config_to_dict(tokenizer.config) if hasattr(tokenizer, "config") else {}
    bad = BadFiles(name=str(src))
    new = 0
    try:
        with ShardWriter(
            out,
            info["codebook_size"],
            info["model_type"],
            config,
            commit_every=COMMIT_EVERY,
            extra={ENCODE_KEY: plan.settings},
        ) as writer:
            start = _resume_manifest(out / MANIFEST_NAME, writer.num_committed, plan, src)
            with (
                open(out / MANIFEST_NAME, "a", encoding="utf-8") as manifest,
                _progress(len(plan.files), "encode", progress, start) as bar,
            ):
                for k in range(start, len(plan.files)):
                    path = plan.files[k]
                    bar.update()
                    try:
                        pixels = read_pixels(path, size, frames)
                    except BadFileError as e:
                        bad.record(e.path, e.reason)
                        continue
                    ids = encode_pixels(tokenizer, pixels, chunk_frames)
                    if plan.settings["grid_rank"] == 3 and pixels.kind == "image":
                        ids = ids.unsqueeze(0)  # an image is a 1-frame video
                    record = {
                        "index": writer.num_items,
                        "file": path.relative_to(src).as_posix(),
                        "file_index": k,
                        "kind": pixels.kind,
                        "size": list(pixels.size),
                        "source_size": list(pixels.source_size),
                        "fps": pixels.fps,
                    }
                    manifest.write(json.dumps(record) + "\n")  # before the item: the manifest never lags the shards
                    manifest.flush()
                    os.fsync(manifest.fileno())
                    writer.append(ids.numpy(), plan.labels[k])
                    new += 1
    except BaseException:
        if not resuming and not new and out.exists():
            _remove_shard_files(out, remove_dir=created)
        raise
    reader = ShardReader(out, verify=False)
    total, tokens = len(reader), reader.num_tokens
    if total == 0:
        _remove_shard_files(out, remove_dir=created)
        raise ValueError(f"no readable files under {src}: {bad.summary()}")
    kinds = "videos and images (as 1-frame videos)" if plan.settings["grid_rank"] == 3 else "images"
    resumed = f" Resumed an earlier run: {total - new} items were already there." if resuming else ""
    summary = (
        f"Encoded {new} file(s) from {src} ({kinds}) with the {info['model_type']} tokenizer into the token-shard "
        f"folder {out}: {total} items, {tokens} tokens of a {info['codebook_size']}-code vocabulary, labels from "
        f"{len(plan.settings['classes'])} subfolder class(es); each item's source file and size are in "
        f"{out / MANIFEST_NAME} (read the shards with vistok.data.ShardReader).{resumed}{_skipped_text(bad)}"
    )
    return Result(summary, [out], bad)


def _remove_shard_files(out: Path, remove_dir: bool) -> None:
    """Remove what a run that produced no item wrote into ``out`` (and ``out`` itself when the run created it)."""
    for p in out.iterdir():
        if p.name in (META_NAME, MANIFEST_NAME, ".lock") or p.name.startswith(("shard_", f".{META_NAME}")):
            p.unlink(missing_ok=True)
    if remove_dir and not any(out.iterdir()):
        out.rmdir()


# ---------------------------------------------------------------------------------------------------------------------
# decode
# ---------------------------------------------------------------------------------------------------------------------


def _check_out_ext(out: Path, kind: str) -> None:
    exts = IMAGE_EXTS if kind == "image" else tuple(VIDEO_WRITE_CODECS)
    if out.suffix.lower() not in exts:
        raise ValueError(f"-o {out}: {kind} output must end in one of {' '.join(exts)}")


def _write_picture(outputs: _Outputs, path: Path, frames: np.ndarray, fps: float | None) -> None:
    """uint8 (H, W, 3) → an image file, (T, H, W, 3) → a video file, under a temporary name of ``outputs``."""
    if frames.ndim == 3:
        _save_image(frames, outputs.temp(path))
    else:
        write_video(outputs.temp(path), frames, fps=fps or DEFAULT_FPS)


def decode_path(
    tokenizer: nn.Module,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    chunk_frames: int | None = None,
    progress: bool = True,
) -> Result:
    """Decode a ``.npy`` token file to an image/video file ``out``, or a token-shard folder to the folder ``out``."""
    src, out = Path(src), Path(out)
    if src.is_dir():
        return _decode_folder(tokenizer, src, out, chunk_frames, progress)
    tokens = load_tokens(src)
    _check_out_ext(out, tokens.kind)
    _check_tokens_fit(tokens, tokenizer)
    pixels = to_uint8(decode_ids(tokenizer, tokens.ids, tokens.size, chunk_frames))
    with _atomic_outputs() as outputs:
        _write_picture(outputs, out, pixels, tokens.meta.get("fps"))
    note = "" if tokens.meta else " (no sidecar: decoded at the grid's full size)"
    size = pixels.shape[:3] if pixels.ndim == 4 else pixels.shape[:2]
    summary = (
        f"Decoded the {'×'.join(map(str, tokens.ids.shape))} token grid in {src} with the "
        f"{tokenizer_info(tokenizer)['model_type']} tokenizer into the {tokens.kind} {out} "
        f"({_size_text(size)}){note}."
    )
    return Result(summary, outputs.written)


def _read_manifest(folder: Path, count: int) -> list[dict] | None:
    path = folder / MANIFEST_NAME
    if not path.exists():
        return None
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines()[:count]:
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise BadFileError(path, f"unreadable line {len(lines) + 1} ({e})") from e
    return lines if len(lines) == count else None


def _decode_folder(tokenizer: nn.Module, src: Path, out: Path, chunk_frames: int | None, progress: bool) -> Result:
    reader = ShardReader(src)
    info = tokenizer_info(tokenizer)
    stored = reader.meta.get("tokenizer_config_sha256")
    if stored not in (info["config_sha256"], config_hash(None)):
        raise ValueError(
            f"{src}: these tokens were made by a tokenizer with config sha256 {stored[:12]}…, but --model has "
            f"{info['config_sha256'][:12]}…; decode with the tokenizer that encoded them"
        )
    if reader.vocab_size > info["codebook_size"]:
        raise ValueError(f"{src}: vocabulary of {reader.vocab_size} ids, the tokenizer has {info['codebook_size']}")
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: exists and is not a folder (a token-shard folder decodes to a folder)")
    manifest = _read_manifest(src, len(reader))
    written: list[Path] = []
    with _progress(len(reader), "decode", progress) as bar:
        for i in range(len(reader)):
            ids = torch.from_numpy(reader[i].astype(np.int64))
            record = manifest[i] if manifest else {}
            kind = record.get("kind") or ("image" if ids.ndim == 2 else "video")
            if kind == "image" and ids.ndim == 3:
                ids = ids[0]  # stored as a 1-frame video
            name = Path(record["file"]) if record else Path(f"item_{i:06d}")
            target = out / name.with_suffix(".png" if kind == "image" else ".mp4")
            pixels = to_uint8(decode_ids(tokenizer, ids, record.get("size"), chunk_frames))
            with _atomic_outputs() as outputs:
                _write_picture(outputs, target, pixels, record.get("fps"))
            written += outputs.written
            bar.update()
    names = "their source names" if manifest else "item_NNNNNN names (no items.jsonl manifest)"
    summary = (
        f"Decoded {len(reader)} items of the token-shard folder {src} with the {info['model_type']} tokenizer into "
        f"{out}: PNG for images, MP4 for videos, under {names}."
    )
    return Result(summary, written)


# ---------------------------------------------------------------------------------------------------------------------
# reconstruct
# ---------------------------------------------------------------------------------------------------------------------


def _comparison_paths(out: Path, kind: str) -> list[Path]:
    """The side-by-side files written next to a reconstruction ``out``."""
    if kind == "image":
        return [out.with_name(f"{out.stem}-compare.png")]
    return [out.with_name(f"{out.stem}-compare{out.suffix}"), out.with_name(f"{out.stem}-frames.png")]


def _reconstruct_one(
    tokenizer: nn.Module, src: Path, out: Path, size: int | None, frames: int | None, chunk_frames: int | None
) -> tuple[Pixels, dict[str, Any], list[Path]]:
    pixels = read_pixels(src, size, frames)
    _check_out_ext(out, pixels.kind)
    ids = encode_pixels(tokenizer, pixels, chunk_frames)
    decode_chunk = None if chunk_frames is None else max(1, chunk_frames // getattr(tokenizer, "temporal_factor", 1))
    recon = to_uint8(decode_ids(tokenizer, ids, pixels.size, decode_chunk))
    original = to_uint8(pixels.pixels)
    quality = _quality(original, recon)
    with _atomic_outputs() as outputs:
        _write_picture(outputs, out, recon, pixels.fps)
        compare = _comparison_paths(out, pixels.kind)
        _write_picture(outputs, compare[0], _side_by_side([original, recon], axis=-2), pixels.fps)
        if pixels.kind == "video":
            _save_image(_frame_strip(original, recon), outputs.temp(compare[1]))
    return pixels, quality, outputs.written


def reconstruct_path(
    tokenizer: nn.Module,
    src: str | os.PathLike,
    out: str | os.PathLike,
    *,
    size: int | None = None,
    frames: int | None = None,
    chunk_frames: int | None = None,
    progress: bool = True,
) -> Result:
    """Encode and decode a picture (or every picture of a folder); write the reconstruction and a side-by-side.

    For an image ``out`` (e.g. ``rec.png``) gets the reconstruction and ``rec-compare.png`` original | reconstruction;
    for a video ``rec.mp4``, ``rec-compare.mp4`` (side by side) and ``rec-frames.png`` (a strip of a few frames,
    originals above reconstructions). PSNR/SSIM compare the uint8 pictures before any video compression. A folder
    ``src`` mirrors its files into the folder ``out`` (images as PNG, videos as MP4) plus ``metrics.json``.
    """
    src, out = Path(src), Path(out)
    if src.is_dir():
        return _reconstruct_folder(tokenizer, src, out, size, frames, chunk_frames, progress)
    pixels, quality, written = _reconstruct_one(tokenizer, src, out, size, frames, chunk_frames)
    others = " and ".join(str(p) for p in written[1:])
    summary = (
        f"Reconstructed the {pixels.kind} {src} ({_size_text(pixels.size)}) through the "
        f"{tokenizer_info(tokenizer)['model_type']} tokenizer: PSNR {_fmt(quality['psnr'])} dB, SSIM "
        f"{_fmt(quality['ssim'], 4)}. Wrote the reconstruction to {out} and the side-by-side comparison "
        f"(original | reconstruction) to {others}."
    )
    return Result(summary, written, metrics=quality)


def _reconstruct_folder(
    tokenizer: nn.Module,
    src: Path,
    out: Path,
    size: int | None,
    frames: int | None,
    chunk_frames: int | None,
    progress: bool,
) -> Result:
    files = list_files(src, PICTURE_EXTS)
    if not files:
        raise ValueError(f"no image or video files under {src} (looked for {' '.join(PICTURE_EXTS)})")
    if out.exists() and not out.is_dir():
        raise ValueError(f"-o {out}: exists and is not a folder (a folder reconstructs to a folder)")
    bad, per_file, written = BadFiles(name=str(src)), {}, []
    with _progress(len(files), "reconstruct", progress) as bar:
        for path in files:
            rel = path.relative_to(src)
            target = out / rel.with_suffix(".png" if _kind_of(path) == "image" else ".mp4")
            try:
                _, quality, files_written = _reconstruct_one(tokenizer, path, target, size, frames, chunk_frames)
            except BadFileError as e:
                bad.record(e.path, e.reason)
            else:
                per_file[rel.as_posix()] = quality
                written += files_written
            bar.update()
    if not per_file:
        raise ValueError(f"no readable files under {src}: {bad.summary()}")
    means = {k: _mean([q[k] for q in per_file.values()]) for k in ("psnr", "ssim")}
    _write_json(out / "metrics.json", {"mean": means, "files": per_file, "skipped": bad.items})
    written.append(out / "metrics.json")
    summary = (
        f"Reconstructed {len(per_file)} file(s) from {src} through the {tokenizer_info(tokenizer)['model_type']} "
        f"tokenizer into {out} (each with a -compare side-by-side; videos also a -frames strip): mean PSNR "
        f"{_fmt(means['psnr'])} dB, mean SSIM {_fmt(means['ssim'], 4)}; per-file numbers in "
        f"{out / 'metrics.json'}.{_skipped_text(bad)}"
    )
    return Result(summary, written, bad, means)


def _mean(values: Sequence[float | None]) -> float | None:
    kept = [v for v in values if v is not None]
    return sum(kept) / len(kept) if kept else None


# ---------------------------------------------------------------------------------------------------------------------
# eval
# ---------------------------------------------------------------------------------------------------------------------


@dataclass
class _Section:
    """One kind of data to evaluate: a dataset of ``{"pixels", "index"}`` items and its skipped files."""

    name: str
    dataset: Any
    bad: BadFiles | None = None


EVAL_SAMPLE_ITEMS = 64  # held-out crops (and half as many clips) that `tokenizer eval --data samples` scores
EVAL_SEED = 1234


def _eval_sections(data: str, size: int, frames: int, max_items: int | None) -> list[_Section]:
    from vistok.data import ImageFolder, SamplePhotos, SyntheticVideos, VideoFolder

    if data == "samples":
        # held-out photos only: fixed-seed random crops at random scales (the whole photo is one of many views), and
        # synthetic clips over them; the seed differs from training's so no crop is shared with a training run
        n_images, n_clips = max_items or EVAL_SAMPLE_ITEMS, max_items or EVAL_SAMPLE_ITEMS // 2
        images = SamplePhotos(size=size, split="heldout", length=n_images, crop="random", hflip_p=0.0, seed=EVAL_SEED)
        videos = SyntheticVideos(num_frames=frames, size=size, split="heldout", length=n_clips, seed=EVAL_SEED)
        return [_Section("images", images), _Section("videos", videos)]
    root = Path(data)
    if not root.is_dir():
        raise FileNotFoundError(f"--data {data}: no such folder (pass a folder of images/videos, or 'samples')")
    sections = []
    with warnings.catch_warnings():  # the skipped files are reported in the table instead
        warnings.simplefilter("ignore")
        if list_files(root, IMAGE_EXTS):
            ds = ImageFolder(root, size=size, crop="center")
            sections.append(_Section("images", ds, ds.bad))
        if list_files(root, VIDEO_EXTS):
            ds = VideoFolder(root, num_frames=frames, size=size, crop="center")
            sections.append(_Section("videos", ds, ds.bad))
    if not sections:
        raise ValueError(f"--data {data}: no image or video files (looked for {' '.join(PICTURE_EXTS)})")
    return sections


def _lpips_function(weights: Sequence[str | os.PathLike]) -> Callable[[Tensor, Tensor], Tensor]:
    """``lpips(x, y)`` with the user's weight files, from :mod:`vistok.train.perceptual` (imported only when asked)."""
    files = [Path(w).expanduser() for w in weights]
    for f in files:
        if not f.is_file():
            raise FileNotFoundError(f"--lpips-weights {f}: no such file")
    try:
        from vistok.train.perceptual import load_lpips_weights, lpips
    except ImportError as e:
        raise ImportError(f"LPIPS needs vistok.train.perceptual, which could not be imported ({e})") from e
    load_lpips_weights(files)  # fail now, naming what is missing, not after the first batch
    return lambda x, y: lpips(x, y, weights=files).float().reshape(-1).cpu()


def _frames(x: Tensor) -> Tensor:
    """(B, C, H, W) as is; (B, C, T, H, W) → (B·T, C, H, W)."""
    return x if x.ndim == 4 else x.transpose(1, 2).flatten(0, 1)


def _as_uint8(x: Tensor) -> Tensor:
    """[−1, 1] floats → uint8 [0, 255] (clamped, rounded): what a saved file would hold."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class _SectionStats:
    """Running sums of one eval section."""

    def __init__(self, codebook_size: int) -> None:
        self.values: dict[str, list[float]] = {"psnr": [], "ssim": [], "ms_ssim": [], "lpips": []}
        self.histogram = torch.zeros(codebook_size, dtype=torch.long)
        self.tokens = self.pixels = self.items = 0
        self.real: list[Tensor] = []
        self.fake: list[Tensor] = []
        self.shape: tuple[int, ...] = ()
        self.ms_scales = 0


@torch.inference_mode()
def _eval_batch(
    tokenizer: nn.Module,
    x: Tensor,
    stats: _SectionStats,
    features: Callable[[Tensor], Tensor] | None,
    lpips_fn: Callable[[Tensor, Tensor], Tensor] | None,
) -> None:
    ids = tokenizer.encode(x, pad=True)
    recon = _crop(tokenizer.decode(ids), x.shape[2:]).float()
    real, fake = _as_uint8(x), _as_uint8(recon)
    stats.values["psnr"] += metrics.psnr(real, fake).tolist()
    h, w = x.shape[-2:]
    if min(h, w) >= metrics.SSIM_WINDOW:
        stats.values["ssim"] += metrics.ssim(real, fake).tolist()
        stats.ms_scales = metrics.ms_ssim_scales(h, w)
        with warnings.catch_warnings():  # fewer scales are reported in the table
            warnings.simplefilter("ignore")
            stats.values["ms_ssim"] += metrics.ms_ssim(real, fake).tolist()
    if lpips_fn is not None:
        stats.values["lpips"] += lpips_fn(_frames(x), _frames(recon.clamp(-1, 1))).tolist()
    if features is not None:
        stats.real.append(features(_frames(real)))
        stats.fake.append(features(_frames(fake)))
    stats.histogram += metrics.code_histogram(ids.cpu(), stats.histogram.numel())
    stats.tokens += ids.numel()
    stats.pixels += x.shape[0] * math.prod(x.shape[2:])
    stats.items += x.shape[0]
    stats.shape = tuple(x.shape[2:])


def _batches(section: _Section, batch_size: int, max_items: int | None) -> Iterator[Tensor]:
    """Stacked pixels of the section's items; an item a dataset substituted for a broken file is used once."""
    ds, seen, batch = section.dataset, set(), []
    count = len(ds) if max_items is None else min(len(ds), max_items)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for i in range(count):
            item = ds[i]
            if item["index"] in seen:
                continue
            seen.add(item["index"])
            batch.append(item["pixels"])
            if len(batch) == batch_size:
                yield torch.stack(batch)
                batch = []
    if batch:
        yield torch.stack(batch)


def _section_report(stats: _SectionStats, section: _Section, features_path: str | None) -> dict[str, Any]:
    book = metrics.CodebookStats.from_counts(stats.histogram)
    report: dict[str, Any] = {
        "items": stats.items,
        "shape": list(stats.shape),
        "psnr": _mean(stats.values["psnr"]),
        "ssim": _mean(stats.values["ssim"]),
        "ms_ssim": _mean(stats.values["ms_ssim"]),
        "ms_ssim_scales": stats.ms_scales,
        "codebook": book.as_dict(),
        "bpp_raw": metrics.bits_per_pixel(stats.tokens, book.codebook_size, stats.pixels),
        "bpp_entropy": metrics.entropy_bits_per_pixel(stats.tokens, book.entropy_bits, stats.pixels),
        "lpips": _mean(stats.values["lpips"]),
        "rfid": None,
        "skipped": [{"path": p, "reason": r} for p, r in section.bad.items] if section.bad else [],
    }
    if features_path is not None:
        real, fake = torch.cat(stats.real), torch.cat(stats.fake)
        if len(real) >= 2:
            report["rfid"] = metrics.frechet_distance(
                *metrics.feature_statistics(real), *metrics.feature_statistics(fake)
            )
        report["rfid_samples"] = len(real)
    return report


def evaluate_tokenizer(
    tokenizer: nn.Module,
    data: str | os.PathLike = "samples",
    *,
    size: int = 256,
    frames: int = 17,
    max_items: int | None = None,
    batch_size: int = 4,
    inception_weights: str | os.PathLike | None = None,
    lpips_weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Reconstruction quality and token statistics of ``tokenizer`` on ``data``; returns a JSON-able report.

    ``data`` is ``"samples"`` (the held-out built-in photos, whole and resized, and held-out synthetic clips) or a
    folder (its images and its videos, each resized and centre-cropped to ``size``; videos give their first
    ``frames`` frames; files that cannot be read are skipped and listed). Each section reports mean PSNR, SSIM and
    MS-SSIM (on the uint8 pictures a file would hold; video values are per-frame means), codebook usage / entropy /
    perplexity over all its tokens, and bits per pixel of the raw tokens (and at their empirical entropy). rFID
    (frame-wise, from the TorchScript network at ``inception_weights``) and LPIPS (``lpips_weights``: the file or
    files of :func:`vistok.train.perceptual.load_lpips_weights`; per frame) only when their weights are given.
    """
    if size < 1 or frames < 1 or batch_size < 1 or (max_items is not None and max_items < 1):
        raise ValueError(
            f"size, frames, batch_size and max_items must be positive, got {size}, {frames}, {batch_size}, {max_items}"
        )
    device = _device_of(tokenizer)
    features = metrics.load_feature_network(inception_weights, device) if inception_weights else None
    if isinstance(lpips_weights, str | os.PathLike):
        lpips_weights = [lpips_weights]
    lpips_fn = _lpips_function(lpips_weights) if lpips_weights else None
    info = tokenizer_info(tokenizer)
    report: dict[str, Any] = {
        "tokenizer": info,
        "data": str(data),
        "size": size,
        "frames": frames,
        "inception_weights": Path(inception_weights).name if inception_weights else None,
        "lpips_weights": [Path(w).name for w in lpips_weights] if lpips_weights else None,
        "sections": {},
    }
    for section in _eval_sections(str(data), size, frames, max_items):
        stats = _SectionStats(info["codebook_size"])
        total = len(section.dataset) if max_items is None else min(len(section.dataset), max_items)
        with _progress(total, f"eval {section.name}", progress) as bar:
            for x in _batches(section, batch_size, max_items):
                _eval_batch(tokenizer, x.to(device), stats, features, lpips_fn)
                bar.update(len(x))
        if stats.items:
            report["sections"][section.name] = _section_report(stats, section, inception_weights)
    return report


def format_eval_report(report: dict[str, Any]) -> str:
    """The report of :func:`evaluate_tokenizer` as a table, one column per section."""
    sections = report["sections"]
    names = list(sections)

    def header(name: str) -> str:
        s = sections[name]
        frames = f", {s['shape'][0]} frames" if len(s["shape"]) == 3 else ""
        return f"{name} ({s['items']} × {s['shape'][-2]}×{s['shape'][-1]}{frames})"

    def rfid(s: dict) -> str:
        if report["inception_weights"] is None:
            return "skipped: pass --inception-weights"
        return _fmt(s["rfid"]) + f" (n={s.get('rfid_samples', 0)})"

    rows: list[tuple[str, Callable[[dict], str]]] = [
        ("PSNR (dB)", lambda s: _fmt(s["psnr"])),
        ("SSIM", lambda s: _fmt(s["ssim"], 4)),
        (
            "MS-SSIM",
            lambda s: (
                _fmt(s["ms_ssim"], 4) + (f" ({s['ms_ssim_scales']} of 5 scales)" if 0 < s["ms_ssim_scales"] < 5 else "")
            ),
        ),
        (
            "codebook usage",
            lambda s: (
                f"{100 * s['codebook']['usage']:.2f}% ({s['codebook']['used_codes']}/{s['codebook']['codebook_size']})"
            ),
        ),
        (
            "entropy (bits/token)",
            lambda s: f"{s['codebook']['entropy_bits']:.3f} of {s['codebook']['max_entropy_bits']:.3f}",
        ),
        ("perplexity", lambda s: f"{s['codebook']['perplexity']:.1f}"),
        ("bits/pixel (raw)", lambda s: f"{s['bpp_raw']:.4f}"),
        ("bits/pixel (entropy)", lambda s: f"{s['bpp_entropy']:.4f}"),
        ("rFID", rfid),
        ("LPIPS", lambda s: _fmt(s["lpips"], 4) if report["lpips_weights"] else "skipped: pass --lpips-weights"),
        ("skipped files", lambda s: str(len(s["skipped"]))),
    ]
    table = [["metric", *(header(n) for n in names)]]
    table += [[label, *(fn(sections[n]) for n in names)] for label, fn in rows]
    widths = [max(len(r[i]) for r in table) for i in range(len(table[0]))]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# CLI
# ---------------------------------------------------------------------------------------------------------------------

_FORMATTER = argparse.RawDescriptionHelpFormatter


def _verb(sub, name: str, help: str, example: str, func: Callable[[argparse.Namespace], int]):
    p = sub.add_parser(name, help=help, description=help, epilog=f"example:\n  {example}", formatter_class=_FORMATTER)
    p.set_defaults(func=func)
    return p


def _positive(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {n}")
    return n


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--model",
        metavar="DIR",
        default=None,
        help="tokenizer folder (config.json + model.safetensors) or a preset name (random init); "
        "default: the weights shipped with vistok",
    )
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")


def _add_size_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--size",
        type=_positive,
        default=None,
        metavar="S",
        help="resize the shorter side to S and centre-crop S×S (default: keep the size, pad to fit)",
    )
    p.add_argument("--frames", type=_positive, default=None, metavar="T", help="keep a video's first T frames")
    p.add_argument(
        "--chunk-frames",
        type=_positive,
        default=None,
        metavar="N",
        help="run a video through the tokenizer N frames at a time (same result, less memory)",
    )


def _cmd_encode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.model, args.device)
    result = encode_path(
        tok,
        args.input,
        args.output,
        size=args.size,
        frames=args.frames,
        chunk_frames=args.chunk_frames,
        progress=not args.quiet,
    )
    print(result.summary)
    return 0


def _cmd_decode(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.model, args.device)
    result = decode_path(tok, args.tokens, args.output, chunk_frames=args.chunk_frames, progress=not args.quiet)
    print(result.summary)
    return 0


def _cmd_reconstruct(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.model, args.device)
    result = reconstruct_path(
        tok,
        args.input,
        args.output,
        size=args.size,
        frames=args.frames,
        chunk_frames=args.chunk_frames,
        progress=not args.quiet,
    )
    print(result.summary)
    return 0


def _cmd_eval(args: argparse.Namespace) -> int:
    tok = load_tokenizer(args.model, args.device)
    report = evaluate_tokenizer(
        tok,
        args.data,
        size=args.size,
        frames=args.frames,
        max_items=args.max_items,
        batch_size=args.batch_size,
        inception_weights=args.inception_weights,
        lpips_weights=args.lpips_weights,
        progress=not args.quiet,
    )
    print(format_eval_report(report))
    counts = ", ".join(f"{s['items']} {name}" for name, s in report["sections"].items())
    where = f" Wrote the full report as JSON to {args.json}." if args.json else " (--json OUT writes it as JSON.)"
    if args.json:
        _write_json(Path(args.json), report)
    print(
        f"\nEvaluated the {report['tokenizer']['model_type']} tokenizer on {counts} from {args.data} at "
        f"{args.size}×{args.size}: PSNR/SSIM/MS-SSIM on uint8 pictures (videos: per-frame means), codebook "
        f"statistics over all tokens, bits per pixel of the raw token ids.{where}"
    )
    return 0


def add_use_parsers(subparsers) -> None:
    """Add the top-level verbs ``encode``, ``decode`` and ``reconstruct`` to the ``vistok`` command's subparsers."""
    add_encode_parser(subparsers)
    add_decode_parser(subparsers)
    add_reconstruct_parser(subparsers)


def add_encode_parser(subparsers) -> None:
    """``vistok encode``."""
    p = _verb(
        subparsers,
        "encode",
        "turn an image or video into token ids (.npy + .npy.json sidecar), or a folder into a token-shard folder",
        "vistok encode photo.jpg -o photo.npy --model runs/tok/release",
        _cmd_encode,
    )
    p.add_argument("input", metavar="IN", help="an image, a video, or a folder of them (labels from subfolders)")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        required=True,
        help="a .npy file for one picture; a token-shard folder for a folder (re-run to resume)",
    )
    _add_size_args(p)
    _add_model_args(p)


def add_decode_parser(subparsers) -> None:
    """``vistok decode``."""
    p = _verb(
        subparsers,
        "decode",
        "turn token ids back into pixels: a .npy → PNG (image) or MP4 (video); a token-shard folder → a folder",
        "vistok decode photo.npy -o photo_decoded.png --model runs/tok/release",
        _cmd_decode,
    )
    p.add_argument("tokens", metavar="TOKENS", help="a .npy token file from 'vistok encode', or a token-shard folder")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        required=True,
        help="an image file (.png, .jpg, ...) or video file (.mp4, ...), or a folder for a shard folder",
    )
    p.add_argument(
        "--chunk-frames",
        type=_positive,
        default=None,
        metavar="N",
        help="decode a video N token frames at a time (same result, less memory)",
    )
    _add_model_args(p)


def add_reconstruct_parser(subparsers) -> None:
    """``vistok reconstruct``."""
    p = _verb(
        subparsers,
        "reconstruct",
        "encode and decode a picture; write the reconstruction, a side-by-side comparison, and print PSNR/SSIM",
        "vistok reconstruct clip.mp4 -o clip_rec.mp4 --model runs/tok/release --frames 17",
        _cmd_reconstruct,
    )
    p.add_argument("input", metavar="IN", help="an image, a video, or a folder of them")
    p.add_argument(
        "-o",
        "--output",
        metavar="OUT",
        required=True,
        help="the reconstruction (.png for an image, .mp4 for a video), or a folder for a folder",
    )
    _add_size_args(p)
    _add_model_args(p)


def add_tokenizer_eval_parser(tokenizer_subparsers) -> None:
    """Add ``eval`` to the subparsers of the ``vistok tokenizer`` group."""
    p = _verb(
        tokenizer_subparsers,
        "eval",
        "reconstruction quality (PSNR, SSIM, MS-SSIM, optional rFID/LPIPS) and token statistics of a tokenizer",
        "vistok tokenizer eval --model runs/tok/release --data samples --size 128 --json eval.json",
        _cmd_eval,
    )
    p.add_argument(
        "--data",
        required=True,
        metavar="DIR",
        help="a folder of images/videos, or 'samples' (the held-out built-in photos and clips)",
    )
    p.add_argument("--size", type=_positive, default=256, metavar="S", help="resize + centre-crop to S×S (default 256)")
    p.add_argument("--frames", type=_positive, default=17, metavar="T", help="frames per video clip (default 17)")
    p.add_argument("--max-items", type=_positive, default=None, metavar="N", help="at most N images and N clips")
    p.add_argument("--batch-size", type=_positive, default=4, metavar="B", help="pictures per batch (default 4)")
    p.add_argument("--json", metavar="OUT", default=None, help="also write the report as JSON to OUT")
    p.add_argument(
        "--inception-weights",
        metavar="PATH",
        default=None,
        help="TorchScript Inception feature network (e.g. inception-2015-12-05.pt) to compute rFID",
    )
    p.add_argument(
        "--lpips-weights",
        metavar="PATH",
        nargs="+",
        default=None,
        help="LPIPS weight file(s): VGG16 + LPIPS linear layers (e.g. vgg16.pth vgg.pth), to compute LPIPS",
    )
    _add_model_args(p)
