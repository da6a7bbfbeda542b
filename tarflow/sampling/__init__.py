"""Samplers, kept apart from the model: they draw noise, guide, and denoise."""

from .decoded import DecodedSampler, choose_denoising
from .denoise import tweedie_denoise
from .guidance import Guidance
from .iterative import DenoisedSampler, IterativeDenoiser, model_score
from .jacobi import BlockStrategy, GSJacobiSampler, JacobiSampler
from .sequential import SequentialSampler
from .trajectory import TrajectorySampler
from .video import VideoJacobiSampler, continue_clips, frame_temperatures

__all__ = ["BlockStrategy", "DecodedSampler", "DenoisedSampler", "GSJacobiSampler", "Guidance", "IterativeDenoiser",
           "JacobiSampler", "SequentialSampler", "TrajectorySampler", "VideoJacobiSampler", "choose_denoising",
           "continue_clips", "frame_temperatures", "model_score", "tweedie_denoise"]
