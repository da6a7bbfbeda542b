"""The invertible model: autoregressive flow blocks over tokens, their transforms, orders and priors, TarFlow, and
the Normalizing Trajectory Model built from them."""

from .block import ARFlowBlock
from .conditioning import ClassConditioning, Condition
from .config import FlowConfig
from .tarflow import TarFlow
from .trajectory import NormalizingTrajectoryModel

__all__ = ["ARFlowBlock", "ClassConditioning", "Condition", "FlowConfig", "NormalizingTrajectoryModel", "TarFlow"]
