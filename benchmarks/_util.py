"""Shared benchmark helpers: wall-clock timing (median of repeats), peak memory of a code region, machine facts.

Peak memory. CPU: the resident-set high-water mark. On Linux the mark is reset by writing 5 to /proc/self/clear_refs
and read from VmHWM in /proc/self/status, so a region's peak is exact (to the page) whatever ran before it. Elsewhere
the fallback is getrusage's ru_maxrss, which cannot be reset: measure in a fresh process, and the result is marked
inexact when the region did not raise the process's old high-water mark. CUDA: torch.cuda.max_memory_allocated
(tensors only, not the caching allocator's reserve). Peaks are reported above the baseline taken at ``reset()``.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import statistics
import sys
import time
from collections.abc import Callable

import torch


def sync(device: torch.device) -> None:
    """Wait for queued device work (a no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], repeats: int, device: torch.device, warmup: int = 1) -> list[float]:
    """Wall-clock seconds of ``repeats`` calls of ``fn`` after ``warmup`` untimed calls (device synchronized)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def _read_kib(path: str, field: str) -> int | None:
    """A ``Field:  N kB`` line of a /proc file (None where there is none)."""
    try:
        with open(path) as f:
            match = re.search(rf"^{field}:\s+(\d+) kB", f.read(), re.MULTILINE)
    except OSError:
        return None
    return int(match.group(1)) if match else None


def _status_kib(field: str) -> int | None:
    return _read_kib("/proc/self/status", field)


def _maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def rss_bytes() -> int:
    """Current resident set size (the high-water mark where the current size is not available)."""
    kib = _status_kib("VmRSS")
    return kib * 1024 if kib is not None else _maxrss_bytes()


def release_free_memory() -> None:
    """Give the C heap's free pages back to the OS (glibc ``malloc_trim``; nothing elsewhere), so that a resident-set
    peak measured next counts the region's own allocations even when the heap is kept warm."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


class PeakMemory:
    """Peak memory above a baseline: ``m = PeakMemory(device); m.reset(); ...; m.peak_bytes()``.

    ``exact`` is False when the CPU high-water mark could not be reset and the region did not raise it (the true
    peak is then at most the reported one).
    """

    def __init__(self, device: torch.device):
        self.device, self.exact, self.baseline, self._old_max, self._resettable = device, True, 0, 0, False

    def reset(self) -> None:
        sync(self.device)
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.baseline = torch.cuda.memory_allocated(self.device)
            return
        try:
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # reset VmHWM to the current RSS (Linux ≥ 4.0)
            self._resettable = _status_kib("VmHWM") is not None
        except OSError:
            self._resettable = False
        self._old_max = _maxrss_bytes()
        self.baseline = rss_bytes()

    def peak_bytes(self) -> int:
        sync(self.device)
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated(self.device) - self.baseline
        if self._resettable:
            return _status_kib("VmHWM") * 1024 - self.baseline
        peak = _maxrss_bytes()
        self.exact = peak > self._old_max
        return max(peak - self.baseline, 0)


def load_average() -> tuple[float, ...] | None:
    """The 1-, 5- and 15-minute load averages, rounded to 0.01 (None where unknown)."""
    try:
        return tuple(round(v, 2) for v in os.getloadavg())
    except OSError:
        return None


def machine_info(device: torch.device) -> dict[str, object]:
    """Facts to print next to a benchmark's numbers."""
    info: dict[str, object] = {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "load_average": load_average(),
    }
    total = _read_kib("/proc/meminfo", "MemTotal")
    if total is not None:
        info["ram_gib"] = round(total / 2**20, 1)
    try:
        with open("/proc/cpuinfo") as f:
            info["cpu"] = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), None)
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def available_memory_bytes() -> int | None:
    """MemAvailable from /proc/meminfo (None where unknown)."""
    kib = _read_kib("/proc/meminfo", "MemAvailable")
    return kib * 1024 if kib is not None else None


def add_model_args(p, dim: int = 512, n_layers: int = 8, n_heads: int = 8) -> None:
    """The backbone-size flags the decoding benchmarks share: ``--preset`` or the sizes."""
    p.add_argument(
        "--preset", default=None, help="a transformer or LVM preset (e.g. lvm-300m: its backbone); overrides the sizes"
    )
    p.add_argument("--dim", type=int, default=dim)
    p.add_argument("--n-layers", type=int, default=n_layers)
    p.add_argument("--n-heads", type=int, default=n_heads)
    p.add_argument("--n-kv-heads", type=int, default=None, help="grouped-query attention (default: = heads)")
    p.add_argument("--intermediate-size", type=int, default=None, help="SwiGLU hidden size (default: LLaMA's rule)")
    p.add_argument("--vocab-size", type=int, default=8292)


def backbone_config(args, max_seq_len: int = 4096):
    """A :class:`TransformerConfig` from :func:`add_model_args`'s flags (an ``lvm-*`` preset gives its backbone)."""
    from vistok.models import TransformerConfig
    from vistok.models.lvm import LVMConfig

    if args.preset:
        if args.preset.startswith("lvm-"):
            return LVMConfig.from_name(args.preset).backbone_config()
        return TransformerConfig.from_name(args.preset)
    return TransformerConfig(
        vocab_size=args.vocab_size,
        dim=args.dim,
        n_layers=args.n_layers,
        n_heads=args.n_heads,
        n_kv_heads=args.n_kv_heads,
        intermediate_size=args.intermediate_size,
        max_seq_len=max_seq_len,
    )
