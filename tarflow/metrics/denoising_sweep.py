"""Iterative denoising measured on one noise-conditioned model (iTARFlow): ``count`` samples drawn once at the highest
trained level t1, then denoised by each setting (none, one Tweedie step, N ODE or SDE steps), with the FID and
class consistency of each, its time per image, and a row of pictures per setting (the artifacts side by side).

    model, _ = tarflow.runs.load_model("runs/cifar10-itarflow")
    grid = denoising_grid([0, 1, 5, 10, 20], ["ode", "sde"])
    result = sweep_denoising(model, "cifar10", grid, count=10000, extractor=FeatureExtractor("default_1.pt"))

Generation at t1 (the autoregressive part) is shared by every setting, so rows differ by the denoising only; a
setting's time per image is the generation's plus its own N forward + backward passes. The samples at t1 and every
measured row are kept in ``cache_dir``, keyed by the model's weights, the data and the options: a rerun (after an
interruption, or with more settings) measures only what it lacks. Within a setting, the denoised images and the
FID pass's running sums are saved about every minute, so an interruption of a setting's hours loses at most that.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.quantize import quantize
from ..errors import ConfigError, TarflowError
from ..io import atomic_write_text
from ..progress import progress_bar
from ..sampling import IterativeDenoiser
from .fid import FeatureExtractor
from .model_data import model_levels
from .samples import sample_batches
from .sweep import cache_key, partial_files, read_cached_row, save_tensor, sweep_measures, write_cached_row

SAVE_EVERY_S = 60.0  # how often an unfinished setting's denoised images are saved


@dataclass(frozen=True)
class Denoising:
    """One denoising setting: ``steps`` N levels from t1 down to t0, then 0 (0: none, the samples at t1; 1: one
    Tweedie step at t1), ``dynamics`` ode or sde (the same for N <= 1), ``clip`` x0 to [-1, 1]."""

    steps: int
    dynamics: str = "ode"
    clip: bool = False

    @property
    def name(self) -> str:
        clipped = ", clipped" if self.clip else ""
        if self.steps == 0:
            return "none (at t1)"
        if self.steps == 1:
            return f"tweedie (1 step){clipped}"
        return f"{self.steps} {self.dynamics} steps{clipped}"

    @property
    def stem(self) -> str:
        """The setting's file name in the cache."""
        return f"denoise_{self.steps}_{self.dynamics}{'_clip' if self.clip else ''}"

    def denoiser(self) -> IterativeDenoiser | None:
        return IterativeDenoiser(self.steps, self.dynamics, self.clip) if self.steps else None


def denoising_grid(steps: list[int], dynamics: list[str], clip: bool = False) -> list[Denoising]:
    """Every (N, dynamics) in the order given; N = 0 and N = 1 once (their dynamics change nothing)."""
    if not steps or any(not isinstance(count, int) or count < 0 for count in steps):
        raise ConfigError(f"denoising steps must be integers >= 0 (0: none, 1: one Tweedie step), got {steps}")
    grid = []
    for count in steps:
        for kind in dynamics if count > 1 else ["ode"]:
            setting = Denoising(count, kind, clip and count > 0)
            if setting not in grid:
                grid.append(setting)
    return grid


def sweep_denoising(model, dataset: str, settings: list[Denoising], count: int = 1000,
                    extractor: FeatureExtractor | None = None, split: str = "test", ref_count: int | None = None,
                    guidance=None, temperature: float = 1.0, seed: int = 0, batch_size: int = 256,
                    classifier_steps: int = 1000, data_dir: str | os.PathLike | None = None, sampler=None,
                    sampler_name: str = "sequential", cache_dir: str | os.PathLike | None = None,
                    progress: bool = True) -> dict[str, Any]:
    """Measure each setting on the same ``count`` samples at t1 (drawn by ``sampler``, default sequential; classes
    in turn): "consistency" (class-conditional models), "fid" (with ``extractor``, against ``ref_count`` images of
    ``split``) and "seconds_per_image" {"generation", "denoising", "total"}.
    Returns {"rows": [{"setting", "steps", "dynamics", "clip", "seconds_per_image", ..., "strip"}], ...}."""
    from ..sampling import SequentialSampler

    config = model.config
    if not config.noise_conditioning:
        raise ConfigError("sweep-denoising compares the iterative denoising of a noise-conditioned model (iTARFlow, "
                          "noise_conditioning=true), which samples at its highest level t1; this model was trained "
                          "at one noise level: use sweep-sampling, or tarflow fid --denoise tweedie|none")
    measures = sweep_measures(model, dataset, extractor, split, ref_count, classifier_steps, data_dir, progress)
    levels = model_levels(model)
    key = {**cache_key(model, dataset, split, ref_count, count, seed, batch_size, sampler_name, extractor),
           "guidance": None if guidance is None else [guidance.weight, guidance.rule], "temperature": temperature}
    cache = Path(cache_dir) if cache_dir is not None else None
    labels = torch.arange(count) % config.num_classes if config.num_classes else None
    sampler = sampler or SequentialSampler(model)
    drawn: dict[str, Any] = {}  # the samples at t1 and their time, drawn (or read) when a setting first needs them
    rows = []
    for index, setting in enumerate(settings):
        cached = read_cached_row(cache, key, setting) if cache else None
        if cached is not None:
            rows.append(cached)
            continue
        if not drawn:
            drawn.update(samples_at_t1(sampler, count, labels, temperature, guidance, seed, batch_size, cache, key,
                                       progress))
        if progress:
            print(f"sweep-denoising {index + 1}/{len(settings)}: {setting.name}", flush=True)
        partial = partial_files(cache, key, setting) if cache else None
        images, denoising = denoised_levels(model, drawn["samples"], labels, setting, levels, batch_size, seed,
                                            progress, partial)
        generation = drawn["seconds"] / count
        seconds = {"generation": round(generation, 6), "denoising": round(denoising / count, 6),
                   "total": round(generation + denoising / count, 6)}
        row = measures.row({"setting": setting.name, "steps": setting.steps, "dynamics": setting.dynamics,
                            "clip": setting.clip, "seconds_per_image": seconds}, images, labels, levels,
                           config.num_classes, progress, partial["features"] if partial else None)
        if cache:
            write_cached_row(cache, key, setting, row)
        rows.append(row)
    return {"dataset": dataset, "split": split, "samples": count, "seed": seed, "sampler": sampler_name,
            "guidance": guidance.weight if guidance else 0.0, "guidance_rule": guidance.rule if guidance else None,
            "temperature": temperature, "noise_levels": [config.noise_level_min, config.noise_level_max],
            "rows": rows, "classifier": measures.classifier_summary()}


def samples_at_t1(sampler, count: int, labels: Tensor | None, temperature: float, guidance, seed: int,
                  batch_size: int, cache: Path | None, key: dict[str, Any], progress: bool) -> dict[str, Any]:
    """{"samples": (count, C, H, W) float32 at t1, "seconds": the time their drawing took}, read from the cache when
    drawn before with the same key. Batch at image i uses the noise seed seed * 1_000_003 + i."""
    files = (cache / "samples_at_t1.pt", cache / "samples_at_t1.json") if cache else None
    if files is not None:
        try:
            record = json.loads(files[1].read_text())
            if record["key"] == key:
                return {"samples": torch.load(files[0], weights_only=True), "seconds": record["seconds"]}
        except (OSError, ValueError, KeyError, RuntimeError):
            pass
    started = time.perf_counter()
    batches = sample_batches(sampler, count, labels, temperature, guidance, None, batch_size, seed, progress,
                             desc="sampling at t1")
    drawn = {"samples": torch.cat([x.float().cpu() for _, x in batches]), "seconds": time.perf_counter() - started}
    if files is not None:
        save_tensor(drawn["samples"], files[0])
        atomic_write_text(files[1], json.dumps({"key": key, "seconds": drawn["seconds"]}) + "\n")
    return drawn


def denoised_levels(model, samples: Tensor, labels: Tensor | None, setting: Denoising, levels: int, batch_size: int,
                    seed: int, progress: bool, partial: dict[str, Path] | None = None) -> tuple[Tensor, float]:
    """(the samples at t1 denoised by ``setting``, as integer levels; the seconds the denoising took). The SDE noise
    of the batch at image i is seeded by seed * 1_000_003 + i + 1 (not the generation's seed), so a batch is the
    same whenever it is denoised. ``partial`` (`partial_files`): the images so far and their seconds are saved
    there every `SAVE_EVERY_S` seconds and at the end, and a later call continues from them."""
    done, seconds = read_partial_images(partial) if partial else ([], 0.0)
    denoiser = setting.denoiser()
    start = sum(len(images) for images in done)
    started = saved_at = time.perf_counter()
    batches = range(start, len(samples), batch_size)
    for low in progress_bar(batches, desc=setting.name, enabled=progress, leave=False, unit="batch",
                            initial=-(-start // batch_size), total=-(-len(samples) // batch_size)):
        x = samples[low:low + batch_size].to(model.device, model.dtype)
        if denoiser is not None:
            y = None if labels is None else labels[low:low + batch_size]
            generator = torch.Generator().manual_seed(seed * 1_000_003 + low + 1)
            x = denoiser.denoise(model, x, y, generator)
        if not torch.isfinite(x).all():
            raise TarflowError(f"denoising with {setting.name} produced NaN or inf values (batch at image {low}): "
                               f"try fewer steps, --clip, or the ode dynamics")
        done.append(quantize(x.float().cpu(), levels))
        if partial and (time.perf_counter() - saved_at > SAVE_EVERY_S or low + batch_size >= len(samples)):
            write_partial_images(partial, done, seconds + time.perf_counter() - started)
            saved_at = time.perf_counter()
    return torch.cat(done), seconds + time.perf_counter() - started


def read_partial_images(partial: dict[str, Path]) -> tuple[list[Tensor], float]:
    """([the images denoised so far], the seconds they took), or ([], 0) when there are none."""
    try:
        seconds = float(json.loads(partial["record"].read_text())["seconds"])
        images = torch.load(partial["images"], weights_only=True)
    except (OSError, ValueError, KeyError, RuntimeError, TypeError):
        return [], 0.0
    return [images], seconds


def write_partial_images(partial: dict[str, Path], done: list[Tensor], seconds: float) -> None:
    images = torch.cat(done)
    save_tensor(images, partial["images"])
    atomic_write_text(partial["record"], json.dumps({"images": len(images), "seconds": seconds}) + "\n")
