"""Additive (volume-preserving) transform: z = x - b, log-det 0; the prior's learned variance carries the scale."""

from __future__ import annotations

from torch import Tensor

from .base import Params, Transform


class Additive(Transform):
    """z = x - b; raw = b. Guidance combines the shifts as an affine rule would with equal scales."""

    name = "additive"
    params_per_dim = 1

    def forward(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        (b,) = params
        return x - b.to(x.dtype), x.new_zeros(x.shape[0], dtype=b.dtype)

    def inverse(self, z: Tensor, params: Params) -> Tensor:
        (b,) = params
        return (z + b).to(z.dtype)

    def guide(self, params: Params, guidance, tokens: int | Tensor, num_tokens: int) -> Params:
        (b,) = params
        _, b = guidance.combine(b.new_zeros(()).expand_as(b), b, tokens, num_tokens)
        return (b,)
