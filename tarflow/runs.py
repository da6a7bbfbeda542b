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


def load_model(path: str | Path, device: str | torch.device = "auto", trajectory: bool = False):
    """(model, its directory): the TarFlow of a run or saved model directory, on ``device`` (auto: the best).

    A Normalizing Trajectory Model (architecture=ntm) is returned when ``trajectory`` is true (the commands that
    support it) and refused with a ConfigError otherwise; text models are refused.
    """
    from .flows import NormalizingTrajectoryModel, TarFlow
    from .flows.saving import read_config
    from .train.device import pick_device

    model_dir = resolve_model_dir(path)
    config = read_config(model_dir)
    if config.modality == "text":
        raise ConfigError(f"{path} holds a text model: use `tarflow generate` and `tarflow eval` (image commands such "
                          f"as sample, calibrate and fid do not apply)")
    if config.architecture == "pretzel":
        raise ConfigError(f"{path} holds a pretzel model (interleaved words and images): image commands such as "
                          f"sample, eval and fid do not apply to it (load it with tarflow.flows.pretzel.Pretzel."
                          f"from_pretrained)")
    if config.architecture == "ntm":
        if not trajectory:
            raise ConfigError(f"{path} holds a Normalizing Trajectory Model (architecture=ntm): so far `tarflow "
                              f"sample`, `eval`, `fid`, `guidance-accuracy` and `sweep-sampling` support it, not "
                              f"this command")
        return NormalizingTrajectoryModel.from_pretrained(model_dir, map_location=pick_device(device)), model_dir
    return TarFlow.from_pretrained(model_dir, map_location=pick_device(device)), model_dir


def is_trajectory_model(path: str | Path) -> bool:
    """Whether the run or model directory ``path`` holds a Normalizing Trajectory Model (errors for a bad path, as
    loading would)."""
    from .flows.saving import read_config

    return read_config(resolve_model_dir(path)).architecture == "ntm"
