"""Finding a trained model: a run directory (from `tarflow train`, its model in ``model/``) or a saved model
directory (config.json + model.safetensors)."""

from __future__ import annotations

from pathlib import Path

import torch

from .errors import ConfigError


def resolve_model_dir(path: str | Path) -> Path:
    """The saved model directory of ``path``: ``path`` itself, or ``path/model`` for a run directory.

    Raises ConfigError (with what to do) for a missing path, an unfinished run or anything else.
    """
    given, path = path, Path(path)  # messages name the path as given
    if not path.exists():
        raise ConfigError(f"{given} does not exist: give a run directory (from `tarflow train`) or a saved model "
                          f"directory (config.json + model.safetensors)")
    has_weights = (path / "model.safetensors").exists()
    has_model_config = (path / "config.json").exists() and not (path / "metrics.jsonl").exists()
    if has_weights or has_model_config:
        return path
    if (path / "model").is_dir() or (path / "model.old").is_dir():
        return path / "model"
    if (path / "checkpoint").exists():
        raise ConfigError(f"{given} holds an unfinished training run (no model/ yet); finish it with "
                          f"`tarflow train --resume {given}`")
    raise ConfigError(f"{given} is neither a run directory nor a saved model directory "
                      f"(config.json + model.safetensors)")


def load_model(path: str | Path, device: str | torch.device = "auto"):
    """(model, its directory): the TarFlow of a run or saved model directory, on ``device`` (auto: the best)."""
    from .flows import TarFlow
    from .flows.saving import read_config
    from .train.device import pick_device

    model_dir = resolve_model_dir(path)
    if read_config(model_dir).modality == "text":
        raise ConfigError(f"{path} holds a text model: use `tarflow generate` and `tarflow eval` (image commands such "
                          f"as sample, calibrate and fid do not apply)")
    return TarFlow.from_pretrained(model_dir, map_location=pick_device(device)), model_dir
