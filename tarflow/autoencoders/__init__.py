"""Autoencoders whose latent space a flow can model (STARFlow): a small KL autoencoder trained in the library,
or a diffusers ``AutoencoderKL`` loaded from a local directory, behind one interface (`Autoencoder`)."""

from .base import Autoencoder
from .config import AutoencoderConfig, AutoencoderTrainConfig
from .model import KLAutoencoder
from .saving import autoencoder_geometry, find_autoencoder, load_autoencoder

__all__ = ["Autoencoder", "AutoencoderConfig", "AutoencoderTrainConfig", "KLAutoencoder", "autoencoder_geometry",
           "find_autoencoder", "load_autoencoder"]
