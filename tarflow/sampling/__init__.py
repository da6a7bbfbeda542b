"""Samplers, kept apart from the model: they draw noise, guide, and denoise."""

from .denoise import tweedie_denoise
from .guidance import Guidance
from .sequential import SequentialSampler

__all__ = ["Guidance", "SequentialSampler", "tweedie_denoise"]
