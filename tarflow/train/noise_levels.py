"""Training across noise levels (iTARFlow): each image gets its own level t in [t0, t1], the flow models
x + t eps with t fed to every block, and the per-image loss is weighted by a function of t.

Schedules of t:  uniform (t ~ U[t0, t1]);  uniform-squared (t^2 ~ U[t0^2, t1^2]);  log-normal
(ln t ~ N(mean, std^2), EDM's P_mean = -1.2, P_std = 1.0, truncated to [t0, t1] by its inverse CDF).
Loss weights w(t):  one (1);  t;  t-squared (t^2);  t-normalised (t / (t0 + t1));
t-squared-normalised (t^2 / (t0^2 + t1^2)).  loss = -mean_i(w(t_i) log p_{t_i}(x_i + t_i eps_i)) / D.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..flows import FlowConfig
from .config import TrainConfig


def draw_levels(config: TrainConfig, t0: float, t1: float, count: int, generator: torch.Generator) -> Tensor:
    """``count`` levels t (float64) from ``config.noise_schedule`` on [t0, t1]."""
    u = torch.rand(count, generator=generator, dtype=torch.float64)
    if config.noise_schedule == "uniform":
        return t0 + (t1 - t0) * u
    if config.noise_schedule == "uniform-squared":
        return torch.sqrt(t0 ** 2 + (t1 ** 2 - t0 ** 2) * u)
    normal = torch.distributions.Normal(torch.tensor(config.log_normal_mean, dtype=torch.float64),
                                        torch.tensor(config.log_normal_std, dtype=torch.float64))
    low, high = normal.cdf(torch.tensor(math.log(t0), dtype=torch.float64)), normal.cdf(
        torch.tensor(math.log(t1), dtype=torch.float64))
    return torch.exp(normal.icdf(low + (high - low) * u)).clamp(t0, t1)


def loss_weights(name: str, levels: Tensor, t0: float, t1: float) -> Tensor:
    """w(t) per image for the loss weight ``name`` (see the module docstring)."""
    weights = {"one": torch.ones_like(levels), "t": levels, "t-squared": levels ** 2,
               "t-normalised": levels / (t0 + t1), "t-squared-normalised": levels ** 2 / (t0 ** 2 + t1 ** 2)}
    return weights[name]


def add_noise_levels(x: Tensor, step: int, train_config: TrainConfig, model_config: FlowConfig,
                     part: slice = slice(None)) -> tuple[Tensor, Tensor]:
    """(x + t eps, t) for this process's ``part`` of the global batch of ``step``.

    Levels and eps are drawn for the whole global batch from (seed, step) alone, as `trainer.batch` draws its
    images, so a resumed or distributed run sees the same noise.
    """
    generator = torch.Generator().manual_seed(train_config.seed * 1_000_003 + 104_729 * (step + 1) + 1)
    size = train_config.batch_size
    levels = draw_levels(train_config, model_config.noise_level_min, model_config.noise_level_max, size, generator)
    eps = torch.randn((size, *x.shape[1:]), generator=generator)
    levels, eps = levels[part].to(x.device, x.dtype), eps[part].to(x.device, x.dtype)
    return x + levels.view(-1, *[1] * (x.dim() - 1)) * eps, levels
