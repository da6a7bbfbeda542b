"""A diffusers ``AutoencoderKL`` (SD-VAE, SDXL-VAE, FLUX-VAE, ...) from a local directory, as an `Autoencoder`.

Optional extra: ``pip install tarflow[diffusers]``. Nothing is downloaded (``local_files_only``). Latents are
normalised by the VAE's own config: z = (mean - shift_factor) * scaling_factor (SD 0.18215 and no shift,
SDXL 0.13025, FLUX 0.3611 with shift 0.1159), and decoded by the inverse map.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError
from .base import Autoencoder

INSTALL = "pip install 'tarflow[diffusers]'"


def diffusers_geometry(config: dict[str, Any]) -> tuple[int, int, int]:
    """(image channels, latent channels, downsample = 2^(len(block_out_channels) - 1)) of an AutoencoderKL config."""
    return (int(config.get("in_channels", 3)), int(config.get("latent_channels", 4)),
            2 ** (len(config.get("block_out_channels", [64])) - 1))


class DiffusersAutoencoder(Autoencoder):
    """Wraps a frozen ``diffusers.AutoencoderKL``; ``encode`` takes its posterior mean."""

    def __init__(self, vae, source: str = ""):
        self.vae = vae.eval().requires_grad_(False)
        config = vae.config
        self.channels, self.latent_channels, self.downsample = diffusers_geometry(dict(config))
        self.scaling_factor = float(config.get("scaling_factor", None) or 1.0)
        self.shift_factor = float(config.get("shift_factor", None) or 0.0)
        self.source = source

    @classmethod
    def from_directory(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "DiffusersAutoencoder":
        from .saving import find_autoencoder

        _, folder = find_autoencoder(path)
        try:
            from diffusers import AutoencoderKL
        except ImportError:
            raise ConfigError(f"{path} holds a diffusers AutoencoderKL, which needs the diffusers package: "
                              f"{INSTALL}") from None
        try:
            vae = AutoencoderKL.from_pretrained(str(folder), local_files_only=True)
        except (OSError, ValueError, EnvironmentError) as e:
            raise CheckpointError(f"{folder} cannot be loaded as a diffusers AutoencoderKL ({e}); expected its "
                                  f"config.json and diffusion_pytorch_model.safetensors") from None
        return cls(vae.to(map_location), str(path))

    @property
    def device(self) -> torch.device:
        return next(self.vae.parameters()).device

    def to(self, device: str | torch.device) -> "DiffusersAutoencoder":
        self.vae.to(device)
        return self

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        mean = self.vae.encode(images.to(self.device, dtype)).latent_dist.mean
        return ((mean - self.shift_factor) * self.scaling_factor).to(images.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        raw = latents.to(self.device, dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(raw).sample.to(latents.dtype)
