"""Training Normalizing Trajectory Models (architecture=ntm): what they do their own way in the one-process loop
(`loop.train_one_process`).

The same optimisation step as TarFlow (`step.train_step`: AdamW, warmup + cosine, clipping, EMA, bad-step skipping)
on the same batches (`trainer.batch`: uniformly dequantized images x_0, label dropout for guidance), each turned into
one trajectory x_{1:K} ~ q(. | x_0) drawn from (seed, step) alone, so a resumed run sees the same trajectories. The
loss is -[log p(x_{0:K}) - log q(x_{1:K} | x_0)] / D in nats per data dimension: the negative exact trajectory
log-likelihood (per dimension of x_0) plus log q, which has no parameters, so the gradients are those of the
trajectory log-likelihood and the logged bits/dim is the bound's (`flows.trajectory`). Test bits/dim is the bound's
too (`metrics.trajectory`). One process; attention entropy and TensorBoard are not logged for these runs yet.
"""

from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..data import bin_width, load_dataset
from ..data.datasets import ImageData
from ..errors import ConfigError
from ..flows.trajectory import NormalizingTrajectoryModel
from ..metrics.trajectory import evaluate_trajectory_bound
from ..sampling import Guidance, TrajectorySampler
from ..viz import plot_curves, save_grid, to_uint8
from .config import RunConfig
from .device import amp_dtype, pick_device
from .loop import OneProcessJob, train_one_process
from .run_dir import check_run_dir
from .trainer import batch, check_fits, noise_std, sampling_settings


def trajectory_generator(seed: int, step: int) -> torch.Generator:
    """The generator of step ``step``'s trajectory noise: a function of (seed, step) only."""
    return torch.Generator().manual_seed(seed * 1_000_003 + 15_485_863 * (step + 1) + 2)


def train_trajectory(config: RunConfig, run_dir: str | Path, progress: bool = True, stop_at: int | None = None
                     ) -> dict[str, Any]:
    """Train (or resume) a Normalizing Trajectory Model in ``run_dir`` with `loop.train_one_process`; return the
    final test evaluation."""
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
    job = TrajectoryJob(config, run_dir, device, progress, amp=amp_dtype(device, train_config.amp), data=data,
                        test=test)
    return train_one_process(job, stop_at)


@dataclass
class TrajectoryJob(OneProcessJob):
    """What a Normalizing Trajectory Model does its own way in the training loop: one trajectory per image of the
    image batch, bits/dim of the bound as figures, test bits/dim (bound) at evaluations, sample grids, and the
    bound's test bits/dim as the result."""

    data: ImageData
    test: ImageData

    def build(self):
        return NormalizingTrajectoryModel(self.config.model).to(self.device)

    def log_prob(self, model, trajectory, y):
        return model.bound(trajectory, y, validate=False)

    def batch(self, model, step):
        """The image batch of `trainer.batch`, each image x_0 turned into a trajectory x_{1:K} ~ q(. | x_0)."""
        x, y = batch(self.data, step, self.config.train, self.config.model, self.device)
        return model.noising.sample(x, trajectory_generator(self.config.train.seed, step)), y

    def describe(self, model):
        return f"a Normalizing Trajectory Model ({model.steps} steps)", f"{len(self.data):,} training images"

    def figure(self, loss):
        """Bits/dim of the bound: (loss - log bin) / ln 2 (the loss is in nats per dimension of x_0)."""
        return (loss - math.log(bin_width(self.data.levels))) / math.log(2)

    def postfix(self, loss, figure):
        return {"loss": f"{loss:.4f}", "bpd_bound": f"{figure:.3f}"}

    def log_record(self, result, figure, lr):
        return {"loss": None if result.skipped else result.loss.item(), "bpd": figure, "lr": lr,
                "grad_norm": None if result.skipped else result.grad_norm.item()}

    def evaluate(self, model, step, say):
        test_bpd = evaluate_trajectory_bound(model, self.test.images, self.labels(), self.test.levels)["bits_per_dim"]
        say(f"step {step}: test bits/dim (bound) {test_bpd:.4f}")
        return {"test_bpd": test_bpd}

    def sample(self, model, step):
        sample_grid(model, self.config, self.data.levels, self.run_dir / "samples" / f"step_{step:06d}.png")

    def checkpointed(self):
        plot_curves(self.run_dir / "metrics.jsonl", self.run_dir / "loss_curve.png")

    def finish(self, model, step, started):
        train_config, model_config = self.config.train, self.config.model
        metadata = {"dataset": train_config.dataset, "levels": self.data.levels, "noise": train_config.noise,
                    "noise_std": noise_std(train_config, self.data), "steps": step,
                    "sampling": sampling_settings(train_config, model_config)}
        if train_config.dataset == "folder":
            metadata["data_dir"] = train_config.data_dir  # a folder dataset is known only by its path
        model.save_pretrained(self.run_dir / "model", metadata)
        sample_grid(model, self.config, self.data.levels, self.run_dir / "samples.png")
        result = evaluate_trajectory_bound(model, self.test.images, self.labels(), self.test.levels,
                                           draws=train_config.eval_draws, progress=self.progress)
        result.update(dataset=train_config.dataset, split="test", conditional=bool(model_config.num_classes),
                      steps=step, train_time_s=round(time.perf_counter() - started, 1), device=str(self.device),
                      processes=1)
        return result

    def labels(self) -> torch.Tensor | None:
        """The test labels of a class-conditional model, None for an unconditional one."""
        return self.test.labels if self.config.model.num_classes else None


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
