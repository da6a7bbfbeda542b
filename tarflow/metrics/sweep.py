"""A small grid of sampling settings measured on one model, so a user can choose: for each guidance weight, rule
and temperature, the class consistency of ``count`` samples (class-conditional models) and, with a feature
extractor, their FID; and one picture with a row of samples per setting.

    model, _ = tarflow.runs.load_model("runs/mnist-samples")
    result = sweep_sampling(model, "mnist", settings_grid([0, 1, 2], ["tarflow"], [0.9, 1.0]), count=1000)

Every setting draws the same noise (same seed and batch size), so the rows differ by the setting only. A result
already measured with the same model file, data and options is read from the cache instead of drawn again.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..io import atomic_write_bytes, atomic_write_text
from ..sampling import Guidance
from .fid import FeatureExtractor, dataset_statistics, fid_from_stats
from .model_data import denoise_std_of, folder_size, model_levels
from .sample_quality import fitted_classifier
from .samples import default_sampler, generate_levels


@dataclass(frozen=True)
class Setting:
    """One sampling setting: guidance weight w (0: none), guidance rule, prior temperature."""

    guidance: float
    rule: str
    temperature: float

    @property
    def name(self) -> str:
        guided = f"w={self.guidance:g} {self.rule}" if self.guidance else "w=0"
        return f"{guided}, T={self.temperature:g}"

    @property
    def stem(self) -> str:
        """The setting's file name in the cache."""
        return f"w{self.guidance:g}_{self.rule}_T{self.temperature:g}"

    @property
    def guidance_object(self) -> Guidance | None:
        return Guidance(self.guidance, self.rule) if self.guidance else None


def settings_grid(weights: list[float], rules: list[str], temperatures: list[float]) -> list[Setting]:
    """Every (w, rule, T), weights outermost; w = 0 (no guidance under any rule) appears once per temperature."""
    grid = []
    for weight in weights:
        for rule in rules if weight else rules[:1]:
            grid += [Setting(weight, rule, temperature) for temperature in temperatures]
    return grid


def sweep_sampling(model, dataset: str, settings: list[Setting], count: int = 1000,
                   extractor: FeatureExtractor | None = None, split: str = "test", ref_count: int | None = None,
                   seed: int = 0, batch_size: int = 256, classifier_steps: int = 1000,
                   data_dir: str | os.PathLike | None = None,
                   sampler_for: Callable[[Guidance | None], Any] | None = None, sampler_name: str = "sequential",
                   cache_dir: str | os.PathLike | None = None, progress: bool = True,
                   decoding: dict[str, Any] | None = None) -> dict[str, Any]:
    """Measure each setting: "consistency" (accuracy of the dataset's small classifier against the classes drawn
    for, class-conditional models) and "fid" (against ``ref_count`` images of ``split``, with ``extractor``).
    ``decoding``: for a latent model, how ``sampler_for``'s samples are decoded to images (e.g. the denoising and
    the decoder's weights), part of the cache key and of the result.

    ``cache_dir``: each setting's row and its picture strip (the first samples, one per class) are kept there,
    keyed by the model file, the data and these options; a rerun measures only the settings it lacks.
    Returns {"rows": [{"setting", "guidance", "rule", "temperature", "consistency", "fid", "strip"}], ...}.
    """
    config = model.config
    measures = sweep_measures(model, dataset, extractor, split, ref_count, classifier_steps, data_dir, progress)
    levels, denoise_std = model_levels(model), denoise_std_of(model)
    key = cache_key(model, dataset, split, ref_count, count, seed, batch_size, sampler_name, extractor)
    if decoding is not None:  # absent for pixel models, whose cached rows keep their key
        key["decoding"] = decoding
    cache = Path(cache_dir) if cache_dir is not None else None
    sampler_for = sampler_for or (lambda guidance: default_sampler(model))
    labels = torch.arange(count) % config.num_classes if config.num_classes else None
    rows = []
    for index, setting in enumerate(settings):
        cached = read_cached_row(cache, key, setting) if cache else None
        if cached is not None:
            rows.append(cached)
            continue
        if progress:
            print(f"sweep {index + 1}/{len(settings)}: {setting.name}", flush=True)
        guidance = setting.guidance_object
        images = generate_levels(sampler_for(guidance), count, labels, levels, setting.temperature, guidance,
                                 denoise_std, min(batch_size, count), seed, progress=progress)
        row = measures.row({"setting": setting.name, **asdict(setting)}, images, labels, levels, config.num_classes,
                           progress)
        if cache:
            write_cached_row(cache, key, setting, row)
        rows.append(row)
    return {"dataset": dataset, "split": split, "samples": count, "seed": seed, "sampler": sampler_name,
            "denoise_std": denoise_std, **(decoding or {}), "rows": rows, "classifier": measures.classifier_summary()}


@dataclass
class Measures:
    """What a sweep measures every setting with: the dataset's small classifier (class-conditional models) and the
    FID extractor with the reference statistics of the split."""

    classifier: Any = None
    classifier_info: dict[str, Any] | None = None
    extractor: FeatureExtractor | None = None
    reference: Any = None

    def row(self, row: dict[str, Any], images, labels, levels: int, num_classes: int, progress: bool,
            resume_file: Path | None = None) -> dict[str, Any]:
        """``row`` with the figures of uint8 ``images``: "consistency" against ``labels``, "fid" against the
        reference, and "strip", the first images (one per class, at least 10), for the picture. ``resume_file``:
        where the FID pass keeps its running sums, to resume from (the caller ties it to these images)."""
        if self.classifier is not None:
            row["consistency"] = round((self.classifier.predict(images) == labels).double().mean().item(), 6)
        if self.extractor is not None:
            stats = self.extractor.statistics(images, levels, progress=progress, desc="FID features samples",
                                              resume_file=resume_file)
            row["fid"] = round(fid_from_stats(stats, self.reference), 4)
        row["strip"] = images[:max(num_classes, 10)]
        return row

    def classifier_summary(self) -> dict[str, Any] | None:
        """The classifier's test accuracy and file, for the sweep's result."""
        info = self.classifier_info
        return None if info is None else {"test_accuracy": info["test_accuracy"], "file": info["path"]}


def sweep_measures(model, dataset: str, extractor: FeatureExtractor | None, split: str, ref_count: int | None,
                   classifier_steps: int, data_dir, progress: bool) -> Measures:
    """The `Measures` of a sweep of ``model`` on ``dataset``: its classifier (trained once and cached) when the
    model is class-conditional, the reference statistics of ``split`` when an ``extractor`` is given; an
    unconditional model without an extractor has nothing to measure and is refused."""
    measures = Measures(extractor=extractor)
    if model.config.num_classes:
        measures.classifier, measures.classifier_info = fitted_classifier(model, dataset, classifier_steps, data_dir,
                                                                          progress)
    elif extractor is None:
        raise ConfigError("this model is unconditional, so there is no class consistency to measure: give an "
                          "Inception feature extractor (--weights FILE) to measure FID per setting")
    if extractor is not None:
        measures.reference, _ = dataset_statistics(extractor, dataset, split, ref_count, seed=0, data_dir=data_dir,
                                                   progress=progress, **folder_size(model, dataset))
    return measures


def cache_key(model, dataset, split, ref_count, count, seed, batch_size, sampler_name, extractor) -> dict[str, Any]:
    """What a cached row must match: the model's weights (a hash of its state), the data and every option that
    changes the samples or the figures."""
    return {"weights": weights_sha256(model), "dataset": dataset, "split": split, "ref_count": ref_count,
            "count": count, "seed": seed, "batch_size": batch_size, "sampler": sampler_name,
            "extractor": None if extractor is None else extractor.sha256}


def weights_sha256(model) -> str:
    """SHA-256 of the model's state (names and raw bytes of every tensor)."""
    digest = hashlib.sha256()
    for name, tensor in model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def row_files(cache: Path, setting) -> tuple[Path, Path]:
    """A setting's cached row (JSON) and picture strip; any setting with a ``stem``."""
    return cache / f"{setting.stem}.json", cache / f"{setting.stem}.pt"


def read_cached_row(cache: Path, key: dict[str, Any], setting) -> dict[str, Any] | None:
    record_file, strip_file = row_files(cache, setting)
    try:
        record = json.loads(record_file.read_text())
        strip = torch.load(strip_file, weights_only=True)
    except (OSError, ValueError, RuntimeError):
        return None
    if record.get("key") != key:
        return None
    return {**record["row"], "strip": strip}


def write_cached_row(cache: Path, key: dict[str, Any], setting, row: dict[str, Any]) -> None:
    """The setting's row in the cache; its partial files (`partial_files`) are then removed."""
    record_file, strip_file = row_files(cache, setting)
    save_tensor(row["strip"], strip_file)
    record = {"key": key, "row": {name: value for name, value in row.items() if name != "strip"}}
    atomic_write_text(record_file, json.dumps(record, indent=2) + "\n")
    for path in partial_files(cache, key, setting).values():
        path.unlink(missing_ok=True)


def partial_files(cache: Path, key: dict[str, Any], setting) -> dict[str, Path]:
    """The files of a setting's unfinished work: "images" so far (a tensor), their "record" (JSON) and the FID
    pass's running sums ("features"). Their names hold a digest of ``key``, so work for other weights, data or
    options is never resumed."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    stem = f"{setting.stem}.partial-{digest}"
    return {"images": cache / f"{stem}.pt", "record": cache / f"{stem}.json",
            "features": cache / f"{stem}.features.npz"}


def save_tensor(tensor: torch.Tensor, path: Path) -> None:
    """``tensor`` as torch.save writes it, to ``path`` atomically (a crash leaves the previous file or none)."""
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    atomic_write_bytes(path, buffer.getvalue())


def plot_sweep(rows: list[dict[str, Any]], levels: int, path: str | os.PathLike) -> Path:
    """One row of samples per setting (its first samples: one per class), labelled with the setting and its
    figures, as a PNG."""
    import numpy as np

    from ..viz import pyplot, save_figure

    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 0.95 * len(rows) + 0.3), dpi=100, squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        strip = row["strip"].float() / (levels - 1)  # (K, C, H, W) in [0, 1]
        picture = torch.cat(list(strip), dim=2).permute(1, 2, 0).numpy()  # side by side: (H, K*W, C)
        ax.imshow(np.squeeze(picture), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        figures = [f"consistency {row['consistency']:.3f}" if "consistency" in row else "",
                   f"FID {row['fid']:.2f}" if "fid" in row else "",
                   f"{row['seconds_per_image']['total']:.3g} s/image" if "seconds_per_image" in row else ""]
        ax.set_ylabel(row["setting"] + "\n" + "\n".join(text for text in figures if text), rotation=0,
                      ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    return save_figure(fig, path)
