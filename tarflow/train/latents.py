"""Training a flow on autoencoder latents (STARFlow): the dataset encoded once by the frozen autoencoder, noisy
latent batches, and the test figure in latent nats per dimension. Video clips (STARFlow-V) are encoded frame by
frame, (N, F, C, H, W) -> (N, F, C', S, S).

The autoencoder is frozen, so each image is encoded once (its posterior mean) before training; batches are
z + sigma eps, eps ~ N(0, I), with z the scaled latent and sigma = ``noise_std`` in latent units. The density
is continuous, so the figure is -log p(z + sigma eps) / D in nats per latent dimension: not bits/dim, and not
comparable with pixel models (compare FID and sampling time instead).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from ..data.datasets import ImageData
from ..data.quantize import dequantize
from ..errors import ConfigError
from ..flows import FlowConfig
from ..autoencoders import autoencoder_geometry
from ..modalities import Latents, measure_latent_scale
from ..progress import progress_bar
from .latent_cache import latent_key, latent_path, load_latents, save_latents


@dataclass
class LatentData:
    """One split as scaled latents (N, C, S, S) float32, or (N, F, C, S, S) of clips, with the labels and pixel
    levels of its images."""

    name: str
    split: str
    latents: Tensor
    labels: Tensor
    levels: int  # of the source images: samples decode to images of these levels
    num_classes: int
    classes: tuple[str, ...] = ()

    def __len__(self) -> int:
        return self.latents.shape[0]

    @property
    def image_size(self) -> int:
        return self.latents.shape[-1]

    @property
    def channels(self) -> int:
        return self.latents.shape[-3]

    def noisy(self, index: Tensor, noise_std: float, generator: torch.Generator) -> Tensor:
        """The latents ``index`` plus sigma eps (the training distribution)."""
        latents = self.latents[index]
        return latents + noise_std * torch.randn(latents.shape, generator=generator)


def image_geometry(model_config: FlowConfig) -> tuple[int, int]:
    """(image side, channels) of the data: the config's own for pixels; for latents, those of the images its
    autoencoder encodes to the configured latent grid (side = latent side x downsample)."""
    if not model_config.latent:
        return model_config.image_size, model_config.channels
    channels, _, downsample = autoencoder_geometry(autoencoder_dir(model_config))
    return model_config.image_size * downsample, channels


def autoencoder_dir(model_config: FlowConfig) -> str:
    """The configured autoencoder directory as an absolute path (a relative one is read from here)."""
    if not model_config.autoencoder:
        raise ConfigError("a latents model needs autoencoder=DIR (--autoencoder DIR): the directory of a "
                          "`tarflow autoencoder train` run or of a diffusers AutoencoderKL")
    return str(Path(model_config.autoencoder).expanduser().absolute())


@torch.no_grad()
def encode_images(modality: Latents, data: ImageData, batch_size: int = 256, progress: bool = False) -> Tensor:
    """The autoencoder's latents of every image (bin centres 2 (k + 1/2) / L - 1), before shift and scale; of every
    frame for clips (N, F, C, H, W), ``batch_size`` frames at a time. Read from the latents cache when this
    autoencoder has encoded these images before (`latent_cache`), else encoded and written there."""
    autoencoder = modality.autoencoder
    path = latent_path(data.name, data.split, latent_key(autoencoder, data.images, data.levels))
    cached = load_latents(path, tuple(data.images.shape[:data.images.dim() - 3]))
    if cached is not None:
        return cached
    latents = encode_uncached(autoencoder, data, batch_size, progress)
    save_latents(path, latents)
    return latents


def encode_uncached(autoencoder, data: ImageData, batch_size: int, progress: bool) -> Tensor:
    """`encode_images` without the cache."""
    clips = data.images.dim() == 5
    images = data.images.flatten(0, 1) if clips else data.images
    chunks = []
    for start in progress_bar(range(0, len(images), batch_size), desc=f"encoding {data.name} {data.split}",
                              enabled=progress, leave=False):
        batch = dequantize(images[start:start + batch_size], data.levels, "gaussian", 0.0)
        chunks.append(autoencoder.encode(batch.to(getattr(autoencoder, "device", "cpu"))).float().cpu())
    latents = torch.cat(chunks)
    return latents.unflatten(0, data.images.shape[:2]) if clips else latents


def encode_split(modality: Latents, data: ImageData, progress: bool = False) -> LatentData:
    """A split as the flow's data: its images encoded and scaled by the model's own shift and scale, (z - shift) *
    scale, as `prepare_latents` makes the test split during training."""
    raw = encode_images(modality, data, progress=progress)
    latents = (raw - modality.shift) * modality.scale
    return LatentData(data.name, data.split, latents, data.labels, data.levels, data.num_classes, data.classes)


def prepare_latents(model_config: FlowConfig, train_config, data: ImageData, test: ImageData,
                    device: torch.device | str = "cpu", progress: bool = False
                    ) -> tuple[FlowConfig, LatentData, LatentData]:
    """The model config (autoencoder path made absolute; shift and scale measured on ``data`` when latent_scale
    is 0) and both splits as scaled latents. Refuses settings that have no meaning on latents."""
    if train_config.noise != "gaussian":
        raise ConfigError("a latents model trains on noisy latents: set noise=gaussian (--noise gaussian) with "
                          "noise_std in latent units (STARFlow: 0.3); uniform dequantization is for pixel levels")
    if getattr(model_config, "noise_conditioning", False):
        raise ConfigError("noise_conditioning (iTARFlow) is not supported for latents models yet: set "
                          "--noise-conditioning false")
    if train_config.flip:
        raise ConfigError("flip=true is not supported for latents models (each image is encoded once): set "
                          "--flip false")
    model_config = dataclasses.replace(model_config, autoencoder=autoencoder_dir(model_config))
    channels, latent_channels, downsample = autoencoder_geometry(model_config.autoencoder)
    side = data.image_size // downsample
    if channels != data.channels or data.image_size % downsample:
        raise ConfigError(f"the autoencoder in {model_config.autoencoder} takes {channels}-channel images whose side "
                          f"is a multiple of {downsample}, but {data.name} images are "
                          f"{data.channels}x{data.image_size}x{data.image_size}")
    if (model_config.image_size, model_config.channels) != (side, latent_channels):
        raise ConfigError(f"the autoencoder makes {latent_channels}x{side}x{side} latents of {data.name} images: set "
                          f"image_size={side} channels={latent_channels}")
    modality = Latents(model_config.image_size, model_config.channels, model_config.patch_size,
                       model_config.autoencoder, model_config.latent_scale, model_config.latent_shift)
    modality.autoencoder.to(device)
    raw_train, raw_test = encode_images(modality, data, progress=progress), encode_images(modality, test,
                                                                                          progress=progress)
    if not model_config.latent_scale:
        shift, scale = measure_latent_scale(raw_train)
        model_config = dataclasses.replace(model_config, latent_shift=shift, latent_scale=scale)

    def scaled(split: ImageData, raw: Tensor) -> LatentData:
        latents = (raw - model_config.latent_shift) * model_config.latent_scale
        return LatentData(split.name, split.split, latents, split.labels, split.levels, split.num_classes,
                          split.classes)

    return model_config, scaled(data, raw_train), scaled(test, raw_test)


@torch.no_grad()
def evaluate_latent_nll(model, test: LatentData, labels: Tensor | None, noise_std: float, batch_size: int = 256,
                        seed: int = 0, progress: bool = False) -> dict[str, float]:
    """-log p(z + sigma eps) / D in nats per latent dimension over the split: mean and standard error over images;
    the noise of each batch depends only on (seed, batch)."""
    model.eval()
    dims = test.latents[0].numel()
    values = []
    for start in progress_bar(range(0, len(test), batch_size), desc="eval nats/dim", enabled=progress, leave=False):
        index = torch.arange(start, min(start + batch_size, len(test)))
        x = test.noisy(index, noise_std, torch.Generator().manual_seed(seed * 1_000_003 + start))
        y = None if labels is None else labels[index].to(model.device)
        values.append(-model.log_prob(x.to(model.device, model.dtype), y).double().cpu() / dims)
    per_image = torch.cat(values)
    stderr = per_image.std().item() / math.sqrt(len(per_image)) if len(per_image) > 1 else float("nan")
    return {"latent_nats_per_dim": per_image.mean().item(), "stderr": stderr, "images": len(per_image), "draws": 1}
