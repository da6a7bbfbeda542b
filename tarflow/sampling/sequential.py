"""The exact sequential sampler: z from the prior, then every block inverted token by token with a KV cache."""

from __future__ import annotations

import dataclasses

import torch
from torch import Tensor

from ..flows.conditioning import Condition
from .denoise import tweedie_denoise
from .guidance import Guidance


class SequentialSampler:
    """Samples x = f^{-1}(z), z ~ prior scaled by ``temperature``, with optional guidance and Tweedie denoising.

    The model is used through its sampling protocol: ``prior``, ``modality``, ``conditioning`` and
    ``blocks`` (each with ``order``, ``transform``, ``new_cache`` and ``step``; see `tarflow.flows.block`).
    Both guidance branches run in one batched forward per token (2B rows in the KV cache).
    """

    def __init__(self, model):
        self.model = model

    def noise(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """z (data shape) from the prior scaled by ``temperature``; drawn on the CPU so seeds agree across devices."""
        model = self.model
        shape = (n, model.modality.num_tokens, model.modality.token_dim)
        tokens = model.prior.sample(shape, temperature, generator, model.dtype, model.device)
        return model.modality.from_tokens(tokens)

    @torch.no_grad()
    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0, guidance: Guidance | None = None,
               denoise_std: float | None = None, generator: torch.Generator | None = None,
               z: Tensor | None = None, noise_level: float | Tensor | None = None) -> Tensor:
        """n samples in model space (pixels: (n, C, H, W) in [-1, 1], not clamped).

        ``y``: labels (n,) for a class-conditional model. ``denoise_std``: the noise std the model
        was trained with, to remove it with one Tweedie step (None: no denoising).
        ``z``: start from this noise instead of drawing it. ``noise_level``: for a noise-conditioned model, the
        level t of the samples (default: its highest trained level t1; see `tarflow.sampling.iterative` for
        denoising them); the Tweedie step then uses the score at that level.
        """
        model = self.model
        was_training = model.training
        model.eval()
        try:
            z = self.noise(n, temperature, generator) if z is None else z.to(model.device)
            y = model.conditioning.check(y, n, model.device)
            model.modality.check(z, "z")
            condition = self.condition(y, n, guidance, noise_level)
            tokens = self.invert(model.modality.to_tokens(z), condition, guidance)
            x = model.modality.from_tokens(tokens)
            if denoise_std:
                levels = None if condition.noise_level is None else condition.noise_level[:n]
                x = tweedie_denoise(model, x, y, denoise_std, levels)
        finally:
            model.train(was_training)
        return x

    def condition(self, y: Tensor | None, n: int, guidance: Guidance | None = None,
                  noise_level: float | Tensor | None = None) -> Condition:
        """The rows of a sampling pass over n samples: checked labels ``y``, both guidance branches (2n rows) with
        ``guidance``, and a noise-conditioned model's level (default: its highest trained level t1)."""
        model = self.model
        levels = generation_level(model, noise_level, n)
        if guidance is None:
            return Condition(y, noise_level=levels)
        condition = model.conditioning.branches(y, n, guidance.attn_temp, model.dtype, model.device)
        return dataclasses.replace(condition, noise_level=None if levels is None else levels.repeat(2))

    def invert(self, tokens: Tensor, condition: Condition, guidance: Guidance | None = None) -> Tensor:
        """Noise tokens -> data tokens; ``condition`` holds every guidance branch's rows."""
        for block in reversed(self.model.blocks):
            tokens = block.inverse(tokens, condition, guidance)
        return tokens


def generation_level(model, noise_level: float | Tensor | None, n: int) -> Tensor | None:
    """The checked noise levels (n,) of a noise-conditioned model's samples (default: its highest trained level t1);
    None for other models."""
    if noise_level is None and model.config.noise_conditioning:
        noise_level = model.config.noise_level_max
    return model.check_noise_level(noise_level, n)
