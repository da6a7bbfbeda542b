"""One-step score-based denoising (Tweedie): x_hat = x + sigma^2 grad_x log p(x)."""

from __future__ import annotations

import torch
from torch import Tensor


def tweedie_denoise(model, x: Tensor, y: Tensor | None, sigma: float, noise_level: float | Tensor | None = None
                    ) -> Tensor:
    """E[clean | x] for x = clean + sigma eps, using the model's own score; sigma in model units ([-1, 1]).

    ``noise_level``: the level t a noise-conditioned model reads (normally t = sigma); None for other models.
    """
    with torch.enable_grad():
        x = x.detach().requires_grad_(True)
        log_p = model.log_prob(x, y) if noise_level is None else model.log_prob(x, y, noise_level=noise_level)
        (score,) = torch.autograd.grad(log_p.sum(), x)
    return (x + sigma ** 2 * score).detach()
