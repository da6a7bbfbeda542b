"""Bits per dimension and test-set likelihood evaluation."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.quantize import bin_width, dequantize


def bits_per_dim(log_prob: Tensor, num_dims: int, bin_width: float) -> Tensor:
    """bpd = (-log p(x) - D log(bin_width)) / (D ln 2), with log p in nats per sample.

    The bin width is that of the data in model space: 2/256 for 8-bit images in [-1, 1], 2/L for L levels.
    With uniform dequantization this is an upper bound on the discrete model's bits/dim.
    """
    return (-log_prob - num_dims * math.log(bin_width)) / (num_dims * math.log(2))


@torch.no_grad()
def evaluate_bpd(model, images: Tensor, labels: Tensor | None, levels: int, draws: int = 1,
                 batch_size: int = 256, seed: int = 0, progress: bool = False) -> dict[str, float]:
    """Test bits/dim with uniform dequantization: mean over images and ``draws`` noise draws, with standard error.

    ``images`` are integer levels (N, C, H, W) in 0..levels-1. The standard error is over images
    (each image's bits/dim averaged over its draws first).
    """
    from tqdm.auto import tqdm

    model.eval()
    generator = torch.Generator().manual_seed(seed)
    n, dims = images.shape[0], images[0].numel()
    per_image = torch.zeros(n, dtype=torch.float64)
    batches = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]
    for _ in range(draws):
        for lo, hi in tqdm(batches, desc="eval bits/dim", disable=not progress, leave=False):
            x = dequantize(images[lo:hi], levels, generator=generator).to(model.device)
            y = None if labels is None else labels[lo:hi].to(model.device)
            lp = model.log_prob(x, y)
            per_image[lo:hi] += bits_per_dim(lp, dims, bin_width(levels)).double().cpu() / draws
    mean = per_image.mean().item()
    stderr = (per_image.std().item() / math.sqrt(n)) if n > 1 else float("nan")
    return {"bits_per_dim": mean, "stderr": stderr, "images": n, "draws": draws}
