"""Pre-norm Transformer layer: h + Attn(LN(h)), then h + MLP(LN(h))."""

from __future__ import annotations

from torch import Tensor, nn

from .attention import Attention


class MLP(nn.Module):
    """Linear(W, rW) -> GELU -> Linear(rW, W)."""

    def __init__(self, width: int, ratio: int):
        super().__init__()
        self.fc1 = nn.Linear(width, ratio * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(ratio * width, width)

    def forward(self, h: Tensor) -> Tensor:
        return self.fc2(self.act(self.fc1(h)))


class TransformerLayer(nn.Module):
    def __init__(self, width: int, head_dim: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = Attention(width, head_dim)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = MLP(width, mlp_ratio)

    def forward(self, h: Tensor, attn_temp: Tensor | None = None,
                cache: tuple[Tensor, Tensor] | None = None, pos: int = 0) -> Tensor:
        h = h + self.attn(self.norm1(h), attn_temp, cache, pos)
        return h + self.mlp(self.norm2(h))
