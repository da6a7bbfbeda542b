"""A run directory: its checks, its config.json (created, compared when resumed, read back) and its metrics log.

A run directory holds config.json (the whole run config), checkpoint/, model/, metrics.jsonl, samples and
report.html; `train` refuses any other non-empty directory so that it never writes among a user's files.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from .. import __version__
from ..errors import ConfigError
from ..flows.saving import is_model_dir
from ..io import LOCK_FILE, OutputError, atomic_write_text, describe_entries, remove_temporaries
from .checkpoint import find_checkpoint
from .config import RUNTIME_FIELDS, RunConfig

RUN_CONFIG = "config.json"


def check_run_dir(run_dir: Path) -> None:
    """Refuse a run directory that is a file, or that holds entries and is not a run (no config.json):
    training would write its files among the user's. Called before the run's lock file is created."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir} is a file, not a run directory: choose a new or empty directory "
                          f"({run_dir} was not changed)")
    ancestor = next(p for p in run_dir.absolute().parents if p.exists())
    if not ancestor.is_dir():
        raise OutputError(f"cannot create {run_dir}: {ancestor} is a file, not a directory")
    if is_model_dir(run_dir):
        raise OutputError(f"{run_dir} is a saved model directory, not a run directory: choose a new or empty "
                          f"directory for the run (nothing was changed)")
    if not run_dir.is_dir() or (run_dir / RUN_CONFIG).is_file():
        return
    if any(p.name != LOCK_FILE for p in run_dir.iterdir()):  # a lone lock: a run killed before its config
        raise OutputError(f"{run_dir} is not empty and is not a tarflow run directory (no {RUN_CONFIG}); it holds "
                          f"{describe_entries(run_dir)}: choose a new or empty directory (nothing was changed)")


def start_run(run_dir: Path, config: RunConfig) -> Path | None:
    """Create the run directory, or check that an existing one holds the same config; its checkpoint if any."""
    file = run_dir / RUN_CONFIG
    text = json.dumps({"tarflow_version": __version__, **config.to_dict()}, indent=2) + "\n"
    if file.is_file():
        saved = read_config_json(file)
        with contextlib.suppress(ConfigError):  # fields added since the run started take their defaults
            saved = RunConfig.from_dict(saved).to_dict()
        if what_it_computes(saved) != what_it_computes(config.to_dict()):
            diffs = [f"{section}.{k}: {v!r} saved, {getattr(getattr(config, section), k)!r} now"
                     for section in ("model", "train") for k, v in saved.get(section, {}).items()
                     if getattr(getattr(config, section), k, None) != v and k not in RUNTIME_FIELDS]
            raise ConfigError(f"{run_dir} holds a run with a different config ({'; '.join(diffs) or 'other fields'}). "
                              f"Resume it with `tarflow train --resume {run_dir}`, or choose a new --out directory.")
        remove_temporaries(run_dir)  # left by writers killed mid-write (we hold the run's lock)
        remove_temporaries(run_dir / "samples")
        return find_checkpoint(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, text)
    return None


def what_it_computes(config: dict[str, Any]) -> dict[str, Any]:
    """A run config without the fields that say where it runs (device, data location, backend)."""
    train = {k: v for k, v in config.get("train", {}).items() if k not in RUNTIME_FIELDS}
    return {**config, "train": train}


def load_run_config(run_dir: str | Path) -> RunConfig:
    file = Path(run_dir) / RUN_CONFIG
    if not file.is_file():
        raise ConfigError(f"{run_dir} is not a training run: {RUN_CONFIG} is missing")
    return RunConfig.from_dict(read_config_json(file))


def read_config_json(file: Path) -> dict[str, Any]:
    try:
        saved = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file} is not valid JSON ({e}); it was edited or damaged") from None
    if not isinstance(saved, dict):
        raise ConfigError(f"{file} does not hold a run config")
    saved.pop("tarflow_version", None)
    return saved


def trim_metrics(run_dir: Path, step: int) -> None:
    """Drop metric lines written after the checkpoint being resumed (they will be written again)."""
    file = run_dir / "metrics.jsonl"
    if file.is_file():
        lines = [ln for ln in file.read_text().splitlines() if ln.strip()]
        kept = []
        for ln in lines:
            try:
                if json.loads(ln)["step"] <= step:
                    kept.append(ln)
            except (json.JSONDecodeError, KeyError):
                continue  # a line cut short by a crash
        atomic_write_text(file, "".join(k + "\n" for k in kept))
