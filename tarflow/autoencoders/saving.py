"""Autoencoder directories: the library's own (config.json with "format": "tarflow-autoencoder" +
model.safetensors) and diffusers ``AutoencoderKL`` folders, told apart by their config.json."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from .. import __version__
from ..configs import from_dict
from ..errors import CheckpointError, ConfigError
from ..flows.saving import read_weights
from ..io import atomic_files, existing_dir, write_bytes
from .base import Autoencoder
from .config import AutoencoderConfig

FORMAT = "tarflow-autoencoder"
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
OWNED_FILES = (WEIGHTS_NAME, CONFIG_NAME)  # commit order: config.json, which marks the directory as ours, last
EXPECTED = (f"a directory saved by `tarflow autoencoder train` (config.json with \"format\": \"{FORMAT}\" and "
            f"{WEIGHTS_NAME}), its run directory, or a diffusers AutoencoderKL folder (config.json with "
            f"\"_class_name\": \"AutoencoderKL\" and diffusion_pytorch_model.safetensors, or a pipeline folder "
            f"with it in vae/)")


def save_autoencoder(model, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    config = {"format": FORMAT, "tarflow_version": __version__, "model": dataclasses.asdict(model.config),
              "metadata": metadata or {}}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_files(path, OWNED_FILES, is_autoencoder_dir) as tmp:
        write_bytes(tmp / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
        write_bytes(tmp / WEIGHTS_NAME, safetensors_bytes(state))
    return Path(path)


def read_json(file: Path) -> dict[str, Any] | None:
    try:
        data = json.loads(file.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def is_autoencoder_dir(path: Path) -> bool:
    """Whether ``path`` holds a config.json that `save_autoencoder` wrote."""
    return (read_json(Path(path) / CONFIG_NAME) or {}).get("format") == FORMAT


def find_autoencoder(path: str | Path) -> tuple[str, Path]:
    """("library" or "diffusers", the directory holding its config.json) for an autoencoder directory, a run
    directory of `tarflow autoencoder train` (its model/) or a diffusers pipeline folder (its vae/)."""
    given = Path(path)
    root = existing_dir(given)
    if root is None:
        raise CheckpointError(f"autoencoder directory {given} does not exist; expected {EXPECTED}")
    for folder in (root, root / "model", root / "vae"):
        data = read_json(existing_dir(folder) / CONFIG_NAME) if existing_dir(folder) else None
        if data is None:
            continue
        if data.get("format") == FORMAT:
            return "library", existing_dir(folder)
        if data.get("_class_name") == "AutoencoderKL":
            return "diffusers", existing_dir(folder)
    raise CheckpointError(f"{given} is not an autoencoder directory: expected {EXPECTED}")


def library_config(model_dir: Path) -> AutoencoderConfig:
    data = read_json(model_dir / CONFIG_NAME) or {}
    try:
        return from_dict(AutoencoderConfig, data.get("model", {}), "autoencoder config")
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{model_dir / CONFIG_NAME}: {e}") from None


def load_library_autoencoder(path: str | Path, map_location: str | torch.device = "cpu"):
    from .model import KLAutoencoder

    kind, model_dir = find_autoencoder(path)
    if kind != "library":
        raise CheckpointError(f"{path} holds a diffusers AutoencoderKL: load it with tarflow.autoencoders."
                              f"load_autoencoder (needs pip install tarflow[diffusers])")
    model = KLAutoencoder(library_config(model_dir))
    model.load_state_dict(read_weights(model_dir / WEIGHTS_NAME, model), strict=True, assign=True)
    model.metadata = (read_json(model_dir / CONFIG_NAME) or {}).get("metadata", {})
    model.source = str(path)
    return model.to(map_location).eval().requires_grad_(False)


def load_autoencoder(path: str | Path, map_location: str | torch.device = "cpu") -> Autoencoder:
    """The frozen autoencoder in ``path``: the library's own, or a diffusers AutoencoderKL (optional extra)."""
    kind, _ = find_autoencoder(path)
    if kind == "library":
        return load_library_autoencoder(path, map_location)
    from .diffusers import DiffusersAutoencoder

    return DiffusersAutoencoder.from_directory(path, map_location)


def autoencoder_geometry(path: str | Path) -> tuple[int, int, int]:
    """(image channels, latent channels, downsample) read from the directory's config.json alone (no weights)."""
    kind, model_dir = find_autoencoder(path)
    if kind == "library":
        config = library_config(model_dir)
        return config.channels, config.latent_channels, config.downsample
    from .diffusers import diffusers_geometry

    return diffusers_geometry(read_json(model_dir / CONFIG_NAME))
