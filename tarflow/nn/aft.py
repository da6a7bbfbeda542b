"""Causal Attention Free Transformer (AFT) mixing layers, with a cache for token-by-token inversion.

Y_t = sigmoid(Q_t) * sum_{t'<=t} exp(K_t' + w_{t,t'}) V_t' / sum_{t'<=t} exp(K_t' + w_{t,t'}),
per feature; w is a learned T x T position bias (full), the same bias only within a window of the
last ``window`` positions and 0 elsewhere (local), 0 everywhere (simple), or a learned relative kernel
w_{t,t'} = c_{t-t'} for t - t' < window and 0 elsewhere (conv).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from .attention import LayerCache
from .sigma_reparam import linear

VARIANTS = ("full", "local", "simple", "conv")


class CausalAFT(nn.Module):
    """AFT-{full, local, simple, conv} over T positions; drop-in for `Attention` (same forward signature).

    ``attn_temp`` tau divides the weights' exponent, (K + w) / tau, as it divides attention logits.
    With a cache (a `KVCache` with one head of ``width`` dims), a step reads K, V of all earlier
    positions from it, so each step costs O(t width).
    """

    def __init__(self, width: int, num_tokens: int, variant: str = "full", window: int = 8,
                 linear_type: type[nn.Linear] = nn.Linear):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"AFT variant must be one of {VARIANTS}, got {variant!r}")
        self.variant, self.window, self.num_tokens = variant, window, num_tokens
        self.heads, self.head_dim = 1, width  # the cache layout `KVCache` expects
        self.qkv = linear_type(width, 3 * width)
        self.proj = linear_type(width, width)
        self.record_entropy = False  # set by `tarflow.metrics.entropy`: then forward stores ``entropy``
        self.entropy: Tensor | None = None
        if variant in ("full", "local"):
            self.pos_bias = nn.Parameter(torch.zeros(num_tokens, num_tokens))
        elif variant == "conv":
            self.pos_bias = nn.Parameter(torch.zeros(window))

    def bias(self, rows: slice, length: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        """w_{t,t'} for query positions ``rows`` and key positions 0..length-1, -inf above the diagonal."""
        t = torch.arange(self.num_tokens, device=device)[rows, None]
        s = torch.arange(length, device=device)[None, :]
        lag = t - s
        if self.variant == "simple":
            w = torch.zeros(lag.shape, device=device, dtype=dtype)
        elif self.variant == "conv":
            w = torch.where(lag < self.window, self.pos_bias.to(dtype)[lag.clamp(0, self.window - 1)], 0.0)
        else:
            w = self.pos_bias.to(dtype)[rows, :length]
            if self.variant == "local":
                w = torch.where(lag < self.window, w, 0.0)
        return w.masked_fill(lag < 0, float("-inf"))

    def forward(self, h: Tensor, attn_temp: Tensor | None = None,
                cache: LayerCache | None = None, pos: int = 0, shape: tuple[int, int] | None = None) -> Tensor:
        """h (B, L, W) -> (B, L, W); or, with ``shape`` = (B, L), its rows (B L, W) -> rows."""
        if shape is not None:
            return self.forward(h.view(*shape, h.shape[-1]), attn_temp, cache, pos).view(h.shape)
        B, L, W = h.shape
        q, k, v = linear(self.qkv, h).chunk(3, dim=-1)
        if cache is not None:
            k, v = (seen[:, 0] for seen in cache.extend(k[:, None], v[:, None], pos))  # the cache is (B, 1, T, W)
        w = self.bias(slice(pos, pos + L), k.shape[1], h.device, h.dtype)  # (L, S)
        if attn_temp is not None:
            tau = attn_temp.view(B, 1, 1).to(h.dtype)
            k, w = k / tau, w[None] / tau[:, :, :1]  # (K + w) / tau
        # exp(K + w) = exp(w) exp(K), each shifted by its maximum for range (the shifts cancel in the ratio)
        ek = torch.exp(k - k.detach().amax(dim=1, keepdim=True))  # (B, S, W)
        ew = torch.exp(w - w.detach().amax(dim=-1, keepdim=True))  # (L, S) or (B, L, S); 0 above the diagonal
        y = torch.sigmoid(q) * (ew @ (ek * v)) / (ew @ ek).clamp_min(1e-30)
        if self.record_entropy:
            self.entropy = self.weight_entropy(k, w)
        return linear(self.proj, y)

    @staticmethod
    def weight_entropy(k: Tensor, w: Tensor) -> Tensor:
        """AFT's implicit attention: per feature c, alpha_{t,s,c} = softmax_s(K_{s,c} + w_{t,s}) over s <= t.

        Returns its entropy -sum_s alpha log alpha averaged over samples, queries and features, as one
        "head" (shape (1,)), so it can be tracked like an attention head's entropy.
        """
        w = w if w.dim() == 3 else w[None]  # (B or 1, L, S)
        logits = k.detach()[:, None, :, :] + w.detach()[..., None]  # (B, L, S, W)
        logp = torch.log_softmax(logits, dim=2)
        return -(logp.exp() * logp.nan_to_num(neginf=0.0)).sum(2).mean().reshape(1)
