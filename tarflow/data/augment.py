"""Training-time augmentation, applied per batch (the cached dataset stays as decoded)."""

from __future__ import annotations

import torch
from torch import Tensor


def flip_half(batch: Tensor, dim: int, generator: torch.Generator | None = None) -> Tensor:
    """Each item of ``batch`` reversed along ``dim`` with probability 1/2; a new tensor, any dtype or device.

    One coin per item from ``generator`` (a CPU generator), so a seeded batch is reproducible.
    """
    coins = torch.rand(batch.shape[0], generator=generator) < 0.5
    coins = coins.view(-1, *([1] * (batch.dim() - 1))).to(batch.device)
    return torch.where(coins, batch.flip(dim), batch)


def flip_batch(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image (..., H, W) left-right with probability 1/2 (`flip_half` along the width)."""
    return flip_half(images, -1, generator)


def reverse_time_batch(clips: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Play each clip (N, F, ...) backwards with probability 1/2 (frame f becomes frame F-1-f; `flip_half` along
    the frames).

    For motion that looks the same run backwards, such as Moving MNIST's bouncing digits: it doubles the clips a
    video model sees.
    """
    return flip_half(clips, 1, generator)
