"""A small convolutional KL autoencoder of SD-VAE shape, trainable on a CPU.

Encoder: conv 3x3 -> at each resolution ``blocks_per_level`` ResNet blocks (GroupNorm, SiLU, conv 3x3, twice,
plus the input), then a stride-2 conv to the next width -> GroupNorm, SiLU, conv 3x3 to (mean, log-variance)
of a diagonal Gaussian q(z | x). The decoder mirrors it with nearest-neighbour upsampling. SD-VAE's mid-level
attention is left out at this scale.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import Autoencoder
from .config import AutoencoderConfig


class ResnetBlock(nn.Module):
    """x + conv(SiLU(GN(conv(SiLU(GN(x)))))), a 1x1 conv on the skip path when the width changes."""

    def __init__(self, width_in: int, width_out: int, groups: int):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, width_in)
        self.conv1 = nn.Conv2d(width_in, width_out, 3, padding=1)
        self.norm2 = nn.GroupNorm(groups, width_out)
        self.conv2 = nn.Conv2d(width_out, width_out, 3, padding=1)
        self.skip = nn.Conv2d(width_in, width_out, 1) if width_in != width_out else nn.Identity()

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = self.conv2(F.silu(self.norm2(h)))
        return self.skip(x) + h


def level_blocks(width_in: int, width_out: int, count: int, groups: int) -> list[nn.Module]:
    return [ResnetBlock(width_in if i == 0 else width_out, width_out, groups) for i in range(count)]


class Encoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        widths, groups = config.widths, config.norm_groups
        layers: list[nn.Module] = [nn.Conv2d(config.channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            layers += level_blocks(width, width, config.blocks_per_level, groups)
            if level + 1 < len(widths):
                layers.append(nn.Conv2d(width, widths[level + 1], 3, stride=2, padding=1))
        layers += [nn.GroupNorm(groups, widths[-1]), nn.SiLU(),
                   nn.Conv2d(widths[-1], 2 * config.latent_channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, images: Tensor) -> Tensor:
        return self.layers(images)


class Decoder(nn.Module):
    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        widths, groups = config.widths[::-1], config.norm_groups
        layers: list[nn.Module] = [nn.Conv2d(config.latent_channels, widths[0], 3, padding=1)]
        for level, width in enumerate(widths):
            layers += level_blocks(width, width, config.blocks_per_level, groups)
            if level + 1 < len(widths):
                layers += [nn.Upsample(scale_factor=2, mode="nearest"),
                           nn.Conv2d(width, widths[level + 1], 3, padding=1)]
        layers += [nn.GroupNorm(groups, widths[-1]), nn.SiLU(), nn.Conv2d(widths[-1], config.channels, 3, padding=1)]
        self.layers = nn.Sequential(*layers)

    def forward(self, latents: Tensor) -> Tensor:
        return self.layers(latents)


class KLAutoencoder(nn.Module, Autoencoder):
    """q(z | x) = N(mean(x), diag(exp(log_var(x)))), x_hat = decoder(z). ``encode`` gives the mean."""

    def __init__(self, config: AutoencoderConfig):
        super().__init__()
        self.config = config
        self.channels, self.latent_channels = config.channels, config.latent_channels
        self.downsample = config.downsample
        self.encoder = Encoder(config)
        self.decoder = Decoder(config)

    def posterior(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """(mean, log-variance) of q(z | images), each (B, latent_channels, H / downsample, W / downsample)."""
        mean, log_var = self.encoder(images).chunk(2, dim=1)
        return mean, log_var.clamp(-30.0, 20.0)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode(self, images: Tensor) -> Tensor:
        return self.posterior(images.to(self.dtype))[0].to(images.dtype)

    def decode(self, latents: Tensor) -> Tensor:
        return self.decoder(latents.to(self.dtype)).to(latents.dtype)

    def decoder_modules(self) -> list[nn.Module]:
        return [self.decoder]

    def encoder_state(self) -> dict[str, Tensor]:
        return self.encoder.state_dict()

    def loss(self, images: Tensor, kl_weight: float, generator: torch.Generator | None = None
             ) -> tuple[Tensor, Tensor, Tensor]:
        """(loss, squared error per pixel value, KL per pixel value); z drawn from q by reparametrisation.

        KL(N(m, v) || N(0, 1)) = (m^2 + v - 1 - log v) / 2 per latent value, summed per image, then divided
        like the squared error by the image's C H W values."""
        mean, log_var = self.posterior(images)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype, device="cpu").to(mean.device)
        reconstruction = self.decode(mean + (0.5 * log_var).exp() * eps)
        squared_error = (reconstruction - images).pow(2).mean()
        kl = 0.5 * (mean.pow(2) + log_var.exp() - 1 - log_var).sum() / images.numel()
        return squared_error + kl_weight * kl, squared_error, kl

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def save_pretrained(self, path: str | Path, metadata: dict | None = None) -> Path:
        """Write ``config.json`` and ``model.safetensors`` atomically; only the library's own files are replaced."""
        from .saving import save_autoencoder

        return save_autoencoder(self, path, metadata)

    @classmethod
    def from_pretrained(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "KLAutoencoder":
        """Rebuild from a `save_pretrained` directory, frozen and in eval mode."""
        from .saving import load_library_autoencoder

        return load_library_autoencoder(path, map_location)
