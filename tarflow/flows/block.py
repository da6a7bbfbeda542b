"""One autoregressive flow block: z_t = f(x_t; theta_t), with theta_t = Transformer(x_<t) and f the block's transform.

The block exposes what samplers need and nothing more (the sampling protocol):
``order`` (how it permutes tokens), ``transform`` (split, forward, inverse, guide), ``new_cache`` (a
preallocated KV cache handle) and ``step(x, condition, cache, pos)``, the one Transformer forward: the
training pass calls it on the whole sequence without a cache, samplers on a chunk of tokens with one.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from ..nn import KVCache, SigmaReparamLinear, TransformerLayer, layer_norm, linear
from .conditioning import Condition
from .config import FlowConfig
from .noise_level import NoiseLevelEmbedding
from .orders import Order
from .text_prefix import TextPrefix
from .transforms import Params, Transform

if TYPE_CHECKING:
    from ..sampling.guidance import Guidance


class ARFlowBlock(nn.Module):
    """A causal Transformer that reads tokens x_1..x_{t-1} (in the block's ``order``) and gives token t the
    parameters of the block's ``transform``.

    Tokens before ``first`` have no parameters and pass unchanged: token 1 with ``start_token="zero"``
    (first = 1); none with ``"learned"`` (first = 0), where a learned start embedding at position 0 gives
    token 1 its parameters. The Transformer input at position p is token p - 1 + first (the start embedding
    at p = 0 when first = 0), and its output at position p holds the parameters of token p + first.

    ``layers`` Transformer layers (pre-norm; attention or an AFT mixer; optional sigma-Reparam and XSA),
    learned, rotary or factorised positions (over ``frames`` frames of a video: place within the frame + frame),
    a class embedding when ``conditioned``, a noise-level embedding with ``config.noise_conditioning`` (iTARFlow),
    a projection of per-token context features when ``context_width`` > 0 (NTM: the features of `Condition.context`
    that give token t its parameters are token t's own, added at the position that outputs them), an optional
    final LayerNorm, and a zero-initialised output projection, so every block starts as the identity.

    ``captioned``: a text prefix (`TextPrefix` of the caption ids in `Condition.labels`) takes P positions in front
    of the Transformer input: every position reads the whole prefix, the prefix reads no token, and only the token
    positions give params (so log-dets count image tokens only). The KV cache holds the prefix from `new_cache` on.
    """

    def __init__(self, config: FlowConfig, layers: int, order: Order, transform: Transform, conditioned: bool,
                 context_width: int = 0, captioned: bool = False, num_tokens: int | None = None, frames: int = 1):
        super().__init__()
        width, token_dim = config.width, config.token_dim
        num_tokens = num_tokens or config.num_tokens  # fewer for a block within each video frame
        self.order, self.transform = order, transform
        linear_type = SigmaReparamLinear if config.sigma_reparam else nn.Linear
        self.proj_in = linear_type(token_dim, width)
        self.first = 1 if config.start_token == "zero" else 0
        self.start = None
        if not self.first:
            self.start = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_embed = self.frame_embed = None
        if config.positions != "rope":  # factorised: a row per place within a frame, plus a row per frame
            places = num_tokens // frames if config.positions == "factorised" else num_tokens
            self.pos_embed = nn.Parameter(torch.randn(places, width) * 0.02)
        if config.positions == "factorised" and frames > 1:
            self.frame_embed = nn.Parameter(torch.randn(frames, width) * 0.02)
        self.class_embed = None
        if conditioned:
            self.class_embed = nn.Embedding(config.num_classes + 1, width)  # last row: the null class
            nn.init.normal_(self.class_embed.weight, std=0.02)
        self.noise_embed = NoiseLevelEmbedding(width) if config.noise_conditioning else None
        self.context_proj = nn.Linear(context_width, width) if context_width else None
        self.prefix = TextPrefix(config, width) if captioned else None
        self.prefix_length = self.prefix.length if captioned else 0
        positions = num_tokens + self.prefix_length
        self.layers = nn.ModuleList(TransformerLayer(width, config.head_dim, config.mlp_ratio, config.mixer, positions,
                                                     config.aft_window, config.exclusive_attention,
                                                     config.sigma_reparam, config.positions == "rope",
                                                     dropout=config.dropout)
                                    for _ in range(layers))
        self.norm = nn.LayerNorm(width) if config.output_norm == "layernorm" else None
        self.num_tokens = num_tokens
        self.proj_out = nn.Linear(width, transform.num_params(token_dim))
        nn.init.zeros_(self.proj_out.weight)
        nn.init.zeros_(self.proj_out.bias)

    def step(self, x: Tensor, condition: Condition, cache: KVCache | None = None, pos: int = 0) -> Tensor:
        """Raw params (R, L, P) of tokens pos+first .. pos+first+L-1 from the Transformer inputs x (R, L, D) at
        positions pos .. pos+L-1 (see `inputs`; at position 0 of a learned start the row of x is ignored). With
        ``cache``, earlier positions come from it and this chunk's keys and values go into it. ``condition``
        holds R rows; x may hold R / n of them, then every branch reads the same x. With a text prefix, a call without
        a cache is the whole sequence (pos 0): the prefix runs in front of it."""
        batch = condition.rows(x.shape[0])
        if batch != x.shape[0]:
            x = x.repeat(batch // x.shape[0], 1, 1)
        length = x.shape[1]
        h = linear(self.proj_in, x)
        if self.start is not None and pos == 0:  # position 0 reads the learned start embedding
            h = torch.cat([self.start.to(h.dtype).expand(batch, 1, -1), h[:, 1:]], dim=1)
        if cache is None:  # position embedding, then class embedding (the order the released figures used)
            if self.pos_embed is not None:
                h = h + self.position_table()[pos:pos + length]
            if self.class_embed is not None:
                h = h + self.class_embed(condition.labels)[:, None]
            if self.noise_embed is not None:
                h = h + self.noise_embed(condition.noise_level)[:, None]
            if self.context_proj is not None:
                h = h + self.context_bias(condition, pos, length)
        elif cache.input_bias is not None:  # both at once, summed when the cache was made
            h = h + cache.input_bias[:, pos:pos + length]
        if self.prefix is None:
            return self.output(self.transformer(h, condition, cache, pos), batch, length)
        if cache is not None:  # the prefix sits in the cache: this chunk's positions come after it
            return self.output(self.transformer(h, condition, cache, pos + self.prefix_length), batch, length)
        prefixed = torch.cat([self.prefix(condition.labels).to(h.dtype), h], dim=1)
        rows = self.transformer(prefixed, condition, None, pos)
        return self.output(rows.view(batch, -1, rows.shape[-1])[:, self.prefix_length:].reshape(-1, rows.shape[-1]),
                           batch, length)

    def position_table(self) -> Tensor:
        """The position embedding (T, W): learned rows, or with a frame embedding (F, W) row f Tf + s =
        frame_embed[f] + pos_embed[s] (frame f, place s within it)."""
        if self.frame_embed is None:
            return self.pos_embed
        return (self.frame_embed[:, None] + self.pos_embed[None]).flatten(0, 1)

    def transformer(self, h: Tensor, condition: Condition, cache: KVCache | None, pos: int) -> Tensor:
        """The layers on h (R, L, W) at layer positions pos .. pos+L-1, as rows (R L, W): one addmm per linear."""
        batch, length = h.shape[:2]
        rows = h.reshape(batch * length, h.shape[-1])
        for index, layer in enumerate(self.layers):
            rows = layer(rows, condition.attn_temp, None if cache is None else cache.layer(index), pos, (batch, length))
        return rows

    def output(self, rows: Tensor, batch: int, length: int) -> Tensor:
        """Raw params (R, L, P) from the last layer's rows (R L, W)."""
        out = linear(self.proj_out, rows if self.norm is None else layer_norm(self.norm, rows))
        return out.view(batch, length, -1)

    def context_bias(self, condition: Condition, pos: int, length: int) -> Tensor:
        """The projected context (R, length, W) for positions pos .. pos+length-1: the features of the tokens whose
        params they output, tokens pos+first .. pos+first+length-1 in the block's order."""
        start = pos + self.first
        return self.context_proj(self.order.apply(condition.context)[:, start:start + length])

    def params(self, x: Tensor, condition: Condition, cache: KVCache | None = None, pos: int = 0) -> Params:
        """`step`, split into the transform's parameters."""
        return self.transform.split(self.step(x, condition, cache, pos))

    def inputs(self, tokens: Tensor, start: int, end: int) -> Tensor:
        """The Transformer inputs (B, end - start, D) that give the params of tokens start .. end-1 (block order):
        tokens start-1 .. end-2, with a placeholder row in front for the start embedding when start is 0.
        They sit at positions start - first .. end - 1 - first."""
        previous = tokens[:, max(start - 1, 0):end - 1]
        if start == 0:
            previous = torch.cat([previous.new_zeros(previous.shape[0], 1, previous.shape[2]), previous], dim=1)
        return previous

    def forward(self, x: Tensor, condition: Condition) -> tuple[Tensor, Tensor]:
        """x (B, T, D) -> z (B, T, D), log|det dz/dx| (B,) in nats."""
        x = self.order.apply(x)
        first = self.first
        params = self.params(self.inputs(x, first, x.shape[1]), condition)
        z_rest, logdet = self.transform.forward(x[:, first:], params)
        z = torch.cat([x[:, :first], z_rest], dim=1)
        return self.order.undo(z), logdet

    def input_bias(self, condition: Condition) -> Tensor | None:
        """What the Transformer's input gets added at every position: the position embedding (1, T, W), the
        class embedding (R, 1, W), the noise-level embedding (R, 1, W) and the projected context (R, T, W; zero at
        the last ``first`` positions, which output no params), summed in that order to (R or 1, T, W); None when
        the block has none of them."""
        bias = None if self.pos_embed is None else self.position_table()[None]
        embeddings = []
        if self.class_embed is not None:
            embeddings.append(self.class_embed(condition.labels)[:, None])
        if self.noise_embed is not None:
            embeddings.append(self.noise_embed(condition.noise_level)[:, None])
        if self.context_proj is not None:
            context = self.context_bias(condition, 0, self.num_tokens - self.first)
            embeddings.append(nn.functional.pad(context, (0, 0, 0, self.first)))
        for embedding in embeddings:
            bias = embedding.expand(-1, self.num_tokens, -1) if bias is None else bias + embedding
        return bias

    def new_cache(self, condition: Condition, batch: int) -> KVCache:
        """A KV cache for the rows of ``condition`` (``batch`` when it holds none) over the block's T positions (P + T
        with a text prefix, which it then holds), in the weights' dtype; it also holds what every step would
        otherwise recompute: the input bias and the query scale with the rows' attention temperatures."""
        mixer = self.layers[0].attn
        weight = self.proj_in.weight
        cache = KVCache(len(self.layers), condition.rows(batch), mixer.heads, self.prefix_length + self.num_tokens,
                        mixer.head_dim, weight.dtype, weight.device, condition.attn_temp)
        cache.input_bias = self.input_bias(condition)
        if self.prefix is not None:  # the prefix fills the cache's first P positions once
            self.transformer(self.prefix(condition.labels).to(weight.dtype), condition, cache, 0)
        return cache

    @torch.no_grad()
    def inverse(self, z: Tensor, condition: Condition, guidance: "Guidance | None" = None) -> Tensor:
        """Exact inverse, token by token with a preallocated KV cache: x_t = f^{-1}(z_t; theta(x_<t)).

        With ``guidance``, ``condition`` holds the conditional then the unconditional rows (2B), every branch
        reads the same x, and the transform combines the branches' params by the guidance rule.
        """
        z = self.order.apply(z)
        batch, num_tokens, _ = z.shape
        cache = self.new_cache(condition, batch)
        z_by_token = z.transpose(0, 1).unsqueeze(2).contiguous()  # (T, B, 1, D): each step's rows are contiguous
        x = torch.empty_like(z_by_token)
        x[:self.first] = z_by_token[:self.first]
        for token in range(self.first, num_tokens):
            previous = x[token - 1] if token else torch.zeros_like(x[0])  # the start embedding's placeholder
            params = self.params(previous, condition, cache, token - self.first)
            if guidance is not None:
                params = self.transform.guide(params, guidance, token, num_tokens)
            x[token] = self.transform.inverse(z_by_token[token], params)
        return self.order.undo(x.squeeze(2).transpose(0, 1))
