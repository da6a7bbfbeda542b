"""The Mix-d transform (one mixture over a whole token vector), in float64 on random parameters."""

from __future__ import annotations

import math

import pytest
import torch
from torch.autograd.functional import jacobian

from tarflow.errors import ConfigError
from tarflow.flows.transforms.mixture_d import MixtureVector
from tarflow.sampling import Guidance

COMPONENTS, DIM, BATCH, LENGTH = 3, 4, 2, 3


def random_params(transform: MixtureVector, scale: float = 0.7, seed: int = 0):
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(BATCH, LENGTH, transform.num_params(DIM), generator=gen, dtype=torch.float64) * scale
    return transform.split(raw)


def mixture_log_density(x: torch.Tensor, params) -> torch.Tensor:
    """log sum_k pi_k prod_i N(x_i; mu_ki, sigma_ki^2) per token, written out with torch.distributions."""
    logits, mu, log_sigma = params
    normal = torch.distributions.Normal(mu, log_sigma.exp())  # (B, L, D, K)
    per_component = normal.log_prob(x.unsqueeze(-1)).sum(-2)  # (B, L, K)
    return torch.logsumexp(torch.log_softmax(logits, -1) + per_component, dim=-1)


@pytest.fixture
def transform() -> MixtureVector:
    return MixtureVector(COMPONENTS)


def test_split_layout(transform):
    raw = torch.arange(transform.num_params(DIM), dtype=torch.float64).expand(1, 1, -1)
    logits, mu, log_sigma = transform.split(raw)
    assert transform.num_params(DIM) == COMPONENTS * (1 + 2 * DIM)
    assert logits.shape == (1, 1, COMPONENTS) and mu.shape == log_sigma.shape == (1, 1, DIM, COMPONENTS)
    gains = torch.tensor([0.5, 1.0, 1.5], dtype=torch.float64)
    assert torch.equal(logits[0, 0], raw[0, 0, :COMPONENTS])
    assert torch.equal(mu[0, 0, 1], gains * raw[0, 0, COMPONENTS + COMPONENTS:COMPONENTS + 2 * COMPONENTS])
    assert torch.equal(log_sigma[0, 0, 0], gains * raw[0, 0, COMPONENTS * (1 + DIM):COMPONENTS * (2 + DIM)])


def test_identity_at_zero(transform):
    x = torch.randn(BATCH, LENGTH, DIM, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 3
    z, logdet = transform.forward(x, transform.split(torch.zeros(BATCH, LENGTH, transform.num_params(DIM),
                                                                 dtype=torch.float64)))
    assert (z - x).abs().max() <= 1e-12
    assert logdet.abs().max() <= 1e-10


def test_inverse_round_trip(transform):
    params = random_params(transform)
    x = torch.randn(BATCH, LENGTH, DIM, generator=torch.Generator().manual_seed(2), dtype=torch.float64) * 2
    z, _ = transform.forward(x, params)
    assert (transform.inverse(z, params) - x).abs().max() <= 1e-10
    z_new = torch.randn(BATCH, LENGTH, DIM, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert (transform.forward(transform.inverse(z_new, params), params)[0] - z_new).abs().max() <= 1e-10


def test_logdet_matches_autograd_and_density_is_the_mixture(transform):
    """log|det dz/dx| equals slogdet of the autograd Jacobian, and log N(z) + logdet is the mixture density."""
    params = random_params(transform)
    x = torch.randn(BATCH, LENGTH, DIM, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    z, logdet = transform.forward(x, params)
    for b in range(BATCH):
        one = tuple(p[b:b + 1] for p in params)
        J = jacobian(lambda v: transform.forward(v.view(1, LENGTH, DIM), one)[0].flatten(), x[b].flatten())
        upper = torch.triu(J.view(LENGTH, DIM, LENGTH, DIM)[range(LENGTH), :, range(LENGTH)], diagonal=1)
        assert upper.abs().max() == 0  # Rosenblatt: z_i depends on x_<=i of its own token only
        assert abs(torch.linalg.slogdet(J)[1].item() - logdet[b].item()) <= 1e-9
    standard = -0.5 * z.square() - 0.5 * math.log(2 * math.pi)
    density = standard.sum(dim=(1, 2)) + logdet
    assert (density - mixture_log_density(x, params).sum(-1)).abs().max() <= 1e-10


def test_one_component_is_a_diagonal_gaussian():
    """K = 1: z = (x - mu) / sigma exactly (an affine transform)."""
    transform = MixtureVector(1)
    logits, mu, log_sigma = params = random_params(transform)
    x = torch.randn(BATCH, LENGTH, DIM, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    z, logdet = transform.forward(x, params)
    assert (z - (x - mu[..., 0]) * torch.exp(-log_sigma[..., 0])).abs().max() <= 1e-12
    assert (logdet + log_sigma.sum(dim=(1, 2, 3))).abs().max() <= 1e-12


def test_guidance_tarflow_rule_and_starflow_refused(transform):
    cond, uncond = random_params(transform, seed=6), random_params(transform, seed=7)
    both = tuple(torch.cat([c, u]) for c, u in zip(cond, uncond))
    guided = transform.guide(both, Guidance(2.0), 0, LENGTH)
    for g, c, u in zip(guided, cond, uncond):
        assert torch.allclose(g, c + 2.0 * (c - u), rtol=0, atol=1e-14)
    chunk = transform.guide(both, Guidance(2.0, annealed=True), torch.arange(LENGTH).view(-1, 1), LENGTH)
    for g, c, u in zip(chunk, cond, uncond):
        weight = 2.0 * torch.arange(LENGTH, dtype=torch.float64) / (LENGTH - 1)
        expected = c + weight.view(-1, *[1] * (c.dim() - 2)) * (c - u)
        assert torch.allclose(g, expected, rtol=0, atol=1e-14)
    with pytest.raises(ConfigError, match="rule='tarflow'"):
        transform.guide(both, Guidance(1.0, "starflow"), 0, LENGTH)
