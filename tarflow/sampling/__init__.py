"""Samplers, kept apart from the model: they draw noise, guide, and denoise."""

from .denoise import tweedie_denoise
from .guidance import Guidance
from .iterative import DenoisedSampler, IterativeDenoiser, model_score
from .jacobi import BlockStrategy, GSJacobiSampler, JacobiSampler
from .sequential import SequentialSampler
from .trajectory import TrajectorySampler

__all__ = ["BlockStrategy", "DenoisedSampler", "GSJacobiSampler", "Guidance", "IterativeDenoiser", "JacobiSampler",
           "SequentialSampler", "TrajectorySampler", "model_score", "tweedie_denoise"]
