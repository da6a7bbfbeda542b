"""Datasets and the map between pixel levels and model space."""

from .quantize import bin_width, dequantize, quantize

__all__ = ["bin_width", "dequantize", "quantize"]
from .datasets import DATASETS, ImageData, load_dataset  # noqa: E402

__all__ += ["DATASETS", "ImageData", "load_dataset"]
