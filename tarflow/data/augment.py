"""Training-time augmentation, applied per batch (the cached dataset stays as decoded)."""

from __future__ import annotations

import torch
from torch import Tensor


def flip_batch(images: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Mirror each image (..., H, W) left-right with probability 1/2; a new tensor, any dtype or device.

    The coin flips come from ``generator`` (a CPU generator), so a seeded batch is reproducible.
    """
    flip = torch.rand(images.shape[0], generator=generator) < 0.5
    flip = flip.view(-1, *([1] * (images.dim() - 1))).to(images.device)
    return torch.where(flip, images.flip(-1), images)
