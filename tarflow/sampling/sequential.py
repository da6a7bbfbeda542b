"""The exact sequential sampler: z from the prior, then every block inverted token by token with a KV cache."""

from __future__ import annotations

import torch
from torch import Tensor

from .denoise import tweedie_denoise
from .guidance import Guidance


class SequentialSampler:
    """Samples x = f^{-1}(z), z ~ N(0, (temperature s)^2), with optional guidance and Tweedie denoising.

    Both guidance branches run in one batched forward per token (2B rows in the KV cache).
    """

    def __init__(self, model):
        self.model = model

    def noise(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """z (n, C, H, W) from the prior scaled by ``temperature``; drawn on the CPU so seeds agree across devices."""
        m = self.model
        c = m.config
        dtype = m.blocks[0].pos_embed.dtype
        z = torch.randn(n, c.num_tokens, c.token_dim, generator=generator, dtype=dtype) * temperature
        z = z.to(m.device)
        std = m.prior_std()
        if std is not None:
            z = z * std.detach().to(z.dtype)
        return m.unpatchify(z)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0, guidance: Guidance | None = None,
               denoise_std: float | None = None, generator: torch.Generator | None = None,
               z: Tensor | None = None) -> Tensor:
        """n images (n, C, H, W) in model space [-1, 1] (not clamped).

        ``y``: labels (n,) for a class-conditional model. ``denoise_std``: the noise std the model
        was trained with, to remove it with one Tweedie step (None: no denoising).
        ``z``: start from this noise instead of drawing it.
        """
        m = self.model
        was_training = m.training
        m.eval()
        try:
            z = self.noise(n, temperature, generator) if z is None else z.to(m.device)
            y = m.check_labels(y, n)
            if guidance is None:
                x = self.invert(z, y)
            else:
                x = self.invert(z, *self.branches(y, n, guidance), guide=self.guide(guidance))
            if denoise_std:
                x = tweedie_denoise(m, x, y, denoise_std)
        finally:
            m.train(was_training)
        return x

    def invert(self, z: Tensor, y: Tensor | None = None, attn_temp: Tensor | None = None, guide=None) -> Tensor:
        """Noise images -> data images; ``y`` / ``attn_temp`` hold every guidance branch's rows."""
        return self.model.inverse(z, y, attn_temp, guide)

    def branches(self, y: Tensor | None, n: int, guidance: Guidance) -> tuple[Tensor | None, Tensor]:
        """Labels and attention temperatures of the conditional rows then the unconditional rows."""
        m = self.model
        y2 = None if y is None else torch.cat([y, torch.full_like(y, m.null_class)])
        # In the weights' dtype: a float32 tau would round e.g. 1.8 and move float64 samples by ~1e-6.
        attn_temp = torch.ones(2 * n, device=m.device, dtype=m.blocks[0].pos_embed.dtype)
        attn_temp[n:] = guidance.attn_temp
        return y2, attn_temp

    def guide(self, guidance: Guidance):
        T = self.model.config.num_tokens
        return lambda a, b, token: guidance.combine(a, b, token, T)
