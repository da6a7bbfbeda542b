"""Anomaly / out-of-distribution scores from exact likelihoods: per-image bits/dim, and AUROC.

The score of an image is its bits/dim under the model (higher = less likely = more anomalous): log p(x) for an
unconditional model, and for a class-conditional one the class mixture p(x) = (1/K) sum_y p(x | y), which
needs no label. A known caveat (Nalisnick et al., "Do deep generative models know what they don't know?",
ICLR 2019): flows and other likelihood models can give *higher* likelihood to some out-of-distribution data
(SVHN under a CIFAR-10 model), so an AUROC below 0.5 is a real outcome, not a bug. See docs/evaluation.md.
"""

from __future__ import annotations

import csv
import io
import math
import os
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data.quantize import bin_width
from ..errors import ConfigError
from ..io import atomic_write_text
from .likelihood import bits_per_dim, dequantize_for_evaluation


@torch.no_grad()
def score_bpd(model, images: Tensor, levels: int, draws: int = 1, batch_size: int = 256, seed: int = 0,
              progress: bool = False) -> Tensor:
    """Per-image bits/dim (N,) float64 of integer-level images (N, C, H, W), averaged over ``draws`` uniform
    dequantization draws: -log p(x) with p the model's density (unconditional) or the uniform class mixture
    (class-conditional; log-sum-exp over the K labels minus log K). The noise of each image depends only on
    (seed, draw, its index), as in `evaluate_bpd`."""
    from ..progress import progress_bar

    model.eval()
    n, dims, bin_size = images.shape[0], images[0].numel(), bin_width(levels)
    num_classes = model.config.num_classes
    dtype = next(model.parameters()).dtype
    out = torch.zeros(n, dtype=torch.float64)
    starts = list(range(0, n, batch_size))
    for draw in range(draws):
        for lo in progress_bar(starts, desc="scoring", enabled=progress, leave=False):
            hi = min(lo + batch_size, n)
            x = dequantize_for_evaluation(images, levels, lo, hi, seed, draw).to(model.device, dtype)
            if num_classes:
                log_p_each_class = torch.stack([model.log_prob(x, torch.full((hi - lo,), k, device=model.device))
                                  for k in range(num_classes)], dim=1)
                log_p = torch.logsumexp(log_p_each_class, dim=1) - math.log(num_classes)
            else:
                log_p = model.log_prob(x, None)
            out[lo:hi] += bits_per_dim(log_p, dims, bin_size).double().cpu() / draws
    return out


def auroc(in_scores, out_scores) -> float:
    """Area under the ROC curve for telling out-of-distribution from in-distribution by score (higher score =
    more anomalous, e.g. bits/dim): P(s_out > s_in) + P(s_out = s_in) / 2 over all pairs (Mann-Whitney U),
    computed from ranks with ties averaged. 1 = perfect, 0.5 = chance, below 0.5 = the OOD data look *more*
    likely than the in-distribution data."""
    a = torch.as_tensor(in_scores, dtype=torch.float64).flatten()
    b = torch.as_tensor(out_scores, dtype=torch.float64).flatten()
    if a.numel() == 0 or b.numel() == 0:
        raise ValueError("AUROC needs at least one in-distribution and one out-of-distribution score")
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        raise ValueError("AUROC scores must be finite")
    allv = torch.cat([a, b])
    order = torch.argsort(allv, stable=True)
    sorted_v = allv[order]
    ranks = torch.empty_like(allv)
    ranks[order] = torch.arange(1, allv.numel() + 1, dtype=torch.float64)
    # average the ranks of ties
    uniq, inverse, counts = torch.unique_consecutive(sorted_v, return_inverse=True, return_counts=True)
    ends = torch.cumsum(counts, 0).double()
    mean_rank = ends - (counts.double() - 1) / 2
    ranks[order] = mean_rank[inverse]
    n_in, n_out = a.numel(), b.numel()
    u = ranks[n_in:].sum() - n_out * (n_out + 1) / 2
    return (u / (n_in * n_out)).item()


def write_scores_csv(path: str | os.PathLike, rows: list[dict]) -> Path:
    """Write score rows (dicts with the same keys) as a CSV file, atomically."""
    buf = io.StringIO()
    if rows:
        w = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    atomic_write_text(path, buf.getvalue())
    return Path(path)


def typicality_auroc(in_scores, out_scores, entropy: float, group_size: int = 1, seed: int = 0) -> float:
    """AUROC of the typicality test (Nalisnick et al. 2019, arXiv:1906.02994): a group of M images scores
    |mean bits/dim of the group - H|, H the mean bits/dim of training images (an estimate of the model's entropy
    rate), so a group that is too likely is as atypical as one that is too unlikely. Each set is shuffled with
    ``seed`` and cut into floor(N / M) groups (the remainder is left out); M = 1 scores single images."""
    grouped = []
    for scores in (in_scores, out_scores):
        scores = torch.as_tensor(scores, dtype=torch.float64).flatten()
        groups = scores.numel() // group_size
        if groups == 0:
            raise ValueError(f"typicality groups of {group_size} images need at least {group_size} scores per set, "
                             f"got {scores.numel()}")
        order = torch.randperm(scores.numel(), generator=torch.Generator().manual_seed(seed))
        group_means = scores[order[:groups * group_size]].view(groups, group_size).mean(dim=1)
        grouped.append((group_means - entropy).abs())
    return auroc(*grouped)


def score_datasets(model, dataset: str, split: str = "test", ood: str | None = None, count: int | None = None,
                   draws: int = 1, seed: int = 0, batch_size: int = 256, data_dir: str | os.PathLike | None = None,
                   ood_data_dir: str | os.PathLike | None = None, progress: bool = False,
                   typicality: int | None = None, group_sizes: tuple[int, ...] = (1, 10)) -> dict[str, Any]:
    """Per-image bits/dim of a dataset split under ``model`` (see `score_bpd`) and, with ``ood``, of a second
    dataset and the AUROC of telling the two apart by bits/dim. Both datasets are checked before any scoring.
    ``count``: score that many images of each, drawn at random with ``seed``. ``typicality``: also score that many
    training images of ``dataset`` (the reference set, whose mean bits/dim is H) and give the AUROC of the
    typicality test (`typicality_auroc`) for each of ``group_sizes``.

    Returns {"score", "split", "draws", "in": summary, ["out": summary, "auroc", "auroc_means"], ["typicality"],
    "rows": [...]} with one row per image: set (in/out/reference), dataset, split, index, label, class,
    bits_per_dim (float).
    """
    from .model_data import load_model_data, model_levels

    if typicality and not ood:
        raise ConfigError("the typicality test compares two datasets: give the out-of-distribution one too (--ood NAME, "
                          "or ood= in Python)")
    if typicality and split == "train":
        raise ConfigError("the typicality test takes its reference images from the training split; score the test "
                          "split (--split test)")
    levels = model_levels(model)
    sets = [("in", dataset, split, data_dir, count)]
    sets += [("out", ood, split, ood_data_dir, count)] if ood else []
    sets += [("reference", dataset, "train", data_dir, typicality)] if typicality else []
    loaded = []
    for role, name, set_split, location, set_count in sets:  # every dataset checked before any scoring
        data = load_model_data(model, name, set_split, location, progress)
        if data.levels != levels:
            raise ConfigError(f"dataset {name!r} has {data.levels} pixel levels, the model's data {levels}: bits/dim "
                              f"of the two are not comparable")
        loaded.append((role, name, set_split, data, set_count))
    rows, scores = [], {}
    result: dict[str, Any] = {"score": "bits/dim of the class mixture p(x) = mean_y p(x|y)" if model.config.num_classes
                              else "bits/dim of p(x)", "split": split, "draws": draws}
    for role, name, set_split, data, set_count in loaded:
        set_rows = score_one_set(model, data, levels, set_count, draws, seed, batch_size, progress)
        rows += [{"set": role, "dataset": name, "split": set_split, **row} for row in set_rows]
        scores[role] = torch.tensor([row["bits_per_dim"] for row in set_rows], dtype=torch.float64)
        result[role] = {"dataset": name, "images": len(set_rows), "mean_bits_per_dim": scores[role].mean().item(),
                        "median_bits_per_dim": scores[role].median().item()}
    if ood:
        result["auroc"] = auroc(scores["in"], scores["out"])
        result["auroc_means"] = ("P(bits/dim of an out image > that of an in image); 0.5 is chance, below 0.5 the "
                                 "out-of-distribution images look more likely (see docs/evaluation.md)")
    if typicality:
        reference = result.pop("reference")
        entropy = reference["mean_bits_per_dim"]
        result["typicality"] = {
            "reference": {**reference, "split": "train"},
            "auroc_by_group_size": {str(size): typicality_auroc(scores["in"], scores["out"], entropy, size, seed)
                                    for size in group_sizes},
            "means": "P(a group of M out images is further from the reference mean bits/dim H than a group of M "
                     "in images), |mean bits/dim - H| per group (Nalisnick et al. 2019, arXiv:1906.02994)"}
    result["rows"] = rows
    return result


def score_one_set(model, data, levels: int, count: int | None, draws: int, seed: int, batch_size: int,
                  progress: bool) -> list[dict]:
    """Rows (index, label, class, bits_per_dim) of ``count`` images of ``data`` drawn at random with ``seed``
    (all of them when None), scored by `score_bpd`."""
    from .fid import random_subset

    subset = random_subset(len(data), count, seed) if count and count < len(data) else None
    images = data.images if subset is None else data.images[subset]
    labels = data.labels if subset is None else data.labels[subset]
    index = list(range(len(data))) if subset is None else subset.tolist()
    bpd = score_bpd(model, images, levels, draws=draws, batch_size=batch_size, seed=seed, progress=progress)
    classes = data.classes
    return [{"index": i, "label": int(label), "class": classes[int(label)] if int(label) < len(classes) else "",
             "bits_per_dim": value} for i, label, value in zip(index, labels.tolist(), bpd.tolist())]
