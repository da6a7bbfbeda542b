"""Pixels: images (B, C, H, W) in [-1, 1] as p x p x C patches in raster order."""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import InputError
from .base import Modality


class Pixels(Modality):
    """Patchify (B, C, H, W) -> (B, T, p p C), T = (H / p)^2, token values ordered (patch row, patch column,
    channel). A pixel of level k of L is dequantized to 2 (k + u) / L - 1, so one bin is 2 / L wide."""

    name = "pixels"

    def __init__(self, image_size: int, channels: int, patch_size: int):
        self.image_size, self.channels, self.patch_size = image_size, channels, patch_size
        self.num_tokens = (image_size // patch_size) ** 2
        self.token_dim = channels * patch_size ** 2
        self.num_dims = channels * image_size ** 2

    def check(self, data: Tensor, name: str = "x") -> None:
        size, channels = self.image_size, self.channels
        expected = f"(B, {channels}, {size}, {size})"
        if not isinstance(data, Tensor) or data.dim() != 4:
            shape = tuple(data.shape) if isinstance(data, Tensor) else type(data).__name__
            raise InputError(f"{name} must be a batch of images {expected}, got {shape}")
        if data.shape[1] != channels:
            raise InputError(f"{name} has {data.shape[1]} channels but the model expects {channels}: "
                             f"expected shape {expected}, got {tuple(data.shape)}")
        if data.shape[2:] != (size, size):
            raise InputError(f"{name} is {data.shape[2]}x{data.shape[3]} but the model expects "
                             f"{size}x{size}: resize or crop the images")
        if not data.dtype.is_floating_point:
            raise InputError(f"{name} must be floating point in [-1, 1], got {data.dtype}; "
                             f"dequantize integer images first")
        if not torch.isfinite(data).all():
            raise InputError(f"{name} contains NaN or inf values")

    def to_tokens(self, data: Tensor) -> Tensor:
        batch, channels, height, width = data.shape
        p = self.patch_size
        data = data.reshape(batch, channels, height // p, p, width // p, p).permute(0, 2, 4, 3, 5, 1)
        return data.reshape(batch, (height // p) * (width // p), p * p * channels)

    def from_tokens(self, tokens: Tensor) -> Tensor:
        p, side = self.patch_size, self.image_size // self.patch_size
        data = tokens.reshape(tokens.shape[0], side, side, p, p, self.channels).permute(0, 5, 1, 3, 2, 4)
        return data.reshape(tokens.shape[0], self.channels, self.image_size, self.image_size)

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the model's images: its data's own."""
        return self.channels, self.image_size, self.image_size

    def bin_width(self, levels: int) -> float:
        return 2 / levels
