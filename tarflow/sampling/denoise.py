"""One-step score-based denoising (Tweedie): x_hat = x + sigma^2 grad_x log p(x)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def tweedie_correction(log_prob: Callable[[Tensor], Tensor], x: Tensor, sigma: float) -> Tensor:
    """sigma^2 grad_x log p(x), ``log_prob`` giving one log-density per row: the step that takes x = clean + sigma
    eps to E[clean | x] (also the target of the library's learned denoisers)."""
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        (score,) = torch.autograd.grad(log_prob(x).sum(), x)
    return (sigma ** 2 * score).detach()


def tweedie_denoise(model, x: Tensor, y: Tensor | None, sigma: float, noise_level: float | Tensor | None = None
                    ) -> Tensor:
    """E[clean | x] for x = clean + sigma eps, using the model's own score; sigma in model units ([-1, 1]).

    ``noise_level``: the level t a noise-conditioned model reads (normally t = sigma); None for other models.
    """
    levels = {} if noise_level is None else {"noise_level": noise_level}
    return x.detach() + tweedie_correction(lambda noisy: model.log_prob(noisy, y, **levels), x, sigma)
