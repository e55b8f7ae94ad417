"""Token shards: pre-tokenized items stored once, read many times (nanoGPT-style memmap).

A shard folder (format version 1) holds::

    meta.json          the single source of truth: format version, vocabulary, dtype, tokenizer, counts, checksums
    shard_00000.bin    every token id of the shard, flat, little-endian uint16 (vocab_size <= 65,536) or uint32
    shard_00000.idx    int64 offsets into .bin, num_items + 1 of them, the first 0: item j is bin[idx[j]:idx[j+1]]
    shard_00000.shape  int32 (num_items, grid_rank) per-item grid shapes; only when items' shapes vary
    shard_00000.label  int64 per-item labels; only when the items were written with labels
    shard_00001.bin    ...

``meta.json`` keys: ``vistok_shards`` (format version, 1), ``vocab_size``, ``dtype`` (``"uint16"``/``"uint32"``),
``byte_order`` (``"little"``), ``tokenizer`` (a name), ``tokenizer_config`` and ``tokenizer_config_sha256`` (sha256 of
the config as canonical JSON, see :func:`config_hash`), ``grid_shape`` (one shape shared by every item, or ``null``
when the shapes live in the ``.shape`` files), ``grid_rank``, ``has_labels``, ``num_items``, ``num_tokens``,
``max_tokens_per_shard``, ``checksum`` (``"blake2b-256"``), ``extra`` (free-form user metadata) and ``shards``: one
record per shard with ``name``, ``num_items``, ``num_tokens``, ``finalized`` and ``checksums`` (hex blake2b-256 of
the committed bytes of each of its files).

Writing is crash-safe. Items collect in memory and are *committed* every ``commit_every`` items, on ``flush()``, when
a shard is full and on ``close()``: a commit appends the tokens (and shapes, labels), then the offsets, fsyncs, and
atomically replaces ``meta.json`` (temp file + ``os.replace``). Whatever lies in the files past what ``meta.json``
describes is uncommitted: readers never see it, and a writer reopening the folder truncates it, so after a crash at
any point ``ShardWriter(...).num_items`` is exactly the next item to produce. A shard that reached
``max_tokens_per_shard`` is *finalized* (never written again) and the next one starts.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import operator
import os
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, NamedTuple

import numpy as np
import torch
from torch.utils.data import Dataset, IterableDataset, get_worker_info

from vistok.data.errors import BadFileError

__all__ = [
    "FORMAT_VERSION",
    "NO_LABEL",
    "ShardChecksumError",
    "ShardDataset",
    "ShardMapDataset",
    "ShardReader",
    "ShardWriter",
    "config_hash",
    "token_dtype",
    "write_shards",
]

FORMAT_VERSION = 1
NO_LABEL = -1  # the "label" a dataset yields for folders written without labels
META_NAME = "meta.json"
DEFAULT_MAX_TOKENS_PER_SHARD = 2**27  # 256 MiB of uint16 tokens
DEFAULT_COMMIT_EVERY = 1024
CHECKSUM = "blake2b-256"
_KIND_DTYPES = {"idx": np.dtype("<i8"), "shape": np.dtype("<i4"), "label": np.dtype("<i8")}
_SHARD_FILE = re.compile(r"shard_(\d+)\.(?:bin|idx|shape|label)")


class ShardChecksumError(BadFileError):
    """A shard file's bytes do not match the checksum recorded in meta.json."""


# --------------------------------------------------------------------------------------------------- helpers


def token_dtype(vocab_size: int) -> np.dtype:
    """The on-disk token dtype: little-endian uint16 for vocabularies up to 65,536 ids, else uint32."""
    if isinstance(vocab_size, bool) or not isinstance(vocab_size, int | np.integer) or vocab_size < 1:
        raise ValueError(f"vocab_size must be a positive integer, got {vocab_size!r}")
    if vocab_size <= 2**16:
        return np.dtype("<u2")
    if vocab_size <= 2**32:
        return np.dtype("<u4")
    raise ValueError(f"vocab_size {vocab_size} does not fit uint32 token ids (at most {2**32})")


def config_hash(config: Mapping[str, Any] | None) -> str:
    """sha256 hex digest of a tokenizer config as canonical JSON (sorted keys, no spaces, UTF-8); ``None`` is ``{}``."""
    try:
        canonical = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False, "allow_nan": False}
        text = json.dumps(dict(config or {}), **canonical)
    except (TypeError, ValueError) as err:
        raise ValueError(f"tokenizer_config must be a JSON-serializable dict: {err}") from err
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def _new_hasher() -> Any:
    return hashlib.blake2b(digest_size=32)


def _hash_prefix(path: Path, nbytes: int) -> Any:
    """A blake2b hasher fed with the first ``nbytes`` bytes of ``path``."""
    hasher = _new_hasher()
    with open(path, "rb") as f:
        left = nbytes
        while left > 0:
            chunk = f.read(min(left, 1 << 22))
            if not chunk:
                raise BadFileError(path, f"truncated while hashing: expected {nbytes} bytes")
            hasher.update(chunk)
            left -= len(chunk)
    return hasher


def _append_bytes(f: BinaryIO, data: bytes, hasher: Any) -> None:
    """Append ``data`` to an open shard file and to its running checksum."""
    f.write(data)
    hasher.update(data)


def _fsync_dir(directory: Path) -> None:
    if hasattr(os, "O_DIRECTORY"):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_json_atomic(path: Path, obj: dict, fsync: bool) -> None:
    """Write JSON to a temp file and ``os.replace`` it over ``path``: readers see the old or the new, never half."""
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        if fsync:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    if fsync:
        _fsync_dir(path.parent)


def _json_copy(obj: dict, what: str) -> dict:
    try:
        return json.loads(json.dumps(obj, allow_nan=False))
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be a JSON-serializable dict: {err}") from err


def _as_tokens(tokens: Any, vocab_size: int, index: int) -> np.ndarray:
    """Item ``index`` as an integer numpy array with every id in [0, vocab_size), or a clear error."""
    if isinstance(tokens, torch.Tensor):
        tokens = tokens.detach().cpu().numpy()
    arr = np.asarray(tokens)
    if arr.dtype == np.bool_ or not np.issubdtype(arr.dtype, np.integer):
        raise TypeError(f"item {index}: token ids must be integers, got dtype {arr.dtype}")
    if arr.ndim == 0:
        raise ValueError(f"item {index}: tokens must be a grid with at least one axis, got a scalar")
    if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= vocab_size):
        bad = np.flatnonzero((arr < 0) | (arr >= vocab_size))
        where = tuple(int(p) for p in np.unravel_index(int(bad[0]), arr.shape))
        more = f" ({len(bad) - 1} more ids out of range)" if len(bad) > 1 else ""
        raise ValueError(
            f"item {index}: token id {int(arr[where])} at index {where} is outside [0, {vocab_size}){more}"
        )
    return arr


def _as_label(label: Any, index: int) -> int | None:
    """A label as a Python int (int64 range), ``None`` when absent."""
    if label is None:
        return None
    if isinstance(label, torch.Tensor | np.ndarray):
        if (label.size if isinstance(label, np.ndarray) else label.numel()) != 1:
            raise ValueError(f"item {index}: a label must be one integer, got shape {tuple(label.shape)}")
        label = label.reshape(()).tolist()
    if isinstance(label, bool):
        raise TypeError(f"item {index}: a label must be an integer, got a bool")
    try:
        value = operator.index(label)
    except TypeError:
        raise TypeError(f"item {index}: a label must be an integer, got {type(label).__name__} {label!r}") from None
    if not -(2**63) <= value < 2**63:
        raise ValueError(f"item {index}: label {value} does not fit int64")
    return value


def _shard_kinds(meta: dict) -> list[str]:
    """The files each shard of this folder has, in the order a commit writes them: data first, offsets last."""
    kinds = ["bin"]
    if meta["grid_shape"] is None:
        kinds.append("shape")
    if meta["has_labels"]:
        kinds.append("label")
    return [*kinds, "idx"]


def _expected_sizes(meta: dict, entry: dict) -> dict[str, int]:
    """Committed byte size of each file of one shard, from its meta.json record."""
    n = entry["num_items"]
    sizes = {"bin": entry["num_tokens"] * token_dtype(meta["vocab_size"]).itemsize, "idx": (n + 1) * 8}
    if meta["grid_shape"] is None:
        sizes["shape"] = n * meta["grid_rank"] * _KIND_DTYPES["shape"].itemsize
    if meta["has_labels"]:
        sizes["label"] = n * _KIND_DTYPES["label"].itemsize
    return {kind: sizes[kind] for kind in _shard_kinds(meta)}


def _shard_path(directory: Path, entry: dict, kind: str) -> Path:
    return directory / f"{entry['name']}.{kind}"


def _check_sizes(directory: Path, meta: dict, entry: dict) -> None:
    """Refuse a shard whose files are shorter than meta.json says (or longer, once it is finalized)."""
    for kind, expected in _expected_sizes(meta, entry).items():
        path = _shard_path(directory, entry, kind)
        if not path.exists():
            raise BadFileError(path, f"missing shard file (meta.json expects {expected} bytes)")
        actual = path.stat().st_size
        if actual < expected or (entry["finalized"] and actual != expected):
            what = "truncated" if actual < expected else "wrong size"
            raise BadFileError(path, f"{what} shard file: expected {expected} bytes, found {actual}")


def _check_checksums(directory: Path, meta: dict, entry: dict) -> dict[str, Any]:
    """Hash the committed bytes of a shard's files, refuse a mismatch; returns the hashers (to keep appending)."""
    hashers = {}
    for kind, size in _expected_sizes(meta, entry).items():
        path = _shard_path(directory, entry, kind)
        hashers[kind] = _hash_prefix(path, size)
        expected, actual = entry["checksums"].get(kind), hashers[kind].hexdigest()
        if actual != expected:
            raise ShardChecksumError(
                path, f"checksum mismatch: meta.json records {CHECKSUM} {expected}, the file hashes to {actual}"
            )
    return hashers


def _read_meta(directory: Path) -> dict:
    """meta.json of a shard folder, checked to be a vistok shard folder of a format this version reads."""
    path = directory / META_NAME
    if not path.exists():
        raise FileNotFoundError(f"{directory}: not a vistok shard folder (no {META_NAME})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise BadFileError(path, f"unreadable JSON: {err}") from err
    version = meta.get("vistok_shards") if isinstance(meta, dict) else None
    if version is None:
        raise BadFileError(path, "not a vistok shard meta.json (no 'vistok_shards' key)")
    if version != FORMAT_VERSION:
        raise BadFileError(path, f"shard format version {version}; this vistok reads version {FORMAT_VERSION}")
    return meta


def _lock_folder(directory: Path) -> BinaryIO:
    """An exclusive advisory lock on the folder (released when the returned file closes or the process dies)."""
    lock = open(directory / ".lock", "a+b")  # noqa: SIM115 - held open for the writer's lifetime
    try:
        import fcntl
    except ImportError:  # no advisory locks on this platform: the caller must not run two writers
        return lock
    try:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise RuntimeError(f"{directory}: another ShardWriter is writing to this folder") from None
    return lock


# --------------------------------------------------------------------------------------------------- writer


@dataclass
class _OpenShard:
    """The shard being appended to: its meta.json record, open files and running checksums."""

    entry: dict
    files: dict[str, BinaryIO]
    hashers: dict[str, Any]

    def close(self) -> None:
        for f in self.files.values():
            f.close()


class ShardWriter:
    """Append tokenized items to a shard folder; reopening a folder resumes it (see the module docstring).

    >>> with ShardWriter("tokens/", vocab_size=2**18, tokenizer="magvit2-tiny", tokenizer_config=cfg) as w:
    ...     for tokens, label in items[w.num_items:]:  # after a crash, continue exactly where the last commit ended
    ...         w.append(tokens, label)

    ``grid_shape`` fixes one shape for every item (checked on append); ``None`` lets shapes vary (same rank) and
    stores them per item. Labels are stored iff the first item has one; then every item must (or none may).
    Resuming requires the same ``vocab_size``, ``tokenizer``, ``tokenizer_config`` hash and ``grid_shape``;
    ``max_tokens_per_shard`` applies from now on and ``extra`` is merged into the stored one.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        vocab_size: int,
        tokenizer: str = "unknown",
        tokenizer_config: Mapping[str, Any] | None = None,
        *,
        max_tokens_per_shard: int = DEFAULT_MAX_TOKENS_PER_SHARD,
        grid_shape: Iterable[int] | None = None,
        commit_every: int = DEFAULT_COMMIT_EVERY,
        extra: Mapping[str, Any] | None = None,
        fsync: bool = True,
    ):
        if max_tokens_per_shard < 1 or commit_every < 1:
            raise ValueError(
                f"max_tokens_per_shard and commit_every must be >= 1, got {max_tokens_per_shard}, {commit_every}"
            )
        self.dir = Path(directory)
        self.vocab_size, self.dtype = vocab_size, token_dtype(vocab_size)
        self.grid_shape = None if grid_shape is None else tuple(int(d) for d in grid_shape)
        self.max_tokens_per_shard, self.commit_every, self.fsync = max_tokens_per_shard, commit_every, fsync
        self.dir.mkdir(parents=True, exist_ok=True)
        self._lock = _lock_folder(self.dir)
        self._pending: list[tuple[np.ndarray, int | None]] = []
        self._pending_tokens = 0
        self._closed = self._failed = False
        self._shard: _OpenShard | None = None
        try:
            fresh = self._new_meta(tokenizer, tokenizer_config, extra)
            self._meta = self._resume_meta(fresh) if (self.dir / META_NAME).exists() else self._start_meta(fresh)
            self._shard = self._reopen_last_shard()
            _write_json_atomic(self.dir / META_NAME, self._meta, self.fsync)
        except BaseException:
            if self._shard is not None:
                self._shard.close()
            self._lock.close()
            raise

    # -- opening: a fresh folder or a resumed one

    def _new_meta(self, tokenizer: str, config: Mapping[str, Any] | None, extra: Mapping[str, Any] | None) -> dict:
        return {
            "vistok_shards": FORMAT_VERSION,
            "vocab_size": int(self.vocab_size),
            "dtype": self.dtype.name,
            "byte_order": "little",
            "tokenizer": str(tokenizer),
            "tokenizer_config_sha256": config_hash(config),
            "tokenizer_config": _json_copy(dict(config or {}), "tokenizer_config"),
            "grid_shape": None if self.grid_shape is None else list(self.grid_shape),
            "grid_rank": None if self.grid_shape is None else len(self.grid_shape),
            "has_labels": None,
            "num_items": 0,
            "num_tokens": 0,
            "max_tokens_per_shard": self.max_tokens_per_shard,
            "checksum": CHECKSUM,
            "extra": _json_copy(dict(extra or {}), "extra"),  # fail now, not at the first commit, if not JSON
            "shards": [],
        }

    def _start_meta(self, fresh: dict) -> dict:
        leftovers = sorted(p.name for p in self.dir.glob("shard_*"))
        if leftovers:
            raise FileExistsError(
                f"{self.dir}: has shard files ({leftovers[0]}, ...) but no {META_NAME}; refusing to overwrite them"
            )
        return fresh

    def _resume_meta(self, fresh: dict) -> dict:
        meta = _read_meta(self.dir)
        for key in ("vocab_size", "tokenizer", "tokenizer_config_sha256", "grid_shape"):
            if meta[key] != fresh[key]:
                raise ValueError(
                    f"{self.dir}: cannot resume: meta.json has {key}={meta[key]!r}, "
                    f"this writer was given {fresh[key]!r}"
                )
        meta["max_tokens_per_shard"] = self.max_tokens_per_shard
        meta["extra"].update(fresh["extra"])
        return meta

    def _reopen_last_shard(self) -> _OpenShard | None:
        """Drop uncommitted bytes and stray files; reopen the last shard for appending unless it is finalized."""
        shards = self._meta["shards"]
        for path in self.dir.glob("shard_*"):
            match = _SHARD_FILE.fullmatch(path.name)
            if match and int(match[1]) >= len(shards):
                path.unlink()  # files of a shard whose first commit never happened
        for path in self.dir.glob(f".{META_NAME}.tmp*"):
            path.unlink()
        for entry in shards:
            _check_sizes(self.dir, self._meta, entry)
        if not shards or shards[-1]["finalized"]:
            return None
        entry = shards[-1]
        hashers = _check_checksums(self.dir, self._meta, entry)
        files = {}
        for kind, size in _expected_sizes(self._meta, entry).items():
            os.truncate(_shard_path(self.dir, entry, kind), size)
            files[kind] = open(_shard_path(self.dir, entry, kind), "ab")  # noqa: SIM115 - closed in close()
        return _OpenShard(entry, files, hashers)

    # -- appending

    @property
    def num_items(self) -> int:
        """Items appended so far, committed or not; right after opening, the index of the next item to produce."""
        return self._meta["num_items"] + len(self._pending)

    @property
    def num_committed(self) -> int:
        """Items a reader (or a writer reopening after a crash) sees."""
        return self._meta["num_items"]

    def append(self, tokens: Any, label: Any = None) -> int:
        """Add one item (any integer array or tensor of ids in [0, vocab_size)); returns its global index."""
        self._check_usable()
        index = self.num_items
        arr = _as_tokens(tokens, self.vocab_size, index)
        label = _as_label(label, index)
        self._check_layout(arr, label, index)
        if self._meta["grid_rank"] is None:
            self._meta["grid_rank"] = arr.ndim
        if self._meta["has_labels"] is None:
            self._meta["has_labels"] = label is not None
        in_shard = self._pending_tokens + (self._shard.entry["num_tokens"] if self._shard else 0)
        if in_shard > 0 and in_shard + arr.size > self.max_tokens_per_shard:
            self._commit(finalize=True)
        self._pending.append((arr, label))
        self._pending_tokens += arr.size
        if len(self._pending) >= self.commit_every:
            self._commit()
        return index

    def extend(self, batch: Iterable[Any], labels: Iterable[Any] | None = None) -> None:
        """Append every item of ``batch`` (a sequence, or an array/tensor whose first axis indexes items)."""
        if labels is None:
            for tokens in batch:
                self.append(tokens)
        else:
            for tokens, label in zip(batch, labels, strict=True):
                self.append(tokens, label)

    def flush(self) -> None:
        """Commit the items appended so far."""
        self._check_usable()
        self._commit()

    def close(self) -> None:
        """Commit what is pending and release the folder; a closed writer refuses further appends."""
        if self._closed:
            return
        try:
            if not self._failed:
                self._commit()
        finally:
            self._closed = True
            if self._shard is not None:
                self._shard.close()
            self._lock.close()

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _check_usable(self) -> None:
        if self._closed:
            raise RuntimeError(f"{self.dir}: the ShardWriter is closed")
        if self._failed:
            raise RuntimeError(f"{self.dir}: a commit failed; reopen the folder to resume from the last commit")

    def _check_layout(self, arr: np.ndarray, label: int | None, index: int) -> None:
        """The item's shape fits the folder's grid and its label (or lack of one) fits the folder's labels."""
        if self.grid_shape is not None and arr.shape != self.grid_shape:
            raise ValueError(f"item {index}: expected grid shape {self.grid_shape}, got {arr.shape}")
        rank = self._meta["grid_rank"]
        if rank is not None and arr.ndim != rank:
            raise ValueError(f"item {index}: this folder stores {rank}-D token grids, got shape {arr.shape}")
        has_labels = self._meta["has_labels"]
        if has_labels is not None and has_labels != (label is not None):
            stored = "stores a label for every item" if has_labels else "was written without labels"
            raise ValueError(f"item {index}: this folder {stored}; got {'no label' if label is None else 'a label'}")

    # -- committing: data, then offsets, then meta.json atomically

    def _commit(self, finalize: bool = False) -> None:
        try:
            if self._pending:
                self._write_pending(self._shard or self._start_shard())
            if finalize and self._shard is not None:
                self._shard.entry["finalized"] = True
            _write_json_atomic(self.dir / META_NAME, self._meta, self.fsync)
        except BaseException:
            self._failed = True
            raise
        if finalize and self._shard is not None:
            self._shard.close()
            self._shard = None

    def _start_shard(self) -> _OpenShard:
        entry = {
            "name": f"shard_{len(self._meta['shards']):05d}",
            "num_items": 0,
            "num_tokens": 0,
            "finalized": False,
            "checksums": {},
        }
        kinds = _shard_kinds(self._meta)
        files = {kind: open(_shard_path(self.dir, entry, kind), "wb") for kind in kinds}  # noqa: SIM115
        hashers = {kind: _new_hasher() for kind in kinds}
        _append_bytes(files["idx"], np.zeros(1, _KIND_DTYPES["idx"]).tobytes(), hashers["idx"])
        self._meta["shards"].append(entry)
        self._shard = _OpenShard(entry, files, hashers)
        return self._shard

    def _write_pending(self, shard: _OpenShard) -> None:
        arrays = [arr for arr, _ in self._pending]
        entry = shard.entry
        parts = {"bin": np.concatenate([a.reshape(-1) for a in arrays]).astype(self.dtype)}
        if "shape" in shard.files:
            parts["shape"] = np.array([a.shape for a in arrays], dtype=_KIND_DTYPES["shape"])
        if "label" in shard.files:
            parts["label"] = np.array([label for _, label in self._pending], dtype=_KIND_DTYPES["label"])
        sizes = np.array([a.size for a in arrays], dtype=np.int64)
        parts["idx"] = (entry["num_tokens"] + np.cumsum(sizes)).astype(_KIND_DTYPES["idx"])
        for kind, f in shard.files.items():  # in _shard_kinds order: tokens, shapes, labels, then offsets
            _append_bytes(f, parts[kind].tobytes(), shard.hashers[kind])
        for f in shard.files.values():
            f.flush()
            if self.fsync:
                os.fsync(f.fileno())
        entry["num_items"] += len(arrays)
        entry["num_tokens"] += int(sizes.sum())
        entry["checksums"] = {kind: hasher.hexdigest() for kind, hasher in shard.hashers.items()}
        self._meta["num_items"] += len(arrays)
        self._meta["num_tokens"] += int(sizes.sum())
        self._pending, self._pending_tokens = [], 0


# --------------------------------------------------------------------------------------------------- reader


class _LoadedShard(NamedTuple):
    """One shard's committed contents, mapped from disk."""

    tokens: np.ndarray  # flat token ids (memmap)
    offsets: np.ndarray  # int64, num_items + 1
    shapes: np.ndarray | None  # int32 (num_items, grid_rank), or None for one shared grid
    labels: np.ndarray | None  # int64 (num_items,), or None


def _map(path: Path, dtype: np.dtype, count: int) -> np.ndarray:
    """A read-only memmap of the first ``count`` values of a file (a plain empty array when count is 0)."""
    if count == 0:
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode="r", shape=(count,))


def _load_shard(directory: Path, meta: dict, entry: dict) -> _LoadedShard:
    """Map one shard's committed bytes and check that its offsets agree with its shapes and meta.json."""
    n, rank = entry["num_items"], meta["grid_rank"]
    idx_path = _shard_path(directory, entry, "idx")
    tokens = _map(_shard_path(directory, entry, "bin"), token_dtype(meta["vocab_size"]), entry["num_tokens"])
    offsets = np.asarray(_map(idx_path, _KIND_DTYPES["idx"], n + 1))
    shapes = labels = None
    if meta["grid_shape"] is None:
        shapes = _map(_shard_path(directory, entry, "shape"), _KIND_DTYPES["shape"], n * rank).reshape(n, rank)
    if meta["has_labels"]:
        labels = _map(_shard_path(directory, entry, "label"), _KIND_DTYPES["label"], n)
    lengths = np.diff(offsets)
    if offsets[0] != 0 or offsets[-1] != entry["num_tokens"] or (lengths < 0).any():
        raise BadFileError(
            idx_path,
            f"inconsistent offsets: expected 0 ... {entry['num_tokens']} non-decreasing, "
            f"found {int(offsets[0])} ... {int(offsets[-1])}",
        )
    grid_sizes = np.prod(shapes, axis=1) if shapes is not None else np.prod(meta["grid_shape"])
    wrong = np.flatnonzero(lengths != grid_sizes)
    if len(wrong):
        j = int(wrong[0])
        shape = tuple(shapes[j]) if shapes is not None else tuple(meta["grid_shape"])
        raise BadFileError(
            idx_path, f"item {j} has {int(lengths[j])} tokens but its grid {shape} holds {int(np.prod(shape))}"
        )
    return _LoadedShard(tokens, offsets, shapes, labels)


class ShardReader:
    """Random access to the committed items of a shard folder; ``reader[i]`` is a read-only memmap view.

    Opening checks every shard file's size against meta.json (a truncated file is refused, naming it);
    ``verify=True`` also re-hashes every committed byte and refuses a checksum mismatch. Each shard's offsets are
    checked against its grid shapes the first time it is touched. Bytes a writer has not committed are invisible.
    """

    def __init__(self, directory: str | os.PathLike, verify: bool = True):
        self.dir = Path(directory)
        self.meta = _read_meta(self.dir)
        expected_dtype = token_dtype(self.meta["vocab_size"]).name
        if self.meta["dtype"] != expected_dtype:
            raise BadFileError(
                self.dir / META_NAME,
                f"dtype {self.meta['dtype']!r} but vocab_size {self.meta['vocab_size']} implies {expected_dtype!r}",
            )
        self._shards: list[dict] = self.meta["shards"]
        self._starts = np.cumsum([0] + [s["num_items"] for s in self._shards])
        self._cache: dict[int, _LoadedShard] = {}
        for entry in self._shards:
            _check_sizes(self.dir, self.meta, entry)
        if verify:
            self.verify()

    def verify(self) -> None:
        """Re-hash every committed byte; raise :class:`ShardChecksumError` naming the first corrupted file."""
        for entry in self._shards:
            _check_checksums(self.dir, self.meta, entry)

    @property
    def vocab_size(self) -> int:
        return self.meta["vocab_size"]

    @property
    def num_tokens(self) -> int:
        return self.meta["num_tokens"]

    @property
    def tokenizer(self) -> str:
        return self.meta["tokenizer"]

    @property
    def tokenizer_config_hash(self) -> str:
        return self.meta["tokenizer_config_sha256"]

    @property
    def extra(self) -> dict:
        return self.meta["extra"]

    def __len__(self) -> int:
        return int(self._starts[-1])

    def __getitem__(self, i: int) -> np.ndarray:
        """Item ``i`` as its token grid (uint16/uint32, read-only view; ``.astype(np.int64)`` for a copy)."""
        shard, j = self._locate(i)
        flat = shard.tokens[shard.offsets[j] : shard.offsets[j + 1]]
        return np.asarray(flat).reshape(self._grid(shard, j))

    def __iter__(self) -> Iterator[np.ndarray]:
        for i in range(len(self)):
            yield self[i]

    def grid_shape(self, i: int) -> tuple[int, ...]:
        shard, j = self._locate(i)
        return self._grid(shard, j)

    def label(self, i: int) -> int | None:
        """Item ``i``'s label, or ``None`` for a folder written without labels."""
        shard, j = self._locate(i)
        return None if shard.labels is None else int(shard.labels[j])

    @property
    def labels(self) -> np.ndarray | None:
        """Every item's label as one int64 array (a copy), or ``None``."""
        if not self.meta["has_labels"]:
            return None
        parts = [self._load(s).labels for s in range(len(self._shards))]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def sample(self, i: int) -> dict[str, Any]:
        """``{"tokens": LongTensor grid, "label": int (NO_LABEL if none), "index": int}`` for item ``i``."""
        index = self._normalize(i)
        label = self.label(index)
        tokens = torch.from_numpy(self[index].astype(np.int64))
        return {"tokens": tokens, "label": NO_LABEL if label is None else label, "index": index}

    def _normalize(self, i: int) -> int:
        n = len(self)
        i = operator.index(i)
        if not -n <= i < n:
            raise IndexError(f"item {i} out of range for {n} items in {self.dir}")
        return i + n if i < 0 else i

    def _locate(self, i: int) -> tuple[_LoadedShard, int]:
        i = self._normalize(i)
        s = int(np.searchsorted(self._starts, i, side="right")) - 1
        return self._load(s), i - int(self._starts[s])

    def _load(self, s: int) -> _LoadedShard:
        if s not in self._cache:
            self._cache[s] = _load_shard(self.dir, self.meta, self._shards[s])
        return self._cache[s]

    def _grid(self, shard: _LoadedShard, j: int) -> tuple[int, ...]:
        return tuple(int(d) for d in (shard.shapes[j] if shard.shapes is not None else self.meta["grid_shape"]))

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_cache": {}}  # memmaps are reopened lazily in the receiving process


# --------------------------------------------------------------------------------------------------- torch datasets


def _rank_and_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """Explicit values win; otherwise torch.distributed's when it is initialized, else rank 0 of 1."""
    dist = torch.distributed
    initialized = dist.is_available() and dist.is_initialized()
    rank = rank if rank is not None else (dist.get_rank() if initialized else 0)
    world_size = world_size if world_size is not None else (dist.get_world_size() if initialized else 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank must be in [0, world_size={world_size}), got {rank}")
    return rank, world_size


class ShardDataset(IterableDataset):
    """Iterate a shard folder once per epoch, split across DDP ranks and DataLoader workers.

    Yields ``{"tokens": LongTensor (grid), "label": int (NO_LABEL if none), "index": int}``. Each epoch's order is
    a permutation of all items seeded by ``(seed, epoch)`` (identity when ``shuffle=False``), the same on every
    rank; rank ``r`` takes positions ``r, r + W, ...`` of it and its DataLoader workers split that again the same
    way, so across the job every item is seen exactly once — when ``W`` divides ``len``. Otherwise ranks are kept
    equal (DDP needs equal step counts): ``drop_last=False`` pads the order by repeating its first items
    (``index`` lets evaluation drop the repeats), ``drop_last=True`` drops its last ``len % W`` positions.
    Call ``set_epoch(e)`` before each epoch (with ``persistent_workers`` the workers keep the epoch they started
    with). Items with different grid shapes need ``batch_size=None`` or a custom ``collate_fn``.
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        shuffle: bool = True,
        seed: int = 0,
        rank: int | None = None,
        world_size: int | None = None,
        drop_last: bool = False,
        verify: bool = True,
    ):
        super().__init__()
        self.reader = ShardReader(directory, verify=verify)
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.rank, self.world_size = _rank_and_world(rank, world_size)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self) -> np.ndarray:
        """Item indices of this epoch for the whole job (all ranks), padded or cut to a multiple of world_size."""
        n = len(self.reader)
        order = np.random.default_rng([self.seed, self.epoch]).permutation(n) if self.shuffle else np.arange(n)
        if self.drop_last:
            return order[: n - n % self.world_size]
        return np.concatenate([order, np.resize(order, (-n) % self.world_size)])

    def rank_indices(self) -> np.ndarray:
        """The item indices this rank yields this epoch, over all of its workers."""
        return self.epoch_order()[self.rank :: self.world_size]

    def __len__(self) -> int:
        return len(self.rank_indices())

    def __iter__(self) -> Iterator[dict[str, Any]]:
        indices = self.rank_indices()
        worker = get_worker_info()
        if worker is not None:
            indices = indices[worker.id :: worker.num_workers]
        for i in indices:
            yield self.reader.sample(int(i))


class ShardMapDataset(Dataset):
    """Map-style view of a shard folder (for samplers such as DistributedSampler): ``ds[i]`` is ``reader.sample(i)``."""

    def __init__(self, directory: str | os.PathLike, verify: bool = True):
        self.reader = ShardReader(directory, verify=verify)

    def __len__(self) -> int:
        return len(self.reader)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return self.reader.sample(i)


# --------------------------------------------------------------------------------------------------- convenience


def write_shards(
    directory: str | os.PathLike,
    items: Iterable[Any],
    vocab_size: int,
    tokenizer: str = "unknown",
    tokenizer_config: Mapping[str, Any] | None = None,
    **writer_kwargs: Any,
) -> int:
    """Write ``items`` (token grids, or ``(tokens, label)`` tuples) to a shard folder; returns its item count.

    Resumes automatically: the first ``num_items`` items of ``items`` (those already committed) are skipped, so
    re-running the same call after a crash finishes the job with no item lost or repeated. Skipping still draws
    those items from the iterable; when producing an item is expensive, open a :class:`ShardWriter` and start the
    producer at its ``num_items`` instead.
    """
    with ShardWriter(directory, vocab_size, tokenizer, tokenizer_config, **writer_kwargs) as writer:
        for item in itertools.islice(items, writer.num_items, None):
            tokens, label = item if isinstance(item, tuple) else (item, None)
            writer.append(tokens, label)
        return writer.num_items
