"""Pictures a person would rather look at than read: sample grids and training curves."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from .io import atomic_write_bytes


def save_grid(images: Tensor, path: str | Path, nrow: int = 10, scale: int | None = None, pad: int = 1) -> Path:
    """Save integer-level images (N, C, H, W) in 0..levels-1, or uint8, as one PNG grid, ``nrow`` per row.

    Small images are upscaled (nearest neighbour) so a grid is about 512 px wide or more.
    """
    buf = io.BytesIO()
    grid_image(images, nrow, scale, pad).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


def grid_image(images: Tensor, nrow: int = 10, scale: int | None = None, pad: int = 1) -> Image.Image:
    """The grid of `save_grid` as a PIL image."""
    images = images.detach().cpu()
    n, c, h, w = images.shape
    rows = (n + nrow - 1) // nrow
    grid = np.full((rows * (h + pad) + pad, nrow * (w + pad) + pad, c), 255, dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, nrow)
        grid[pad + r * (h + pad): pad + r * (h + pad) + h, pad + k * (w + pad): pad + k * (w + pad) + w] = \
            images[i].permute(1, 2, 0).numpy()
    img = Image.fromarray(grid[..., 0] if c == 1 else grid)
    if scale is None:
        scale = max(1, 512 // (nrow * (w + pad)))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    return img


def to_uint8(x: Tensor, levels: int) -> Tensor:
    """Model-space images in [-1, 1] -> uint8 for display, via their level k in 0..levels-1."""
    k = ((x.clamp(-1, 1) + 1) * levels / 2).floor().clamp(0, levels - 1)
    return (k * 255 / (levels - 1)).round().to(torch.uint8)


def pyplot():
    """matplotlib.pyplot drawing to files only (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path: str | Path) -> Path:
    """Write a matplotlib figure as a PNG, atomically, and close it."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    pyplot().close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return Path(path)


CURVES = (  # (train key, held-out key, held-out label, unit) of metrics.jsonl, the first whose train key is there
    ("nats_per_dim", "test_nats_per_dim", "test", "latent nats/dim"),
    ("train_bits_per_char", "validation_bits_per_char", "validation", "bits/char"),
    ("bpd", "test_bpd", "test", "bits/dim"),
)


def plot_curves(metrics_file: str | Path, path: str | Path) -> Path | None:
    """Plot the train figure (raw and smoothed) and the held-out one against step from a metrics JSONL file:
    bits/dim and test bits/dim of image models, latent nats/dim of latent models, bits/char and validation
    bits/char of text models (`CURVES`)."""
    plt = pyplot()
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    key, held_out_key, held_out, unit = next((curve for curve in CURVES if any(curve[0] in r for r in rows)),
                                             CURVES[-1])
    train = [(r["step"], r[key]) for r in rows if key in r]
    test = [(r["step"], r[held_out_key]) for r in rows if held_out_key in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    steps, bpd = map(np.array, zip(*train))
    ax.plot(steps, bpd, color="tab:blue", alpha=0.3, lw=1)
    if len(bpd) >= 5:
        k = max(1, len(bpd) // 20)
        smooth = np.convolve(bpd, np.ones(k) / k, mode="valid")
        ax.plot(steps[k - 1:], smooth, color="tab:blue", lw=2, label="train (smoothed)")
    if test:
        ts, tb = zip(*test)
        ax.plot(ts, tb, "o-", color="tab:orange", lw=2, label=held_out)
    lo, hi = np.percentile(bpd, 1), np.percentile(bpd, 99)
    if test:
        lo, hi = min(lo, min(tb)), max(hi, max(tb))
    pad = max(hi - lo, 1e-3)
    ax.set_ylim(lo - 0.05 * pad, hi + 0.1 * pad)
    ax.set_xlabel("step")
    ax.set_ylabel(unit)
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    return save_figure(fig, path)


def plot_entropy(metrics_file: str | Path, path: str | Path, threshold: float | None = None) -> Path | None:
    """Attention entropy against step from the ``attn_entropy`` [block][layer][head] lists of a metrics JSONL
    file: one colour per layer (block b, layer l), the mean over heads solid and the minimum dashed."""
    plt = pyplot()
    rows = [json.loads(line) for line in Path(metrics_file).read_text().splitlines() if line.strip()]
    rows = [r for r in rows if "attn_entropy" in r]
    if not rows:
        return None
    steps = np.array([r["step"] for r in rows])
    ent = [r["attn_entropy"] for r in rows]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
    cmap = plt.get_cmap("viridis")
    layers = [(b, l) for b, block in enumerate(ent[0]) for l in range(len(block))]
    for i, (b, l) in enumerate(layers):
        heads = np.array([e[b][l] for e in ent])  # (steps, heads)
        color = cmap(i / max(1, len(layers) - 1))
        ax.plot(steps, heads.mean(1), color=color, lw=1.5, label=f"block {b} layer {l}")
        if heads.shape[1] > 1:
            ax.plot(steps, heads.min(1), color=color, lw=1, ls="--")
    if threshold is not None:
        ax.axhline(threshold, color="tab:red", lw=1, ls=":", label=f"warning threshold {threshold:g}")
    ax.set_xlabel("step")
    ax.set_ylabel("attention entropy (nats; solid mean, dashed min over heads)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=6, ncol=2)
    return save_figure(fig, path)
