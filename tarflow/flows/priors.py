"""Priors over the flow's output tokens z (B, T, D): log p(z) summed per sample, in nats, and samples.

Every prior takes the batch's `Condition` (labels, and later a text prefix or a noise level), so a conditional
prior is one more class here; the two below ignore it.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .conditioning import Condition

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class StandardNormal(nn.Module):
    """N(0, I): log p(z) = -sum (z^2 / 2 + log(2 pi) / 2)."""

    def std(self) -> Tensor | None:
        """Per token-dimension std (T, D), or None for 1 everywhere."""
        return None

    def densities(self, z: Tensor) -> Tensor:
        """log p of every value of z (B, T, D), in nats, in float32 or wider."""
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        return -0.5 * z.pow(2) - HALF_LOG_TWO_PI

    def log_prob(self, z: Tensor, condition: Condition | None = None) -> Tensor:
        return self.densities(z).sum(dim=(1, 2))

    def sample(self, shape: tuple[int, int, int], temperature: float, generator: torch.Generator | None,
               dtype: torch.dtype, device: torch.device, condition: Condition | None = None) -> Tensor:
        """z ~ N(0, (temperature s)^2), drawn on the CPU so seeds agree across devices."""
        z = torch.randn(shape, generator=generator, dtype=dtype) * temperature
        z = z.to(device)
        std = self.std()
        return z if std is None else z * std.detach().to(z.dtype)


class LearnedDiagonal(StandardNormal):
    """N(0, diag(s^2)) with a learned log s per token dimension (T, D): what additive (volume-preserving) flows
    use to learn the scale their transform cannot.

    ``likelihood="standard"`` evaluates log p with N(0, I) while samples still come from N(0, s^2): the
    definition apple/ml-tarflow's loss and bits/dim use for its additive models.
    """

    def __init__(self, num_tokens: int, token_dim: int, likelihood: str = "learned"):
        super().__init__()
        self.log_std = nn.Parameter(torch.zeros(num_tokens, token_dim))
        self.likelihood = likelihood

    def std(self) -> Tensor:
        return self.log_std.exp()

    def densities(self, z: Tensor) -> Tensor:
        if self.likelihood == "standard":
            return super().densities(z)
        z = z.to(torch.promote_types(z.dtype, torch.float32))
        log_s = self.log_std.to(z.dtype)
        return -0.5 * (z * torch.exp(-log_s)).pow(2) - log_s - HALF_LOG_TWO_PI


PRIORS = ("auto", "standard", "learned")


def build_prior(config, num_tokens: int, token_dim: int) -> StandardNormal:
    """The prior a `FlowConfig` names; ``auto``: learned for the additive transform (which needs it), else standard."""
    if config.prior == "learned" or config.prior == "auto" and config.transform == "additive":
        return LearnedDiagonal(num_tokens, token_dim, config.likelihood_prior)
    return StandardNormal()
