"""The one-process training loop of text models (`text`) and Normalizing Trajectory Models (`trajectory`), read top
to bottom; a `OneProcessJob` says what each kind of model does its own way.

Resume from the run's checkpoint (weights, EMA, optimizer, schedule, loss scaler, bad-step count, torch RNG) and trim
metrics.jsonl to its step. Then per step: the step's batch (a function of (seed, step) alone), `step.train_step`, a
metrics.jsonl record every ``log_every`` steps with the mean train figure of the good steps since the last one, an
evaluation every ``eval_every`` steps (report.html refreshed), samples every ``sample_every`` steps, and a checkpoint
every ``checkpoint_every`` steps and before a halt (``stop_at``, SIGINT/SIGTERM, ``max_bad_steps`` bad steps in a row).
After the last step: the model saved, its test evaluation in eval.json, and the report. The image trainer
(`trainer.train_loop`) has the same shape, plus torchrun (DDP/FSDP), TensorBoard and attention entropy.
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ..io import atomic_write_text
from ..progress import progress_bar
from ..report import write_report
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig
from .faults import raise_if_stopped, run_guards
from .run_dir import start_run, trim_metrics
from .step import StepResult, ema_copy, start_optimisation, train_step
from .trainer import every


@dataclass
class OneProcessJob(ABC):
    """What one kind of model does its own way in `train_one_process`: how it is built, how a batch is drawn, how a
    step's loss becomes the logged figure, what evaluation and samples write, and what the final result holds.
    ``amp``: the autocast dtype of the steps (None: float32)."""

    config: RunConfig
    run_dir: Path
    device: torch.device
    progress: bool
    amp: torch.dtype | None

    @abstractmethod
    def build(self) -> nn.Module:
        """The model on the device (built under the run's seed)."""

    @abstractmethod
    def log_prob(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        """log p(x | y) per sample in nats, or the bound trained in its place: the loss is -mean / D."""

    @abstractmethod
    def batch(self, model: nn.Module, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(x, y) of ``step`` (0-based) on the device, a function of (seed, step) alone: a resumed run sees the
        same batches."""

    @abstractmethod
    def describe(self, model: nn.Module) -> tuple[str, str]:
        """(what is trained, how much training data) for the line "training WHAT on DEVICE: N parameters, DATA"."""

    @abstractmethod
    def figure(self, loss: float) -> float:
        """A good step's loss (nats per dimension) as the train figure that is averaged and logged."""

    @abstractmethod
    def postfix(self, loss: float, figure: float) -> dict[str, str]:
        """The progress bar's figures after a good step."""

    @abstractmethod
    def log_record(self, result: StepResult, figure: float, lr: float) -> dict[str, Any]:
        """A log step's metrics.jsonl entries: ``figure`` the mean over the window, ``result`` this step's."""

    def skipped(self, result: StepResult, step: int, say: Callable[[str], None]) -> dict[str, Any]:
        """A skipped step's metrics.jsonl entries, its reason said in a line."""
        say(f"step {step}: skipped, {result.skipped}")
        return {"bad_step": result.skipped}

    @abstractmethod
    def evaluate(self, model: nn.Module, step: int, say: Callable[[str], None]) -> dict[str, Any]:
        """The metrics.jsonl entries of the evaluation of ``model`` (the EMA copy when kept) at ``step``, its
        figure said in a line."""

    @abstractmethod
    def sample(self, model: nn.Module, step: int) -> None:
        """Samples of ``model`` (the EMA copy when kept) at ``step``, written under RUN/samples."""

    def checkpointed(self) -> None:
        """Called after each checkpoint is saved (by default nothing)."""

    @abstractmethod
    def finish(self, model: nn.Module, step: int, started: float) -> dict[str, Any]:
        """After the last step: save ``model`` (the EMA copy when kept) to RUN/model, write its final samples and
        return its test evaluation with train_time_s, the seconds since the perf_counter reading ``started``."""


def train_one_process(job: OneProcessJob, stop_at: int | None = None) -> dict[str, Any]:
    """Train (or resume) ``job`` in its run directory; return the final test evaluation, or {"step": step} when
    ``stop_at`` ended the loop first (see the module doc)."""
    config, run_dir = job.config, job.run_dir
    train_config = config.train
    with run_guards(run_dir) as stop:
        torch.manual_seed(train_config.seed)
        model = job.build()
        ema = ema_copy(model, train_config)
        step, elapsed = 0, 0.0
        checkpoint = start_run(run_dir, config)
        run = start_optimisation(model, train_config, job.device, job.amp, ema, lambda x, y: job.log_prob(model, x, y))
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, model, ema)
            step, elapsed = state["step"], state["elapsed_s"]
            torch.set_rng_state(state["rng"]["torch"])
            run.optimizer.load_state_dict(state["optimizer"])
            run.restore(state)
            print(f"resuming {run_dir} from step {step}")
        trim_metrics(run_dir, step)
        trained, data = job.describe(model)
        print(f"training {trained} on {job.device}: {sum(p.numel() for p in model.parameters()):,} parameters, {data}")
        log = open(run_dir / "metrics.jsonl", "a")
        bar = progress_bar(total=train_config.steps, initial=step, desc="train", enabled=job.progress,
                           every_steps=train_config.log_every, unit="step")  # a log file: a line every log_every steps
        t0, window = time.perf_counter() - elapsed, []
        model.train()
        while step < train_config.steps:
            x, y = job.batch(model, step)
            result = train_step(run, x, y, step)
            step += 1
            record = {}
            if result.skipped:
                record.update(job.skipped(result, step, bar.write))
            else:
                window.append(job.figure(result.loss.item()))
                bar.set_postfix(refresh=False, **job.postfix(result.loss.item(), window[-1]))
            bar.update(1)  # after the postfix, so a log line shows this step's figures
            if (step % train_config.log_every == 0 or step == train_config.steps) and window:
                record.update(job.log_record(result, sum(window) / len(window), run.scheduler.get_last_lr()[0]))
                window = []
            final = ema if ema is not None else model
            evaluating = every(step, train_config.eval_every, train_config.steps)
            if evaluating:
                record.update(job.evaluate(final, step, bar.write))
                model.train()
            if every(step, train_config.sample_every, train_config.steps):
                job.sample(final, step)
                model.train()
            if record:
                record.update(step=step, elapsed_s=round(time.perf_counter() - t0, 3))
                log.write(json.dumps(record) + "\n")
                log.flush()
            if evaluating:
                write_report(run_dir)  # RUN/report.html, refreshed at every evaluation
            halt = step == stop_at or stop.requested or run.bad_steps.exhausted
            if every(step, train_config.checkpoint_every, train_config.steps) or halt:
                state = run.state(step, time.perf_counter() - t0, run.optimizer.state_dict())
                save_checkpoint(run_dir, model.state_dict(), None if ema is None else ema.state_dict(), state)
                job.checkpointed()
            if halt:
                break
        bar.close()
        log.close()
        raise_if_stopped(stop, run.bad_steps, run_dir, step, train_config)
        if step < train_config.steps:
            return {"step": step}
        result = job.finish(ema if ema is not None else model, step, t0)
        atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        write_report(run_dir)
        return result
