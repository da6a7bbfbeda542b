"""Rotary position embedding (RoPE): each query and key pair of channels (2i, 2i+1) turned by the angle p theta_i
(or the pair (i, i + head_dim / 2) with ``halves``, as Hugging Face's Llama family pairs them).

theta_i = base^(-2i / head_dim), p the position; then q_p . k_s depends on the positions through p - s only.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Rotary(nn.Module):
    """Rotates (B, H, L, head_dim) queries or keys at positions pos .. pos+L-1; tables for ``length`` positions.

    The cos/sin tables are buffers that are not saved (they follow from the sizes).
    """

    def __init__(self, head_dim: int, length: int, base: float = 10000.0, halves: bool = False):
        super().__init__()
        self.halves = halves
        if head_dim % 2:
            raise ValueError(f"rotary position embedding needs an even head dimension, got {head_dim}")
        inverse_frequency = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
        angles = torch.arange(length, dtype=torch.float64)[:, None] * inverse_frequency  # (length, head_dim / 2)
        self.register_buffer("cos", angles.cos().to(torch.get_default_dtype()), persistent=False)
        self.register_buffer("sin", angles.sin().to(torch.get_default_dtype()), persistent=False)

    def forward(self, values: Tensor, pos: int = 0) -> Tensor:
        """(x_even, x_odd) -> (x_even cos - x_odd sin, x_even sin + x_odd cos) at each position (x_even, x_odd the
        first and second halves with ``halves``)."""
        length = values.shape[-2]
        cos = self.cos[pos:pos + length].to(values.dtype)
        sin = self.sin[pos:pos + length].to(values.dtype)
        if self.halves:
            first, second = values.chunk(2, dim=-1)
            return torch.cat([first * cos - second * sin, first * sin + second * cos], dim=-1)
        even, odd = values[..., 0::2], values[..., 1::2]
        turned = torch.stack([even * cos - odd * sin, even * sin + odd * cos], dim=-1)
        return turned.flatten(-2)
