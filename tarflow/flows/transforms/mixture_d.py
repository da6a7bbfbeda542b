"""Mix-d (TarFlowLM): one K-component Gaussian mixture over a token's whole D-dimensional vector.

With weights pi = softmax(l) and diagonal components N(mu_k, diag(sigma_k^2)) in R^D, the density
p(x) = sum_k pi_k prod_i N(x_i; mu_ki, sigma_ki^2) is mapped to N(0, I) by its Rosenblatt transform, one
dimension at a time in order i = 1..D:

    w_k(x_<i) = pi_k prod_{j<i} N(x_j; mu_kj, sigma_kj^2) / sum_k' (...)     (the posterior of component k)
    F_i(x_i | x_<i) = sum_k w_k(x_<i) Phi((x_i - mu_ki) / sigma_ki)
    z_i = Phi^{-1}(F_i(x_i | x_<i))
    log|det dz/dx| = log p(x) - sum_i log N(z_i; 0, 1)    (the Jacobian is lower triangular)

so with a standard-normal prior the token's density is exactly the mixture; unlike Mix-1 the components tie the
dimensions together (with one component per vocabulary entry it can place a mode on every codebook vector).
Parameters as in Mix-1 (`mixture.py`): fixed gains g_k = 2k / (K + 1) on the means and log scales, so raw = 0 is
the identity and the components still move apart. Inverse: dimension by dimension, bisection on F_i.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ...errors import ConfigError
from .base import Params, Transform
from .mixture import guide_every_parameter, invert_mixture_cdf, log_cdf_and_sf, log_normal, probit_of_tails


def component_weights(logits: Tensor, log_densities: Tensor) -> Tensor:
    """log w_k(x_<i) for every dimension i: (B, L, D, K) from logits (B, L, K) and log N(x_j; mu_kj, sigma_kj^2)
    (B, L, D, K), by an exclusive cumulative sum over the dimensions."""
    before = torch.cumsum(log_densities, dim=-2)[..., :-1, :]
    before = torch.cat([torch.zeros_like(log_densities[..., :1, :]), before], dim=-2)
    return torch.log_softmax(logits.unsqueeze(-2) + before, dim=-1)


class MixtureVector(Transform):
    """z = Rosenblatt transform of a K-component diagonal Gaussian mixture on R^D; params (logits, mu, log sigma).

    Raw layout (B, L, K + 2 D K): K logits, then the means as (D, K), then the log scales as (D, K).
    """

    name = "mixture-d"

    def __init__(self, components: int = 4):
        if components < 1:
            raise ConfigError(f"mixture-d transform needs at least 1 component, got {components}")
        self.components = components

    def num_params(self, token_dim: int) -> int:
        return self.components * (1 + 2 * token_dim)

    def unpack(self, raw: Tensor) -> Params:
        """(B, L, K (1 + 2 D)) -> the raw (logits (B, L, K), means (B, L, D, K), log scales (B, L, D, K)), in
        float32 at least."""
        if raw.dtype in (torch.float16, torch.bfloat16):
            raw = raw.float()
        K = self.components
        means, log_scales = raw[..., K:].unflatten(-1, (2, -1, K)).unbind(dim=-3)
        return raw[..., :K], means, log_scales

    def split(self, raw: Tensor) -> Params:
        """(B, L, K (1 + 2 D)) -> (logits (B, L, K), mu (B, L, D, K), log sigma (B, L, D, K))."""
        logits, means, log_scales = self.unpack(raw)
        K = self.components
        gains = torch.arange(1, K + 1, dtype=means.dtype, device=means.device) * (2 / (K + 1))
        return logits, gains * means, gains * log_scales

    def forward(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        logits, mu, log_sigma = params
        dtype = torch.promote_types(x.dtype, mu.dtype)
        xs, mu, log_sigma = x.to(dtype), mu.to(dtype), log_sigma.to(dtype)
        u = (xs.unsqueeze(-1) - mu) * torch.exp(-log_sigma)
        log_densities = log_normal(u) - log_sigma
        log_w = component_weights(logits.to(dtype), log_densities)
        log_cdf, log_sf, _ = log_cdf_and_sf(xs, log_w, mu, log_sigma)
        z = probit_of_tails(log_cdf, log_sf)
        log_density = torch.logsumexp(log_w + log_densities, dim=-1)  # log p(x_i | x_<i)
        logdet = log_density - log_normal(z)
        return z.to(x.dtype), logdet.sum(dim=(1, 2))

    @torch.no_grad()
    def inverse(self, z: Tensor, params: Params) -> Tensor:
        logits, mu, log_sigma = params
        dtype = torch.promote_types(z.dtype, mu.dtype)
        mu, log_sigma = mu.to(dtype), log_sigma.to(dtype)
        log_weights = logits.to(dtype)  # log pi_k + sum_{j<i} log N(x_j; ...), normalised below
        x = torch.empty(z.shape, dtype=dtype, device=z.device)
        for i in range(z.shape[-1]):
            log_w = torch.log_softmax(log_weights, dim=-1).unsqueeze(-2)
            column = slice(i, i + 1)
            x[..., column] = invert_mixture_cdf(z[..., column].to(dtype), log_w, mu[..., column, :],
                                                log_sigma[..., column, :])
            u = (x[..., i:i + 1] - mu[..., i, :]) * torch.exp(-log_sigma[..., i, :])
            log_weights = log_weights + log_normal(u) - log_sigma[..., i, :]
        return x.to(z.dtype)

    def guide(self, params: Params, guidance, tokens: int | Tensor, num_tokens: int) -> Params:
        """TarFlow rule on every parameter: p = p_c + w (p_c - p_u), as for Mix-1."""
        return guide_every_parameter(params, guidance, tokens, num_tokens, self.name)


class CodebookMixture(MixtureVector):
    """Mix-d with one component per vocabulary entry j, tied to the text codebook (``codebook``, a
    `tarflow.modalities.text.Text`): mu_j = codebook mean_j + m_j, log sigma_j = codebook log scale_j + s_j, with the
    offsets (m, s) and the logits predicted. At zero offsets the token's density is sum_j pi_j q(v | j): the flow
    block is then a discrete autoregressive model of the ids (with a separated codebook, ELBO = sum_t log pi_id_t).
    Raw layout as `MixtureVector`'s, K = the vocabulary size."""

    name = "mixture-d (codebook)"

    def __init__(self, codebook):
        super().__init__(codebook.vocab_size)
        self.codebook = codebook

    def split(self, raw: Tensor) -> Params:
        """(B, L, V (1 + 2 e)) -> (logits (B, L, V), mu (B, L, e, V), log sigma (B, L, e, V))."""
        logits, mean_offsets, log_scale_offsets = self.unpack(raw)
        means = self.codebook.means.T.to(mean_offsets.dtype) + mean_offsets
        return logits, means, self.codebook.log_scales.to(log_scale_offsets.dtype) + log_scale_offsets
