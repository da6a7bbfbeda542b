"""Text (TarFlowLM): token ids <-> continuous vectors, grouped into flow tokens of k characters.

A learned codebook of one Gaussian per vocabulary entry j, mean mu_j in R^e and scale sigma_j:

    encoder   q(v_t | id_t = j) = N(v_t; mu_j, sigma_j^2 I)                    (variational dequantization)
    decoder   p(id_t = j | v_t) = N(v_t; mu_j, sigma_j^2 I) / sum_i N(v_t; mu_i, sigma_i^2 I)  (the same codebook)
    flow      p(v) = TarFlow density of the vectors v (B, L, e), as tokens (B, L / k, k e)

The bound reported is the one-sample ELBO on log p(ids), in nats per sequence:

    ELBO = log p_flow(v) + log p(ids | v) - log q(v | ids),   v ~ q(v | ids)

E_q[ELBO] <= log p(ids) (Jensen), so -ELBO / (L ln 2) is an upper bound on bits/char (in expectation over v).
The flow core sees only the vectors: ``to_tokens`` / ``from_tokens`` group k consecutive characters' vectors.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..errors import ConfigError, InputError
from .base import Modality

HALF_LOG_TWO_PI = 0.5 * math.log(2 * math.pi)
CODEBOOK_SEED = 2 ** 31 - 1
BOUND_NAME = "ELBO (one-sample variational-dequantization bound: an upper bound on bits/char in expectation)"


class Text(Modality, nn.Module):
    """Sequences of ``context`` ids of a vocabulary of ``vocab_size``; each id a vector of ``embed_dim`` values;
    ``chars_per_token`` (k) consecutive vectors per flow token: T = context / k, D = k e. Bits/char divide by
    ``num_dims`` = context."""

    name = "text"

    def __init__(self, vocab_size: int, context: int, chars_per_token: int, embed_dim: int):
        nn.Module.__init__(self)
        self.vocab_size, self.context, self.embed_dim = vocab_size, context, embed_dim
        self.chars_per_token = chars_per_token
        self.num_tokens = context // chars_per_token
        self.token_dim = chars_per_token * embed_dim
        self.num_dims = context
        # its own generator: building the modality (as FlowConfig's geometry properties do) draws no global numbers;
        # not seed 0, whose stream a sampler seeded 0 would replay as its prior noise (z = the codebook, untrained)
        codebook = torch.Generator().manual_seed(CODEBOOK_SEED)
        self.means = nn.Parameter(torch.randn(vocab_size, embed_dim, generator=codebook))
        self.log_scales = nn.Parameter(torch.full((vocab_size,), math.log(0.5)))

    # ----- the continuous part: what the flow core sees ------------------------------------------
    def check(self, data: Tensor, name: str = "x") -> None:
        expected = f"(B, {self.context}, {self.embed_dim})"
        if not isinstance(data, Tensor) or tuple(data.shape[1:]) != (self.context, self.embed_dim):
            shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise InputError(f"{name} must be a batch of text vectors {expected}, got {shape}; encode token ids "
                             f"with model.modality.encode(ids)")
        if not data.dtype.is_floating_point or not torch.isfinite(data).all():
            raise InputError(f"{name} must hold finite floating-point vectors, got dtype {data.dtype}")

    def to_tokens(self, data: Tensor) -> Tensor:
        """(B, L, e) -> (B, L / k, k e): character-major within a token."""
        return data.reshape(data.shape[0], self.num_tokens, self.token_dim)

    def from_tokens(self, tokens: Tensor) -> Tensor:
        return tokens.reshape(tokens.shape[0], self.context, self.embed_dim)

    def bin_width(self, levels: int) -> float:
        raise ConfigError("text has no quantisation bins: its bits/char come from the ELBO (Text.elbo)")

    # ----- the discrete part: ids <-> vectors ---------------------------------------------------
    def check_ids(self, ids: Tensor, length: int | None = None) -> None:
        length = self.context if length is None else length
        if not isinstance(ids, Tensor) or ids.dtype != torch.long or ids.dim() != 2 or ids.shape[1] != length:
            shape = tuple(ids.shape) if isinstance(ids, Tensor) else type(ids).__name__
            raise InputError(f"token ids must be an int64 tensor (B, {length}), got {shape}")
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= self.vocab_size):
            raise InputError(f"token ids must lie in 0..{self.vocab_size - 1} (the vocabulary), got "
                             f"{int(ids.min())}..{int(ids.max())}")

    def encode(self, ids: Tensor, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """v ~ q(v | ids) = N(mu_ids, sigma_ids^2 I), reparametrised: (v (B, L, e), log q(v | ids) (B,) in nats)."""
        noise = torch.randn(*ids.shape, self.embed_dim, generator=generator, dtype=self.means.dtype)
        noise = noise.to(self.means.device)
        log_scale = self.log_scales[ids].unsqueeze(-1)
        vectors = self.means[ids] + log_scale.exp() * noise
        log_q = -0.5 * noise.square() - log_scale - HALF_LOG_TWO_PI
        return vectors, log_q.sum(dim=(1, 2))

    def component_log_densities(self, vectors: Tensor) -> Tensor:
        """log N(v_t; mu_j, sigma_j^2 I) for every position and vocabulary entry: (B, L, V)."""
        sq_distance = (vectors.square().sum(-1, keepdim=True) - 2 * vectors @ self.means.T
                       + self.means.square().sum(-1)).clamp_min(0)
        return (-0.5 * sq_distance * torch.exp(-2 * self.log_scales)
                - self.embed_dim * (self.log_scales + HALF_LOG_TWO_PI))

    def decoder_logits(self, vectors: Tensor) -> Tensor:
        """log p(id_t = j | v_t), (B, L, V), normalised over j."""
        return torch.log_softmax(self.component_log_densities(vectors), dim=-1)

    def decoder_log_prob(self, vectors: Tensor, ids: Tensor) -> Tensor:
        """log p(ids | v) = sum_t log p(id_t | v_t), (B,) in nats."""
        return self.decoder_logits(vectors).gather(-1, ids.unsqueeze(-1)).squeeze(-1).sum(-1)

    def decode(self, vectors: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """ids ~ p(id | v), (B, L); ``generator`` None: the most likely id."""
        logits = self.decoder_logits(vectors)
        if generator is None:
            return logits.argmax(-1)
        probabilities = logits.exp().flatten(0, -2).to("cpu", torch.float64)
        return torch.multinomial(probabilities, 1, generator=generator).view(logits.shape[:-1]).to(vectors.device)

    def elbo(self, log_density, ids: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """log p_flow(v) + log p(ids | v) - log q(v | ids), v ~ q: (B,) in nats (see the module docstring).

        ``log_density`` maps vectors (B, L, e) to the flow's log p (B,), e.g. ``model.log_prob``."""
        vectors, log_q = self.encode(ids, generator)
        return log_density(vectors) + self.decoder_log_prob(vectors, ids) - log_q
