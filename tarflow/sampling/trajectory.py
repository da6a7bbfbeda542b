"""Sampling a Normalizing Trajectory Model in K steps: x_K ~ N(0, T^2 I), then x_{k-1} = step k's flow inverted at
z_k ~ N(0, T^2 I) given x_k, for k = K .. 1 (T the temperature). Every step inverts the whole batch at once. With a
self-distilled denoiser (`trajectory_denoiser.py`) the images are x_0 + d(x_0, x_1).

Guidance (class-conditional models, or any model with an attention temperature tau on the unconditional branch):
at every step the predictor reads x_k with the label and with the null class (2 B rows in one batch); the rule of
`Guidance` combines the two branches' (log sigma_k, mu_k) per token, and each block's params per token as in TarFlow.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError
from ..flows.conditioning import Condition
from .guidance import Guidance


class TrajectorySampler:
    """Draws trajectories (and images, their x_0) from a `NormalizingTrajectoryModel`, using only its ``modality``,
    ``conditioning``, ``steps``, ``dtype``, ``device`` and ``invert_step``; ``denoiser``: a `TrajectoryDenoiser`
    applied to the images (not to `trajectory`)."""

    def __init__(self, model, denoiser=None):
        self.model = model
        self.denoiser = denoiser

    def describe(self) -> str:
        """The sampler's name in the metrics' JSON: "ntm, K steps", and ", self-distilled denoiser" with one."""
        return f"ntm, {self.model.steps} steps" + (", self-distilled denoiser" if self.denoiser else "")

    def noise(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """(K + 1, n, T, D) standard normal tokens times ``temperature``: x_K, then z_K .. z_1; drawn on the CPU so
        seeds agree across devices."""
        model = self.model
        shape = (model.steps + 1, n, model.modality.num_tokens, model.modality.token_dim)
        return (torch.randn(shape, generator=generator, dtype=model.dtype) * temperature).to(model.device)

    @torch.no_grad()
    def trajectory(self, n: int, y: Tensor | None = None, temperature: float = 1.0, guidance: Guidance | None = None,
                   generator: torch.Generator | None = None, noise: Tensor | None = None) -> Tensor:
        """A sampled trajectory (n, K + 1, C, H, W), [:, k] = x_k. ``noise``: (K + 1, n, T, D) tokens to use instead
        of drawing them (see `noise`); labels ``y`` (n,) for a class-conditional model."""
        model = self.model
        was_training = model.training
        model.eval()
        try:
            noise = self.noise(n, temperature, generator) if noise is None else noise.to(model.device, model.dtype)
            y = model.conditioning.check(y, n, model.device)
            condition = Condition(y)
            if guidance is not None:
                condition = model.conditioning.branches(y, n, guidance.attn_temp, model.dtype, model.device)
            states = [noise[0]]  # x_K
            for k in range(model.steps, 0, -1):
                steps = torch.full((n,), k, dtype=torch.long, device=model.device)
                z = noise[model.steps + 1 - k]
                states.append(model.invert_step(z, states[-1], steps, condition, guidance))
        finally:
            model.train(was_training)
        images = [model.modality.from_tokens(tokens) for tokens in reversed(states)]  # x_0 .. x_K
        return torch.stack(images, dim=1)

    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0, guidance: Guidance | None = None,
               denoise_std: float | None = None, generator: torch.Generator | None = None,
               noise: Tensor | None = None) -> Tensor:
        """n images x_0 in model space ((n, C, H, W) in [-1, 1], not clamped): the end of a sampled `trajectory`.
        The signature is the samplers' (`tarflow.metrics.generate_levels`); ``denoise_std`` must be None, as the
        model is trained on clean data."""
        if denoise_std is not None:
            raise ConfigError(f"a Normalizing Trajectory Model is trained on clean data: it takes no Tweedie step "
                              f"(denoise_std={denoise_std}); pass denoise_std=None")
        trajectory = self.trajectory(n, y, temperature, guidance, generator, noise)
        if self.denoiser is None:
            return trajectory[:, 0]
        return self.denoiser.denoise(trajectory[:, 0], trajectory[:, 1], y)
