"""Training a KL autoencoder and measuring its reconstructions: one function each, read top to bottom.

A run directory holds ``config.json`` (model + train config), ``metrics.jsonl``, ``checkpoint/`` (weights,
optimizer, step; replaced atomically), and at the end ``model/`` (the saved autoencoder),
``reconstructions.png`` (test images above their reconstructions) and ``eval.json`` (test PSNR).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import time
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes

from .. import __version__
from ..configs import from_dict
from ..data import dequantize, load_dataset, quantize
from ..errors import CheckpointError, ConfigError, TarflowError
from ..flows.saving import read_weights
from ..io import (OutputError, atomic_dir, atomic_write_text, describe_entries, dir_lock, existing_dir,
                  reporting_write_errors, write_bytes)
from ..progress import progress_bar
from ..train.device import pick_device
from ..train.step import lr_factor  # the flows' schedule: linear warmup, then cosine to zero
from ..viz import save_grid
from .config import AutoencoderConfig, AutoencoderTrainConfig
from .model import KLAutoencoder

RUN_CONFIG, CHECKPOINT = "config.json", "checkpoint"


def to_model_space(levels_batch: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer levels k -> bin centres 2 (k + 1/2) / L - 1 in [-1, 1] (what the autoencoder sees)."""
    return dequantize(levels_batch, levels, "gaussian", 0.0)


def train_autoencoder(model_config: AutoencoderConfig, train_config: AutoencoderTrainConfig, run_dir: str | Path,
                      progress: bool = True) -> dict[str, Any]:
    """Train (or resume) the autoencoder run in ``run_dir``; return the test PSNR evaluation."""
    run_dir = Path(run_dir)
    device = pick_device(train_config.device)
    data = load_split(train_config, "train", progress)
    test = load_split(train_config, "test", progress)
    if data.channels != model_config.channels:
        raise ConfigError(f"dataset {data.name!r} has {data.channels} channels: set --channels {data.channels}")
    if data.image_size % model_config.downsample:
        raise ConfigError(f"{data.image_size}x{data.image_size} images cannot be downsampled x{model_config.downsample}"
                          f" ({len(model_config.widths)} widths): use fewer widths")
    torch.manual_seed(train_config.seed)
    model = KLAutoencoder(model_config).to(device)
    optimizer = torch.optim.AdamW(model.parameters(), lr=train_config.lr, betas=(0.9, 0.95), weight_decay=0.0)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, train_config))
    with dir_lock(start_run(run_dir, model_config, train_config), "autoencoder training"):
        step = resume(run_dir, model, optimizer, scheduler)
        log = open(run_dir / "metrics.jsonl", "a")
        bar = progress_bar(total=train_config.steps, initial=step, desc="autoencoder", enabled=progress,
                           every_steps=train_config.log_every, unit="step")
        started = time.perf_counter()
        model.train()
        while step < train_config.steps:
            generator = torch.Generator().manual_seed(train_config.seed * 1_000_003 + step)
            index = torch.randint(len(data), (train_config.batch_size,), generator=generator)
            images = to_model_space(data.images[index], data.levels).to(device)
            loss, squared_error, kl = model.loss(images, train_config.kl_weight, generator)
            if not torch.isfinite(loss):
                raise TarflowError(f"the autoencoder's loss is {loss.item()} at step {step + 1}: lower --lr or "
                                   f"--kl-weight (the last checkpoint in {run_dir} is intact)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            bar.set_postfix(mse=f"{squared_error.item():.5f}", kl=f"{kl.item():.3f}", refresh=False)
            bar.update(1)  # after the postfix, so a log line shows this step's figures
            if step % train_config.log_every == 0 or step == train_config.steps:
                record = {"step": step, "loss": loss.item(), "squared_error": squared_error.item(), "kl": kl.item(),
                          "lr": scheduler.get_last_lr()[0], "elapsed_s": round(time.perf_counter() - started, 3)}
                log.write(json.dumps(record) + "\n")
                log.flush()
            if train_config.checkpoint_every and step % train_config.checkpoint_every == 0 or \
                    step == train_config.steps:
                save_checkpoint(run_dir, model, optimizer, scheduler, step)
        bar.close()
        log.close()
        model.eval()
        metadata = {"dataset": train_config.dataset, "levels": data.levels, "steps": step,
                    "image_size": data.image_size}
        model.save_pretrained(run_dir / "model", metadata)
        result = evaluate_psnr(model, test.images, test.levels, progress=progress)
        result.update(dataset=train_config.dataset, split="test", steps=step)
        atomic_write_text(run_dir / "eval.json", json.dumps(result, indent=2) + "\n")
        save_reconstructions(model, test.images[:10], test.levels, run_dir / "reconstructions.png")
    return result


def load_split(train_config: AutoencoderTrainConfig, split: str, progress: bool):
    return load_dataset(train_config.dataset, split, data_dir=train_config.data_dir or None,
                        image_size=train_config.image_size or None, progress=progress)


def start_run(run_dir: Path, model_config: AutoencoderConfig, train_config: AutoencoderTrainConfig) -> Path:
    """Create the run directory, or check that an existing one was started with the same config."""
    config = {"model": dataclasses.asdict(model_config), "train": dataclasses.asdict(train_config)}
    file = run_dir / RUN_CONFIG
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputError(f"{run_dir} is a file, not a run directory: choose a new or empty directory")
    if file.is_file():
        saved = read_run_config(run_dir)
        if saved != config:
            raise ConfigError(f"{run_dir} holds an autoencoder run with a different config; choose a new --out "
                              f"directory, or give the same options to resume it")
        return run_dir
    if run_dir.is_dir() and any(p.name != ".lock" for p in run_dir.iterdir()):
        raise OutputError(f"{run_dir} is not empty and is not an autoencoder run (no {RUN_CONFIG}); it holds "
                          f"{describe_entries(run_dir)}: choose a new or empty directory (nothing was changed)")
    with reporting_write_errors(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(file, json.dumps({"tarflow_version": __version__, **config}, indent=2) + "\n")
    return run_dir


def read_run_config(run_dir: Path) -> dict[str, Any]:
    """The {"model", "train"} dicts of an autoencoder run, each checked against its config class."""
    file = Path(run_dir) / RUN_CONFIG
    try:
        saved = json.loads(file.read_text())
        model = from_dict(AutoencoderConfig, saved["model"], "autoencoder config")
        train = from_dict(AutoencoderTrainConfig, saved["train"], "autoencoder train config")
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"{file} is not an autoencoder run config ({e})") from None
    return {"model": dataclasses.asdict(model), "train": dataclasses.asdict(train)}


def save_checkpoint(run_dir: Path, model: KLAutoencoder, optimizer, scheduler, step: int) -> None:
    with atomic_dir(run_dir / CHECKPOINT) as tmp:
        write_bytes(tmp / "model.safetensors",
                    safetensors_bytes({k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}))
        buffer = io.BytesIO()
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()}, buffer)
        write_bytes(tmp / "trainer.pt", buffer.getbuffer())


def resume(run_dir: Path, model: KLAutoencoder, optimizer, scheduler) -> int:
    """Load the run's checkpoint if there is one; the step to continue from."""
    path = existing_dir(run_dir / CHECKPOINT)
    if path is None:
        return 0
    model.load_state_dict(read_weights(path / "model.safetensors", model))
    try:
        state = torch.load(path / "trainer.pt", map_location="cpu", weights_only=True)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
    except (OSError, RuntimeError, KeyError, ValueError) as e:
        raise CheckpointError(f"{path / 'trainer.pt'} cannot be read ({e}); delete {path} to start over") from None
    return int(state["step"])


@torch.no_grad()
def reconstruct(model, images: torch.Tensor, levels: int) -> torch.Tensor:
    """Integer images -> their reconstructions as integer levels (decode(encode(x)), quantized)."""
    device = getattr(model, "device", torch.device("cpu"))
    x = to_model_space(images, levels).to(device)
    return quantize(model.decode(model.encode(x)).float().cpu(), levels)


@torch.no_grad()
def evaluate_psnr(model, images: torch.Tensor, levels: int, batch_size: int = 256, progress: bool = False
                  ) -> dict[str, float]:
    """PSNR = 10 log10((L - 1)^2 / MSE) per image on quantized reconstructions (dB), mean and standard error;
    an exact reconstruction counts as 100 dB."""
    values = []
    for start in progress_bar(range(0, len(images), batch_size), desc="eval PSNR", enabled=progress, leave=False):
        original = images[start:start + batch_size]
        error = (reconstruct(model, original, levels).double() - original.double()).pow(2).flatten(1).mean(1)
        values.append((10 * torch.log10((levels - 1) ** 2 / error)).clamp(max=100.0))
    psnr = torch.cat(values)
    stderr = psnr.std().item() / math.sqrt(len(psnr)) if len(psnr) > 1 else float("nan")
    return {"psnr_db": psnr.mean().item(), "stderr": stderr, "images": len(psnr)}


def reconstruction_fid(model, extractor, images: torch.Tensor, levels: int, batch_size: int = 256,
                       progress: bool = False, real=None) -> float:
    """FID between integer images and their reconstructions (what the latent space costs before any flow), with
    the features of a `metrics.FeatureExtractor`; ``real``: the images' `FIDStats` when known (a dataset's cached
    statistics), else computed here."""
    from ..metrics import fid_from_stats

    reconstructions = torch.cat([reconstruct(model, images[start:start + batch_size], levels)
                                 for start in range(0, len(images), batch_size)])
    if real is None:
        real = extractor.statistics(images, levels, progress, desc="FID features images")
    return fid_from_stats(real, extractor.statistics(reconstructions, levels, progress,
                                                     desc="FID features reconstructions"))


def save_reconstructions(model, images: torch.Tensor, levels: int, path: Path) -> Path:
    """A grid: the images in the first row, their reconstructions in the second."""
    both = torch.cat([images, reconstruct(model, images, levels)]).float()
    return save_grid((both * 255 / (levels - 1)).round().to(torch.uint8), path, nrow=len(images))
