"""Bits/dim of noisy data under a noise-conditioned model (iTARFlow): the density p_t of x + t eps.

For test images k (integer levels) the data is x_t = x + t eps with x = 2 (k + u) / L - 1 (uniform
dequantization, u ~ U[0, 1)) and eps ~ N(0, I); the model's log p_t(x_t) at level t gives

    bpd_t = (-log p_t(x_t) - D log(2 / L)) / (D ln 2),

the same bin-width convention as `bits_per_dim`. This is a continuous density of the noisy data, not a
likelihood of the clean 8-bit images: an iTARFlow has no exact clean-data likelihood (p_t is a model of
data blurred by N(0, t^2)); the figure at the lowest trained level t0 is its closest stand-in.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from ..data.quantize import bin_width, dequantize
from ..errors import InputError
from .likelihood import bits_per_dim, mean_and_stderr


@torch.no_grad()
def evaluate_noisy_bpd(model, images: Tensor, labels: Tensor | None, levels: int, noise_level: float,
                       draws: int = 1, batch_size: int = 256, seed: int = 0, extrapolate: bool = False,
                       progress: bool = False, rank: int = 0, world_size: int = 1) -> dict[str, float]:
    """Mean bpd_t (see the module docstring) over every image and ``draws`` draws of (u, eps), with its standard
    error over images. The noise of each batch depends only on (seed, draw, batch), so the result does not
    depend on ``world_size`` (rank r evaluates batches r, r + W, ...)."""
    from tqdm.auto import tqdm

    if not model.config.noise_conditioning:
        raise InputError("bits/dim at a noise level needs a noise-conditioned model (noise_conditioning=true)")
    model.eval()
    n, dims, bin_size = images.shape[0], images[0].numel(), bin_width(levels)
    per_image = torch.zeros(n, dtype=torch.float64)
    batches = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)][rank::world_size]
    for draw in range(draws):
        for lo, hi in tqdm(batches, desc=f"eval bits/dim at t={noise_level:g}", disable=not progress, leave=False):
            generator = torch.Generator().manual_seed(seed * 1_000_003 + draw * 7_919 + lo)
            x = dequantize(images[lo:hi], levels, generator=generator)
            x = x + noise_level * torch.randn(x.shape, generator=generator)
            x = x.to(model.device, model.dtype)
            y = None if labels is None else labels[lo:hi].to(model.device)
            log_p = model.log_prob(x, y, noise_level=noise_level, extrapolate=extrapolate)
            per_image[lo:hi] += bits_per_dim(log_p, dims, bin_size).double().cpu() / draws
    if world_size > 1:
        dist.all_reduce(per_image)
    mean, stderr = mean_and_stderr(per_image)
    return {"bits_per_dim": mean, "stderr": stderr, "images": n, "draws": draws, "noise_level": noise_level}
