"""The training loop of Normalizing Trajectory Models (architecture=ntm), read top to bottom.

The same optimisation step as TarFlow (`step.train_step`: AdamW, warmup + cosine, clipping, EMA, bad-step skipping)
on the same batches (`trainer.batch`: uniformly dequantized images x_0, label dropout for guidance), each turned into
one trajectory x_{1:K} ~ q(. | x_0) drawn from (seed, step) alone, so a resumed run sees the same trajectories. The
loss is -[log p(x_{0:K}) - log q(x_{1:K} | x_0)] / D in nats per data dimension: the negative exact trajectory
log-likelihood (per dimension of x_0) plus log q, which has no parameters, so the gradients are those of the
trajectory log-likelihood and the logged bits/dim is the bound's (`flows.trajectory`). Test bits/dim is the bound's
too (`metrics.trajectory`). One process; attention entropy and TensorBoard are not logged for these runs yet.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch

from ..data import bin_width, load_dataset
from ..errors import ConfigError
from ..flows.trajectory import NormalizingTrajectoryModel
from ..io import atomic_write_text
from ..metrics.trajectory import evaluate_trajectory_bound
from ..progress import progress_bar
from ..report import write_report
from ..sampling import Guidance, TrajectorySampler
from ..viz import plot_curves, save_grid, to_uint8
from .checkpoint import load_checkpoint, save_checkpoint
from .config import RunConfig
from .device import amp_dtype, pick_device
from .faults import run_guards
from .run_dir import check_run_dir, start_run, trim_metrics
from .step import ema_copy, start_optimisation, train_step
from .trainer import batch, check_fits, every, noise_std, sampling_settings


def trajectory_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``'s trajectory noise: a function of (seed, step) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 15_485_863 * (step + 1) + 2)


def train_trajectory(config: RunConfig, run_dir: str | Path, progress: bool = True, stop_at: int | None = None
                     ) -> dict[str, Any]:
    """Train (or resume) a Normalizing Trajectory Model in ``run_dir``; return the final test evaluation."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise ConfigError("Normalizing Trajectory Models train in one process so far: run `tarflow train` without "
                          "torchrun")
    train_config, model_config, run_dir = config.train, config.model, Path(run_dir)
    if train_config.tensorboard:
        raise ConfigError("TensorBoard logging is not implemented for architecture=ntm yet: set tensorboard=false "
                          "(metrics.jsonl and report.html are written)")
    device = pick_device(train_config.device)
    data, test = (load_dataset(train_config.dataset, split, data_dir=train_config.data_dir or None,
                               image_size=model_config.image_size, channels=model_config.channels,
                               on_bad_image=train_config.on_bad_image, progress=progress)
                  for split in ("train", "test"))
    check_fits(model_config, data)
    check_run_dir(run_dir)
    with run_guards(run_dir) as stop:
        torch.manual_seed(train_config.seed)
        model = NormalizingTrajectoryModel(model_config).to(device)
        ema = ema_copy(model, train_config)
        step, elapsed = 0, 0.0
        checkpoint = start_run(run_dir, config)
        run = start_optimisation(model, train_config, device, amp_dtype(device, train_config.amp), ema,
                                 lambda trajectory, y: model.bound(trajectory, y, validate=False))
        if checkpoint is not None:
            state = load_checkpoint(checkpoint, model, ema)
            step, elapsed = state["step"], state["elapsed_s"]
            torch.set_rng_state(state["rng"]["torch"])
            run.optimizer.load_state_dict(state["optimizer"])
            run.restore(state)
            print(f"resuming {run_dir} from step {step}")
        trim_metrics(run_dir, step)
        print(f"training a Normalizing Trajectory Model ({model.steps} steps) on {device}: "
              f"{sum(p.numel() for p in model.parameters()):,} parameters, {len(data):,} training images")
        log_bin = math.log(bin_width(data.levels))
        labels = test.labels if model_config.num_classes else None
        log = open(run_dir / "metrics.jsonl", "a")
        bar = progress_bar(total=train_config.steps, initial=step, desc="train", enabled=progress,
                           every_steps=train_config.log_every, unit="step")  # a log file: a line every log_every steps
        t0, window = time.perf_counter() - elapsed, []
        model.train()
        while step < train_config.steps:
            x, y = batch(data, step, train_config, model_config, device)
            trajectory = model.noising.sample(x, trajectory_generator(train_config.seed, step))
            result = train_step(run, trajectory, y, step)
            step += 1
            record = {}
            if result.skipped:
                record["bad_step"] = result.skipped
                bar.write(f"step {step}: skipped, {result.skipped}")
            else:
                window.append((result.loss.item() - log_bin) / math.log(2))
                bar.set_postfix(loss=f"{result.loss.item():.4f}", bpd_bound=f"{window[-1]:.3f}", refresh=False)
            bar.update(1)  # after the postfix, so a log line shows this step's figures
            if (step % train_config.log_every == 0 or step == train_config.steps) and window:
                record.update(loss=None if result.skipped else result.loss.item(), bpd=sum(window) / len(window),
                              lr=run.scheduler.get_last_lr()[0],
                              grad_norm=None if result.skipped else result.grad_norm.item())
                window = []
            final = ema if ema is not None else model
            if every(step, train_config.eval_every, train_config.steps):
                record["test_bpd"] = evaluate_trajectory_bound(final, test.images, labels, test.levels)["bits_per_dim"]
                bar.write(f"step {step}: test bits/dim (bound) {record['test_bpd']:.4f}")
                model.train()
            if every(step, train_config.sample_every, train_config.steps):
                sample_grid(final, config, data.levels, run_dir / "samples" / f"step_{step:06d}.png")
                model.train()
            if record:
                record.update(step=step, elapsed_s=round(time.perf_counter() - t0, 3))
                log.write(json.dumps(record) + "\n")
                log.flush()
            if "test_bpd" in record:
                write_report(run_dir)  # RUN/report.html, refreshed at every evaluation
            halt = step == stop_at or stop.requested or run.bad_steps.exhausted
            if every(step, train_config.checkpoint_every, train_config.steps) or halt:
                state = run.state(step, time.perf_counter() - t0, run.optimizer.state_dict())
                save_checkpoint(run_dir, model.state_dict(), None if ema is None else ema.state_dict(), state)
                plot_curves(run_dir / "metrics.jsonl", run_dir / "loss_curve.png")
            if halt:
                break
        bar.close()
        log.close()
        if stop.requested:
            raise stop.error(run_dir, step)
        if run.bad_steps.exhausted:
            raise run.bad_steps.error(run_dir, step, train_config)
        if step < train_config.steps:
            return {"step": step}
        final = ema if ema is not None else model
        metadata = {"dataset": train_config.dataset, "levels": data.levels, "noise": train_config.noise,
                    "noise_std": noise_std(train_config, data), "steps": step,
                    "sampling": sampling_settings(train_config, model_config)}
        if train_config.dataset == "folder":
            metadata["data_dir"] = train_config.data_dir  # a folder dataset is known only by its path
        final.save_pretrained(run_dir / "model", metadata)
        sample_grid(final, config, data.levels, run_dir / "samples.png")
        result = evaluate_trajectory_bound(final, test.images, labels, test.levels, draws=train_config.eval_draws,
                                           progress=progress)
        result.update(dataset=train_config.dataset, split="test", conditional=bool(model_config.num_classes),
                      steps=step, train_time_s=round(time.perf_counter() - t0, 1), device=str(device), processes=1)
        atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        write_report(run_dir)
        return result


def sample_grid(model: NormalizingTrajectoryModel, config: RunConfig, levels: int, path: Path) -> Path:
    """A grid of ``num_samples`` samples drawn in K steps with the run's `sampling_settings` (seeded with the run's
    seed); for a class-conditional model, one class per column."""
    train_config, model_config = config.train, config.model
    count = train_config.num_samples
    y = torch.arange(count) % model_config.num_classes if model_config.num_classes else None
    settings = sampling_settings(train_config, model_config)
    guidance = Guidance(settings["guidance"], settings["guidance_rule"]) if settings.get("guidance") else None
    x = TrajectorySampler(model).sample(count, y, settings["temperature"], guidance,
                                        generator=torch.Generator().manual_seed(train_config.seed))
    return save_grid(to_uint8(x, levels), path, nrow=model_config.num_classes or 10)
