"""The invertible model: autoregressive flow blocks and the TarFlow image model."""

from .block import ARFlowBlock
from .config import FlowConfig
from .tarflow import TarFlow

__all__ = ["ARFlowBlock", "FlowConfig", "TarFlow"]
