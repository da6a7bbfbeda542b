"""Modalities: how a kind of data becomes the flow's tokens (B, T, D) and back.

To add one: write ``NAME.py`` with a `Modality` subclass and register it in ``build_modality``.
"""

from __future__ import annotations

from .base import Modality
from .latents import Latents, measure_latent_scale
from .pixels import Pixels
from .text import Text
from .video import Video

MODALITIES = ("pixels", "latents", "text", "video")


def models_latents(modality: str, autoencoder: str) -> bool:
    """Whether a model of ``modality`` with this ``autoencoder`` directory models autoencoder latents: latents, or
    video frames through an autoencoder (`FlowConfig.latent`; the report reads it from a saved config)."""
    return modality == "latents" or (modality == "video" and bool(autoencoder))


def build_modality(config) -> Modality:
    """The modality a `FlowConfig` names, with its geometry (and, for text, its learned codebook); video frames are
    latents when the config names an autoencoder, else pixels."""
    if config.modality == "text":
        return Text(config.vocab_size, config.context, config.chars_per_token, config.embed_dim)
    if models_latents(config.modality, config.autoencoder):
        frames = Latents(config.image_size, config.channels, config.patch_size, config.autoencoder,
                         config.latent_scale, config.latent_shift)
    else:
        frames = Pixels(config.image_size, config.channels, config.patch_size)
    return Video(config.frame_count, frames) if config.modality == "video" else frames


__all__ = ["MODALITIES", "Latents", "Modality", "Pixels", "Text", "Video", "build_modality", "measure_latent_scale",
           "models_latents"]
