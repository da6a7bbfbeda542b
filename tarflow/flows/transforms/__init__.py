"""Per-token transforms of a flow block, by name: each is one file with the `Transform` interface.

To add one: write ``NAME.py`` with a `Transform` subclass and register it in ``TRANSFORMS`` below.
"""

from __future__ import annotations

from .additive import Additive
from .affine import Affine
from .base import Params, Transform
from .mixture import MixtureCDF
from .mixture_d import MixtureVector

TRANSFORMS = {"affine": Affine, "additive": Additive, "mixture": MixtureCDF, "mixture-d": MixtureVector}


def build_transform(config) -> Transform:
    """The transform a `FlowConfig` names, with its options."""
    if config.transform == "affine":
        return Affine(config.scale, config.log_scale_clip)
    if config.transform == "mixture":
        return MixtureCDF(config.mixture_components)
    if config.transform == "mixture-d":
        return MixtureVector(config.mixture_components)
    return Additive()


__all__ = ["Additive", "Affine", "MixtureCDF", "MixtureVector", "Params", "TRANSFORMS", "Transform", "build_transform"]
