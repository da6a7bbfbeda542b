"""The run report: one self-contained HTML page, RUN/report.html, with everything about a training run.

Config, bits/dim curves, learning rate and gradient norm, attention entropy, sample grids over training,
the final evaluation and saved FID results with the commands that repeat them, and timing; images are inlined
as data: URIs, so the page needs no network and can be mailed or copied alone. `contents` reads the run
directory, `figures` draws the plots, `page` writes the HTML. The trainer refreshes the page at every
evaluation and at the end; `tarflow report RUN` rewrites it at any time.
"""

from __future__ import annotations

from pathlib import Path

from ..io import atomic_write_text
from .contents import RunContents, read_run
from .page import render

REPORT_FILE = "report.html"

__all__ = ["REPORT_FILE", "RunContents", "read_run", "render", "write_report"]


def write_report(run_dir: str | Path) -> Path:
    """Write ``run_dir``/report.html atomically (nothing else in the run directory is touched); its path."""
    path = Path(run_dir) / REPORT_FILE
    atomic_write_text(path, render(read_run(run_dir)))
    return path
