"""The one interface every autoencoder offers the latent modality: images in [-1, 1] <-> latent grids."""

from __future__ import annotations

from torch import Tensor


class Autoencoder:
    """``encode``: images (B, channels, H, W) in [-1, 1] -> latents (B, latent_channels, H / downsample,
    W / downsample), deterministic (the posterior mean), already in the autoencoder's own normalisation;
    ``decode``: latents -> images in [-1, 1] (not clamped). Frozen: neither records gradients for training."""

    channels: int
    latent_channels: int
    downsample: int
    source: str = ""  # where it was loaded from, for messages

    def encode(self, images: Tensor) -> Tensor:
        raise NotImplementedError

    def decode(self, latents: Tensor) -> Tensor:
        raise NotImplementedError
