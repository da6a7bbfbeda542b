"""Classifier-free guidance rules, applied per token to the (a, b) of a conditional and an unconditional branch."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..errors import ConfigError


@dataclass
class Guidance:
    """Guide each token's (a, b) from the conditional branch (a_c, b_c) away from the unconditional one (a_u, b_u).

    rule="tarflow":  a = a_c + w (a_c - a_u),  b = b_c + w (b_c - b_u).
    rule="starflow": with sigma = exp(a), mu = b, s = min(sigma_c / sigma_u, 1)^2,
                     sigma* = sigma_c / sqrt(1 + w - w s),  mu* = ((1 + w) mu_c - w s mu_u) / (1 + w - w s).
    annealed: token j (0-based, of T) uses w_j = w j / (T - 1): 0 at the first token, w at the last.
    attn_temp: attention temperature tau on the unconditional branch (logits / tau); tau != 1 gives
    guidance to unconditional models too, whose two branches otherwise coincide.
    """

    weight: float = 0.0
    rule: str = "tarflow"
    annealed: bool = False
    attn_temp: float = 1.0

    def __post_init__(self):
        if self.rule not in ("tarflow", "starflow"):
            raise ConfigError(f"guidance rule must be 'tarflow' or 'starflow', got {self.rule!r}")
        if self.attn_temp <= 0:
            raise ConfigError(f"guidance attn_temp must be positive, got {self.attn_temp}")

    def weight_at(self, token: int | Tensor, num_tokens: int) -> float | Tensor:
        """w for token index ``token``; a tensor of indices (shape (L, 1) for a chunk) gives one w per token."""
        return self.weight * token / max(num_tokens - 1, 1) if self.annealed else self.weight

    def combine(self, a: Tensor, b: Tensor, token: int, num_tokens: int) -> tuple[Tensor, Tensor]:
        """(a, b) of shape (2B, ...) with the conditional branch first -> guided (a, b) of shape (B, ...)."""
        w = self.weight_at(token, num_tokens)
        a_c, a_u = a.chunk(2)
        b_c, b_u = b.chunk(2)
        if self.rule == "tarflow":
            return a_c + w * (a_c - a_u), b_c + w * (b_c - b_u)
        s = torch.exp(2 * (a_c - a_u)).clamp(max=1.0)
        denom = 1 + w - w * s
        return a_c - 0.5 * torch.log(denom), ((1 + w) * b_c - w * s * b_u) / denom


def default_rule(config) -> str:
    """The guidance rule a model samples with unless told: STARFlow's for latent models, TarFlow's otherwise."""
    return "starflow" if config.latent else "tarflow"
