"""Building blocks of the flow's Transformer."""

from .aft import CausalAFT
from .attention import Attention, KVCache, LayerCache, exclude_self
from .rotary import Rotary
from .sigma_reparam import SigmaReparamLinear, layer_norm, linear, linear_weight
from .transformer import MIXERS, MLP, TransformerLayer

__all__ = ["Attention", "CausalAFT", "KVCache", "LayerCache", "MIXERS", "MLP", "Rotary", "SigmaReparamLinear", "TransformerLayer",
           "exclude_self", "layer_norm", "linear", "linear_weight"]
