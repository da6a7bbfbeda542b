"""Mixture-of-Gaussians CDF transform (Mix-1, TarFlowLM): one K-component mixture per token dimension.

Per dimension, with component parameters (l_k, m_k, s_k), k = 1..K, and fixed gains g_k = 2k / (K + 1) (mean 1):

    pi = softmax(l),   mu_k = g_k m_k,   sigma_k = exp(g_k s_k)
    F(x) = sum_k pi_k Phi((x - mu_k) / sigma_k)
    z = Phi^{-1}(F(x))
    log|dz/dx| = log p_mix(x) - log N(z; 0, 1),   p_mix(x) = sum_k pi_k N(x; mu_k, sigma_k^2)

so with a standard-normal prior on z the density of x is exactly the mixture.

Identity at raw = 0, and symmetry breaking. At raw = 0 every component is N(0, 1), so F = Phi and z = x exactly, like
a zero-initialised affine block. Identical components would get identical gradients forever, so the gains g_k
differ: the gradient of component k's (m_k, s_k) is g_k times a common one, the first update moves the components
apart, and from then on their responsibilities (and gradients) differ. An exact identity with distinct components is
impossible (a mixture of distinct Gaussians is never a single Gaussian); fixed mean offsets would make raw = 0 a
near-identity whose error grows in the tails. The cost: components learn at different effective rates (g_k).

Numerics: log F and log(1 - F) by logsumexp of log Phi(+-u_k); z from the smaller tail, by Newton on log Phi(z) = log p,
so z stays finite where F rounds to 0 or 1 (|x| up to ~50 at raw = 0). Inverse: Newton on x in log-tail space,
safeguarded by bisection.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.special import log_ndtr, ndtri

from ...errors import ConfigError
from .base import Params, Transform

LOG_2PI = math.log(2 * math.pi)
TAIL_LOG_P = -30.0  # below this log p, start Newton from the asymptotic tail form instead of ndtri(exp(log p))
NEWTON_STEPS = 3  # after a start accurate to ~1%: quadratic convergence reaches float64 precision
MAX_BISECTIONS = 200


def log_normal(value: Tensor) -> Tensor:
    """log N(value; 0, 1)."""
    return -0.5 * value.square() - 0.5 * LOG_2PI


def newton_step(z: Tensor, log_p: Tensor) -> Tensor:
    """One Newton step on log Phi(z) = log_p: z - (log Phi(z) - log_p) Phi(z) / phi(z)."""
    log_cdf = log_ndtr(z)
    return z - (log_cdf - log_p) * torch.exp(log_cdf - log_normal(z))


def probit_of_log(log_p: Tensor) -> Tensor:
    """z = Phi^{-1}(exp(log_p)) for log_p <= log(1/2), so z <= 0; finite where exp(log_p) underflows.

    Start from ndtri(exp(log_p)), or in the far tail from z = -sqrt(t - log t - log 2 pi), t = -2 log_p
    (from Phi(z) ~ phi(z) / -z). The last Newton step carries the gradient dz/dlog_p = Phi(z) / phi(z).
    """
    with torch.no_grad():
        far = -2 * log_p.clamp(max=TAIL_LOG_P)
        tail_start = -torch.sqrt(far - torch.log(far) - LOG_2PI)
        z = torch.where(log_p < TAIL_LOG_P, tail_start, ndtri(log_p.exp()))
        for _ in range(NEWTON_STEPS):
            z = newton_step(z, log_p)
    return newton_step(z, log_p)


def probit_of_tails(log_cdf: Tensor, log_sf: Tensor) -> Tensor:
    """z = Phi^{-1}(F) from log F and log (1 - F), through the smaller tail (accurate in both far tails)."""
    lower = log_cdf < log_sf
    z_lower = probit_of_log(torch.where(lower, log_cdf, log_sf))  # the probit of the smaller tail, <= 0
    return torch.where(lower, z_lower, -z_lower)


def log_cdf_and_sf(x: Tensor, log_pi: Tensor, mu: Tensor, log_sigma: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """x (B, L, D) -> (log F(x), log(1 - F(x)), standardized u (B, L, D, K)), u_k = (x - mu_k) / sigma_k."""
    u = (x.unsqueeze(-1) - mu) * torch.exp(-log_sigma)
    log_cdf = torch.logsumexp(log_pi + log_ndtr(u), dim=-1)
    log_sf = torch.logsumexp(log_pi + log_ndtr(-u), dim=-1)
    return log_cdf, log_sf, u


@torch.no_grad()
def invert_mixture_cdf(z: Tensor, log_pi: Tensor, mu: Tensor, log_sigma: Tensor) -> Tensor:
    """x with F(x) = Phi(z) elementwise, F the mixture (log_pi, mu, log_sigma) (..., K) of each element; in z's dtype.

    Newton on the smaller log tail, g(x) = log F(x) - log Phi(z) (z < 0; g' = p / F) or log(1 - F(x)) - log Phi(-z)
    (g' = -p / (1 - F)), safeguarded as rtsafe is: a step that would leave the bisection bracket, or that is not at
    most half the previous one, bisects the bracket instead, so it converges wherever bisection does and
    quadratically near the root. It stops when every element's Newton step is below 4 eps (1 + |x|) (or after twice
    the steps bisection to adjacent floats takes). Bracket: F(x) <= Phi((x - min mu) / max sigma) below min mu, so
    x lies in [min mu - (|z| + 1) max sigma, max mu + (|z| + 1) max sigma].
    """
    dtype = mu.dtype
    target = z.to(dtype)
    margin = (target.abs() + 1) * log_sigma.amax(dim=-1).exp()
    low, high = mu.amin(dim=-1) - margin, mu.amax(dim=-1) + margin
    log_tail = log_ndtr(-target.abs())  # log Phi(z) if z < 0, else log(1 - Phi(z))
    lower = target < 0
    eps = torch.finfo(dtype).eps
    steps = torch.log2((high - low).amax() / eps).ceil()
    x = (low + high) / 2
    previous = high - low  # the last move's size
    for _ in range(2 * int(steps.nan_to_num(0).clamp(0, MAX_BISECTIONS))):
        log_cdf, log_sf, u = log_cdf_and_sf(x, log_pi, mu, log_sigma)
        too_low = torch.where(lower, log_cdf < log_tail, log_sf > log_tail)
        low = torch.where(too_low, x, low)
        high = torch.where(too_low, high, x)
        log_density = torch.logsumexp(log_pi + log_normal(u) - log_sigma, dim=-1)
        step = torch.where(lower, (log_cdf - log_tail) * torch.exp(log_cdf - log_density),
                           (log_tail - log_sf) * torch.exp(log_sf - log_density))
        newton = x - step
        converged = step.abs() <= 4 * eps * (1 + x.abs())
        safe = (newton > low) & (newton < high) & (step.abs() <= 0.5 * previous.abs())
        moved = torch.where(safe | converged, newton, (low + high) / 2)
        previous, x = moved - x, moved
        if bool(converged.all()):
            break
    return x.to(z.dtype)


class MixtureCDF(Transform):
    """z = Phi^{-1}(F(x)), F a K-component Gaussian mixture CDF per dimension; params (logits, mu, log sigma).

    Raw layout, in `Transform.split`'s blocks of D: raw[..., (j K + k) D + d] is parameter j (0: logit, 1: m, 2: s)
    of component k for dimension d.
    """

    name = "mixture"

    def __init__(self, components: int = 4):
        if components < 1:
            raise ConfigError(f"mixture transform needs at least 1 component, got {components}")
        self.components = components
        self.params_per_dim = 3 * components

    def split(self, raw: Tensor) -> Params:
        """(B, L, 3 K D) -> (logits, mu, log sigma), each (B, L, D, K)."""
        per_dim = torch.stack(super().split(raw), dim=-1)
        logits, means, log_scales = per_dim.unflatten(-1, (3, self.components)).unbind(dim=-2)
        gains = torch.arange(1, self.components + 1, dtype=per_dim.dtype, device=per_dim.device)
        gains = gains * (2 / (self.components + 1))
        return logits, gains * means, gains * log_scales

    def forward(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        logits, mu, log_sigma = params
        dtype = torch.promote_types(x.dtype, mu.dtype)
        log_pi = torch.log_softmax(logits.to(dtype), dim=-1)
        log_cdf, log_sf, u = log_cdf_and_sf(x.to(dtype), log_pi, mu.to(dtype), log_sigma.to(dtype))
        z = probit_of_tails(log_cdf, log_sf)
        log_density = torch.logsumexp(log_pi + log_normal(u) - log_sigma.to(dtype), dim=-1)
        logdet = log_density - log_normal(z)
        return z.to(x.dtype), logdet.sum(dim=(1, 2))

    @torch.no_grad()
    def inverse(self, z: Tensor, params: Params) -> Tensor:
        """Bisection on F(x) = Phi(z) (see `invert_mixture_cdf`); no gradient."""
        logits, mu, log_sigma = params
        dtype = torch.promote_types(z.dtype, mu.dtype)
        log_pi = torch.log_softmax(logits.to(dtype), dim=-1)
        return invert_mixture_cdf(z, log_pi, mu.to(dtype), log_sigma.to(dtype))

    def guide(self, params: Params, guidance, tokens: int | Tensor, num_tokens: int) -> Params:
        """TarFlow rule on every parameter: p = p_c + w (p_c - p_u); softmax makes it the same on logits or log pi."""
        return guide_every_parameter(params, guidance, tokens, num_tokens, self.name)


def guide_every_parameter(params: Params, guidance, tokens: int | Tensor, num_tokens: int, transform: str) -> Params:
    """The TarFlow guidance rule on each raw parameter of a mixture transform: p = p_c + w_t (p_c - p_u), with
    ``params`` holding the conditional then the unconditional rows; a chunk's tokens (L, 1) give one w per token.
    The STARFlow rule is a closed form for Gaussians, so it is refused."""
    if guidance.rule != "tarflow":
        raise ConfigError(f"guidance rule {guidance.rule!r} does not apply to the {transform} transform: the STARFlow "
                          "closed form is for Gaussian (affine/additive) transforms; use rule='tarflow'")
    guided = []
    for param in params:
        position = tokens
        if isinstance(tokens, Tensor):  # (L, 1) -> (L, 1, ..., 1), against (B, L, ...) of any rank
            position = tokens.to(param.dtype).reshape(-1, *[1] * (param.dim() - 2))
        weight = guidance.weight_at(position, num_tokens)
        cond, uncond = param.chunk(2)
        guided.append(cond + weight * (cond - uncond))
    return tuple(guided)
