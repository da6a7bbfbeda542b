"""The per-token transform interface: z = f(x; theta) elementwise over a token's D values, theta from a block.

A flow block's Transformer gives every token ``params_per_dim * D`` raw numbers; the block's transform
turns them into its parameters (`split`), maps x to z with the log-determinant (`forward`), maps back
(`inverse`), and says how classifier-free guidance combines a conditional and an unconditional branch
(`guide`). Nothing outside a transform knows what its parameters mean.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from ...sampling.guidance import Guidance

Params = tuple[Tensor, ...]


class Transform:
    """One elementwise invertible map per token dimension, conditioned on its token's parameters.

    Shapes: x, z (B, L, D); raw (B, L, params_per_dim * D); logdet (B,), log|det dz/dx| summed over L and D, nats.
    """

    name = ""
    params_per_dim = 1

    def num_params(self, token_dim: int) -> int:
        """Raw outputs the block's Transformer gives each token."""
        return self.params_per_dim * token_dim

    def split(self, raw: Tensor) -> Params:
        """Raw outputs -> the transform's parameters, in at least float32."""
        if raw.dtype in (torch.float16, torch.bfloat16):
            raw = raw.float()
        return tuple(raw.chunk(self.params_per_dim, dim=-1))

    def forward(self, x: Tensor, params: Params) -> tuple[Tensor, Tensor]:
        raise NotImplementedError

    def inverse(self, z: Tensor, params: Params) -> Tensor:
        raise NotImplementedError

    def guide(self, params: Params, guidance: "Guidance", tokens: int | Tensor, num_tokens: int) -> Params:
        """Params of 2B rows (conditional rows first) -> guided params of the B samples."""
        raise NotImplementedError
