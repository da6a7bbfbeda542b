"""Datasets as compact integer tensors: images (N, C, H, W) of levels 0..L-1, labels (N,)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError


@dataclass
class ImageData:
    """One split of an image dataset; pixel levels, not floats (dequantize per batch)."""

    name: str
    split: str
    images: Tensor  # (N, C, H, W), integer levels in 0..levels-1
    labels: Tensor  # (N,) int64
    levels: int  # L: number of grey levels per channel; bin width 2/L in [-1, 1]
    num_classes: int

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]


def load_digits(split: str) -> ImageData:
    """scikit-learn's 8x8 digits (1,797 images, 17 grey levels 0..16, 10 classes).

    Split deterministically (a fixed permutation): 1,437 train and 360 test images.
    """
    from sklearn.datasets import load_digits as sk_digits

    d = sk_digits()
    order = np.random.RandomState(0).permutation(len(d.target))
    n_test = 360
    idx = order[n_test:] if split == "train" else order[:n_test]
    images = torch.from_numpy(d.images[idx].astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target[idx].astype(np.int64))
    return ImageData("digits", split, images, labels, levels=17, num_classes=10)


DATASETS = {"digits": load_digits}


def load_dataset(name: str, split: str) -> ImageData:
    """A named dataset's ``split`` ("train" or "test")."""
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    return DATASETS[name](split)
