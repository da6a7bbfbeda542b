"""Causal multi-head self-attention with an optional preallocated KV cache, optional Exclusive Self
Attention (XSA), and an attention-entropy probe."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .rotary import Rotary
from .sigma_reparam import linear

# One query per row (sequential sampling): up to this many rows x heads the fused kernel is faster on CPU, above it
# two small matmuls are (measured with torch 2.13 on 2 cores: 7.8 vs 15.3 us at 4, 24.0 vs 24.7 at 64, 46.6 vs
# 32.9 at 128 rows x heads, 40 cached positions, head dim 32).
FUSED_SINGLE_QUERY_ROWS = 64


class KVCache:
    """Keys and values of every layer of one Transformer, preallocated once, and what a sampling call computes
    once instead of at every step.

    Shape (layers, batch, heads, length, head_dim); a step at position ``pos`` writes its keys/values in
    place, so sampling never concatenates. ``query_scale`` is 1 / sqrt(head_dim), divided by each row's
    attention temperature ``attn_temp`` (batch,) when given. ``input_bias`` is for the cache's owner: what
    it adds to the input at every position (rows or 1, length, width), or None.
    """

    def __init__(self, layers: int, batch: int, heads: int, length: int, head_dim: int,
                 dtype: torch.dtype, device: torch.device, attn_temp: Tensor | None = None):
        shape = (layers, batch, heads, length, head_dim)
        self.k = torch.empty(shape, dtype=dtype, device=device)
        self.v = torch.empty(shape, dtype=dtype, device=device)
        self.masks: dict[tuple[int, int], Tensor] = {}
        self.query_scale: Tensor | float = head_dim ** -0.5
        if attn_temp is not None:
            self.query_scale = (head_dim ** -0.5 / attn_temp.to(dtype)).view(batch, 1, 1, 1)
        self.input_bias: Tensor | None = None
        self.layers = [LayerCache(self, index) for index in range(layers)]

    def mask(self, pos: int, length: int) -> Tensor:
        """Boolean (length, pos + length) mask: a chunk of queries sees the cached prefix and the chunk causally."""
        key = (pos, length)
        if key not in self.masks:
            self.masks[key] = torch.ones(length, pos + length, dtype=torch.bool, device=self.k.device).tril(pos)
        return self.masks[key]

    def layer(self, index: int) -> "LayerCache":
        return self.layers[index]


class LayerCache:
    """One layer's slice of a `KVCache`: ``keys``, ``values`` (batch, heads, length, head_dim), the query scale
    and the masks."""

    def __init__(self, cache: KVCache, index: int):
        self.keys, self.values, self.mask = cache.k[index], cache.v[index], cache.mask
        self.query_scale = cache.query_scale

    def extend(self, keys: Tensor, values: Tensor, pos: int) -> tuple[Tensor, Tensor]:
        """Write a chunk's keys and values (batch, heads, L, head_dim) at positions pos .. pos+L-1 in place; return
        the keys and values of positions 0 .. pos+L-1 (views of the cache)."""
        end = pos + keys.shape[2]
        self.keys[:, :, pos:end] = keys
        self.values[:, :, pos:end] = values
        return self.keys[:, :, :end], self.values[:, :, :end]


def exclude_self(y: Tensor, v: Tensor) -> Tensor:
    """XSA: z_i = y_i - (y_i . v_i / ||v_i||^2) v_i, per head; y, v (..., L, head_dim), v_i the query's own value."""
    coef = (y * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True).clamp_min(1e-12)
    return y - coef * v


class Attention(nn.Module):
    """softmax(q k^T / (sqrt(d) tau)) v over earlier-or-same positions, then an output projection.

    ``attn_temp`` (tau, one value per sample, shape (B,)) divides the logits; tau > 1 flattens attention.
    With a cache, the cache's ``query_scale`` (made from the same temperatures, once per sampling call)
    takes its place.

    ``exclusive=True`` is Exclusive Self Attention: each head's output y_i loses its component along
    v_i, the value of the query's own position, before the output projection. In a flow block the
    query at position i reads tokens x_0..x_i and predicts the params of token i+1 (the causal shift),
    so v_i is the value of the *last visible* token, x_i. That is the variant implemented: it is the
    only "own value" a causal query has (the token being predicted is not an input), and it is exactly
    XSA as used in a decoder language model, which has the same shift (position i predicts token i+1).

    ``rotary``: a `Rotary` turns queries and keys by their positions (RoPE); the cache holds turned keys.

    ``causal=False`` lets every position see every other (an encoder, e.g. the trajectory predictor of
    `tarflow.flows.trajectory`); it is for the training pass only, not the KV cache.

    ``linear_type`` builds the two projections (`nn.Linear`, or `SigmaReparamLinear` for sigma-Reparam).
    With ``record_entropy`` set, forward uses an explicit softmax and stores the attention entropy
    per head, H = -sum_j A_ij log A_ij averaged over queries and samples, in ``entropy`` (heads,);
    otherwise it uses the fused kernel and computes nothing extra.
    """

    def __init__(self, width: int, head_dim: int, exclusive: bool = False, linear_type: type[nn.Linear] = nn.Linear,
                 rotary: Rotary | None = None, causal: bool = True):
        super().__init__()
        self.heads, self.head_dim, self.exclusive = width // head_dim, head_dim, exclusive
        self.causal = causal
        self.rotary = rotary
        self.qkv = linear_type(width, 3 * width)
        self.proj = linear_type(width, width)
        self.record_entropy = False
        self.entropy: Tensor | None = None

    def forward(self, h: Tensor, attn_temp: Tensor | None = None, cache: "LayerCache | None" = None, pos: int = 0,
                shape: tuple[int, int] | None = None) -> Tensor:
        """h (B, L, W) -> (B, L, W); or, with ``shape`` = (B, L), its rows (B L, W) -> rows."""
        B, L = h.shape[:2] if shape is None else shape
        W = h.shape[-1]
        rows = h if shape is not None else h.reshape(B * L, W)
        q, k, v = linear(self.qkv, rows).view(B, L, 3, self.heads, self.head_dim).permute(2, 0, 3, 1, 4)
        own_v = v  # this chunk's values: the XSA direction of each query
        if self.rotary is not None:
            q, k = self.rotary(q, pos), self.rotary(k, pos)
        if cache is None:
            if attn_temp is not None:
                q = q / attn_temp.view(B, 1, 1, 1).to(q.dtype)
            if self.record_entropy:
                y = self.explicit(q, k, v)
            else:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal)
        else:  # sampling: the cache holds the earlier keys and values, and the query scale (with attn_temp)
            q = q * cache.query_scale
            k, v = cache.extend(k, v, pos)
            if L == 1 and B * self.heads > FUSED_SINGLE_QUERY_ROWS:  # many single queries: two matmuls win on CPU
                y = torch.softmax(q @ k.transpose(-1, -2), dim=-1) @ v
            else:
                mask = None if L == 1 else cache.mask(pos, L)
                y = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=1.0)
        if self.exclusive:
            y = exclude_self(y, own_v)
        out = linear(self.proj, y.transpose(1, 2).reshape(B * L, W))
        return out if shape is not None else out.view(B, L, W)

    def explicit(self, q: Tensor, k: Tensor, v: Tensor) -> Tensor:
        """Attention with the weights A materialised; stores their entropy per head in ``entropy``."""
        L, S = q.shape[2], k.shape[2]
        s = (q @ k.transpose(-1, -2)) * self.head_dim ** -0.5
        visible = torch.ones(L, S, dtype=torch.bool, device=q.device)
        visible = visible.tril() if self.causal else visible
        a = torch.softmax(s.masked_fill(~visible, float("-inf")), dim=-1)
        self.entropy = -torch.special.xlogy(a, a).detach().sum(-1).mean(dim=(0, 2))
        return a @ v
