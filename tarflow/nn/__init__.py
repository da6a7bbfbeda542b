"""Building blocks of the flow's Transformer."""

from .aft import CausalAFT
from .attention import Attention, KVCache, exclude_self
from .sigma_reparam import SigmaReparamLinear, linear_weight
from .transformer import MIXERS, MLP, TransformerLayer

__all__ = ["Attention", "CausalAFT", "KVCache", "MIXERS", "MLP", "SigmaReparamLinear", "TransformerLayer",
           "exclude_self", "linear_weight"]
