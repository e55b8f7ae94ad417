"""The demo's report: ``report.json`` (every number) and a self-contained ``report.html``.

The page has no scripts, no fonts and no links to fetch: pictures are inlined as ``data:`` URIs (they also stay beside
it, in each stage's folder), curves are inline SVG, styles are one ``<style>`` block. One section per stage, each
with what was run (configuration, time), its held-out metrics next to their trivial baselines, its pictures and the
commands that reproduce it at a larger scale.
"""

from __future__ import annotations

import base64
import html
import json
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Metric", "Picture", "StageResult", "render_html", "write_report"]


@dataclass
class Metric:
    """One held-out number and the trivial baselines it should be read against.

    ``higher_is_better`` decides the verdict: ``beats`` is True when ``value`` is better than every baseline, False
    when it is not, None when there is no baseline (or a value is missing)."""

    name: str
    value: float | None
    baselines: dict[str, float | None] = field(default_factory=dict)
    higher_is_better: bool = True
    unit: str = ""
    note: str = ""

    @property
    def beats(self) -> bool | None:
        known = [b for b in self.baselines.values() if _finite(b)]
        if not known or not _finite(self.value):
            return None
        if self.higher_is_better:
            return all(self.value > b for b in known)
        return all(self.value < b for b in known)

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "beats": self.beats}


@dataclass
class Picture:
    path: str  # relative to the demo's output folder
    caption: str


@dataclass
class StageResult:
    """What one demo stage did; ``status`` is "ok", "failed" or "skipped"."""

    name: str
    title: str
    status: str = "ok"
    seconds: float = 0.0
    cpu_seconds: float = 0.0
    headline: str = ""
    what: str = ""
    config: dict[str, Any] = field(default_factory=dict)
    metrics: list[Metric] = field(default_factory=list)
    pictures: list[Picture] = field(default_factory=list)
    curves: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    commands: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["metrics"] = [m.as_dict() for m in self.metrics]
        return _jsonable(d)


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _jsonable(obj: Any) -> Any:
    """Plain JSON: non-finite floats become None, paths and tuples become strings and lists."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Path):
        return str(obj)
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if hasattr(obj, "item"):  # numpy / torch scalars
        return _jsonable(obj.item())
    return str(obj)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(out: str | os.PathLike, header: Mapping[str, Any], stages: Sequence[StageResult]) -> tuple[Path, Path]:
    """Write ``report.json`` and ``report.html`` into ``out`` (atomically); returns their paths."""
    out = Path(out)
    data = _jsonable({**header, "stages": [s.as_dict() for s in stages]})
    json_path, html_path = out / "report.json", out / "report.html"
    _write_atomic(json_path, json.dumps(data, indent=2) + "\n")
    _write_atomic(html_path, render_html(data, out))
    return json_path, html_path


# ---------------------------------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------------------------------

_CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1d2330;background:#f6f7f9}
main{max-width:1100px;margin:0 auto;padding:24px 28px 60px}
h1{font-size:26px;margin:8px 0 4px}h2{font-size:21px;margin:0 0 4px}h3{font-size:15px;margin:18px 0 6px}
section{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:18px 22px;margin:20px 0}
table{border-collapse:collapse;margin:6px 0 10px;font-size:14px}
td,th{border-bottom:1px solid #e4e7ec;padding:4px 10px;text-align:left;vertical-align:top}
th{background:#f0f2f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}
.ok{color:#17803d;font-weight:600}.failed{color:#b42318;font-weight:600}.skipped{color:#8a6d00;font-weight:600}
.yes{color:#17803d}.no{color:#b42318}.muted{color:#667085;font-size:13px}
figure{display:inline-block;margin:8px 14px 8px 0;vertical-align:top;max-width:100%}
figure img{max-width:100%;image-rendering:pixelated;border:1px solid #dde1e7;background:#fff}
figcaption{font-size:13px;color:#475467;max-width:520px}
pre{background:#f0f2f5;border-radius:6px;padding:8px 10px;overflow-x:auto;font-size:13px}
details summary{cursor:pointer;color:#475467}svg{background:#fff;border:1px solid #dde1e7}
.err{background:#fef3f2;border:1px solid #fecdca;border-radius:6px;padding:8px 10px;white-space:pre-wrap;font-size:13px}
"""


def _esc(x: Any) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x: Any, unit: str = "") -> str:
    if x is None:
        return "—"
    if isinstance(x, bool):
        return "yes" if x else "no"
    if isinstance(x, int):
        return f"{x:,}{unit}"
    if isinstance(x, float):
        a = abs(x)
        s = (
            f"{x:.3g}"
            if a and (a < 0.01 or a >= 1e5)
            else (f"{x:.3f}" if a < 10 else f"{x:.1f}" if a < 1000 else f"{x:,.0f}")
        )
        return s + unit
    return _esc(x)


def _data_uri(path: Path) -> str | None:
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    mime = (
        "image/png"
        if path.suffix.lower() == ".png"
        else "image/jpeg"
        if path.suffix.lower() in (".jpg", ".jpeg")
        else "image/gif"
    )
    return f"data:{mime};base64," + base64.b64encode(raw).decode("ascii")


def svg_lines(
    series: Mapping[str, Mapping[str, Sequence[float]]], title: str, width: int = 460, height: int = 220
) -> str:
    """A small inline SVG line plot of ``{label: {"x": [...], "y": [...]}}`` (no scripts, no fonts to fetch)."""
    pts = [(x, y) for s in series.values() for x, y in zip(s["x"], s["y"], strict=False) if _finite(x) and _finite(y)]
    if len(pts) < 2:
        return ""
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(xs)
    y0, y1 = min(ys), max(ys)
    if x1 == x0:
        x1 = x0 + 1
    if y1 == y0:
        y1 = y0 + 1
    pad_l, pad_r, pad_t, pad_b = 52, 12, 26, 28
    w, h = width - pad_l - pad_r, height - pad_t - pad_b

    def sx(x: float) -> float:
        return pad_l + (x - x0) / (x1 - x0) * w

    def sy(y: float) -> float:
        return pad_t + (1 - (y - y0) / (y1 - y0)) * h

    colours = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2")
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="{_esc(title)}">',
        f'<text x="{pad_l}" y="16" font-size="13" fill="#1d2330">{_esc(title)}</text>',
        f'<line x1="{pad_l}" y1="{pad_t + h}" x2="{pad_l + w}" y2="{pad_t + h}" stroke="#98a2b3"/>',
        f'<line x1="{pad_l}" y1="{pad_t}" x2="{pad_l}" y2="{pad_t + h}" stroke="#98a2b3"/>',
    ]
    for v in (y0, (y0 + y1) / 2, y1):
        parts.append(
            f'<text x="{pad_l - 6}" y="{sy(v) + 4:.1f}" font-size="11" text-anchor="end" fill="#475467">{v:.3g}</text>'
        )
    for v in (x0, x1):
        parts.append(
            f'<text x="{sx(v):.1f}" y="{pad_t + h + 16}" font-size="11" text-anchor="middle" '
            f'fill="#475467">{v:.4g}</text>'
        )
    for i, (label, s) in enumerate(series.items()):
        c = colours[i % len(colours)]
        line = [(sx(x), sy(y)) for x, y in zip(s["x"], s["y"], strict=False) if _finite(x) and _finite(y)]
        if not line:
            continue
        d = " ".join(f"{x:.1f},{y:.1f}" for x, y in line)
        parts.append(f'<polyline fill="none" stroke="{c}" stroke-width="1.8" points="{d}"/>')
        parts.append(
            f'<text x="{pad_l + w - 4}" y="{pad_t + 12 + 14 * i}" font-size="11" text-anchor="end" '
            f'fill="{c}">{_esc(label)}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _metrics_table(metrics: Sequence[Mapping[str, Any]]) -> str:
    if not metrics:
        return '<p class="muted">No held-out metrics for this stage.</p>'
    rows = ["<table><tr><th>held-out metric</th><th>value</th><th>trivial baselines</th><th>beats them?</th></tr>"]
    for m in metrics:
        unit = m.get("unit") or ""
        base = "; ".join(f"{_esc(k)}: {_fmt(v, unit)}" for k, v in (m.get("baselines") or {}).items()) or "—"
        beats = m.get("beats")
        verdict = "—" if beats is None else ('<span class="yes">yes</span>' if beats else '<span class="no">no</span>')
        arrow = "higher is better" if m.get("higher_is_better", True) else "lower is better"
        note = f'<div class="muted">{_esc(m["note"])}</div>' if m.get("note") else ""
        rows.append(
            f'<tr><td>{_esc(m["name"])} <span class="muted">({arrow})</span>{note}</td>'
            f'<td class="num">{_fmt(m.get("value"), unit)}</td><td>{base}</td><td>{verdict}</td></tr>'
        )
    rows.append("</table>")
    return "".join(rows)


def _config_table(config: Mapping[str, Any]) -> str:
    if not config:
        return ""
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(json.dumps(v))}</td></tr>" for k, v in config.items())
    return f"<details><summary>configuration</summary><table>{rows}</table></details>"


def _section(stage: Mapping[str, Any], out: Path) -> str:
    name, status = stage["name"], stage["status"]
    parts = [
        f'<section id="stage-{_esc(name)}" data-stage="{_esc(name)}" data-status="{_esc(status)}">',
        f'<h2>{_esc(stage["title"])} <span class="{_esc(status)}">[{_esc(status)}]</span></h2>',
        f'<p class="muted">stage <code>{_esc(name)}</code> · {stage.get("seconds", 0):.1f} s wall, '
        f"{stage.get('cpu_seconds', 0):.1f} s CPU</p>",
    ]
    if stage.get("what"):
        parts.append(f"<p>{_esc(stage['what'])}</p>")
    if stage.get("headline"):
        parts.append(f"<p><b>{_esc(stage['headline'])}</b></p>")
    if stage.get("error"):
        parts.append(f'<h3>Error</h3><div class="err">{_esc(stage["error"])}</div>')
    if status == "ok" or stage.get("metrics"):
        parts.append("<h3>Held-out metrics</h3>" + _metrics_table(stage.get("metrics") or []))
    if stage.get("notes"):
        parts.append("<ul>" + "".join(f"<li>{_esc(n)}</li>" for n in stage["notes"]) + "</ul>")
    curves = stage.get("curves") or {}
    pics = stage.get("pictures") or []
    if pics or curves:
        parts.append("<h3>Pictures</h3>")
    for title, series in curves.items():
        svg = svg_lines(series, title)
        if svg:
            parts.append(f"<figure>{svg}<figcaption>{_esc(title)}</figcaption></figure>")
    for pic in pics:
        uri = _data_uri(out / pic["path"])
        if uri is None:
            parts.append(f'<p class="failed">missing picture: {_esc(pic["path"])}</p>')
            continue
        parts.append(
            f'<figure><img src="{uri}" alt="{_esc(pic["caption"])}" data-file="{_esc(pic["path"])}">'
            f'<figcaption>{_esc(pic["caption"])} <span class="muted">({_esc(pic["path"])})</span></figcaption></figure>'
        )
    parts.append(_config_table(stage.get("config") or {}))
    if stage.get("commands"):
        parts.append("<h3>Reproduce at a larger scale</h3><pre>" + _esc("\n".join(stage["commands"])) + "</pre>")
    parts.append("</section>")
    return "".join(parts)


def _headline(stage: Mapping[str, Any]) -> str:
    if stage.get("headline"):
        return stage["headline"]
    error = (stage.get("error") or "").strip().splitlines()
    return error[-1] if error else ""


def render_html(report: Mapping[str, Any], out: Path) -> str:
    """The page for a ``report.json``-shaped dict; pictures are read from ``out`` and inlined."""
    stages = report.get("stages", [])
    rows = "".join(
        f'<tr><td><a href="#stage-{_esc(s["name"])}">{_esc(s["title"])}</a></td>'
        f'<td class="{_esc(s["status"])}">{_esc(s["status"])}</td><td class="num">{s.get("seconds", 0):.1f} s</td>'
        f"<td>{_esc(_headline(s))}</td></tr>"
        for s in stages
    )
    failed = [s["name"] for s in stages if s["status"] == "failed"]
    banner = (
        f'<p class="failed">Failed stages: {_esc(", ".join(failed))} (their sections below say why).</p>'
        if failed
        else ""
    )
    env = report.get("environment", {})
    facts = " · ".join(
        f"{k} {_esc(v)}"
        for k, v in (
            ("vistok", report.get("vistok_version")),
            ("profile", report.get("profile")),
            ("seed", report.get("seed")),
            ("device", report.get("device")),
            ("torch", env.get("torch")),
            ("threads", env.get("threads")),
            ("started", report.get("started")),
            ("total", f"{report.get('seconds', 0):.0f} s"),
        )
    )
    body = "".join(_section(s, out) for s in stages)
    return (
        '<!DOCTYPE html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f"<title>vistok demo report</title><style>{_CSS}</style></head><body><main>"
        "<h1>vistok demo report</h1>"
        f'<p class="muted">{facts}</p>'
        "<p>Every system of vistok run end to end on the built-in data, offline and seeded. The small weights that "
        "ship with vistok (tokenizer, LVM, Transfusion, Chat-UniVi) are evaluated; everything else is trained for "
        "seconds on the spot. All models are tiny, so read each number against its trivial baseline; the commands "
        "at the end of each section reproduce it at a larger scale.</p>"
        f"{banner}<table><tr><th>stage</th><th>status</th><th>time</th><th>headline</th></tr>{rows}</table>"
        f"{body}</main></body></html>\n"
    )
