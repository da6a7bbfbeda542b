"""The invertible model: autoregressive flow blocks over tokens, their transforms, orders and priors, and TarFlow."""

from .block import ARFlowBlock
from .conditioning import ClassConditioning, Condition
from .config import FlowConfig
from .tarflow import TarFlow

__all__ = ["ARFlowBlock", "ClassConditioning", "Condition", "FlowConfig", "TarFlow"]
