"""Datasets and the map between pixel levels and model space."""

from .quantize import bin_width, dequantize, quantize

__all__ = ["bin_width", "dequantize", "quantize"]
