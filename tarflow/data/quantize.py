"""Between integer pixel levels k in {0..L-1} and model space [-1, 1]; bin width 2/L."""

from __future__ import annotations

import torch
from torch import Tensor


def dequantize(k: Tensor, levels: int, noise: str = "uniform", noise_std: float = 0.0,
               generator: torch.Generator | None = None) -> Tensor:
    """x = 2 (k + u) / L - 1 with u ~ U[0, 1) ("uniform"), or 2 (k + 1/2) / L - 1 + sigma eps ("gaussian")."""
    k = k.float()
    if noise == "uniform":
        u = torch.rand(k.shape, generator=generator, device=k.device if generator is None else "cpu").to(k.device)
        return place_in_bins(k, u, levels)
    if noise == "gaussian":
        eps = torch.randn(k.shape, generator=generator, device=k.device if generator is None else "cpu")
        return 2 * (k + 0.5) / levels - 1 + noise_std * eps.to(k.device)
    raise ValueError(f"noise must be 'uniform' or 'gaussian', got {noise!r}")


def place_in_bins(k: Tensor, u: Tensor, levels: int) -> Tensor:
    """x = 2 (k + u) / L - 1: the point at fraction u in [0, 1) of level k's bin."""
    return 2 * (k.float() + u) / levels - 1


def quantize(x: Tensor, levels: int) -> Tensor:
    """Inverse of the bin map: the level k whose bin [2k/L - 1, 2(k+1)/L - 1) holds x, clamped to 0..L-1."""
    return ((x + 1) * levels / 2).floor().clamp(0, levels - 1).to(torch.uint8 if levels <= 256 else torch.int32)


def bin_width(levels: int) -> float:
    """Width of one level's bin in [-1, 1]: 2 / L."""
    return 2.0 / levels
