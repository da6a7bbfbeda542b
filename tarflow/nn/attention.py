"""Causal multi-head self-attention with an optional preallocated KV cache."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class KVCache:
    """Keys and values of every layer of one Transformer, preallocated once.

    Shape (layers, batch, heads, length, head_dim); a step at position ``pos``
    writes its keys/values in place, so sampling never concatenates.
    """

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device):
        shape = (layers, batch, heads, length, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)

    def layer(self, i: int) -> tuple[Tensor, Tensor]:
        return self.k[i], self.v[i]


class Attention(nn.Module):
    """softmax(q k^T / (sqrt(d) tau)) v over earlier-or-same positions, then an output projection.

    ``attn_temp`` (tau, one value per sample, shape (B,)) divides the logits; tau > 1 flattens attention.
    """

    def __init__(self, width: int, head_dim: int):
        super().__init__()
        self.heads, self.head_dim = width // head_dim, head_dim
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, h: Tensor, attn_temp: Tensor | None = None,
                cache: tuple[Tensor, Tensor] | None = None, pos: int = 0) -> Tensor:
        B, L, W = h.shape
        q, k, v = self.qkv(h).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        if attn_temp is not None:
            q = q / attn_temp.view(B, 1, 1, 1).to(q.dtype)
        if cache is None:
            y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        else:
            k_buf, v_buf = cache
            k_buf[:, :, pos:pos + L] = k
            v_buf[:, :, pos:pos + L] = v
            k, v = k_buf[:, :, :pos + L], v_buf[:, :, :pos + L]
            mask = None
            if L > 1:  # a chunk of new queries sees the cached prefix and the chunk causally
                mask = torch.ones(L, pos + L, dtype=torch.bool, device=h.device).tril(pos)
            y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        return self.proj(y.transpose(1, 2).reshape(B, L, W))
