"""Image files and image folders.

:func:`read_image` decodes one file to an RGB PIL image (EXIF orientation applied, any mode converted, transparency
composited on white) and turns every way a file can be unusable into a :class:`BadFileError` with a short reason.
:class:`ImageFolder` is a torch ``Dataset`` over a folder tree that skips and counts bad files (see
``vistok.data.errors``) and draws its random crops and flips from ``(seed, epoch, index)``, so a sample is the same in
every run and in every DataLoader worker.

:class:`FolderDataset` holds what the image and video folders share: finding files, subfolder labels, the cheap
checks at build time and the skip-to-the-next-good-item rule when a file turns out broken while decoding.
"""

from __future__ import annotations

import io
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from vistok.data.errors import BadFileError, BadFiles
from vistok.data.transforms import CROPS, apply_box, crop_box, to_tensor

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff")
# Pillow's own default for Image.MAX_IMAGE_PIXELS (≈ 9459×9459); PIL itself refuses anything above twice its limit.
DEFAULT_MAX_PIXELS = 89_478_485
LABEL_MODES = ("subfolder", None)
ROOT_CLASS = "."  # the class name of files that lie directly in the root of a folder that also has subfolders

EMPTY = "empty file (0 bytes)"
NOT_IMAGE = "not an image (unrecognised format)"
TRUNCATED = "truncated image data"
CORRUPT = "corrupt image data"


# ------------------------------------------------------------------------------------------------------- files


def list_files(root: str | os.PathLike, exts: tuple[str, ...] | None = None) -> list[Path]:
    """Files under ``root`` (recursive, sorted by relative path) whose extension is in ``exts`` (any case).

    ``exts=None`` lists every file. Hidden files and folders (name starting with ".") are left out, which also drops
    the ``._name.jpg`` resource forks macOS leaves behind.
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"no such folder: {root}")
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith(".") and (exts is None or Path(name).suffix.lower() in exts):
                found.append(Path(dirpath) / name)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def subfolder_labels(root: str | os.PathLike, files: list[Path]) -> tuple[list[str], list[int]]:
    """(classes, label per file): classes are the sorted first-level subfolders of ``root`` that hold files.

    A flat folder has the single class ``"."`` (every label 0). Files directly in the root of a folder that also has
    subfolders get the class ``"."``, which comes first.
    """
    keys = [p.relative_to(root).parts[0] if len(p.relative_to(root).parts) > 1 else ROOT_CLASS for p in files]
    classes = sorted(set(keys), key=lambda k: (k != ROOT_CLASS, k))
    index = {c: i for i, c in enumerate(classes)}
    return classes, [index[k] for k in keys]


# ------------------------------------------------------------------------------------------------------- decoding


class _TruncationProbe(io.BytesIO):
    """In-memory file that counts reads which asked for data and got none.

    That is how Pillow notices a truncated file, but with ``ImageFile.LOAD_TRUNCATED_IMAGES`` set (a global some
    programs turn on) it then pads the image silently. Counting here catches truncation whatever that global says.
    """

    empty_reads = 0

    def read(self, size: int | None = -1) -> bytes:
        data = super().read(size)
        if not data and size != 0:
            self.empty_reads += 1
        return data


@contextmanager
def _pil_errors(path: str | os.PathLike, max_pixels: int | None) -> Iterator[None]:
    """Turn Pillow's exceptions into :class:`BadFileError` and keep its warnings (bomb, corrupt EXIF) inside."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    except BadFileError:
        raise
    except Image.DecompressionBombError as e:
        raise BadFileError(path, f"too large (over Pillow's decompression-bomb limit, max_pixels={max_pixels})") from e
    except UnidentifiedImageError as e:
        raise BadFileError(path, NOT_IMAGE) from e
    except (FileNotFoundError, PermissionError, IsADirectoryError) as e:
        raise BadFileError(path, f"cannot read file ({type(e).__name__})") from e
    except OSError as e:
        raise BadFileError(path, TRUNCATED if "truncated" in str(e) else CORRUPT) from e
    except Exception as e:  # Pillow plugins raise ValueError, SyntaxError, struct.error, EOFError... on bad data
        raise BadFileError(path, CORRUPT) from e


def _check_size(path: str | os.PathLike, img: Image.Image, max_pixels: int | None) -> None:
    w, h = img.size
    if w <= 0 or h <= 0:
        raise BadFileError(path, f"empty picture ({w}x{h})")
    if max_pixels is not None and w * h > max_pixels:
        raise BadFileError(path, f"too large ({w}x{h} > {max_pixels} pixels)")


def check_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> tuple[int, int]:
    """Cheap checks without decoding the pixels: not empty, a format Pillow knows, within ``max_pixels``.

    Returns the stored (width, height); raises :class:`BadFileError` naming the file and the reason.
    """
    if os.path.getsize(path) == 0:
        raise BadFileError(path, EMPTY)
    with _pil_errors(path, max_pixels), Image.open(path) as img:
        _check_size(path, img, max_pixels)
        return img.size


def load_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Decode a whole image file in its stored mode and orientation; a truncated file is an error.

    ``max_pixels`` (width × height) guards against decompression bombs; ``None`` leaves only Pillow's own limit
    (``2 × Image.MAX_IMAGE_PIXELS``), which applies in any case. Raises :class:`BadFileError`.
    """
    with _pil_errors(path, max_pixels):
        data = Path(path).read_bytes()
        if not data:
            raise BadFileError(path, EMPTY)
        fp = _TruncationProbe(data)
        img = Image.open(fp)
        _check_size(path, img, max_pixels)
        opened = fp.empty_reads  # format probing in Image.open may read past the end of short files
        img.load()
        if fp.empty_reads > opened:
            raise BadFileError(path, TRUNCATED)
        return img


def to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode → RGB: transparency composited on white, 16/32-bit and float greyscale scaled to 8 bits.

    ``I;16*`` is divided by 257; ``I`` (32-bit int) is clipped to [0, 65535] then divided by 257; ``F`` is taken as
    [0, 1] when its maximum is ≤ 1, else clipped to [0, 255].
    """
    if img.mode == "RGB":
        return img
    if img.mode.startswith("I") or img.mode == "F":
        return Image.fromarray(_grey_to_uint8(img, np.asarray(img))).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return img.convert("RGB")


def _grey_to_uint8(img: Image.Image, a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64)
    if img.mode == "F":
        a = a * 255.0 if a.size and a.max() <= 1.0 else a
        return np.clip(np.round(a), 0, 255).astype(np.uint8)
    return np.round(np.clip(a, 0, 65535) / 257.0).astype(np.uint8)


def read_image(path: str | os.PathLike, max_pixels: int | None = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Read an image file as an RGB PIL image, EXIF orientation applied (see :func:`load_image`, :func:`to_rgb`)."""
    img = load_image(path, max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            img = ImageOps.exif_transpose(img)
    except Exception:  # malformed EXIF: keep the stored orientation rather than lose the picture
        pass
    try:
        return to_rgb(img)
    except (ValueError, OSError) as e:
        raise BadFileError(path, f"cannot convert image mode {img.mode} to RGB") from e


# ------------------------------------------------------------------------------------------------------- datasets


class FolderDataset(Dataset, ABC):
    """Base of :class:`ImageFolder` and ``VideoFolder``: files, labels, bad-file accounting, deterministic draws.

    Subclasses set ``exts`` and ``kind`` and implement ``_check(path)`` (cheap, at build time; returns what
    ``_load`` needs later or raises :class:`BadFileError`) and ``_load(index, rng)`` (the full decode). An item whose
    file fails to decode is recorded in ``self.bad`` and replaced by the next good item (index + 1, wrapping), so the
    replacement is the same in every run. ``strict=True`` raises instead.

    DataLoader workers hold copies of the dataset: a failure found in a worker is recorded and warned about there,
    and ``set_epoch`` reaches the workers only when their iterator is created after it (not with
    ``persistent_workers=True``).
    """

    exts: tuple[str, ...] = ()
    kind = "file"

    def __init__(
        self, root: str | os.PathLike, *, seed: int = 0, strict: bool = False, labels: str | None = "subfolder"
    ):
        if labels not in LABEL_MODES:
            raise ValueError(f"labels must be one of {LABEL_MODES}, got {labels!r}")
        self.root, self.seed, self.strict, self.epoch = Path(root), int(seed), bool(strict), 0
        self.bad = BadFiles(name=f"{type(self).__name__}({self.root})")
        self._failed: set[int] = set()  # files that failed while decoding (indices into self.paths)
        self._decode_failures = 0
        files = self._find_files()
        classes, labels_all = subfolder_labels(self.root, files) if labels else ([], [0] * len(files))
        self.classes: list[str] = classes
        self.paths: list[str] = []
        self.labels: list[int] = []
        self._infos: list[Any] = []
        for path, label in zip(files, labels_all):
            self._add(path, label)
        if not self.paths:
            raise ValueError(f"no usable {self.kind} files under {self.root}: {self.bad.summary()}")
        self.bad.warn()

    def _find_files(self) -> list[Path]:
        files = list_files(self.root, self.exts)
        if not files:
            exts = " ".join(self.exts)
            raise ValueError(f"no {self.kind} files found under {self.root} (looked for {exts}, any case)")
        return files

    def _add(self, path: Path, label: int) -> None:
        try:
            info = self._check(path)
        except BadFileError as e:
            if self.strict:
                raise
            self.bad.record(e.path, e.reason)
            return
        self.paths.append(str(path))
        self.labels.append(label)
        self._infos.append(info)

    def set_epoch(self, epoch: int) -> None:
        """Select the random draws of ``epoch`` (call before each epoch, before creating the DataLoader iterator)."""
        self.epoch = int(epoch)
        self.bad.warn()

    def rng(self, index: int) -> np.random.Generator:
        """The generator of item ``index`` in the current epoch: a function of (seed, epoch, index) only."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def file_index(self, index: int) -> int:
        """Index into ``self.paths`` of the file behind item ``index``."""
        return index

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> dict[str, Any]:
        n = len(self)
        if not -n <= index < n:
            raise IndexError(f"index {index} out of range for {n} items")
        index %= n
        for step in range(n):
            i = (index + step) % n
            f = self.file_index(i)
            if f in self._failed:
                continue
            try:
                return self._load(i, self.rng(i))
            except BadFileError as e:
                self._fail(f, e)
        raise RuntimeError(f"every file of {self.bad.name} turned out unreadable: {self.bad.summary()}")

    def _fail(self, f: int, e: BadFileError) -> None:
        """Record a file that failed to decode; warn on the 1st, 2nd, 4th, 8th... such failure (not once per file)."""
        if self.strict:
            raise e
        self._failed.add(f)
        self.bad.record(e.path, e.reason)
        self._decode_failures += 1
        if self._decode_failures & (self._decode_failures - 1) == 0:
            self.bad.warn()

    @abstractmethod
    def _check(self, path: Path) -> Any:
        """Cheap per-file check at build time (header, size, probe); raises BadFileError."""

    @abstractmethod
    def _load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        """Decode and transform item ``index``; raises BadFileError for a file that fails to decode."""


def check_crop_args(size: int | tuple[int, int], crop: str, hflip_p: float, scale: float) -> None:
    """Validate the crop arguments shared by the image and video folders (early, with the offending value)."""
    sizes = (size,) if isinstance(size, int) else tuple(size)
    if len(sizes) not in (1, 2) or any(int(s) <= 0 for s in sizes):
        raise ValueError(f"size must be a positive int or (height, width), got {size!r}")
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if not 0.0 <= hflip_p <= 1.0:
        raise ValueError(f"hflip_p must be in [0, 1], got {hflip_p}")
    if scale < 1.0:
        raise ValueError(f"scale must be >= 1 (the crop must fit inside the resized picture), got {scale}")


class ImageFolder(FolderDataset):
    """Images under ``root`` (recursive, sorted) as float32 (3, H, W) tensors in [-1, 1].

    Each image is resized so its shorter side is ``scale``·max(H, W), then cropped to ``size`` (int or (H, W)) at the
    centre or at random, and flipped horizontally with probability ``hflip_p``. Items are dicts
    ``{"pixels", "label", "path", "index"}``; ``label`` is the index of the first-level subfolder in ``classes``
    (0 for a flat folder; ``labels=None`` gives 0 everywhere). Files that fail the cheap checks at build time (empty,
    not an image, over ``max_pixels`` = width × height) or the decode later (truncated, corrupt) are skipped and
    counted in ``bad`` (see :class:`FolderDataset`).
    """

    exts = IMAGE_EXTS
    kind = "image"

    def __init__(
        self,
        root: str | os.PathLike,
        size: int | tuple[int, int] = 256,
        crop: str = "center",
        hflip_p: float = 0.0,
        scale: float = 1.0,
        seed: int = 0,
        strict: bool = False,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
        labels: str | None = "subfolder",
    ):
        check_crop_args(size, crop, hflip_p, scale)
        self.size, self.crop, self.hflip_p, self.scale, self.max_pixels = size, crop, hflip_p, scale, max_pixels
        super().__init__(root, seed=seed, strict=strict, labels=labels)

    def _check(self, path: Path) -> tuple[int, int]:
        return check_image(path, self.max_pixels)

    def _load(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        path = self.paths[index]
        img = read_image(path, self.max_pixels)
        box = crop_box(img.width, img.height, self.size, self.crop, rng, self.hflip_p, self.scale)
        return {"pixels": to_tensor(apply_box(img, box)), "label": self.labels[index], "path": path, "index": index}
