"""Pre-norm Transformer layer: h + Mix(LN(h)), then h + MLP(LN(h)); Mix is attention or a causal AFT."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from .aft import CausalAFT
from .attention import Attention, LayerCache
from .rotary import Rotary
from .sigma_reparam import SigmaReparamLinear, layer_norm, linear

MIXERS = ("attention", "aft-full", "aft-local", "aft-simple", "aft-conv")


class MLP(nn.Module):
    """Linear(W, rW) -> GELU -> Linear(rW, W)."""

    def __init__(self, width: int, ratio: int, linear_type: type[nn.Linear] = nn.Linear):
        super().__init__()
        self.fc1 = linear_type(width, ratio * width)
        self.fc2 = linear_type(ratio * width, width)

    def forward(self, h: Tensor) -> Tensor:
        return linear(self.fc2, F.gelu(linear(self.fc1, h)))


class TransformerLayer(nn.Module):
    """One pre-norm layer. ``mixer``: "attention" (optionally ``exclusive``, XSA) or "aft-{full,local,simple,conv}"
    over ``num_tokens`` positions (``aft_window`` for local and conv); ``sigma_reparam``: every linear layer
    is a `SigmaReparamLinear`; ``causal=False``: attention sees every position (attention mixer only); ``dropout``:
    the probability of zeroing each value of the mixer's and the MLP's outputs before their residual adds, in
    training mode only (nanoGPT's residual dropout). The mixer is always the attribute ``attn``."""

    def __init__(self, width: int, head_dim: int, mlp_ratio: int, mixer: str = "attention",
                 num_tokens: int | None = None, aft_window: int = 8, exclusive: bool = False,
                 sigma_reparam: bool = False, rotary: bool = False, causal: bool = True, dropout: float = 0.0):
        super().__init__()
        if mixer not in MIXERS:
            raise ValueError(f"mixer must be one of {MIXERS}, got {mixer!r}")
        self.dropout = dropout
        linear_type = SigmaReparamLinear if sigma_reparam else nn.Linear
        self.norm1 = nn.LayerNorm(width)
        if mixer == "attention":
            self.attn = Attention(width, head_dim, exclusive, linear_type,
                                  Rotary(head_dim, num_tokens) if rotary else None, causal)
        else:
            if not causal:
                raise ValueError("AFT mixers are causal: causal=False needs the attention mixer")
            if num_tokens is None:
                raise ValueError("an AFT mixer needs num_tokens")
            if exclusive or rotary:
                raise ValueError("exclusive (XSA) and rotary positions apply to the attention mixer only")
            self.attn = CausalAFT(width, num_tokens, mixer.removeprefix("aft-"), aft_window, linear_type)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio, linear_type)

    def forward(self, h: Tensor, attn_temp: Tensor | None = None, cache: LayerCache | None = None, pos: int = 0,
                shape: tuple[int, int] | None = None) -> Tensor:
        """h (B, L, W) -> (B, L, W); or, with ``shape`` = (B, L), its rows (B L, W) -> rows, as a block's stack of
        layers passes them (every linear layer is then one addmm, without reshapes)."""
        rows = h if shape is not None else h.reshape(-1, h.shape[-1])
        mixer_shape = shape if shape is not None else h.shape[:2]
        # .forward: no module dispatch for the mixer and the MLP (thousands of calls when sampling); hooks go on the layer
        mixed = self.attn.forward(layer_norm(self.norm1, rows), attn_temp, cache, pos, mixer_shape)
        rows = rows + residual_dropout(mixed, self.dropout, self.training)
        rows = rows + residual_dropout(self.mlp.forward(layer_norm(self.norm2, rows)), self.dropout, self.training)
        return rows if shape is not None else rows.view(h.shape)


def residual_dropout(rows: Tensor, probability: float, training: bool) -> Tensor:
    """``rows`` with each value zeroed with ``probability`` (the rest scaled by 1 / (1 - probability)) in training;
    unchanged in eval mode or without dropout."""
    if not probability or not training:
        return rows
    return nn.functional.dropout(rows, probability, training=True)
