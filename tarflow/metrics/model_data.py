"""The dataset a trained model is measured against: loaded at the size of the model's images, and checked to fit
it. A latent model's images are those its autoencoder decodes to, not its latent grid."""

from __future__ import annotations

import os

from ..errors import ConfigError


def model_levels(model) -> int:
    """Pixel levels of the model's data (256 for 8-bit images), from its metadata."""
    return int(model.metadata.get("levels", 256))


def denoise_std_of(model) -> float | None:
    """The training noise std when the model was trained with Gaussian noise (its samples are then denoised)."""
    if model.metadata.get("noise") != "gaussian":
        return None
    return float(model.metadata.get("noise_std", 0.0)) or None


def image_geometry(model) -> tuple[int, int]:
    """(channels, side) of the model's images: its data for a pixel model, the decoded images for a latent one."""
    channels, side, _ = model.modality.image_shape()
    return channels, side


def folder_size(model, name: str) -> dict:
    """load_dataset arguments that cut a ``folder`` dataset to the size and channels of the model's images."""
    channels, side = image_geometry(model)
    return {"image_size": side, "channels": channels} if name == "folder" else {}


def check_data_fits(model, data, name: str) -> None:
    """Refuse a dataset whose images are not the size and channels of the model's images."""
    channels, side = image_geometry(model)
    if (data.channels, data.image_size) != (channels, side):
        raise ConfigError(f"dataset {name!r} has {data.channels}x{data.image_size}x{data.image_size} images, the model "
                          f"expects {channels}x{side}x{side}")


def load_model_data(model, name: str, split: str, data_dir: str | os.PathLike | None = None, progress: bool = False):
    """Split ``split`` of dataset ``name`` (a ``folder`` dataset resized to the model), checked to fit the model."""
    from ..data import load_dataset

    data = load_dataset(name, split, data_dir=data_dir, progress=progress, **folder_size(model, name))
    check_data_fits(model, data, name)
    return data
