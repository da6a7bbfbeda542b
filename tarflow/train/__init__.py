"""Training: configs, the loop, checkpoints, devices."""

from .config import RunConfig, TrainConfig
from .trainer import load_run_config, train

__all__ = ["RunConfig", "TrainConfig", "load_run_config", "train"]
