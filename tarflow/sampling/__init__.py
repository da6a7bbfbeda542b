"""Samplers, kept apart from the model: they draw noise, guide, and denoise."""

from .denoise import tweedie_denoise
from .guidance import Guidance
from .jacobi import BlockStrategy, GSJacobiSampler, JacobiSampler
from .sequential import SequentialSampler

__all__ = ["BlockStrategy", "GSJacobiSampler", "Guidance", "JacobiSampler", "SequentialSampler", "tweedie_denoise"]
