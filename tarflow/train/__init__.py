"""Training: configs, the loop, checkpoints, devices."""

from .config import RunConfig, TrainConfig
from .run_dir import load_run_config
from .trainer import train

__all__ = ["RunConfig", "TrainConfig", "load_run_config", "train"]
