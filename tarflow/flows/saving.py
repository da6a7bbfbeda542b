"""Saved models: a directory with ``config.json`` (architecture, library version, metadata) and ``model.safetensors``.

Format 2 (this release) names the learned prior's parameter ``prior.log_std``; format 1 (tarflow 0.1.0)
named it ``prior_log_std`` and is read by renaming it. Loading needs no architecture arguments.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from safetensors.torch import save as safetensors_bytes
from torch import Tensor, nn

from .. import __version__
from ..configs import from_dict
from ..errors import CheckpointError, ConfigError
from ..io import atomic_files, existing_dir, write_bytes
from .config import FlowConfig

FORMAT_VERSION = 2
READABLE_FORMATS = (1, 2)
CONFIG_NAME, WEIGHTS_NAME = "config.json", "model.safetensors"
# Every file of a model directory the library owns, in commit order (config.json, which marks it as ours, last);
# sampling.json is the sampler calibration of the previous weights: a new save removes it.
OWNED_FILES = (WEIGHTS_NAME, "sampling.json", CONFIG_NAME)
FORMAT_1_RENAMES = {"prior_log_std": "prior.log_std"}


def save_model(model: nn.Module, path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Write ``config.json`` and ``model.safetensors`` into ``path``.

    Only the library's own files are replaced (atomically: a crash leaves the previous save loadable); other
    entries of ``path`` are kept. A directory holding a config.json or model.safetensors that is not a tarflow
    model's, or a file at ``path``, is refused with an `OutputError` (see `atomic_files`).
    """
    config = {"format": "tarflow", "format_version": FORMAT_VERSION, "tarflow_version": __version__,
              "model": dataclasses.asdict(model.config), "metadata": metadata or {}}
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    with atomic_files(path, OWNED_FILES, is_model_dir) as tmp:  # a full disk is an OutputError with its cause
        write_bytes(tmp / CONFIG_NAME, (json.dumps(config, indent=2) + "\n").encode())
        write_bytes(tmp / WEIGHTS_NAME, safetensors_bytes(state))
    return Path(path)


def load_model(cls: type, path: str | Path, map_location: str | torch.device = "cpu"):
    """Rebuild ``cls`` from a saved directory, in eval mode."""
    model_dir = existing_dir(path)
    if model_dir is None:
        raise CheckpointError(f"no saved model at {path}: expected a directory with "
                              f"{CONFIG_NAME} and {WEIGHTS_NAME}")
    data = read_config_json(model_dir)
    model = cls(config_from_json(data, model_dir))
    # assign=True keeps each saved tensor's dtype: a float64 save must not come back as float32.
    model.load_state_dict(read_weights(model_dir / WEIGHTS_NAME, model), strict=True, assign=True)
    model.metadata = data.get("metadata", {})
    modality = getattr(model, "modality", None)  # the discrete AR baseline of text models has none
    if modality is not None:
        modality.found_in(Path(path))
    return model.to(map_location).eval()


def is_model_dir(path: Path) -> bool:
    """Whether ``path`` holds a config.json that `save_model` wrote ("format": "tarflow")."""
    try:
        return json.loads((Path(path) / CONFIG_NAME).read_text()).get("format") == "tarflow"
    except (OSError, ValueError, AttributeError):
        return False


def read_config_json(model_dir: Path) -> dict[str, Any]:
    file = Path(model_dir) / CONFIG_NAME
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: a saved model directory holds {CONFIG_NAME} and {WEIGHTS_NAME}")
    try:
        data = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise CheckpointError(f"{file} is not valid JSON ({e}); the file is truncated or corrupt") from None
    if not isinstance(data, dict) or data.get("format") != "tarflow":
        raise CheckpointError(f"{file} is not a tarflow model config (no \"format\": \"tarflow\")")
    version = data.get("format_version")
    if version not in READABLE_FORMATS:
        raise CheckpointError(
            f"{file} was written in checkpoint format {version} by tarflow {data.get('tarflow_version')}; "
            f"this tarflow ({__version__}) reads formats {', '.join(map(str, READABLE_FORMATS))}. Use the tarflow "
            f"version that wrote it, or convert the checkpoint.")
    return data


def read_config(model_dir: Path) -> FlowConfig:
    return config_from_json(read_config_json(model_dir), model_dir)


def config_from_json(data: dict[str, Any], model_dir: Path) -> FlowConfig:
    try:
        return from_dict(FlowConfig, data.get("model", {}), "model config")
    except (ConfigError, TypeError) as e:
        raise CheckpointError(f"{Path(model_dir) / CONFIG_NAME}: {e}") from None


def read_weights(file: Path, model: nn.Module) -> dict[str, Tensor]:
    """Load a safetensors file (format 1's names renamed) and check that its tensors match ``model``'s one for one."""
    file = Path(file)
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: the directory {file.parent} is incomplete")
    try:
        state = load_file(str(file))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{file} cannot be read ({e}); the file is truncated or corrupt") from None
    state = {FORMAT_1_RENAMES.get(name, name): tensor for name, tensor in state.items()}
    check_state(state, model.state_dict(), file)
    return state


def check_state(state: dict[str, Tensor], expected: dict[str, Tensor], source: Any) -> None:
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(state) & set(expected) if state[k].shape != expected[k].shape)
    if missing or unexpected or wrong:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} tensors (e.g. {missing[:3]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected tensors (e.g. {unexpected[:3]})")
        if wrong:
            k = wrong[0]
            parts.append(f"{len(wrong)} tensors of the wrong shape (e.g. {k}: {tuple(state[k].shape)} "
                         f"saved, {tuple(expected[k].shape)} expected)")
        raise CheckpointError(f"{source} does not match the model layout: {'; '.join(parts)}. "
                              f"It was written by a different layout or version of tarflow.")
