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


def reverse_time_batch(clips: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Play each clip (N, F, ...) backwards with probability 1/2 (frame f becomes frame F-1-f); a new tensor.

    For motion that looks the same run backwards, such as Moving MNIST's bouncing digits: it doubles the clips a
    video model sees. The coins come from ``generator`` as in `flip_batch`.
    """
    reverse = torch.rand(clips.shape[0], generator=generator) < 0.5
    reverse = reverse.view(-1, *([1] * (clips.dim() - 1))).to(clips.device)
    return torch.where(reverse, clips.flip(1), clips)
