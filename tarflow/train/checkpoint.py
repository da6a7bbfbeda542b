"""Training checkpoints: weights, EMA, optimizer, schedule, step and RNG states, written atomically."""

from __future__ import annotations

import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from ..errors import CheckpointError
from ..flows.saving import read_weights
from ..io import atomic_dir, existing_dir, write_bytes

CHECKPOINT_DIR = "checkpoint"
MODEL, EMA, STATE = "model.safetensors", "ema.safetensors", "trainer.pt"
STATE_KEYS = ("step", "optimizer", "scheduler", "scaler", "rng")


def save_checkpoint(run_dir: Path, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None,
                    state: dict[str, Any]) -> Path:
    """Replace ``run_dir/checkpoint`` atomically: a crash mid-write leaves the previous checkpoint whole.

    ``model`` and ``ema`` are whole CPU state dicts. Each file is serialised in memory, then written by Python, so that a full or read-only disk surfaces
    as an `OutputError` with its cause (safetensors and torch.save report write failures without errno).
    """
    path = Path(run_dir) / CHECKPOINT_DIR
    with atomic_dir(path) as tmp:
        write_bytes(tmp / MODEL, safetensors_bytes(model))
        if ema is not None:
            write_bytes(tmp / EMA, safetensors_bytes(ema))
        buffer = io.BytesIO()
        torch.save(state, buffer)
        write_bytes(tmp / STATE, buffer.getbuffer())
    return path


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
        state = torch.load(file, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, pickle.UnpicklingError, zipfile.BadZipFile, io.UnsupportedOperation,
            ValueError, KeyError, TypeError, AttributeError) as e:
        raise CheckpointError(f"{file} cannot be read ({type(e).__name__}); the file is truncated or corrupt") from None
    missing = [k for k in STATE_KEYS if k not in state] if isinstance(state, dict) else list(STATE_KEYS)
    if missing:
        raise CheckpointError(f"{file} lacks {', '.join(missing)}; the file is corrupt or not a tarflow checkpoint")
    return state
