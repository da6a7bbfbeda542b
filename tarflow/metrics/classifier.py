"""A small CNN classifier, trained once per dataset by the library and cached, to measure how class-consistent
generated samples are (the accuracy of its predictions against the labels the samples were drawn for).

Inputs are integer levels (N, C, H, W) mapped to the centre of their bin in [-1, 1], x = 2 (k + 1/2) / L - 1,
so real images and samples quantized to the same levels look alike to it. The trained weights go to
``<cache>/classifiers/<dataset>-<hash>.safetensors`` (written atomically) with a JSON file beside them holding
the architecture, the training budget and the test accuracy; the hash covers the training images, the
architecture and the budget, so another dataset copy or setting trains a new classifier.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor

from ..errors import TarflowError
from ..io import atomic_write_bytes, atomic_write_text

CLASSIFIER_VERSION = 1


@dataclass(frozen=True)
class ClassifierConfig:
    channels: int
    image_size: int
    num_classes: int
    levels: int
    width: int = 16


@dataclass(frozen=True)
class TrainBudget:
    steps: int = 1500
    batch_size: int = 128
    lr: float = 2e-3
    seed: int = 0


class SmallCNN(nn.Module):
    """conv3x3(w) -> conv3x3(2w, stride 2) -> conv3x3(2w, stride 2) -> global average -> linear; GroupNorm + GELU."""

    def __init__(self, c: ClassifierConfig):
        super().__init__()
        self.config = c
        w = c.width

        def block(i: int, o: int, stride: int) -> nn.Sequential:
            return nn.Sequential(nn.Conv2d(i, o, 3, stride, 1), nn.GroupNorm(8, o), nn.GELU())

        self.features = nn.Sequential(block(c.channels, w, 1), block(w, 2 * w, 2), block(2 * w, 2 * w, 1),
                                      block(2 * w, 4 * w, 2))
        self.head = nn.Linear(4 * w, c.num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))

    def to_input(self, images: Tensor) -> Tensor:
        """Integer levels -> bin centres in [-1, 1]."""
        return (2 * (images.float() + 0.5) / self.config.levels - 1).to(next(self.parameters()).device)

    @torch.no_grad()
    def predict(self, images: Tensor, batch_size: int = 512) -> Tensor:
        """Predicted labels (N,) of integer-level images (N, C, H, W)."""
        self.eval()
        out = [self(self.to_input(images[i:i + batch_size])).argmax(1).cpu() for i in range(0, len(images), batch_size)]
        return torch.cat(out) if out else torch.zeros(0, dtype=torch.long)

    def accuracy(self, images: Tensor, labels: Tensor) -> float:
        return (self.predict(images) == labels.cpu()).double().mean().item()


def train_classifier(images: Tensor, labels: Tensor, config: ClassifierConfig, budget: TrainBudget = TrainBudget(),
                     progress: bool = True) -> SmallCNN:
    """Train a SmallCNN with AdamW (cosine schedule) and random 1-pixel shifts, on the CPU."""
    from ..progress import progress_bar

    if len(images) == 0:
        raise TarflowError("cannot train a classifier on an empty dataset")
    gen = torch.Generator().manual_seed(budget.seed)
    torch.manual_seed(budget.seed)
    model = SmallCNN(config)
    opt = torch.optim.AdamW(model.parameters(), lr=budget.lr, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=budget.lr, total_steps=budget.steps, pct_start=0.1)
    model.train()
    n = len(images)
    for _ in progress_bar(range(budget.steps), desc="training classifier", enabled=progress, leave=False):
        idx = torch.randint(0, n, (min(budget.batch_size, n),), generator=gen)
        x = model.to_input(images[idx])
        dy, dx = torch.randint(-1, 2, (2,), generator=gen).tolist()
        x = torch.roll(x, (dy, dx), dims=(2, 3))  # small translations
        loss = F.cross_entropy(model(x), labels[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
    return model.eval()


def classifier_key(data_hash: str, config: ClassifierConfig, budget: TrainBudget) -> str:
    desc = json.dumps({"v": CLASSIFIER_VERSION, "data": data_hash, "config": asdict(config), "budget": asdict(budget)},
                      sort_keys=True)
    return hashlib.sha256(desc.encode()).hexdigest()[:16]


def tensor_hash(*tensors: Tensor) -> str:
    h = hashlib.sha256()
    for t in tensors:
        h.update(f"{tuple(t.shape)}|{t.dtype}".encode())
        h.update(t.contiguous().numpy().tobytes())
    return h.hexdigest()


def save_classifier(model: SmallCNN, path: Path, info: dict[str, Any]) -> None:
    from safetensors.torch import save

    atomic_write_bytes(path, save({k: v.contiguous() for k, v in model.state_dict().items()}))
    atomic_write_text(path.with_suffix(".json"), json.dumps({**info, "config": asdict(model.config)}, indent=2))


def load_classifier(path: str | os.PathLike) -> tuple[SmallCNN, dict[str, Any]]:
    """A cached classifier and its info (dataset, test accuracy, budget), from ``path`` (.safetensors)."""
    from safetensors.torch import load_file

    path = Path(path)
    info = json.loads(path.with_suffix(".json").read_text())
    model = SmallCNN(ClassifierConfig(**info["config"]))
    try:
        weights = load_file(path)
    except Exception as error:  # safetensors' own error type for a damaged file
        raise ValueError(f"{path} is not a readable safetensors file ({error})") from error
    model.load_state_dict(weights)
    return model.eval(), info


def dataset_classifier(name: str, data_dir: str | os.PathLike | None = None, cache_dir: str | os.PathLike | None = None,
                       budget: TrainBudget = TrainBudget(), progress: bool = True,
                       **load_kwargs) -> tuple[SmallCNN, dict[str, Any]]:
    """The classifier of a dataset: from the cache, or trained on its train split (and scored on its test split)
    and cached. Returns (model, info) with info["cached"], info["path"], info["test_accuracy"]."""
    from ..data import default_cache_dir, load_dataset

    train = load_dataset(name, "train", data_dir=data_dir, cache_dir=cache_dir, progress=progress, **load_kwargs)
    if train.num_classes < 2:
        raise TarflowError(f"dataset {name!r} has {train.num_classes} class(es); a classifier needs at least 2")
    config = ClassifierConfig(train.channels, train.image_size, train.num_classes, train.levels)
    key = classifier_key(tensor_hash(train.images, train.labels), config, budget)
    path = Path(cache_dir or default_cache_dir()) / "classifiers" / f"{name}-{key}.safetensors"

    def train_and_score() -> tuple[SmallCNN, dict[str, Any]]:
        started = time.perf_counter()
        model = train_classifier(train.images, train.labels, config, budget, progress)
        seconds = time.perf_counter() - started
        test = load_dataset(name, "test", data_dir=data_dir, cache_dir=cache_dir, progress=progress, **load_kwargs)
        return model, {"dataset": name, "train_images": len(train), "test_images": len(test),
                       "test_accuracy": model.accuracy(test.images, test.labels), "train_seconds": round(seconds, 2),
                       "budget": asdict(budget), "classes": list(train.classes)}

    return cached_classifier(path, train_and_score)


def cached_classifier(path: Path, train: Callable[[], tuple[SmallCNN, dict[str, Any]]]
                      ) -> tuple[SmallCNN, dict[str, Any]]:
    """The classifier saved at ``path`` when it loads, else ``train()``'s (model, info), saved there; info gains
    "cached" (loaded, not trained) and "path". A damaged file is trained again and replaced; a read-only cache
    leaves the classifier usable, just not kept."""
    if path.is_file() and path.with_suffix(".json").is_file():
        try:
            model, info = load_classifier(path)
            return model, {**info, "cached": True, "path": str(path)}
        except (OSError, ValueError, KeyError, RuntimeError):
            pass  # damaged: train again and replace it
    with torch.enable_grad():
        model, info = train()
    try:
        save_classifier(model, path, info)
    except TarflowError as error:
        warnings.warn(f"classifier not cached: {error}", stacklevel=3)
    return model, {**info, "cached": False, "path": str(path)}


def plot_accuracy(weights: list[float], accuracy: list[float], path: str | os.PathLike, xlabel: str = "guidance weight",
                  title: str = "", reference: float | None = None) -> Path:
    """A small PNG of classifier accuracy on samples against guidance weight (``reference``: on real images)."""
    from ..viz import pyplot, save_figure

    plt = pyplot()
    fig, ax = plt.subplots(figsize=(5, 3.5), dpi=100)
    ax.plot(weights, accuracy, "o-", lw=2, label="samples")
    if reference is not None:
        ax.axhline(reference, color="gray", ls="--", lw=1, label="real test images")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("classifier accuracy")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    if title:
        ax.set_title(title, fontsize=9)
    return save_figure(fig, path)
