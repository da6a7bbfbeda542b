"""One autoregressive flow block: z_t = (x_t - b_t) exp(-a_t), with (a_t, b_t) = f(x_<t)."""

from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..nn import KVCache, SigmaReparamLinear, TransformerLayer, exclude_self, linear_weight
from .config import FlowConfig

# guide(a, b, t) -> (a, b): maps the params of every branch, shape (nB, L, D), to those of the B samples.
Guide = Callable[[Tensor, Tensor, int], tuple[Tensor, Tensor]]


class ARFlowBlock(nn.Module):
    """A causal Transformer that reads tokens x_1..x_{t-1} and gives token t its shift b_t and log-scale a_t.

    Tokens enter and leave in the model's canonical order; a block with ``flip=True`` reverses
    them on the way in and out, so consecutive blocks condition in opposite directions.
    Token 1 has a = b = 0. ``transform="additive"`` fixes a = 0 (volume preserving).

    The Transformer variants of the config (sigma-Reparam, XSA, AFT mixers) live in its layers; with
    ``sigma_reparam`` the input projection is reparametrised too, the zero-initialised output projection
    is not (sigma(0) = 0). The lean cached inverse (`chunk_params`) handles attention with or without
    sigma-Reparam and XSA exactly; AFT blocks take the generic cached path (`next_params` with a cache).
    """

    def __init__(self, config: FlowConfig, flip: bool):
        super().__init__()
        W, D, T = config.width, config.token_dim, config.num_tokens
        self.flip, self.affine = flip, config.transform == "affine"
        linear = SigmaReparamLinear if config.sigma_reparam else nn.Linear
        self.proj_in = linear(D, W)
        self.pos_embed = nn.Parameter(torch.randn(T, W) * 0.02)
        self.class_embed = None
        if config.num_classes:
            self.class_embed = nn.Embedding(config.num_classes + 1, W)  # last row: the null class
            nn.init.normal_(self.class_embed.weight, std=0.02)
        self.layers = nn.ModuleList(TransformerLayer(W, config.head_dim, config.mlp_ratio, config.mixer, T,
                                                     config.aft_window, config.exclusive_attention,
                                                     config.sigma_reparam)
                                    for _ in range(config.layers_per_block))
        self.lean = config.mixer == "attention"  # chunk_params' functional fast path applies
        self.norm = nn.LayerNorm(W) if config.output_norm == "layernorm" else None
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
        return self.split_params(self.raw_params(x, y, attn_temp, cache, pos))

    def raw_params(self, x: Tensor, y: Tensor | None = None, attn_temp: Tensor | None = None,
                   cache: KVCache | None = None, pos: int = 0) -> Tensor:
        """The output projection of `next_params`, before it is split into (a, b): (B, L, 2D or D)."""
        L = x.shape[1]
        h = self.proj_in(x) + self.pos_embed[pos:pos + L]
        if self.class_embed is not None:
            h = h + self.class_embed(y)[:, None]
        for i, layer in enumerate(self.layers):
            h = layer(h, attn_temp, None if cache is None else cache.layer(i), pos)
        return self.proj_out(h if self.norm is None else self.norm(h))

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

    # ----- the inverse ---------------------------------------------------------------------------
    def inverse_state(self, batch: int, y: Tensor | None = None, attn_temp: Tensor | None = None
                      ) -> "InverseState":
        """Everything a cached inverse needs, computed once per call instead of once per token.

        ``y`` / ``attn_temp`` may hold n branches of the ``batch`` samples stacked (n * batch rows).
        """
        dtype = self.proj_in.weight.dtype
        rows = batch if y is None and attn_temp is None else (y if y is not None else attn_temp).shape[0]
        n = rows // batch
        # proj_in bias + position + class embedding of every position, per row: (n, batch, T, W)
        cond = (self.proj_in.bias + self.pos_embed).expand(rows, -1, -1)
        if self.class_embed is not None:
            cond = cond + self.class_embed(y)[:, None]
        cond = cond.reshape(n, batch, *cond.shape[1:]).contiguous()
        attn = self.layers[0].attn
        q_scale: Tensor | float = attn.head_dim ** -0.5
        if attn_temp is not None:
            q_scale = (q_scale / attn_temp.to(dtype)).view(rows, 1, 1, 1)
        st = InverseState(cond, self.new_cache(rows, dtype, cond.device), q_scale, n, {})
        st.y, st.attn_temp = y, attn_temp
        if self.lean:  # the weights the layers apply (for sigma-Reparam: gamma W / sigma(W), once per call)
            st.w_in = linear_weight(self.proj_in)
            st.w_layers = [(linear_weight(l.attn.qkv), linear_weight(l.attn.proj), linear_weight(l.mlp.fc1),
                            linear_weight(l.mlp.fc2)) for l in self.layers]
        return st

    def chunk_params(self, x: Tensor, st: "InverseState", pos: int) -> Tensor:
        """Lean `next_params` against the cache for the permuted tokens x (B, L, D) at positions pos..pos+L-1.

        Every branch is fed the same x. Returns the raw output (n B, L, 2D or D) for tokens pos+1..pos+L:
        a then b for affine blocks, b alone for additive ones. Functional ops only (no per-call module
        dispatch), biases folded into addmm, and for one query (sequential sampling) attention by two
        small matmuls, which beat the fused kernel on CPU at that size. Blocks the fast path does not cover
        (AFT mixers) run the generic `raw_params` with the cache instead.
        """
        B, L, D = x.shape
        n, W = st.branches, self.proj_in.weight.shape[0]
        R = n * B
        if not self.lean:
            xr = x.to(st.cond.dtype).repeat(n, 1, 1)  # every branch is fed the same x (branch-major rows)
            return self.raw_params(xr, st.y, st.attn_temp, st.cache, pos)
        h = (F.linear(x.to(st.cond.dtype), st.w_in) + st.cond[:, :, pos:pos + L]).view(R * L, W)
        end = pos + L
        for i, layer in enumerate(self.layers):
            attn = layer.attn
            w_qkv, w_proj, w_fc1, w_fc2 = st.w_layers[i]
            H, hd = attn.heads, attn.head_dim
            k_buf, v_buf = st.cache.layer(i)
            u = F.layer_norm(h, (W,), layer.norm1.weight, layer.norm1.bias, layer.norm1.eps)
            q, k, v = torch.addmm(attn.qkv.bias, u, w_qkv.t()).view(R, L, 3, H, hd).permute(2, 0, 3, 1, 4)
            k_buf[:, :, pos:end] = k
            v_buf[:, :, pos:end] = v
            q = q * st.q_scale
            if L == 1:
                s = torch.matmul(q, k_buf[:, :, :end].transpose(-1, -2))
                o = torch.matmul(torch.softmax(s, dim=-1), v_buf[:, :, :end])
            else:
                o = F.scaled_dot_product_attention(q, k_buf[:, :, :end], v_buf[:, :, :end],
                                                   attn_mask=st.mask(pos, L, h.device), scale=1.0)
            if attn.exclusive:
                o = exclude_self(o, v)
            o = o.transpose(1, 2).reshape(R * L, W)
            h = torch.addmm(h, o, w_proj.t()).add_(attn.proj.bias)
            u = F.layer_norm(h, (W,), layer.norm2.weight, layer.norm2.bias, layer.norm2.eps)
            mlp = layer.mlp
            f = F.gelu(torch.addmm(mlp.fc1.bias, u, w_fc1.t()))
            h = torch.addmm(h, f, w_fc2.t()).add_(mlp.fc2.bias)
        if self.norm is not None:
            h = F.layer_norm(h, (W,), self.norm.weight, self.norm.bias, self.norm.eps)
        out = torch.addmm(self.proj_out.bias, h, self.proj_out.weight.t())
        return out.view(R, L, -1)

    def split_params(self, out: Tensor) -> tuple[Tensor, Tensor]:
        """Raw output -> (a, b) in at least float32 (a = 0 for additive blocks)."""
        out = out.to(torch.promote_types(out.dtype, torch.float32))
        if self.affine:
            a, b = out.chunk(2, dim=-1)
            return a, b
        return torch.zeros_like(out), out

    @torch.no_grad()
    def inverse(self, z: Tensor, y: Tensor | None = None, attn_temp: Tensor | None = None,
                guide: Guide | None = None) -> Tensor:
        """Exact inverse, token by token with a preallocated KV cache: x_t = z_t exp(a_t) + b_t.

        With guidance, ``y`` and ``attn_temp`` hold n branches of the B samples stacked (nB rows),
        every branch is fed the same x, and ``guide`` combines the branches' params.
        """
        z = self.permute(z)
        B, T, D = z.shape
        st = self.inverse_state(B, y, attn_temp)
        zt = z.transpose(0, 1).contiguous()  # (T, B, D): each step reads and writes contiguous rows
        x = torch.empty_like(zt)
        x[0] = zt[0]
        for t in range(T - 1):
            out = self.chunk_params(x[t].unsqueeze(1), st, t)[:, 0]
            if guide is None and self.affine and out.dtype == x.dtype:
                torch.addcmul(out[:, D:], zt[t + 1], out[:, :D].exp(), out=x[t + 1])
                continue
            a, b = self.split_params(out)
            if guide is not None:
                a, b = guide(a, b, t + 1)
            x[t + 1] = (zt[t + 1] * torch.exp(a) + b).to(x.dtype) if self.affine else (zt[t + 1] + b).to(x.dtype)
        return self.permute(x.transpose(0, 1))


class InverseState:
    """Per-call state of a block's cached inverse: conditioning table, KV cache, query scale, masks; the
    labels and temperatures of every branch (generic path) and the applied weights (lean path)."""

    def __init__(self, cond: Tensor, cache: KVCache, q_scale: Tensor | float, branches: int,
                 masks: dict[tuple[int, int], Tensor | None]):
        self.cond, self.cache, self.q_scale, self.branches, self.masks = cond, cache, q_scale, branches, masks
        self.y: Tensor | None = None
        self.attn_temp: Tensor | None = None
        self.w_in: Tensor | None = None
        self.w_layers: list[tuple[Tensor, Tensor, Tensor, Tensor]] = []

    def mask(self, pos: int, L: int, device: torch.device) -> Tensor:
        """Boolean (L, pos + L) mask: a chunk of queries sees the cached prefix and the chunk causally."""
        key = (pos, L)
        if key not in self.masks:
            self.masks[key] = torch.ones(L, pos + L, dtype=torch.bool, device=device).tril(pos)
        return self.masks[key]
