"""One autoregressive flow block: z_t = (x_t - b_t) exp(-a_t), with (a_t, b_t) = f(x_<t)."""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor, nn

from ..nn import KVCache, TransformerLayer
from .config import FlowConfig

# guide(a, b, t) -> (a, b): maps the params of every branch, shape (nB, L, D), to those of the B samples.
Guide = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]


class ARFlowBlock(nn.Module):
    """A causal Transformer that reads tokens x_1..x_{t-1} and gives token t its shift b_t and log-scale a_t.

    Tokens enter and leave in the model's canonical order; a block with ``flip=True`` reverses
    them on the way in and out, so consecutive blocks condition in opposite directions.
    Token 1 has a = b = 0. ``transform="additive"`` fixes a = 0 (volume preserving).
    """

    def __init__(self, config: FlowConfig, flip: bool):
        super().__init__()
        W, D, T = config.width, config.token_dim, config.num_tokens
        self.flip, self.affine = flip, config.transform == "affine"
        self.proj_in = nn.Linear(D, W)
        self.pos_embed = nn.Parameter(torch.randn(T, W) * 0.02)
        self.class_embed = None
        if config.num_classes:
            self.class_embed = nn.Embedding(config.num_classes + 1, W)  # last row: the null class
            nn.init.normal_(self.class_embed.weight, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(W, config.head_dim, config.mlp_ratio)
                                    for _ in range(config.layers_per_block))
        self.norm = nn.LayerNorm(W)
        self.proj_out = nn.Linear(W, 2 * D if self.affine else D)
        nn.init.zeros_(self.proj_out.weight)  # every block starts as the identity
        nn.init.zeros_(self.proj_out.bias)

    def permute(self, x: Tensor) -> Tensor:
        """The block's token order; its own inverse."""
        return x.flip(1) if self.flip else x

    def next_params(self, x: Tensor, y: Tensor | None = None, attn_temp: Tensor | None = None,
                    cache: KVCache | None = None, pos: int = 0) -> tuple[Tensor, Tensor]:
        """(a, b) for tokens pos+1 .. pos+L from permuted tokens x = x_{pos} .. x_{pos+L-1} (0-based).

        With ``cache``, earlier tokens come from it and this chunk's keys/values are written to it.
        """
        L = x.shape[1]
        h = self.proj_in(x) + self.pos_embed[pos:pos + L]
        if self.class_embed is not None:
            h = h + self.class_embed(y)[:, None]
        for i, layer in enumerate(self.layers):
            h = layer(h, attn_temp, None if cache is None else cache.layer(i), pos)
        out = self.proj_out(self.norm(h))
        out = out.to(torch.promote_types(out.dtype, torch.float32))  # params in >= float32 under autocast
        if self.affine:
            a, b = out.chunk(2, dim=-1)
        else:
            a, b = torch.zeros_like(out), out
        return a, b

    def forward(self, x: Tensor, y: Tensor | None = None, attn_temp: Tensor | None = None
                ) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> z (B, T, D), log|det dz/dx| = -sum a (B,), in nats."""
        x = self.permute(x)
        a, b = self.next_params(x[:, :-1], y, attn_temp)
        z_rest = (x[:, 1:] - b.to(x.dtype)) * torch.exp(-a).to(x.dtype)
        z = torch.cat([x[:, :1], z_rest], dim=1)
        return self.permute(z), -a.sum(dim=(1, 2))

    def new_cache(self, batch: int, dtype: torch.dtype, device: torch.device) -> KVCache:
        attn = self.layers[0].attn
        return KVCache(len(self.layers), batch, attn.heads, self.pos_embed.shape[0], attn.head_dim,
                       dtype, device)

    @torch.no_grad()
    def inverse(self, z: Tensor, y: Tensor | None = None, attn_temp: Tensor | None = None,
                guide: Guide | None = None) -> Tensor:
        """Exact inverse, token by token with a preallocated KV cache: x_t = z_t exp(a_t) + b_t.

        With guidance, ``y`` and ``attn_temp`` hold n branches of the B samples stacked (nB rows),
        every branch is fed the same x, and ``guide`` combines the branches' params.
        """
        z = self.permute(z)
        B, T, _ = z.shape
        rows = B if y is None and attn_temp is None else (y if y is not None else attn_temp).shape[0]
        branches = rows // B
        cache = self.new_cache(rows, self.proj_in.weight.dtype, z.device)
        x = torch.empty_like(z)
        x[:, 0] = z[:, 0]
        for t in range(T - 1):
            inp = x[:, t:t + 1]
            if branches > 1:
                inp = inp.repeat(branches, 1, 1)
            a, b = self.next_params(inp.to(self.proj_in.weight.dtype), y, attn_temp, cache, t)
            if guide is not None:
                a, b = guide(a, b, t + 1)
            x[:, t + 1] = (z[:, t + 1] * torch.exp(a[:, 0]) + b[:, 0]).to(x.dtype)
        return self.permute(x)
