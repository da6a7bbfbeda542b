"""One-step score-based denoising (Tweedie): x_hat = x + sigma^2 grad_x log p(x)."""

from __future__ import annotations

import torch
from torch import Tensor


def tweedie_denoise(model, x: Tensor, y: Tensor | None, sigma: float) -> Tensor:
    """E[clean | x] for x = clean + sigma eps, using the model's own score; sigma in model units ([-1, 1])."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(model.log_prob(x, y).sum(), x)
    return (x + sigma ** 2 * score).detach()
