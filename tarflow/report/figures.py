"""The report's plots as PNG bytes, drawn from the metric records (so they are current at every refresh)."""

from __future__ import annotations

import io
import json
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..viz import plot_curves, plot_entropy, pyplot


def drawn(plot: Callable[..., Path | None], records: list[dict[str, Any]], *args) -> bytes | None:
    """PNG bytes of a `tarflow.viz` plot of ``records`` (which reads a metrics file and writes a PNG file)."""
    with tempfile.TemporaryDirectory() as tmp:
        metrics, picture = Path(tmp) / "metrics.jsonl", Path(tmp) / "plot.png"
        metrics.write_text("".join(json.dumps(record) + "\n" for record in records))
        return picture.read_bytes() if plot(metrics, picture, *args) is not None else None


def bits_per_dim_plot(records: list[dict[str, Any]]) -> bytes | None:
    """Train bits/dim (raw and smoothed) and test bits/dim against step."""
    return drawn(plot_curves, records)


def entropy_plot(records: list[dict[str, Any]], threshold: float) -> bytes | None:
    """Attention entropy per block and layer against step (mean and minimum over heads)."""
    return drawn(plot_entropy, records, threshold)


def optimisation_plot(records: list[dict[str, Any]]) -> bytes | None:
    """Learning rate and gradient norm (before clipping) against step, side by side."""
    series = {name: [(record["step"], record[name]) for record in records if record.get(name) is not None]
              for name in ("lr", "grad_norm")}
    if not any(series.values()):
        return None
    plt = pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2), dpi=100)
    for ax, (name, label) in zip(axes, (("lr", "learning rate"), ("grad_norm", "gradient norm (before clipping)"))):
        if series[name]:
            steps, values = map(np.array, zip(*series[name]))
            ax.plot(steps, values, color="tab:green" if name == "lr" else "tab:purple", lw=1.5)
            if name == "grad_norm" and values.min() > 0 and values.max() > 20 * values.min():
                ax.set_yscale("log")
        ax.set_xlabel("step")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    return buffer.getvalue()
