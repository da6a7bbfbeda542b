"""The one interface every autoencoder offers the latent modality: images in [-1, 1] <-> latent grids."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch import Tensor, nn


class Autoencoder:
    """``encode``: images (B, channels, H, W) in [-1, 1] -> latents (B, latent_channels, H / downsample,
    W / downsample), deterministic (the posterior mean), already in the autoencoder's own normalisation;
    ``decode``: latents -> images in [-1, 1] (not clamped). Frozen: neither records gradients until
    `decoder_modules` are made trainable (`tarflow autoencoder finetune-decoder`)."""

    channels: int
    latent_channels: int
    downsample: int
    source: str = ""  # where it was loaded from, for messages
    metadata: dict[str, Any]  # what the library saved beside the weights (e.g. a fine-tuned decoder's noise_std)

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError

    def decoder_modules(self) -> list[nn.Module]:
        """Every module ``decode`` runs through (what fine-tuning the decoder trains)."""
        raise NotImplementedError

    def encoder_state(self) -> dict[str, Tensor]:
        """Every tensor ``encode`` depends on, by name (what keys the cache of encoded latents)."""
        raise NotImplementedError

    def save_pretrained(self, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
        """Write the autoencoder to ``path`` in its own format, with ``metadata``, atomically."""
        raise NotImplementedError
