"""The training loop: one function, read top to bottom."""

from __future__ import annotations

import contextlib
import copy
import json
import math
import re
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data import bin_width, dequantize, load_dataset
from ..data.datasets import ImageData
from ..errors import ConfigError, TarflowError
from ..flows import FlowConfig, TarFlow
from ..io import atomic_write_text, remove_temporaries
from ..metrics import evaluate_bpd
from ..sampling import Guidance, SequentialSampler
from ..viz import plot_curves, save_grid, to_uint8
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig, TrainConfig
from .device import amp_dtype, autocast, pick_device
from .faults import BadSteps, StopSignals, run_guards

RUN_CONFIG = "config.json"


def train(config: RunConfig, run_dir: str | Path, progress: bool = True, stop_at: int | None = None
          ) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; return the final test evaluation.

    A run directory that already holds a checkpoint of the same config is resumed from it, and the result
    is exactly that of an uninterrupted run (on CPU). ``stop_at`` ends the process-local loop after that
    step (checkpointing first), as an interruption would. Faults (see `faults`): a second trainer on the
    same directory is refused; SIGINT/SIGTERM save a checkpoint at the end of the step and raise
    `TrainingStopped`; a step with a non-finite batch, loss or gradient is skipped and logged, and
    ``max_bad_steps`` in a row stop the run with the last good weights saved; a full or read-only disk
    raises `OutputError` with the previous checkpoint intact.
    """
    tc, mc, run_dir = config.train, config.model, Path(run_dir)
    device = pick_device(tc.device)
    data, test = load_dataset(tc.dataset, "train"), load_dataset(tc.dataset, "test")
    check_fits(mc, data)
    with run_guards(run_dir) as stop:
        return train_loop(config, run_dir, device, data, test, progress, stop_at, stop)


def train_loop(config: RunConfig, run_dir: Path, device: torch.device, data: ImageData, test: ImageData,
               progress: bool, stop_at: int | None, stop: StopSignals) -> dict[str, Any]:
    tc, mc = config.train, config.model
    torch.manual_seed(tc.seed)
    model = TarFlow(mc).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema_decay else None
    optimizer = make_optimizer(model, tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))
    dtype = amp_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    bad = BadSteps(tc.max_bad_steps)

    step, elapsed = 0, 0.0
    checkpoint = start_run(run_dir, config)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, ema)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        step, elapsed = state["step"], state["elapsed_s"]
        bad.in_a_row = state.get("bad_steps_in_a_row", 0)
        print(f"resuming {run_dir} from step {step}")
    trim_metrics(run_dir, step)
    print(f"training on {device} ({'amp ' + str(dtype).removeprefix('torch.') if dtype else 'float32'}): "
          f"{sum(p.numel() for p in model.parameters()):,} parameters, {len(data):,} training images")

    D, bw = mc.num_dims, bin_width(data.levels)
    log = open(run_dir / "metrics.jsonl", "a")
    bar = tqdm(total=tc.steps, initial=step, desc="train", disable=not progress, dynamic_ncols=True,
               mininterval=0.1 if sys.stderr.isatty() else 10.0)  # a log file gets a line every 10 s
    t0, window = time.perf_counter() - elapsed, []
    model.train()
    while step < tc.steps:
        x, y = batch(data, step, tc, mc, device)
        optimizer.zero_grad(set_to_none=True)
        loss = grad_norm = torch.tensor(float("nan"))
        batch_ok = bool(torch.isfinite(x).all())  # log_prob refuses NaN input: such a batch is a bad step
        if batch_ok:
            with autocast(device, dtype):
                loss = -model.log_prob(x, y).mean() / D  # nats per dimension
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf"))
        skipped = bad.check(batch_ok, loss, grad_norm, scaler.is_enabled())  # why the step is bad, or None
        if not skipped:
            scaler.step(optimizer)
            if ema is not None:
                update_ema(ema, model, tc.ema_decay, step)
        if batch_ok:
            scaler.update()
        advance(scheduler)
        step += 1

        bar.update(1)
        record = {}
        if skipped:
            record["bad_step"] = skipped
            bar.write(f"step {step}: skipped, {skipped} ({bad.in_a_row} in a row; the run stops at {tc.max_bad_steps})")
        else:
            bpd = (loss.item() - math.log(bw)) / math.log(2)
            window.append(bpd)
            bar.set_postfix(loss=f"{loss.item():.4f}", bpd=f"{bpd:.3f}")
        if (step % tc.log_every == 0 or step == tc.steps) and window:
            record.update(loss=loss.item() if not skipped else None, bpd=sum(window) / len(window),
                          lr=scheduler.get_last_lr()[0], grad_norm=grad_norm.item() if not skipped else None)
            window = []
        final = ema if ema is not None else model
        if every(step, tc.eval_every, tc.steps):
            record["test_bpd"] = evaluate_bpd(final, test.images, labels_for(test, mc), test.levels)["bits_per_dim"]
            bar.write(f"step {step}: test bits/dim {record['test_bpd']:.4f}")
            model.train()
        if every(step, tc.sample_every, tc.steps):
            sample_grid(final, tc, mc, data.levels, run_dir / "samples" / f"step_{step:06d}.png")
        if record:
            record.update(step=step, elapsed_s=round(time.perf_counter() - t0, 3))
            log.write(json.dumps(record) + "\n")
            log.flush()
        halt = step == stop_at or stop.requested or bad.exhausted
        if every(step, tc.checkpoint_every, tc.steps) or halt:
            state = {"step": step, "elapsed_s": time.perf_counter() - t0, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "rng": {"torch": torch.get_rng_state()}, "bad_steps_in_a_row": bad.in_a_row}
            save_checkpoint(run_dir, model, ema, state)
            plot_curves(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
        if halt:
            break
    bar.close()
    log.close()
    if stop.requested:
        raise stop.error(run_dir, step)
    if bad.exhausted:
        raise bad.error(run_dir, step, tc)
    if step < tc.steps:
        return {"step": step}

    final = ema if ema is not None else model
    metadata = {"dataset": tc.dataset, "levels": data.levels, "noise": tc.noise, "noise_std": noise_std(tc, data),
                "steps": step}
    final.save_pretrained(run_dir / "model", metadata)
    sample_grid(final, tc, mc, data.levels, run_dir / "samples.png")
    result = evaluate_bpd(final, test.images, labels_for(test, mc), test.levels, draws=tc.eval_draws,
                          progress=progress)
    result.update(dataset=tc.dataset, split="test", conditional=bool(mc.num_classes), steps=step,
                  train_time_s=round(time.perf_counter() - t0, 1), device=str(device))
    atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
    return result


def start_run(run_dir: Path, config: RunConfig) -> Path | None:
    """Create the run directory, or check that an existing one holds the same config; its checkpoint if any."""
    file = run_dir / RUN_CONFIG
    text = json.dumps({"tarflow_version": __version__, **config.to_dict()}, indent=2) + "\n"
    if file.is_file():
        saved = read_config_json(file)
        with contextlib.suppress(ConfigError):  # fields added since the run started take their defaults
            saved = RunConfig.from_dict(saved).to_dict()
        if saved != config.to_dict():
            diffs = [f"{section}.{k}: {v!r} saved, {getattr(getattr(config, section), k)!r} now"
                     for section in ("model", "train") for k, v in saved.get(section, {}).items()
                     if getattr(getattr(config, section), k, None) != v]
            raise ConfigError(f"{run_dir} holds a run with a different config ({'; '.join(diffs) or 'other fields'}). "
                              f"Resume it with `tarflow train --resume {run_dir}`, or choose a new --out directory.")
        remove_temporaries(run_dir)  # left by writers killed mid-write (we hold the run's lock)
        remove_temporaries(run_dir / "samples")
        return find_checkpoint(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, text)
    return None


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


def check_fits(mc: FlowConfig, data: ImageData) -> None:
    if (mc.image_size, mc.channels) != (data.image_size, data.channels):
        raise ConfigError(f"dataset {data.name!r} has {data.channels}x{data.image_size}x{data.image_size} images "
                          f"but the model is configured for {mc.channels}x{mc.image_size}x{mc.image_size}: "
                          f"set image_size={data.image_size} channels={data.channels}")
    if mc.num_classes not in (0, data.num_classes):
        raise ConfigError(f"dataset {data.name!r} has {data.num_classes} classes: set num_classes="
                          f"{data.num_classes} (conditional) or 0 (unconditional), not {mc.num_classes}")


def make_optimizer(model: TarFlow, tc: TrainConfig) -> torch.optim.AdamW:
    """AdamW(0.9, 0.95); weight decay on matrices only, not on biases, norms or embeddings' offsets."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    rest = [p for p in model.parameters() if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": tc.weight_decay}, {"params": rest, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=tc.lr, betas=(0.9, 0.95))


def lr_factor(step: int, tc: TrainConfig) -> float:
    """Linear warmup over warmup_steps, then cosine decay to zero at the last step."""
    if step < tc.warmup_steps:
        return (step + 1) / tc.warmup_steps
    progress = (step - tc.warmup_steps) / max(1, tc.steps - tc.warmup_steps)
    return 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def advance(scheduler: torch.optim.lr_scheduler.LRScheduler) -> None:
    """One step of the schedule, also after a skipped step (torch warns when the first steps are skipped)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", re.escape("Detected call of `lr_scheduler.step()` before"), UserWarning)
        scheduler.step()


@torch.no_grad()
def update_ema(ema: TarFlow, model: TarFlow, decay: float, step: int) -> None:
    """ema <- d ema + (1 - d) model, with d warmed up as min(decay, (1 + step) / (10 + step))."""
    d = min(decay, (1 + step) / (10 + step))
    for e, p in zip(ema.parameters(), model.parameters()):
        e.lerp_(p, 1 - d)


def batch(data: ImageData, step: int, tc: TrainConfig, mc: FlowConfig, device: torch.device):
    """The images and labels of ``step``: a function of (seed, step) only, so a resumed run sees the same batches.

    Epochs are fixed permutations of the training set; the last partial batch of an epoch is dropped.
    """
    n = len(data)
    per_epoch = max(1, n // tc.batch_size)
    epoch, i = divmod(step, per_epoch)
    order = torch.randperm(n, generator=torch.Generator().manual_seed(tc.seed * 1_000_003 + epoch))
    idx = order[i * tc.batch_size:(i + 1) * tc.batch_size]
    g = torch.Generator().manual_seed(tc.seed * 1_000_003 + 7_919 * (step + 1))
    x = dequantize(data.images[idx], data.levels, tc.noise, tc.noise_std, generator=g)
    y = None
    if mc.num_classes:
        y = data.labels[idx].clone()
        y[torch.rand(len(idx), generator=g) < tc.label_dropout] = mc.num_classes
        y = y.to(device)
    return x.to(device), y


def labels_for(data: ImageData, mc: FlowConfig):
    return data.labels if mc.num_classes else None


def noise_std(tc: TrainConfig, data: ImageData) -> float:
    """The std of the training noise in model units: sigma, or bin/sqrt(12) for uniform dequantization."""
    return tc.noise_std if tc.noise == "gaussian" else bin_width(data.levels) / math.sqrt(12)


def every(step: int, interval: int, last: int) -> bool:
    return step == last or (interval > 0 and step % interval == 0)


def sample_grid(model: TarFlow, tc: TrainConfig, mc: FlowConfig, levels: int, path: Path) -> Path:
    """A grid of ``num_samples`` samples; for a class-conditional model, one class per column."""
    n = tc.num_samples
    y = torch.arange(n) % mc.num_classes if mc.num_classes else None
    guidance = Guidance(tc.sample_guidance) if tc.sample_guidance and mc.num_classes else None
    x = SequentialSampler(model).sample(n, y, tc.sample_temperature, guidance,
                                        generator=torch.Generator().manual_seed(tc.seed))
    return save_grid(to_uint8(x, levels), path, nrow=mc.num_classes or 10)


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
