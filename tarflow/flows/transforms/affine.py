"""Affine transform: z = (x - b) / sigma(a), with sigma = exp(a) (TarFlow) or a shifted softplus (STARFlow)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from .base import Params, Transform

SOFTPLUS_SHIFT = math.log(math.e - 1)  # softplus(a + shift) = 1 at a = 0: a zero-initialised block is the identity


class Affine(Transform):
    """z = (x - b) / sigma, log|det dz/dx| = -sum log sigma; raw = [a | b].

    ``scale="exp"``: log sigma = a. ``scale="softplus"``: sigma = softplus(a + log(e - 1)), which grows linearly
    instead of exponentially. ``log_scale_clip`` c > 0 soft-clips a to c tanh(a / c) first (0: no clip).
    Guidance combines (log sigma, b) by the `Guidance` rule.
    """

    name = "affine"
    params_per_dim = 2

    def __init__(self, scale: str = "exp", log_scale_clip: float = 0.0):
        self.scale, self.log_scale_clip = scale, log_scale_clip

    def split(self, raw: Tensor) -> Params:
        """-> (log sigma, b)."""
        a, b = super().split(raw)
        if self.log_scale_clip > 0:
            a = self.log_scale_clip * torch.tanh(a / self.log_scale_clip)
        if self.scale == "softplus":
            a = torch.log(F.softplus(a + SOFTPLUS_SHIFT))
        return a, b

    def forward(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        log_sigma, b = params
        z = (x - b.to(x.dtype)) * torch.exp(-log_sigma).to(x.dtype)
        return z, -log_sigma.sum(dim=(1, 2))

    def inverse(self, z: Tensor, params: Params) -> Tensor:
        log_sigma, b = params
        if b.dtype == z.dtype:
            return torch.addcmul(b, z, log_sigma.exp())
        return (z * torch.exp(log_sigma) + b).to(z.dtype)

    def guide(self, params: Params, guidance, tokens: int | Tensor, num_tokens: int) -> Params:
        return guidance.combine(*params, tokens, num_tokens)
