"""One optimisation step, shared by the training loop and the benchmarks (benchmarks/techniques.py).

loss = -E[log p(x | y)] / D (nats per dimension, D = C H W; for a noise-conditioned model
-E[w(t) log p_t(x | y)] / D, see `noise_levels`), then backward, gradient clipping, an optimizer
step, the EMA update and one step of the learning-rate schedule. A step whose batch, loss or gradient norm is
not finite is skipped (no optimizer or EMA update; the schedule still advances), see `faults.BadSteps`.
"""

from __future__ import annotations

import copy
import math
import re
import warnings
from dataclasses import dataclass
from typing import Callable

import torch

from ..flows import TarFlow
from . import distributed as dist
from .config import TrainConfig
from .device import autocast
from .faults import BadSteps
from .noise_levels import loss_weights


@dataclass
class Optimisation:
    """Everything a training step reads and updates: the model, its optimizer, schedule, loss scaler, EMA copy
    and count of bad steps. ``log_prob`` is log p(x | y) of the model, or of its DDP / FSDP wrapper."""

    model: TarFlow
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    bad_steps: BadSteps
    ema: TarFlow | None = None
    log_prob: Callable | None = None
    amp: torch.dtype | None = None  # autocast dtype, None for float32

    def __post_init__(self):
        self.log_prob = self.log_prob or self.model.log_prob

    def state(self, step: int, elapsed_s: float, optimizer_state: dict) -> dict:
        """What a checkpoint holds besides the weights (``optimizer_state``: gathered across FSDP shards)."""
        return {"step": step, "elapsed_s": elapsed_s, "optimizer": optimizer_state,
                "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                "rng": {"torch": torch.get_rng_state()}, "bad_steps_in_a_row": self.bad_steps.in_a_row}

    def restore(self, state: dict) -> None:
        """The schedule, loss scaler and bad-step count of a checkpoint's `state` (the optimizer and RNG are
        restored by the caller: they must be loaded before wrapping, or into shards)."""
        self.scheduler.load_state_dict(state["scheduler"])
        self.scaler.load_state_dict(state["scaler"])
        self.bad_steps.in_a_row = state.get("bad_steps_in_a_row", 0)


@dataclass
class StepResult:
    loss: torch.Tensor  # nats per dimension (NaN when the batch was not finite)
    grad_norm: torch.Tensor  # before clipping (NaN when the batch was not finite)
    skipped: str | None  # why the step was skipped, or None


def ema_copy(model: TarFlow, config: TrainConfig) -> TarFlow | None:
    """A frozen copy of ``model`` for the exponential moving average, or None when ``config.ema_decay`` is 0."""
    return copy.deepcopy(model).requires_grad_(False) if config.ema_decay else None


def start_optimisation(model: TarFlow, config: TrainConfig, device: torch.device, amp: torch.dtype | None = None,
                       ema: TarFlow | None = None, log_prob: Callable | None = None) -> Optimisation:
    """AdamW, the warmup + cosine schedule and a GradScaler (active for float16 only) for ``model``."""
    optimizer = make_optimizer(model, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config))
    scaler = torch.amp.GradScaler(device.type, enabled=amp == torch.float16)
    bad_steps = BadSteps(config.max_bad_steps)
    return Optimisation(model, config, optimizer, scheduler, scaler, bad_steps, ema, log_prob, amp)


def train_step(run: Optimisation, x: torch.Tensor, y: torch.Tensor | None, step: int,
               noise_level: torch.Tensor | None = None) -> StepResult:
    """One step on the batch (x, y) (with its levels t, (B,), for a noise-conditioned model); ``step`` (0-based)
    warms up the EMA decay. See the module docstring."""
    model, config, scaler = run.model, run.config, run.scaler
    run.optimizer.zero_grad(set_to_none=True)
    loss = grad_norm = torch.tensor(float("nan"))
    # log_prob refuses NaN input: such a batch is a bad step, on every rank at once
    batch_ok = not dist.any_rank(not bool(torch.isfinite(x).all()), x.device)
    if batch_ok:
        with autocast(x.device, run.amp):
            if noise_level is None:
                loss = -run.log_prob(x, y).mean() / model.config.num_dims
            else:
                weights = loss_weights(config.loss_weight, noise_level, model.config.noise_level_min,
                                       model.config.noise_level_max)
                loss = -(weights * run.log_prob(x, y, noise_level=noise_level)).mean() / model.config.num_dims
        scaler.scale(loss).backward()
        scaler.unscale_(run.optimizer)
        max_norm = config.grad_clip or float("inf")
        grad_norm = full_tensor(torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm))
    skipped = run.bad_steps.check(batch_ok, loss, grad_norm, scaler.is_enabled())
    if not skipped:
        scaler.step(run.optimizer)
        if run.ema is not None:
            update_ema(run.ema, model, config.ema_decay, step)
    if batch_ok:
        scaler.update()
    advance(run.scheduler)
    return StepResult(loss, grad_norm, skipped)


def full_tensor(norm: torch.Tensor) -> torch.Tensor:
    """A gradient norm as a plain tensor (FSDP returns a DTensor)."""
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm


def make_optimizer(model: TarFlow, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW(0.9, 0.95); weight decay on matrices only, not on biases, norms or embeddings' offsets."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.95))


def lr_factor(step: int, config: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine decay to zero at the last step."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """One step of the schedule, also after a skipped step (torch warns when the first steps are skipped)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"), UserWarning)
        scheduler.step()


@torch.no_grad()
def update_ema(ema: TarFlow, model: TarFlow, decay: float, step: int) -> None:
    """ema <- d ema + (1 - d) model, with d warmed up as min(decay, (1 + step) / (10 + step))."""
    warmed = min(decay, (1 + step) / (10 + step))
    for averaged, param in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(param, 1 - warmed)
    for averaged, buffer in zip(ema.buffers(), model.buffers()):  # sigma-Reparam's u, v: no power iteration
        averaged.copy_(buffer)
