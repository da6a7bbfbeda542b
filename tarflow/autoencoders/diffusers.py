"""A diffusers ``AutoencoderKL`` (SD-VAE, SDXL-VAE, FLUX-VAE, ...) from a local directory, as an `Autoencoder`.

Optional extra: ``pip install tarflow[diffusers]``. Nothing is downloaded (``local_files_only``). Latents are
normalised by the VAE's own config: z = (mean - shift_factor) * scaling_factor (SD 0.18215 and no shift,
SDXL 0.13025, FLUX 0.3611 with shift 0.1159), and decoded by the inverse map. `save_pretrained` writes the
diffusers layout again (config.json + diffusion_pytorch_model.safetensors) and the library's metadata beside it
in tarflow.json (a decoder fine-tuned on noisy latents records its noise_std there).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..io import atomic_files, write_bytes
from .base import Autoencoder
from .saving import find_autoencoder, read_json

INSTALL = "pip install 'tarflow[diffusers]'"
METADATA_NAME = "tarflow.json"
WEIGHTS_NAME = "diffusion_pytorch_model.safetensors"
OWNED_FILES = (METADATA_NAME, WEIGHTS_NAME, "config.json")  # commit order: config.json, which marks the folder, last


def diffusers_geometry(config: dict[str, Any]) -> tuple[int, int, int]:
    """(image channels, latent channels, downsample = 2^(len(block_out_channels) - 1)) of an AutoencoderKL config."""
    return (int(config.get("in_channels", 3)), int(config.get("latent_channels", 4)),
            2 ** (len(config.get("block_out_channels", [64])) - 1))


class DiffusersAutoencoder(Autoencoder):
    """Wraps a frozen ``diffusers.AutoencoderKL``; ``encode`` takes its posterior mean."""

    def __init__(self, vae, source: str = "", metadata: dict[str, Any] | None = None):
        self.vae = vae.eval().requires_grad_(False)
        self.metadata = metadata or {}
        config = vae.config
        self.channels, self.latent_channels, self.downsample = diffusers_geometry(dict(config))
        self.scaling_factor = float(config.get("scaling_factor", None) or 1.0)
        self.shift_factor = float(config.get("shift_factor", None) or 0.0)
        self.source = source

    @classmethod
    def from_directory(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "DiffusersAutoencoder":
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
        return cls(vae.to(map_location), str(path), read_json(folder / METADATA_NAME))

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

    def decode(self, latents: Tensor) -> Tensor:
        dtype = next(self.vae.parameters()).dtype
        raw = latents.to(self.device, dtype) / self.scaling_factor + self.shift_factor
        return self.vae.decode(raw).sample.to(latents.dtype)

    def decoder_modules(self) -> list[nn.Module]:
        """The decoder and, where the VAE has one, the 1x1 convolution before it (``post_quant_conv``)."""
        post_quant = getattr(self.vae, "post_quant_conv", None)
        return [self.vae.decoder] + ([post_quant] if isinstance(post_quant, nn.Module) else [])

    def encoder_state(self) -> dict[str, Tensor]:
        """The VAE's weights outside its decoder modules, and the shift and scaling factors ``encode`` applies."""
        decoder = tuple(f"{name}." for name, module in self.vae.named_modules()
                        if any(module is part for part in self.decoder_modules()))
        state = {name: tensor for name, tensor in self.vae.state_dict().items() if not name.startswith(decoder)}
        return {**state, "shift_factor": torch.tensor(self.shift_factor),
                "scaling_factor": torch.tensor(self.scaling_factor)}

    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """The VAE's own ``save_pretrained`` layout plus tarflow.json, replacing only those files in ``path``."""
        def is_diffusers_vae(folder: Path) -> bool:
            return (read_json(folder / "config.json") or {}).get("_class_name") == "AutoencoderKL"

        with atomic_files(path, OWNED_FILES, is_diffusers_vae) as tmp:
            self.vae.save_pretrained(str(tmp), safe_serialization=True)
            write_bytes(tmp / METADATA_NAME, (json.dumps(metadata or {}, indent=2) + "\n").encode())
        return Path(path)
