"""``vistok demo``: every system end to end on the built-in data, ending in a self-contained report page.

>>> from vistok.demo import DemoConfig, run_demo
>>> run = run_demo(DemoConfig(out="demo", profile="smoke"))  # doctest: +SKIP
>>> run.report_html  # doctest: +SKIP
"""

from vistok.demo.report import Metric, Picture, StageResult, render_html, write_report
from vistok.demo.runner import DemoConfig, DemoRun, format_summary, run_demo

__all__ = [
    "DemoConfig",
    "DemoRun",
    "Metric",
    "Picture",
    "StageResult",
    "format_summary",
    "render_html",
    "run_demo",
    "write_report",
]
