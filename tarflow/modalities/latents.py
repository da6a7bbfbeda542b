"""Latents: the grid of a frozen autoencoder (STARFlow), scaled to unit variance, as p x p x C patches.

The flow's data is the scaled latent z = (encode(image) - shift) * scale, a (B, C, S, S) grid of the
autoencoder's ``latent_channels`` C; tokens are its patches as for pixels (STARFlow: p = 1, C = 4). ``shift``
and ``scale`` are measured on the training data (mean and 1 / std of every latent value) and saved with the
flow's config. The density is continuous, so its figure is latent nats per dimension, not bits/dim.

Where the autoencoder lives: ``FlowConfig.autoencoder`` is its directory. A relative path is read relative to
the flow model's own directory (so a run directory that carries its autoencoder can be moved whole); the
trainer writes the absolute path it was given. It is loaded, frozen, the first time ``encode`` or ``decode``
runs; `TarFlow.from_pretrained` checks at once that it is there and fits.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from ..errors import CheckpointError, ConfigError, InputError
from .pixels import Pixels

CHUNK_IMAGES = 256  # images per autoencoder call: its activations take about 0.7 GB per 256 frames of 64x64


def in_chunks(function, images: Tensor) -> Tensor:
    """``function`` of ``images`` (B, ...), CHUNK_IMAGES at a time: a batch of clips is B F images (a continuation
    of 256 clips to 20 frames, 5,120) and the autoencoder's activations of all at once took 16 GB."""
    if len(images) <= CHUNK_IMAGES:
        return function(images)
    return torch.cat([function(chunk) for chunk in images.split(CHUNK_IMAGES)])


class Latents(Pixels):
    """Pixels' patchify on the latent grid, plus ``encode`` (images -> scaled latents) and ``decode``."""

    name = "latents"

    def __init__(self, latent_size: int, latent_channels: int, patch_size: int, autoencoder: str, scale: float,
                 shift: float):
        super().__init__(latent_size, latent_channels, patch_size)
        self.autoencoder_path, self.scale, self.shift = autoencoder, scale, shift
        self.base_dir: Path | None = None  # the flow model's directory, for a relative autoencoder path
        self.loaded = None

    def check(self, data: Tensor, name: str = "x") -> None:
        size, channels = self.image_size, self.channels
        if isinstance(data, Tensor) and data.dim() == 4 and (data.shape[1] != channels or data.shape[2:] != (size, size)):
            raise InputError(f"{name} must be scaled latents (B, {channels}, {size}, {size}) of the autoencoder, got "
                             f"{tuple(data.shape)}; turn images into latents with model.modality.encode(images)")
        super().check(data, name)

    def found_in(self, model_dir: Path) -> None:
        """Relative autoencoder paths are read from ``model_dir``; a missing or unfit autoencoder is refused now."""
        self.base_dir = Path(model_dir)
        self.check_autoencoder()

    def bin_width(self, levels: int) -> float:
        raise ConfigError("a latent model's density is continuous: bits/dim of pixels are not defined for it; "
                          "report latent nats/dim (-log p(z) / D) instead")

    # ----- the autoencoder ---------------------------------------------------------------------
    def located(self) -> Path:
        """The autoencoder directory, a relative path read from the flow model's directory."""
        if not self.autoencoder_path:
            raise ConfigError("a latents model needs autoencoder=DIR (--autoencoder DIR): the directory of a "
                              "`tarflow autoencoder train` run or of a diffusers AutoencoderKL")
        path = Path(self.autoencoder_path).expanduser()
        return path if path.is_absolute() or self.base_dir is None else self.base_dir / path

    def check_autoencoder(self) -> None:
        """Refuse (CheckpointError) a missing autoencoder or one whose latents do not fit the flow."""
        from ..autoencoders import autoencoder_geometry

        path = self.located()
        try:
            _, latent_channels, _ = autoencoder_geometry(path)
        except CheckpointError as e:
            raise CheckpointError(f"the flow's autoencoder is not usable: {e}. The flow was trained on its latents "
                                  f"({self.channels} channels, {self.image_size}x{self.image_size}); put it back, or "
                                  f"set \"autoencoder\" in the flow's config.json to where it is now") from None
        if latent_channels != self.channels:
            raise CheckpointError(f"the autoencoder in {path} makes {latent_channels}-channel latents but the flow "
                                  f"models {self.channels}-channel ones: it is not the autoencoder the flow was "
                                  f"trained with")

    @property
    def autoencoder(self):
        """The frozen autoencoder, loaded on first use."""
        if self.loaded is None:
            from ..autoencoders import load_autoencoder

            self.check_autoencoder()
            self.loaded = load_autoencoder(self.located())
        return self.loaded

    def image_shape(self) -> tuple[int, int, int]:
        """(channels, height, width) of the images the latents decode to."""
        autoencoder = self.autoencoder
        side = self.image_size * autoencoder.downsample
        return autoencoder.channels, side, side

    @torch.no_grad()
    def encode(self, images: Tensor) -> Tensor:
        """Images (B, C, H, W) in [-1, 1] -> scaled latents (encode(x) - shift) * scale, on the images' device."""
        if not self.scale:
            raise ConfigError("latent_scale is 0 (not measured yet): `tarflow train` measures it on the training "
                              "data; set it with measure_latent_scale")
        autoencoder = self.autoencoder.to(images.device)
        return ((in_chunks(autoencoder.encode, images) - self.shift) * self.scale).to(images.dtype)

    @torch.no_grad()
    def decode(self, latents: Tensor, autoencoder=None) -> Tensor:
        """Scaled latents -> images in [-1, 1] (not clamped): decode(z / scale + shift), by ``autoencoder`` if
        given (e.g. the `denoising_decoder`), else the flow's own."""
        autoencoder = (autoencoder or self.autoencoder).to(latents.device)
        return in_chunks(autoencoder.decode, latents / self.scale + self.shift).to(latents.dtype)

    def denoising_decoder(self, sigma: float):
        """The autoencoder whose decoder was fine-tuned on latents with noise ``sigma`` (saved in the model's
        ``denoising_decoder/`` by `tarflow autoencoder finetune-decoder`), or None if there is none for sigma."""
        from ..autoencoders import load_autoencoder
        from ..autoencoders.finetune import DENOISING_DECODER

        folder = self.base_dir / DENOISING_DECODER if self.base_dir is not None else None
        if folder is None or not folder.is_dir():
            return None
        decoder = load_autoencoder(folder)
        return decoder if getattr(decoder, "metadata", {}).get("noise_std") == sigma else None


def measure_latent_scale(latents: Tensor) -> tuple[float, float]:
    """(shift, scale) = (mean, 1 / std) over every value of ``latents``, rounded to 6 significant digits so that
    a resumed run measures the same config."""
    values = latents.double()
    shift, std = values.mean().item(), values.std().item()
    if not std > 0:
        raise InputError("the autoencoder's latents of the training data are constant (std 0): it is untrained "
                         "or broken")
    return float(f"{shift:.6g}"), float(f"{1 / std:.6g}")
