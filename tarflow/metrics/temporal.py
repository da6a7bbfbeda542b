"""Temporal consistency of Moving MNIST clips: do the digits stay the same from the first frame to the last?

A multi-label digit classifier (`SmallCNN` with one logit per digit class: which classes a frame shows) is
trained on frames drawn afresh from the MNIST training digits, as Moving MNIST draws its frames; a frame's digits
are its K highest logits (K = digits per clip). A clip is consistent when its first and last frames show the same set of digit
classes. The fraction of consistent clips is reported for generated clips and, as the ceiling the classifier
allows, for real test clips, beside the classifier's accuracy on single test frames (the whole set right). For
a class- or caption-conditioned model (a clip's class is its digit pair, `tarflow.data.moving_mnist.digit_sets`),
also the fraction of first and last frames that show the digits the clip was drawn for.

Continuation: from the first k frames of real test clips, the model continues to 2k frames (windows of its own
length); `continuation_error` gives the per-pixel error of the continued frames against the real ones, beside the
trivial prediction (repeat the last given frame), and `matching_fraction` whether the last continued frame still
shows the clip's digits.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from ..progress import progress_bar
from .classifier import ClassifierConfig, SmallCNN, cached_classifier, tensor_hash

DIGIT_CLASSIFIER_VERSION = 1  # bump when training changes meaning: old cached classifiers are then ignored

DIGIT_CLASSES = 10


def digit_targets(object_labels: Tensor) -> Tensor:
    """Multi-hot targets (N, 10) of the digit classes each clip shows, from ``object_labels`` (N, K)."""
    targets = torch.zeros(object_labels.shape[0], DIGIT_CLASSES)
    return targets.scatter_(1, object_labels.long(), 1.0)


def train_digit_classifier(digits: Tensor, digit_labels: Tensor, image_size: int, digit_count: int = 2,
                           levels: int = 256, steps: int = 3000, batch_size: int = 64, lr: float = 2e-3,
                           seed: int = 0, progress: bool = False) -> SmallCNN:
    """A `SmallCNN` trained with a binary cross-entropy per class on frames drawn afresh at every step, as Moving
    MNIST draws them: ``digit_count`` random digits of ``digits`` (M, 28, 28) uint8 (classes ``digit_labels``,
    (M,)) pasted at random places of an ``image_size`` canvas (`moving_mnist.render`). Unlimited frames: trained
    on the 2,000 training clips' frames instead, it got 0.29 of single test frames right after 1,000 steps;
    on fresh frames 0.65 after 3,000 (one run each; moving-mnist-likelihood's clips)."""
    from ..data.moving_mnist import DIGIT_SIZE, render

    generator = np.random.default_rng(seed)
    torch.manual_seed(seed)
    classifier = SmallCNN(ClassifierConfig(1, image_size, DIGIT_CLASSES, levels))
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=lr)
    digits = np.asarray(digits, dtype=np.uint8)
    digit_labels = torch.as_tensor(digit_labels)
    classifier.train()
    for _ in progress_bar(range(steps), desc="training digit classifier", enabled=progress, leave=False):
        chosen = generator.integers(0, len(digits), (batch_size, digit_count))
        corners = generator.integers(0, image_size - DIGIT_SIZE + 1, (batch_size, 1, digit_count, 2))
        frames = torch.from_numpy(render(digits[chosen], corners, image_size)[:, 0])
        logits = classifier(classifier.to_input(frames))
        loss = F.binary_cross_entropy_with_logits(logits, digit_targets(digit_labels[chosen]).to(logits.device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return classifier.eval()


def digit_classifier(digits: Tensor, digit_labels: Tensor, image_size: int, digit_count: int = 2, levels: int = 256,
                     steps: int = 3000, seed: int = 0, cache_dir: str | os.PathLike | None = None,
                     progress: bool = False) -> tuple[SmallCNN, dict[str, Any]]:
    """`train_digit_classifier`'s classifier, trained once per digits and settings and cached (as the FID
    statistics are) under ``<cache>/classifiers/``. Returns (classifier, info) with info["cached"] (loaded, not
    trained), info["path"] and info["train_seconds"] (of the training that made it)."""
    from ..data import default_cache_dir

    settings = {"version": DIGIT_CLASSIFIER_VERSION, "digits": tensor_hash(torch.as_tensor(digits),
                                                                          torch.as_tensor(digit_labels)),
                "image_size": image_size, "digit_count": digit_count, "levels": levels, "steps": steps, "seed": seed}
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    path = Path(cache_dir or default_cache_dir()) / "classifiers" / f"moving-mnist-frames-{key}.safetensors"

    def train() -> tuple[SmallCNN, dict[str, Any]]:
        started = time.perf_counter()
        classifier = train_digit_classifier(digits, digit_labels, image_size, digit_count, levels, steps, seed=seed,
                                            progress=progress)
        return classifier, {**settings, "train_seconds": round(time.perf_counter() - started, 1)}

    return cached_classifier(path, train)


@torch.no_grad()
def frame_digits(classifier, frames: Tensor, count: int, batch_size: int = 256) -> Tensor:
    """The ``count`` digit classes (N, count), sorted, that ``classifier`` sees most in each uint8 frame (N, C, S, S)."""
    classifier.eval()
    chosen = [classifier(classifier.to_input(frames[i:i + batch_size])).topk(count, dim=1).indices.cpu()
              for i in range(0, frames.shape[0], batch_size)]
    return torch.cat(chosen).sort(dim=1).values


def consistent_fraction(classifier, clips: Tensor, count: int) -> float:
    """The fraction of uint8 ``clips`` (N, F, C, S, S) whose first and last frames show the same ``count`` digit
    classes."""
    first, last = frame_digits(classifier, clips[:, 0], count), frame_digits(classifier, clips[:, -1], count)
    return (first == last).all(dim=1).double().mean().item()


def unrelated_fraction(classifier, clips: Tensor, count: int) -> float:
    """`consistent_fraction` of frame pairs that do not belong together: the first frame of each real clip with the
    last frame of the next one (the last clip's with the first's). The floor of a model that forgets its digits."""
    unrelated = torch.stack([clips[:, 0], clips.roll(-1, dims=0)[:, -1]], dim=1)
    return consistent_fraction(classifier, unrelated, count)


def frame_accuracy(classifier, clips: Tensor, object_labels: Tensor) -> float:
    """The fraction of frames of real ``clips`` whose digit classes the classifier gets exactly right."""
    frames = clips.flatten(0, 1)
    truth = object_labels.long().sort(dim=1).values.repeat_interleave(clips.shape[1], dim=0)
    return (frame_digits(classifier, frames, truth.shape[1]) == truth).all(dim=1).double().mean().item()


def matching_fraction(classifier, frames: Tensor, wanted: Tensor) -> float:
    """The fraction of uint8 ``frames`` (N, C, S, S) that show exactly the digit classes ``wanted`` (N, K) (a class
    or caption-conditioned model's clips against the digits they were drawn for)."""
    wanted = wanted.long().sort(dim=1).values
    return (frame_digits(classifier, frames, wanted.shape[1]) == wanted).all(dim=1).double().mean().item()


def continuation_error(continued: Tensor, real: Tensor, given: int, levels: int = 256) -> dict[str, Any]:
    """Mean squared error per pixel (values scaled to [0, 1]) of uint8 ``continued`` clips (N, F, C, S, S) against
    the ``real`` ones over the frames after the first ``given``, per frame and overall, beside that of the trivial
    prediction that repeats the last given frame."""
    def scaled(clips: Tensor) -> Tensor:
        return clips.double() / (levels - 1)

    truth = scaled(real[:, given:])
    per_frame = ((scaled(continued[:, given:]) - truth) ** 2).mean(dim=(0, 2, 3, 4))
    repeated = ((scaled(real[:, given - 1:given]) - truth) ** 2).mean(dim=(0, 2, 3, 4))
    return {"mse_per_frame": [round(value, 6) for value in per_frame.tolist()], "mse": per_frame.mean().item(),
            "mse_repeating_last_given_frame": repeated.mean().item()}
