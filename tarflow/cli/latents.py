"""The metric commands on latent models (STARFlow): `tarflow eval` gives test latent nats/dim, and `fid`,
`guidance-accuracy` and `sweep-sampling` measure the images the samples decode to (`Decoding`)."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from typing import Any

from ..errors import ConfigError

LATENT_UNIT = ("nats per latent dimension: -log p(z + sigma eps) / D, z the scaled autoencoder latents of the "
               "split's images, eps ~ N(0, I), sigma = noise_std (the training noise), D = latent_dims; a continuous "
               "density of latents, not comparable with a pixel model's bits/dim (compare FID instead)")


def cmd_eval_latents(args: argparse.Namespace, model, model_dir, name: str, data_dir) -> int:
    """Test latent nats/dim of a latent model, the figure its trainer writes to eval.json (same noise: one draw,
    seeded per batch of 256), as JSON."""
    from ..data import load_dataset
    from ..metrics.model_data import check_data_fits, image_geometry
    from ..train.latents import encode_split, evaluate_latent_nll

    refused = [option for option, given in (("--draws", args.draws != 1), ("--noise-level", args.noise_level),
                                            ("--extrapolate", args.extrapolate)) if given]
    if refused:
        raise ConfigError(f"{', '.join(refused)} do not apply to a latent model: its figure is -log p of its test "
                          f"latents with one draw of its training noise, as in the run's eval.json")
    noise_std = training_noise_std(model, model_dir)
    channels, side = image_geometry(model)
    data = load_dataset(name, args.split, data_dir=data_dir, image_size=side, channels=channels,
                        progress=not args.no_progress)
    check_data_fits(model, data, name)
    if args.prior is not None:
        model.set_likelihood_prior(args.prior)
    model.modality.autoencoder.to(model.device)
    latents = encode_split(model.modality, data, progress=not args.no_progress)
    config = model.config
    labels = latents.labels if config.num_classes else None
    result = evaluate_latent_nll(model, latents, labels, noise_std, seed=args.seed, progress=not args.no_progress)
    result.update(unit=LATENT_UNIT, noise_std=noise_std, latent_dims=config.num_dims, dataset=name,
                  split=args.split, conditional=bool(config.num_classes), model=str(model_dir),
                  likelihood_prior=config.likelihood_prior)
    print(json.dumps(result, indent=2))
    return 0


def training_noise_std(model, model_dir) -> float:
    """The noise std a latent model was trained with (its metadata), at which its latent nats/dim are measured."""
    noise_std = float(model.metadata.get("noise_std", 0.0))
    if not noise_std:
        raise ConfigError(f"{model_dir} does not record its training noise std (metadata noise_std), which the "
                          f"latent nats/dim are measured at")
    return noise_std


@dataclass
class Decoding:
    """How a latent model's samples become images: ``denoise`` (tweedie, decoder or none; see
    `tarflow.sampling.decoded`) and the autoencoder that decodes them, at ``path``."""

    denoise: str
    autoencoder: Any
    path: str

    def wrap(self, sampler):
        """``sampler`` of the model's latents -> a sampler of decoded images."""
        from ..sampling import DecodedSampler

        return DecodedSampler(sampler, self.denoise, self.autoencoder if self.denoise == "decoder" else None)

    def fields(self) -> dict[str, str]:
        """What the JSON results say: the denoising and the decoder used."""
        return {"denoise": self.denoise, "decoder": self.path}

    def weights_sha256(self) -> str:
        """SHA-256 of the decoding autoencoder's tensors (a diffusers one: of its AutoencoderKL), so that a cached
        figure is not reused after the decoder is fine-tuned again."""
        from ..metrics.sweep import weights_sha256

        return weights_sha256(getattr(self.autoencoder, "vae", self.autoencoder))


@dataclass
class WithoutTweedie:
    """A pixel model trained with gaussian noise, sampled without its one Tweedie step (--denoise none), to measure
    what the step does: `Decoding`'s interface, so the metric commands take either."""

    def wrap(self, sampler):
        """``sampler`` -> the same sampler, never denoising."""
        return UndenoisedSampler(sampler)

    def fields(self) -> dict[str, Any]:
        """What the JSON results say (and what a cached sweep row is keyed by)."""
        return {"denoise": "none", "denoise_std": None}

    def weights_sha256(self) -> str:
        return ""  # no decoder: the samples are the flow's own


@dataclass
class UndenoisedSampler:
    """``sampler.sample`` with denoise_std ignored: the raw samples x + sigma eps of a gaussian-noise model."""

    sampler: Any

    @property
    def model(self):
        return self.sampler.model

    def sample(self, n, y=None, temperature=1.0, guidance=None, denoise_std=None, generator=None, z=None):
        return self.sampler.sample(n, y, temperature, guidance, None, generator, z)


def pixel_denoising(model, denoise: str | None) -> WithoutTweedie | None:
    """A pixel model trained with gaussian noise gets one Tweedie step (default, or --denoise tweedie), or none
    (--denoise none: `WithoutTweedie`); other pixel models have no noise to remove and refuse --denoise."""
    gaussian = model.metadata.get("noise") == "gaussian" and not model.config.noise_conditioning
    if denoise is not None and not gaussian:
        raise ConfigError("--denoise here chooses how a latent model's samples are decoded, or whether a pixel "
                          "model trained with gaussian noise gets its one Tweedie step; this model was trained "
                          "without gaussian noise, so its samples have none to remove")
    return WithoutTweedie() if denoise == "none" else None


def sample_decoding(model, denoise: str | None) -> Decoding | WithoutTweedie | None:
    """How the metric commands turn a model's samples into images: the `Decoding` of a latent model's samples; for
    a pixel model, `pixel_denoising` (None, or `WithoutTweedie` for --denoise none); None for a trajectory model.

    ``denoise`` None: the model's fine-tuned decoder when it has one for its training noise std, else one Tweedie
    step in latent space, as `tarflow sample`; "tweedie" forces the step (to compare it with the decoder); "none"
    decodes the noisy latents (`tarflow.sampling.choose_denoising`).
    """
    from ..autoencoders.finetune import DENOISING_DECODER
    from ..sampling import choose_denoising

    if model.config.architecture == "ntm":  # its denoising is its sampler's (cli/trajectory.py)
        return None
    if model.config.modality != "latents":
        return pixel_denoising(model, denoise)
    if denoise == "iterative":
        raise ConfigError("--denoise iterative is for noise-conditioned pixel models (iTARFlow); a latent model's "
                          "samples are denoised by its fine-tuned decoder (the default when it has one), one Tweedie "
                          "step (--denoise tweedie), or not at all (--denoise none)")
    modality = model.modality
    denoise, decoder = choose_denoising(model, denoise)
    if decoder is not None:
        return Decoding(denoise, decoder, str(modality.base_dir / DENOISING_DECODER))
    return Decoding(denoise, modality.autoencoder, str(modality.located()))
