"""``vistok demo``: every system end to end on the built-in data, ending in ``report.html`` and ``report.json``.

Stages run one after another (:data:`~vistok.demo.stages.STAGES`); a stage that fails is recorded with its error and
the others still run; the report is rewritten after every stage, so a killed run leaves a valid report of what
finished. Each stage writes into its own folder ``OUT/<stage>/`` with a stamp of its settings: a re-run with the
same settings resumes the trainers from their checkpoints, a re-run with other settings starts that stage afresh.
Folders vistok did not write are never deleted.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
import traceback
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

__all__ = ["DemoConfig", "DemoRun", "add_demo_parser", "run_demo"]

STAMP = "demo_stage.json"


@dataclass
class DemoConfig:
    out: str = "demo"
    profile: str = "default"
    only: tuple[str, ...] | None = None
    seed: int = 0
    device: str | None = None  # None: CUDA when available, else CPU
    tokenizer: str | None = None  # a MAGVIT-v2 tokenizer folder (default: the shipped weights)
    progress: bool = True
    fresh: bool = False

    def __post_init__(self) -> None:
        from vistok.demo.stages import PROFILES, STAGES

        if self.profile not in PROFILES:
            raise ValueError(f"profile must be one of {sorted(PROFILES)}, got {self.profile!r}")
        if self.only is not None:
            self.only = tuple(self.only)
            bad = [s for s in self.only if s not in STAGES]
            if bad or not self.only:
                raise ValueError(f"--only takes stage names from {list(STAGES)}, got {list(self.only)}")


@dataclass
class DemoRun:
    out: Path
    report_json: Path
    report_html: Path
    stages: list[Any] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def failed(self) -> list[str]:
        return [s.name for s in self.stages if s.status == "failed"]


def _device(name: str | None) -> str:
    import torch

    if name in (None, "auto"):
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _prepare_stage_dir(path: Path, stamp: dict[str, Any], fresh: bool) -> None:
    """Create ``path`` for a stage; clear it when it holds another configuration's outputs (or ``fresh``)."""
    marker = path / STAMP
    if path.exists():
        if not marker.is_file():
            if any(path.iterdir()):
                raise FileExistsError(
                    f"{path} exists and was not written by vistok demo (no {STAMP}); choose another --out"
                )
        else:
            try:
                old = json.loads(marker.read_text())
            except (OSError, json.JSONDecodeError):
                old = None
            if fresh or old != stamp:
                shutil.rmtree(path)
    path.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(stamp, indent=2, default=str))


def _code_hash(fn: Any) -> str:
    import hashlib
    import inspect

    try:
        return hashlib.sha256(inspect.getsource(fn).encode()).hexdigest()[:16]
    except (OSError, TypeError):  # no source (e.g. a lambda made at run time): fall back to its name
        return getattr(fn, "__qualname__", repr(fn))


def _environment(device: str) -> dict[str, Any]:
    import torch

    env = {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads()}
    env["machine"] = platform.machine()
    if device.startswith("cuda") and torch.cuda.is_available():
        env["gpu"] = torch.cuda.get_device_name(0)
    return env


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_demo(config: DemoConfig) -> DemoRun:
    """Run the selected stages and write the report; see the module docstring."""
    import torch

    import vistok
    from vistok.demo.report import StageResult, write_report
    from vistok.demo.stages import PROFILES, STAGES, StageContext

    t0 = time.perf_counter()
    out = Path(config.out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    device = _device(config.device)
    names = [n for n in STAGES if config.only is None or n in config.only]
    header = {
        "vistok_version": vistok.__version__,
        "profile": config.profile,
        "seed": config.seed,
        "device": device,
        "stages_requested": names,
        "started": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": _environment(device),
        "command": "vistok demo " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["demo"] else None,
    }
    cache: dict[str, Any] = {}
    results: list[StageResult] = []
    for i, name in enumerate(names, 1):
        title, fn = STAGES[name]
        params = PROFILES[config.profile][name]
        _say(f"\n[{i}/{len(names)}] {title} ({config.profile} profile) → {out / name}")
        s0, c0 = time.perf_counter(), time.process_time()
        stamp = {
            "stage": name,
            "profile": config.profile,
            "params": params,
            "seed": config.seed,
            "tokenizer": config.tokenizer,
            "vistok": vistok.__version__,
            "code": _code_hash(fn),  # a changed stage restarts instead of resuming another version's checkpoints
        }
        torch.manual_seed(config.seed)
        try:
            _prepare_stage_dir(out / name, stamp, config.fresh)
            ctx = StageContext(
                name,
                out / name,
                out,
                dict(params),
                config.profile,
                config.seed,
                device,
                config.progress,
                config.tokenizer,
                cache,
            )
            result = fn(ctx)
            result.status = "ok"
        except KeyboardInterrupt:
            raise
        except Exception as e:  # one failing stage must not stop the others
            result = StageResult(
                name, title, status="failed", error=f"{type(e).__name__}: {e}\n\n" + traceback.format_exc(limit=8)
            )
        result.seconds, result.cpu_seconds = time.perf_counter() - s0, time.process_time() - c0
        result.files = (
            sorted(
                str(p.relative_to(out))
                for p in (out / name).rglob("*")
                if p.is_file()
                and p.suffix in (".png", ".json", ".mp4", ".txt")
                and not any(part.startswith(".") for part in p.parts)
            )[:200]
            if (out / name).is_dir()
            else []
        )
        results.append(result)
        header["seconds"] = time.perf_counter() - t0
        json_path, html_path = write_report(out, header, results)
        mark = "ok" if result.status == "ok" else "FAILED"
        _say(
            f"[{i}/{len(names)}] {title}: {mark} in {result.seconds:.1f} s"
            + (f" — {result.headline}" if result.headline else "")
            + (f" — {result.error.splitlines()[0]}" if result.error else "")
        )
    header["seconds"] = time.perf_counter() - t0
    json_path, html_path = write_report(out, header, results)
    return DemoRun(out, json_path, html_path, results, header["seconds"])


def format_summary(run: DemoRun) -> str:
    from vistok.demo.stages import STAGES

    lines = [f"vistok demo finished in {run.seconds:.0f} s:"]
    for s in run.stages:
        what = s.headline if s.status == "ok" else (s.error or "").splitlines()[0]
        lines.append(f"  {STAGES[s.name][0]:<20} {s.status:<6} {s.seconds:6.1f} s  {what}")
    lines.append(f"Report: {run.report_html} (open it in a browser) and {run.report_json} (every number).")
    lines.append(f"Each stage's files (models, pictures, eval.json) are in {run.out}/<stage>/.")
    if run.failed:
        lines.append(f"FAILED stages: {', '.join(run.failed)} — the report says why; the other stages ran.")
    return "\n".join(lines)


def _csv(value: str) -> tuple[str, ...]:
    return tuple(v.strip() for v in value.split(",") if v.strip())


def _cmd_demo(args: argparse.Namespace) -> int:
    try:
        config = DemoConfig(
            out=args.out,
            profile=args.profile,
            only=_csv(args.only) if args.only else None,
            seed=args.seed,
            device=args.device,
            tokenizer=args.tokenizer,
            progress=not args.quiet,
            fresh=args.fresh,
        )
    except ValueError as e:
        print(f"vistok demo: {e}", file=sys.stderr)
        return 2
    run = run_demo(config)
    print(format_summary(run))
    return 1 if run.failed else 0


def add_demo_parser(subparsers: Any) -> None:
    from vistok.demo.stages import PROFILES, STAGES

    p = subparsers.add_parser(
        "demo",
        help="run every system end to end on the built-in data and write report.html",
        description=(
            "Run every vistok system end to end on the built-in data (offline, seeded): the MAGVIT-v2 tokenizer, "
            "LVM, MaskGIT, Transfusion, Chat-UniVi and DiGIT. Writes OUT/report.html (self-contained: open it in a "
            "browser), OUT/report.json (every number) and each stage's files in OUT/<stage>/. The default profile "
            "takes about 4 minutes on 2 CPU cores; --profile full trains longer. Exits non-zero if a stage failed "
            "(the others still run)."
        ),
        epilog="example:\n  vistok demo\n  vistok demo --only tokenizer,lvm --out demo-small\n"
        "  vistok demo --profile full --out demo-full",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--out", default="demo", help="output folder (default: demo)")
    p.add_argument(
        "--profile",
        default="default",
        choices=sorted(PROFILES),
        help="default: about 4 minutes on 2 CPU cores; full: longer training, better results; smoke: seconds (tests)",
    )
    p.add_argument("--only", default=None, metavar="STAGES", help=f"comma-separated subset of: {','.join(STAGES)}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1 (default: cuda when available)")
    p.add_argument("--tokenizer", default=None, help="a MAGVIT-v2 tokenizer folder (default: the shipped weights)")
    p.add_argument("--fresh", action="store_true", help="start every stage afresh instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(func=_cmd_demo)


def main(argv: Sequence[str] | None = None) -> int:  # pragma: no cover - convenience entry
    parser = argparse.ArgumentParser(prog="vistok")
    add_demo_parser(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(argv)
    return args.func(args)
