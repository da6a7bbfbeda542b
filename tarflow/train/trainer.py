"""The training loop: one function, read top to bottom."""

from __future__ import annotations

import copy
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .. import __version__
from ..data import bin_width, dequantize, load_dataset
from ..data.datasets import ImageData
from ..errors import ConfigError, TarflowError
from ..flows import FlowConfig, TarFlow
from ..io import atomic_write_text
from ..metrics import evaluate_bpd
from ..sampling import Guidance, SequentialSampler
from ..viz import plot_curves, save_grid, to_uint8
from .checkpoint import find_checkpoint, load_checkpoint, save_checkpoint
from .config import RunConfig, TrainConfig
from .device import amp_dtype, autocast, pick_device

RUN_CONFIG = "config.json"


def train(config: RunConfig, run_dir: str | Path, progress: bool = True, stop_at: int | None = None
          ) -> dict[str, Any]:
    """Train (or resume) the run in ``run_dir``; return the final test evaluation.

    A run directory that already holds a checkpoint of the same config is resumed from it.
    ``stop_at`` ends the process-local loop after that step (checkpointing first), as an interruption would.
    """
    tc, mc, run_dir = config.train, config.model, Path(run_dir)
    device = pick_device(tc.device)
    data, test = load_dataset(tc.dataset, "train"), load_dataset(tc.dataset, "test")
    check_fits(mc, data)
    torch.manual_seed(tc.seed)
    model = TarFlow(mc).to(device)
    ema = copy.deepcopy(model).requires_grad_(False) if tc.ema_decay else None
    optimizer = make_optimizer(model, tc)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, tc))
    dtype = amp_dtype(device, tc.amp)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)

    step, elapsed = 0, 0.0
    checkpoint = start_run(run_dir, config)
    if checkpoint is not None:
        state = load_checkpoint(checkpoint, model, ema)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        scaler.load_state_dict(state["scaler"])
        torch.set_rng_state(state["rng"]["torch"])
        step, elapsed = state["step"], state["elapsed_s"]
        trim_metrics(run_dir, step)
        print(f"resuming {run_dir} from step {step}")
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
        with autocast(device, dtype):
            loss = -model.log_prob(x, y).mean() / D  # nats per dimension
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), tc.grad_clip or float("inf"))
        if not math.isfinite(loss.item()):
            raise TarflowError(f"the loss became {loss.item()} at step {step + 1}; lower the learning rate "
                               f"(lr={tc.lr}) or raise warmup_steps")
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        if ema is not None:
            update_ema(ema, model, tc.ema_decay, step)
        step += 1

        bpd = (loss.item() - math.log(bw)) / math.log(2)
        window.append(bpd)
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.4f}", bpd=f"{bpd:.3f}")
        record = {}
        if step % tc.log_every == 0 or step == tc.steps:
            record.update(loss=loss.item(), bpd=sum(window) / len(window), lr=scheduler.get_last_lr()[0],
                          grad_norm=grad_norm.item())
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
        if every(step, tc.checkpoint_every, tc.steps) or step == stop_at:
            state = {"step": step, "elapsed_s": time.perf_counter() - t0, "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
                     "rng": {"torch": torch.get_rng_state()}}
            save_checkpoint(run_dir, model, ema, state)
            plot_curves(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
        if step == stop_at:
            break
    bar.close()
    log.close()
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
        saved = json.loads(file.read_text())
        saved.pop("tarflow_version", None)
        if saved != config.to_dict():
            diffs = [f"{section}.{k}: {v!r} saved, {getattr(getattr(config, section), k)!r} now"
                     for section in ("model", "train") for k, v in saved.get(section, {}).items()
                     if getattr(getattr(config, section), k, None) != v]
            raise ConfigError(f"{run_dir} holds a run with a different config ({'; '.join(diffs) or 'other fields'}). "
                              f"Resume it with `tarflow train --resume {run_dir}`, or choose a new --out directory.")
        return find_checkpoint(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, text)
    return None


def load_run_config(run_dir: str | Path) -> RunConfig:
    file = Path(run_dir) / RUN_CONFIG
    if not file.is_file():
        raise ConfigError(f"{run_dir} is not a training run: {RUN_CONFIG} is missing")
    saved = json.loads(file.read_text())
    saved.pop("tarflow_version", None)
    return RunConfig.from_dict(saved)


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
