"""The mixture-CDF transform (Mix-1), in float64 on CPU on small random parameters (components differ)."""

from __future__ import annotations

import math

import pytest
import torch

from tarflow.errors import ConfigError
from tarflow.flows.transforms.affine import Affine
from tarflow.flows.transforms.mixture import MixtureCDF
from tarflow.sampling.guidance import Guidance

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH, TOKENS, DIM, COMPONENTS = 3, 4, 5, 3


@pytest.fixture
def transform() -> MixtureCDF:
    return MixtureCDF(COMPONENTS)


def random_raw(dtype=torch.float64, batch: int = BATCH, seed: int = 0) -> torch.Tensor:
    """raw ~ N(0, 1): (batch, L, 3 K D)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(batch, TOKENS, 3 * COMPONENTS * DIM, generator=gen, dtype=torch.float64).to(dtype)


def random_x(seed: int = 1, scale: float = 3.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return scale * torch.randn(BATCH, TOKENS, DIM, generator=gen, dtype=torch.float64)


def repeat_params(params, copies: int):
    """Params (B, L, D, K) -> (copies B, L, D, K), the B samples repeated."""
    return tuple(param.repeat(copies, 1, 1, 1) for param in params)


def element_log_density(transform: MixtureCDF, x: torch.Tensor, params) -> torch.Tensor:
    """log N(z(x); 0, 1) + log|dz/dx| for each x of shape (N, 1, 1), one scalar element's parameters (1, 1, 1, K)."""
    z, logdet = transform.forward(x, repeat_params(params, x.shape[0]))
    return -0.5 * z.flatten() ** 2 - 0.5 * math.log(2 * math.pi) + logdet


def test_split_layout(transform):
    """raw[..., (j K + k) D + d] is parameter j of component k for dim d (gains g_k = 2k / (K + 1) on m and s)."""
    raw = torch.arange(3 * COMPONENTS * DIM, dtype=torch.float64).view(1, 1, -1)
    logits, mu, log_sigma = transform.split(raw)
    assert logits.shape == mu.shape == log_sigma.shape == (1, 1, DIM, COMPONENTS)
    gains = 2 * torch.arange(1, COMPONENTS + 1, dtype=torch.float64) / (COMPONENTS + 1)
    for j, param in enumerate((logits, mu / gains, log_sigma / gains)):
        for k in range(COMPONENTS):
            for d in range(DIM):
                assert param[0, 0, d, k] == pytest.approx((j * COMPONENTS + k) * DIM + d)
    assert transform.num_params(DIM) == 3 * COMPONENTS * DIM
    assert transform.split(raw.float())[0].dtype == torch.float32


def test_monotone(transform):
    """z increases strictly with x along a grid, for every element."""
    params = transform.split(random_raw())
    grid = torch.linspace(-20, 20, 401, dtype=torch.float64)
    x = grid.view(-1, 1, 1, 1).expand(-1, BATCH, TOKENS, DIM).reshape(-1, TOKENS, DIM)
    z, _ = transform.forward(x, repeat_params(params, len(grid)))
    z = z.view(len(grid), BATCH, TOKENS, DIM)
    assert (z.diff(dim=0) > 0).all()


def test_round_trip_float64(transform):
    params = transform.split(random_raw())
    x = random_x()
    z, _ = transform.forward(x, params)
    assert (transform.inverse(z, params) - x).abs().max() <= 1e-9
    z_back, _ = transform.forward(transform.inverse(z, params), params)
    assert (z_back - z).abs().max() <= 1e-9


def test_inverse_float32_within_1e6(transform):
    """The float32 inverse is within 1e-6 (1 + |x|) of the float64 solution for the same z and parameters."""
    params32 = transform.split(random_raw(torch.float32))
    z = transform.forward(random_x().float(), params32)[0]
    x32 = transform.inverse(z, params32)
    x64 = transform.inverse(z.double(), tuple(param.double() for param in params32))
    assert x32.dtype == torch.float32
    assert ((x32.double() - x64).abs() / (1 + x64.abs())).max() <= 1e-6


def test_logdet_matches_autograd(transform):
    """logdet = sum log(dz/dx), dz/dx by autograd (the map is elementwise, so the gradient of sum z is the diagonal)."""
    params = transform.split(random_raw())
    x = random_x().requires_grad_()
    z, logdet = transform.forward(x, params)
    (derivative,) = torch.autograd.grad(z.sum(), x)
    assert (derivative > 0).all()
    assert torch.allclose(logdet, derivative.log().sum(dim=(1, 2)), rtol=0, atol=1e-8)


def test_density_integrates_to_one(transform):
    """exp(log N(z(x)) + log|dz/dx|) integrates to 1 over x, for several elements (fails if the log-det is flipped)."""
    logits, mu, log_sigma = transform.split(random_raw())
    for index in [(0, 0, 0), (1, 2, 3), (2, 3, 4)]:
        params = tuple(param[index].view(1, 1, 1, COMPONENTS) for param in (logits, mu, log_sigma))
        sigma = log_sigma[index].exp()
        low, high = (mu[index] - 15 * sigma).min().item(), (mu[index] + 15 * sigma).max().item()
        x = torch.linspace(low, high, 200_001, dtype=torch.float64).view(-1, 1, 1)
        density = element_log_density(transform, x, params).exp()
        assert torch.trapezoid(density, x.flatten()).item() == pytest.approx(1, abs=1e-4)


def test_zero_raw_is_exact_identity(transform):
    """raw = 0: every component is N(0, 1), so F = Phi, z = x and logdet = 0 (to 1e-10), even at |x| = 50."""
    params = transform.split(torch.zeros(1, TOKENS, 3 * COMPONENTS * DIM, dtype=torch.float64))
    x = torch.linspace(-50, 50, TOKENS * DIM, dtype=torch.float64).view(1, TOKENS, DIM)
    z, logdet = transform.forward(x, params)
    assert (z - x).abs().max() <= 1e-10
    assert logdet.abs().max() <= 1e-10
    assert (transform.inverse(z, params) - x).abs().max() <= 1e-10


def test_zero_raw_gradient_breaks_symmetry(transform):
    """From raw = 0 one gradient step moves the component means apart (identical components would stay identical)."""
    raw = torch.zeros(1, TOKENS, 3 * COMPONENTS * DIM, dtype=torch.float64, requires_grad=True)
    x = random_x()[:1] + 1
    z, logdet = transform.forward(x, transform.split(raw))
    negative_log_likelihood = 0.5 * z.square().sum() - logdet.sum()
    (gradient,) = torch.autograd.grad(negative_log_likelihood, raw)
    _, mu, log_sigma = transform.split(-gradient)
    assert (mu.diff(dim=-1).abs() > 1e-6).all()
    assert (log_sigma.diff(dim=-1).abs() > 1e-6).all()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_tails_are_finite_and_invert(transform, dtype):
    """x = +-30, +-50 give finite z and logdet with random and with zero parameters, and invert back."""
    x = torch.tensor([-50.0, -30.0, 30.0, 50.0], dtype=dtype).repeat(BATCH, TOKENS, 2)[..., :DIM]
    tolerance = 1e-9 if dtype == torch.float64 else 1e-6
    for raw in (random_raw(dtype), torch.zeros_like(random_raw(dtype))):
        params = transform.split(raw)
        z, logdet = transform.forward(x, params)
        assert torch.isfinite(z).all() and torch.isfinite(logdet).all()
        assert ((transform.inverse(z, params) - x).abs() / (1 + x.abs())).max() <= tolerance


def test_guide_tarflow_rule(transform):
    params = transform.split(random_raw(batch=2 * BATCH))
    conditional = tuple(param[:BATCH] for param in params)
    unconditional = tuple(param[BATCH:] for param in params)
    for guided, cond in zip(transform.guide(params, Guidance(weight=0.0), 2, TOKENS), conditional):
        assert torch.equal(guided, cond)
    guided = transform.guide(params, Guidance(weight=1.0), 2, TOKENS)
    for guided_param, cond, uncond in zip(guided, conditional, unconditional):
        assert guided_param.shape == (BATCH, TOKENS, DIM, COMPONENTS)
        assert torch.allclose(guided_param, 2 * cond - uncond, rtol=0, atol=1e-12)


def test_guide_token_tensor_matches_per_token_loop(transform):
    """An (L, 1) tensor of token indices (annealed w) gives, token by token, what each int index gives."""
    params = transform.split(random_raw(batch=2 * BATCH))
    guidance = Guidance(weight=2.0, annealed=True)
    tokens = torch.arange(TOKENS).view(TOKENS, 1)
    guided = transform.guide(params, guidance, tokens, TOKENS)
    for token in range(TOKENS):
        one_token = tuple(param[:, token:token + 1] for param in params)
        expected = transform.guide(one_token, guidance, token, TOKENS)
        for guided_param, expected_param in zip(guided, expected):
            assert torch.allclose(guided_param[:, token:token + 1], expected_param, rtol=0, atol=1e-12)


def test_guide_starflow_rule_raises(transform):
    params = transform.split(random_raw(batch=2 * BATCH))
    with pytest.raises(ConfigError, match="tarflow"):
        transform.guide(params, Guidance(weight=1.0, rule="starflow"), 0, TOKENS)


def test_needs_a_component():
    with pytest.raises(ConfigError):
        MixtureCDF(0)


def test_one_component_is_affine():
    """K = 1 (gain 1): z = (x - mu) / sigma, the affine transform with log sigma = s and b = m."""
    raw = random_raw()[..., :3 * DIM]
    _, means, log_scales = raw.chunk(3, dim=-1)
    z, logdet = MixtureCDF(1).forward(random_x(), MixtureCDF(1).split(raw))
    z_affine, logdet_affine = Affine().forward(random_x(), Affine().split(torch.cat([log_scales, means], dim=-1)))
    assert torch.allclose(z, z_affine, rtol=0, atol=1e-10)
    assert torch.allclose(logdet, logdet_affine, rtol=0, atol=1e-10)
