"""What can stop a training run early, in small pieces the loop calls: the run lock, stop signals, write
errors and non-finite steps. Each one that stops the run does so after saving a checkpoint, with a message."""

from __future__ import annotations

import contextlib
import math
import os
import signal
import threading
from pathlib import Path
from typing import Iterator

import torch

from ..errors import TarflowError
from ..io import OutputError, dir_lock, reporting_write_errors
from .config import TrainConfig


class TrainingStopped(TarflowError):
    """Training stopped before its last step, with a checkpoint saved; ``exit_code`` is for the shell."""

    def __init__(self, message: str, step: int, exit_code: int = 2):
        super().__init__(message)
        self.step, self.exit_code = step, exit_code


@contextlib.contextmanager
def run_guards(run_dir: Path) -> Iterator["StopSignals"]:
    """Everything that protects a run while it trains: the run directory's lock (rank 0 of a torchrun job
    or a lone process takes it, so a second trainer on the same directory is refused), SIGINT/SIGTERM
    handling (yielded: the loop polls it), and clear errors when the run directory cannot be written."""
    rank = os.environ.get("RANK", "0")
    lock = dir_lock(run_dir, "training process") if rank == "0" else contextlib.nullcontext()
    try:
        with lock, StopSignals() as stop, reporting_write_errors(run_dir, only_inside=True):
            yield stop
    except OutputError as e:
        raise OutputError(f"{e}. The last checkpoint in {run_dir}, if any, is intact: fix this and re-run the same command "
                          f"(or `tarflow train --resume {run_dir}`) to continue from it", e.errno) from None


class StopSignals:
    """While active (in the main thread), SIGINT and SIGTERM ask the loop to stop at the end of the current
    step, after saving a checkpoint; a second signal stops at once (KeyboardInterrupt; the last checkpoint
    stays whole, as after any crash)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum: int | None = None
        self.previous: dict[int, object] = {}

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self.previous.items():
            signal.signal(s, handler)

    def handle(self, signum: int, frame) -> None:
        if self.signum is not None:
            raise KeyboardInterrupt
        self.signum = signum
        os.write(2, f"\n{signal.Signals(signum).name}: stopping at the end of this step, after saving a checkpoint "
                    f"(send it again to stop at once)\n".encode())

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def error(self, run_dir: Path, step: int) -> TrainingStopped:
        return TrainingStopped(f"training stopped by {signal.Signals(self.signum).name} at step {step}; the checkpoint "
                               f"in {run_dir}/checkpoint holds that step. Continue with "
                               f"`tarflow train --resume {run_dir}`", step, 128 + self.signum)


class BadSteps:
    """Steps whose batch, loss or gradient norm is not finite are skipped (no optimizer or EMA update; the
    step counter and learning-rate schedule still advance, so the schedule stays a function of the step);
    ``limit`` of them in a row stop the run. The count in a row is part of the checkpoint."""

    def __init__(self, limit: int, in_a_row: int = 0):
        self.limit, self.in_a_row, self.last_reason = limit, in_a_row, ""

    def check(self, batch_ok: bool, loss: torch.Tensor, grad_norm: torch.Tensor, scaled: bool) -> str | None:
        """Why this step is bad (a short reason), or None for a good step. With an fp16 GradScaler
        (``scaled``) non-finite gradients are the scaler's business: it skips them and lowers its scale."""
        reason = None
        if not batch_ok:
            reason = "the batch holds NaN or inf"
        elif not math.isfinite(loss.item()):
            reason = f"the loss is {loss.item()}"
        elif not scaled and not math.isfinite(grad_norm.item()):
            reason = f"the gradient norm is {grad_norm.item()}"
        self.in_a_row = self.in_a_row + 1 if reason else 0
        self.last_reason = reason or self.last_reason
        return reason

    @property
    def exhausted(self) -> bool:
        return self.in_a_row >= self.limit

    def error(self, run_dir: Path, step: int, tc: TrainConfig) -> TrainingStopped:
        first = step - self.in_a_row + 1
        causes = [f"a learning rate too high (lr={tc.lr}, warmup_steps={tc.warmup_steps}: try half the lr or a "
                  f"longer warmup)",
                  f"too little input noise for the data (noise={tc.noise}"
                  + (f", noise_std={tc.noise_std}" if tc.noise == "gaussian" else "")
                  + ": with more noise the density stays bounded)",
                  f"flow scales growing without bound (grad_clip={tc.grad_clip}: clip the gradient, or the "
                  f"log-scales)"]
        if self.last_reason.startswith("the batch"):
            causes.insert(0, "NaN or inf values in the training data")
        return TrainingStopped(
            f"training stopped at step {step}: {self.in_a_row} steps in a row ({first}..{step}) were skipped, the "
            f"last because {self.last_reason} (each is logged in {run_dir}/metrics.jsonl as bad_step). The last "
            f"good weights are saved in {run_dir}/checkpoint. Likely causes: " + "; ".join(causes) + ".", step)


def raise_if_stopped(stop: StopSignals, bad_steps: BadSteps, run_dir: Path, step: int, config: TrainConfig) -> None:
    """After a training loop: raise its `TrainingStopped` when a signal or ``max_bad_steps`` bad steps in a row
    ended it (the checkpoint of ``step`` is saved by then)."""
    if stop.requested:
        raise stop.error(run_dir, step)
    if bad_steps.exhausted:
        raise bad_steps.error(run_dir, step, config)
