"""The noising trajectory of a Normalizing Trajectory Model: a Markov chain x_0 (data) -> x_1 -> ... -> x_K (noise).

Signal levels 1 = a_0 > a_1 > ... > a_K >= 0 (`FlowConfig.signal_levels`). Each step is variance preserving:

    q(x_k | x_{k-1}) = N(x_k; r_k x_{k-1}, s_k^2 I),   r_k = a_k / a_{k-1},   s_k^2 = 1 - r_k^2,

so the marginals are q(x_k | x_0) = N(a_k x_0, (1 - a_k^2) I), and a_K = 0 makes x_K exactly N(0, I). The log-density
of a whole trajectory, log q(x_{1:K} | x_0) = sum_k log N(x_k; r_k x_{k-1}, s_k^2 I), is exact and cheap.
A trajectory tensor is (B, K + 1, ...) with [:, k] = x_k.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)


class NoisingTrajectory:
    """The forward process q of K steps with signal levels a_1 .. a_K (strictly decreasing in [0, 1))."""

    def __init__(self, signal_levels: list[float]):
        levels = [1.0, *signal_levels]
        self.signal_levels = levels  # a_0 .. a_K
        self.ratios = [later / earlier for earlier, later in zip(levels, levels[1:])]  # r_1 .. r_K
        self.stds = [math.sqrt(1 - ratio ** 2) for ratio in self.ratios]  # s_1 .. s_K

    @property
    def steps(self) -> int:
        """K."""
        return len(self.ratios)

    def sample(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """A trajectory (B, K + 1, ...) from x_0 = ``x``: x_k = r_k x_{k-1} + s_k eps_k, eps drawn on the CPU in x's
        dtype (so a seed gives the same trajectory on every device)."""
        eps = torch.randn((self.steps, *x.shape), generator=generator, dtype=x.dtype).to(x.device)
        states = [x]
        for ratio, std, noise in zip(self.ratios, self.stds, eps):
            states.append(ratio * states[-1] + std * noise)
        return torch.stack(states, dim=1)

    def step_coefficients(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(r_1 .. r_K, s_1 .. s_K) as tensors of ``like``'s dtype and device, shaped to broadcast over (B, K, ...)."""
        shape = (1, self.steps, *[1] * (like.dim() - 2))
        ratios = torch.tensor(self.ratios, dtype=like.dtype, device=like.device).view(shape)
        stds = torch.tensor(self.stds, dtype=like.dtype, device=like.device).view(shape)
        return ratios, stds

    def log_prob(self, trajectory: Tensor) -> Tensor:
        """log q(x_{1:K} | x_0) per sample (B,), in nats, summed over every dimension of every step."""
        trajectory = trajectory.to(torch.promote_types(trajectory.dtype, torch.float32))
        ratios, stds = self.step_coefficients(trajectory)
        eps = (trajectory[:, 1:] - ratios * trajectory[:, :-1]) / stds
        per_value = -0.5 * eps.square() - torch.log(stds) - HALF_LOG_TWO_PI
        return per_value.flatten(1).sum(1)
