"""Training checkpoints: weights, EMA, optimizer, schedule, step and RNG states, written atomically."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save_file
from torch import nn

from ..errors import CheckpointError
from ..flows.tarflow import read_weights
from ..io import atomic_dir, existing_dir

CHECKPOINT_DIR = "checkpoint"
MODEL, EMA, STATE = "model.safetensors", "ema.safetensors", "trainer.pt"


def save_checkpoint(run_dir: Path, model: nn.Module, ema: nn.Module | None, state: dict[str, Any]) -> Path:
    """Replace ``run_dir/checkpoint`` atomically: a crash mid-write leaves the previous checkpoint whole."""
    path = Path(run_dir) / CHECKPOINT_DIR
    with atomic_dir(path) as tmp:
        save_file(cpu_state(model), str(tmp / MODEL))
        if ema is not None:
            save_file(cpu_state(ema), str(tmp / EMA))
        torch.save(state, tmp / STATE)
    return path


def cpu_state(module: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}


def find_checkpoint(run_dir: Path) -> Path | None:
    return existing_dir(Path(run_dir) / CHECKPOINT_DIR)


def load_checkpoint(path: Path, model: nn.Module, ema: nn.Module | None) -> dict[str, Any]:
    """Load weights (and EMA) into the modules in place; return the trainer state dict."""
    model.load_state_dict(read_weights(path / MODEL, model))
    if ema is not None:
        ema.load_state_dict(read_weights(path / EMA, ema))
    file = path / STATE
    if not file.is_file():
        raise CheckpointError(f"{file} is missing: the checkpoint in {path} is incomplete")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, io.UnsupportedOperation) as e:
        raise CheckpointError(f"{file} cannot be read ({type(e).__name__}); the file is truncated or corrupt") from None
