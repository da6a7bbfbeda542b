"""Building blocks of the flow's Transformer."""

from .attention import Attention, KVCache
from .transformer import MLP, TransformerLayer

__all__ = ["Attention", "KVCache", "MLP", "TransformerLayer"]
