"""TensorBoard logging (``--tensorboard true``): the metric records as scalars, the sample grids as images and
histograms of each block's log-scales, in RUN/tb/, with the tensorboard package's own writer (the optional extra
``tarflow[tensorboard]``). View with ``tensorboard --logdir RUN/tb``."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from ..errors import ConfigError
from ..metrics.scales import log_scales

TENSORBOARD_DIR = "tb"
NOT_SCALARS = ("step", "elapsed_s")


class TensorBoardLog:
    """A SummaryWriter on RUN/tb; a run resumed from the checkpoint of ``step`` hides the events logged after it."""

    def __init__(self, run_dir: str | Path, step: int = 0):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--tensorboard needs the tensorboard package: pip install 'tarflow[tensorboard]' "
                              "(or pip install tensorboard), or leave --tensorboard off") from None
        self.writer = SummaryWriter(str(Path(run_dir) / TENSORBOARD_DIR), purge_step=step + 1 if step else None)

    def scalars(self, record: dict[str, Any]) -> None:
        """Every number of a metrics.jsonl record (loss, bpd, lr, grad_norm, test_bpd, ...) at its step."""
        for name, value in record.items():
            if name not in NOT_SCALARS and isinstance(value, (int, float)) and not isinstance(value, bool):
                self.writer.add_scalar(name, value, record["step"])

    def samples(self, grid_file: Path, step: int) -> None:
        """A sample grid PNG, as the trainer saved it."""
        grid = np.asarray(Image.open(io.BytesIO(Path(grid_file).read_bytes())).convert("RGB"))
        self.writer.add_image("samples", grid, step, dataformats="HWC")

    def scales(self, model, probe, step: int) -> None:
        """Histograms of log sigma per block (`tarflow.metrics.scales`) on the fixed probe images and labels."""
        for block, scale in enumerate(log_scales(model, *probe)):
            self.writer.add_histogram(f"log_scale/block_{block}", scale.float().cpu(), step)

    def close(self) -> None:
        self.writer.close()
