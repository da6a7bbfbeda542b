"""The architecture of an in-library KL autoencoder (saved in its ``config.json``) and how to train one."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from ..configs import check_choices, option
from ..errors import ConfigError


def list_option(default: list[int], help: str):
    """A list-valued config field (a fresh copy of ``default`` per instance)."""
    return dataclasses.field(default_factory=lambda: list(default), metadata={"help": help, "choices": None})


@dataclass
class AutoencoderConfig:
    """A convolutional KL autoencoder of SD-VAE shape: ResNet blocks with GroupNorm at each resolution, a
    stride-2 convolution between resolutions, 2 x latent_channels outputs (mean, log-variance)."""

    channels: int = option(3, "image channels (1 grey, 3 RGB)")
    latent_channels: int = option(4, "channels of the latent grid (4, as SD-VAE)")
    widths: list[int] = list_option([32, 64, 64], "channels at each resolution; each one after the first halves "
                                    "the resolution, so 3 widths downsample x4 and 4 widths x8")
    blocks_per_level: int = option(1, "ResNet blocks at each resolution")
    norm_groups: int = option(8, "groups of every GroupNorm (each width must be divisible by it)")

    def __post_init__(self):
        for name in ("channels", "latent_channels", "blocks_per_level", "norm_groups"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{name} must be a positive integer, got {value!r}")
        widths = self.widths
        if not isinstance(widths, (list, tuple)) or not widths or \
                not all(isinstance(w, int) and not isinstance(w, bool) and w >= 1 for w in widths):
            raise ConfigError(f"widths must be a list of positive integers (one per resolution), got {widths!r}")
        self.widths = list(widths)
        uneven = [w for w in self.widths if w % self.norm_groups]
        if uneven:
            raise ConfigError(f"widths {uneven} are not divisible by norm_groups={self.norm_groups}")

    @property
    def downsample(self) -> int:
        """Image side / latent side: 2^(len(widths) - 1)."""
        return 2 ** (len(self.widths) - 1)


@dataclass
class AutoencoderTrainConfig:
    """loss = mean squared error per pixel value + kl_weight KL(q(z|x) || N(0, I)) / (C H W), both per image."""

    dataset: str = option("cifar10", "dataset: digits, mnist, fashion-mnist, cifar10 or folder (see tarflow train)")
    data_dir: str = option("", "local copy of the dataset's files (no download); empty: the download cache")
    image_size: int = option(0, "folder dataset only: images are resized to this side (0: the dataset's own)")
    steps: int = option(2000, "optimizer steps")
    batch_size: int = option(64, "images per step")
    lr: float = option(1e-3, "peak learning rate in (0, 1] (AdamW), warmup then cosine decay to zero")
    warmup_steps: int = option(100, "linear warmup steps")
    kl_weight: float = option(1e-6, "weight of the KL term against the squared error, both summed per image "
                              "(SD-VAE uses 1e-6 with an L1 + perceptual loss)")
    seed: int = option(0, "seed of the data order, noise and initialisation")
    log_every: int = option(50, "steps between metric log lines")
    checkpoint_every: int = option(500, "steps between checkpoints (0 = only at the end)")
    device: str = option("auto", "device: auto (cuda, then mps, then cpu), or a torch device such as cpu")

    def __post_init__(self):
        check_choices(self)
        for name in ("steps", "batch_size", "log_every"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("warmup_steps", "checkpoint_every", "image_size", "seed"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must not be negative, got {getattr(self, name)}")
        if not 0 < self.lr <= 1:
            raise ConfigError(f"lr must be in (0, 1], got {self.lr}")
        if not math.isfinite(self.kl_weight) or self.kl_weight < 0:
            raise ConfigError(f"kl_weight must be a finite number >= 0, got {self.kl_weight}")
