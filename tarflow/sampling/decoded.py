"""Samples of a latent model (STARFlow) as images: the flow's latents, denoised, then decoded by its autoencoder.

A latent flow trained on z + sigma eps generates noisy latents. Three ways to turn them into images:

- ``tweedie``: one Tweedie step in latent space, z_hat = z + sigma^2 grad_z log p(z), then the autoencoder's
  decoder;
- ``decoder``: no step in latent space; a decoder fine-tuned on latents with noise sigma (saved by `tarflow
  autoencoder finetune-decoder` as the model's ``denoising_decoder/``) decodes the noisy latents;
- ``none``: the noisy latents decoded as they are.

`DecodedSampler` has the samplers' ``sample`` signature, so image metrics (FID, class consistency) take a latent
model's sampler like any other; `choose_denoising` picks as `tarflow sample` does.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..errors import ConfigError

DENOISE_CHOICES = ("tweedie", "decoder", "none")


class DecodedSampler:
    """``sampler``'s latents as images in [-1, 1] (not clamped): decode(z / scale + shift) after the ``denoise``
    step (module docstring); ``decoder`` is the fine-tuned autoencoder that ``denoise="decoder"`` decodes with."""

    def __init__(self, sampler, denoise: str = "tweedie", decoder=None):
        if denoise not in DENOISE_CHOICES:
            raise ConfigError(f"denoise must be one of {', '.join(DENOISE_CHOICES)}, got {denoise!r}")
        if (denoise == "decoder") != (decoder is not None):
            raise ConfigError("denoise='decoder' needs the fine-tuned autoencoder (decoder=...), and only it takes "
                              "one: the other choices decode with the flow's own autoencoder")
        if sampler.model.config.modality != "latents":
            raise ConfigError(f"a DecodedSampler decodes the latents of a latent model; this model's modality is "
                              f"{sampler.model.config.modality!r}, whose samples are already images")
        self.sampler, self.model, self.denoise, self.decoder = sampler, sampler.model, denoise, decoder

    def sample(self, n: int, y: Tensor | None = None, temperature: float = 1.0, guidance=None,
               denoise_std: float | None = None, generator: torch.Generator | None = None,
               z: Tensor | None = None) -> Tensor:
        """n decoded images (n, C, H, W). ``denoise_std``: sigma, the model's training noise std in latent units,
        used by the Tweedie step only (the fine-tuned decoder was made for its own sigma)."""
        if self.denoise == "tweedie" and not denoise_std:
            raise ConfigError("the Tweedie step needs denoise_std, the model's training noise std in latent units")
        sigma = denoise_std if self.denoise == "tweedie" else None
        latents = self.sampler.sample(n, y, temperature, guidance, sigma, generator, z)
        return self.model.modality.decode(latents, self.decoder)


def choose_denoising(model, denoise: str | None = None) -> tuple[str, object]:
    """(denoise, the fine-tuned decoder or None) for a latent model's `DecodedSampler`. ``denoise`` None: the
    decoder when the model has one for its training noise std sigma, else one Tweedie step (none if the model was
    trained without noise), as `tarflow sample`; "tweedie" or "none" as asked."""
    if denoise not in (None, "tweedie", "none"):
        raise ConfigError(f"a latent model's samples are denoised by its fine-tuned decoder (the default when it "
                          f"has one), one Tweedie step (tweedie), or not at all (none); got {denoise!r}")
    metadata = model.metadata
    sigma = float(metadata.get("noise_std", 0.0)) if metadata.get("noise") == "gaussian" else 0.0
    if denoise is None:
        decoder = model.modality.denoising_decoder(sigma) if sigma else None
        if decoder is not None:
            return "decoder", decoder
        denoise = "tweedie" if sigma else "none"
    if denoise == "tweedie" and not sigma:
        raise ConfigError("the Tweedie step needs the training noise std, which this model's metadata lacks (it "
                          "was not trained with gaussian noise)")
    return denoise, None
