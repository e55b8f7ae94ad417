"""What is in a data folder: ``vistok data inspect PATH``.

:func:`inspect_path` walks a folder (or looks at one file) and returns a JSON-serialisable report: how many images,
videos and other files, their resolutions, the videos' durations, frame counts and frame rates, the total size, and
every unreadable file with the reason. Images are decoded in full (so truncated files are found); videos are probed
(container header, or the packet index when the container has no frame count) but not decoded, which keeps the
command fast on long videos. A token-shard folder (a ``meta.json`` with a ``"vistok_shards"`` key) is summarised
from its ``meta.json`` alone. :func:`format_report` renders the report for people.
"""

from __future__ import annotations

import json
import os
import sys
from collections import Counter
from pathlib import Path
from typing import Any

from tqdm import tqdm

from vistok.data.errors import BadFileError
from vistok.data.images import IMAGE_EXTS, list_files, load_image
from vistok.data.video import VIDEO_EXTS, probe_video

SHARD_KEY = "vistok_shards"
TOP = 5  # how many most-common resolutions / frame rates to list
MAX_LISTED = 20  # unreadable files listed by format_report (the report itself keeps them all)


# ------------------------------------------------------------------------------------------------------- stats


def _resolution_stats(sizes: list[tuple[int, int]]) -> dict[str, Any] | None:
    """min/max by pixel count and the most common (width, height) pairs."""
    if not sizes:
        return None
    by_area = sorted(sizes, key=lambda s: (s[0] * s[1], s))
    common = Counter(sizes).most_common(TOP)
    return {"min": list(by_area[0]), "max": list(by_area[-1]), "most_common": [[w, h, n] for (w, h), n in common]}


def _number_stats(values: list[float]) -> dict[str, float] | None:
    if not values:
        return None
    return {"min": min(values), "max": max(values), "mean": sum(values) / len(values), "total": sum(values)}


def _fps_stats(values: list[float]) -> dict[str, Any] | None:
    if not values:
        return None
    common = Counter(round(v, 3) for v in values).most_common(TOP)
    return {"min": min(values), "max": max(values), "most_common": [[fps, n] for fps, n in common]}


class _Tally:
    """Accumulates what each file turned out to be."""

    def __init__(self, root: Path):
        self.root = root
        self.total_bytes = 0
        self.image_sizes: list[tuple[int, int]] = []
        self.videos: list[dict[str, Any]] = []
        self.other: Counter[str] = Counter()
        self.unreadable: list[dict[str, str]] = []

    def _name(self, path: Path) -> str:
        return str(path.relative_to(self.root)) if path != self.root else path.name

    def add(self, path: Path) -> None:
        self.total_bytes += path.stat().st_size
        ext = path.suffix.lower()
        try:
            if ext in IMAGE_EXTS:
                self.image_sizes.append(load_image(path).size)
            elif ext in VIDEO_EXTS:
                info = probe_video(path)
                self.videos.append(
                    {
                        "size": (info.width, info.height),
                        "duration": info.duration,
                        "frames": info.num_frames,
                        "fps": info.fps,
                    }
                )
            else:
                self.other[ext or "(no extension)"] += 1
        except BadFileError as e:
            kind = "image" if ext in IMAGE_EXTS else "video"
            self.unreadable.append({"path": self._name(path), "kind": kind, "reason": e.reason})

    def report(self) -> dict[str, Any]:
        bad = Counter(u["kind"] for u in self.unreadable)
        return {
            "counts": {
                "images": len(self.image_sizes) + bad["image"],
                "videos": len(self.videos) + bad["video"],
                "other": sum(self.other.values()),
                "unreadable": len(self.unreadable),
            },
            "total_bytes": self.total_bytes,
            "images": {"readable": len(self.image_sizes), "resolution": _resolution_stats(self.image_sizes)},
            "videos": {
                "readable": len(self.videos),
                "resolution": _resolution_stats([v["size"] for v in self.videos]),
                "duration_s": _number_stats([v["duration"] for v in self.videos]),
                "frames": _number_stats([v["frames"] for v in self.videos]),
                "fps": _fps_stats([v["fps"] for v in self.videos]),
            },
            "other_extensions": dict(sorted(self.other.items())),
            "unreadable": self.unreadable,
            "unreadable_reasons": dict(Counter(u["reason"] for u in self.unreadable).most_common()),
        }


# ------------------------------------------------------------------------------------------------------- shards


def _shard_meta(path: Path) -> dict[str, Any] | None:
    """The parsed ``meta.json`` of a token-shard folder, or ``None`` when ``path`` is not one."""
    meta = path / "meta.json"
    if not meta.is_file():
        return None
    try:
        data = json.loads(meta.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) and SHARD_KEY in data else None


def _is_plain(value: Any) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def _first(meta: dict[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in meta:
            value = meta[key]
            return len(value) if isinstance(value, list | dict) else value
    return None


def _inspect_shards(path: Path, meta: dict[str, Any]) -> dict[str, Any]:
    """Summary of a token-shard folder from its ``meta.json`` (the shard files themselves are not opened)."""
    files = [p for p in path.iterdir() if p.is_file()]
    plain = {k: v for k, v in meta.items() if _is_plain(v) or (isinstance(v, list) and all(map(_is_plain, v)))}
    plain.pop("shards", None)  # the per-shard records are summarised as a count
    return {
        "path": str(path),
        "kind": "shards",
        "shards": {
            "format": meta[SHARD_KEY],
            "items": _first(meta, ("num_items", "items", "count", "num_sequences")),
            "vocab_size": _first(meta, ("vocab_size", "vocab", "codebook_size")),
            "shards": _first(meta, ("shards",)),
            "files": len(files),
            "meta": plain,
        },
        "total_bytes": sum(p.stat().st_size for p in files),
    }


# ------------------------------------------------------------------------------------------------------- inspect


def inspect_path(path: str | os.PathLike, max_files: int | None = None, progress: bool = True) -> dict[str, Any]:
    """Report on a folder, a single image/video file, or a token-shard folder (see the module docstring).

    ``max_files`` limits how many files are looked at (the first ones in sorted order; the report says so).
    The progress bar goes to stderr. Raises ``FileNotFoundError`` when ``path`` does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such file or folder: {path}")
    if max_files is not None and max_files < 1:
        raise ValueError(f"max_files must be >= 1, got {max_files}")
    if path.is_dir() and (meta := _shard_meta(path)) is not None:
        return _inspect_shards(path, meta)
    files = list_files(path) if path.is_dir() else [path]
    seen = files if max_files is None else files[:max_files]
    tally = _Tally(path)
    for f in tqdm(seen, desc="inspect", unit="file", file=sys.stderr, disable=not progress, leave=False):
        tally.add(f)
    kind = "folder" if path.is_dir() else _file_kind(path)
    return {"path": str(path), "kind": kind, "files_found": len(files), "files_inspected": len(seen), **tally.report()}


def _file_kind(path: Path) -> str:
    ext = path.suffix.lower()
    return "image" if ext in IMAGE_EXTS else "video" if ext in VIDEO_EXTS else "file"


# ------------------------------------------------------------------------------------------------------- format


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if size < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    raise AssertionError("unreachable")


def _res(r: dict[str, Any]) -> str:
    common = ", ".join(f"{w}x{h} ({n})" for w, h, n in r["most_common"])
    return f"min {r['min'][0]}x{r['min'][1]}, max {r['max'][0]}x{r['max'][1]}; most common {common}"


def _range(s: dict[str, float], fmt: str) -> str:
    return f"{format(s['min'], fmt)} – {format(s['max'], fmt)} (mean {format(s['mean'], fmt)})"


def _rows(rows: list[tuple[str, str]]) -> list[str]:
    width = max(len(k) for k, _ in rows)
    return [f"  {k:<{width}}  {v}" for k, v in rows]


def _shard_lines(report: dict[str, Any]) -> list[str]:
    s = report["shards"]
    rows = [
        ("kind", "token-shard folder"),
        ("format", str(s["format"])),
        ("items", str(s["items"])),
        ("vocab size", str(s["vocab_size"])),
        ("shards", str(s["shards"])),
        ("files", f"{s['files']} ({_bytes(report['total_bytes'])})"),
    ]
    rows += [(f"meta.{k}", str(v)) for k, v in s["meta"].items() if k not in (SHARD_KEY, "num_items", "vocab_size")]
    return _rows(rows)


def _media_rows(report: dict[str, Any]) -> list[tuple[str, str]]:
    c, im, vi = report["counts"], report["images"], report["videos"]
    rows = [("images", f"{c['images']} ({im['readable']} readable)")]
    if im["resolution"]:
        rows.append(("  resolution", _res(im["resolution"])))
    rows.append(("videos", f"{c['videos']} ({vi['readable']} readable)"))
    if vi["resolution"]:
        fps = ", ".join(f"{f:g} ({n})" for f, n in vi["fps"]["most_common"])
        rows += [
            ("  resolution", _res(vi["resolution"])),
            ("  duration", _range(vi["duration_s"], ".2f") + f" s, total {vi['duration_s']['total']:.1f} s"),
            ("  frames", _range(vi["frames"], ".0f") + f", total {vi['frames']['total']:.0f}"),
            ("  fps", f"{vi['fps']['min']:g} – {vi['fps']['max']:g}; most common {fps}"),
        ]
    other = ", ".join(f"{n} {ext}" for ext, n in report["other_extensions"].items())
    rows.append(("other files", f"{c['other']}" + (f" ({other})" if other else "")))
    return rows


def format_report(report: dict[str, Any]) -> str:
    """The report of :func:`inspect_path` as aligned, human-readable text."""
    head = f"{report['path']}"
    if report["kind"] == "shards":
        return "\n".join([head, *_shard_lines(report)])
    limited = report["files_inspected"] < report["files_found"]
    seen = f"{report['files_inspected']} of {report['files_found']} (--max-files)" if limited else report["files_found"]
    reasons = "; ".join(f"{n} {reason}" for reason, n in report["unreadable_reasons"].items())
    bad = report["unreadable"]
    rows = [
        ("files", f"{seen}, {_bytes(report['total_bytes'])}"),
        *_media_rows(report),
        ("unreadable", f"{len(bad)}" + (f" ({reasons})" if reasons else "")),
    ]
    lines = [head, *_rows(rows)]
    lines += [f"    {u['path']}: {u['reason']}" for u in bad[:MAX_LISTED]]
    if len(bad) > MAX_LISTED:
        lines.append(f"    ... and {len(bad) - MAX_LISTED} more (--json lists them all)")
    return "\n".join(lines)
