"""Bits per dimension and test-set likelihood evaluation.

For a noise-conditioned model (iTARFlow) at level t the data is x_t = x + t eps, x uniformly dequantized and
eps ~ N(0, I), and bpd_t = (-log p_t(x_t) - D log(2 / L)) / (D ln 2), the same bin-width convention: a
continuous density of the noisy data, not a likelihood of the clean images. Such a model has no exact
clean-data likelihood (p_t models data blurred by N(0, t^2)); its figure at the lowest trained level t0 is the
closest stand-in.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import Tensor

from ..data.quantize import bin_width, place_in_bins

NOISE_BLOCK = 256  # images that share one noise generator (the evaluation batch of every released figure)


def bits_per_dim(log_prob: Tensor, num_dims: int, bin_width: float) -> Tensor:
    """bpd = (-log p(x) - D log(bin_width)) / (D ln 2), with log p in nats per sample.

    The bin width is that of the data in model space: 2/256 for 8-bit images in [-1, 1], 2/L for L levels.
    With uniform dequantization this is an upper bound on the discrete model's bits/dim.
    """
    return (-log_prob - num_dims * math.log(bin_width)) / (num_dims * math.log(2))


def dequantize_for_evaluation(images: Tensor, levels: int, start: int, end: int, seed: int, draw: int,
                              noise_block: int = NOISE_BLOCK, noise_level: float | None = None) -> Tensor:
    """Images start..end-1 uniformly dequantized (plus ``noise_level`` eps, eps ~ N(0, I), when given), with
    noise that depends on each image's index alone.

    Image i's noise is row i mod B of U[0, 1) (then of N(0, I)) drawn for the B images of its block
    (B = ``noise_block``) by a generator seeded with (seed, draw, block start), so a figure does not depend on
    the batch size or the number of processes; a batch of exactly one block draws what the evaluation drew
    before per-image seeding.
    """
    count, image_shape = images.shape[0], images.shape[1:]
    uniform, gaussian = [], []
    for block_start in range(start - start % noise_block, end, noise_block):
        block_end = min(block_start + noise_block, count)
        rows = slice(max(start, block_start) - block_start, min(end, block_end) - block_start)
        generator = torch.Generator().manual_seed(seed * 1_000_003 + draw * 7_919 + block_start)
        uniform.append(torch.rand((block_end - block_start, *image_shape), generator=generator)[rows])
        if noise_level is not None:
            gaussian.append(torch.randn((block_end - block_start, *image_shape), generator=generator)[rows])
    x = place_in_bins(images[start:end], torch.cat(uniform).to(images.device), levels)
    return x if noise_level is None else x + noise_level * torch.cat(gaussian).to(images.device)


def mean_and_stderr(values: Tensor) -> tuple[float, float]:
    n = values.numel()
    return values.mean().item(), (values.std().item() / math.sqrt(n)) if n > 1 else float("nan")


@torch.no_grad()
def evaluate_bpd(model, images: Tensor, labels: Tensor | None, levels: int, draws: int = 1,
                 batch_size: int = 256, seed: int = 0, mixture: bool = False, progress: bool = False,
                 rank: int = 0, world_size: int = 1, noise_block: int = NOISE_BLOCK, noise_level: float | None = None,
                 extrapolate: bool = False) -> dict[str, float]:
    """Test bits/dim with uniform dequantization, averaged over every image and ``draws`` noise draws. With
    ``noise_level`` t the data get t eps more noise (module docstring): a noise-conditioned model gives bpd_t of
    its density p_t (``extrapolate`` allows a t outside the trained range, with a warning), another model (one
    trained with gaussian noise) its one density of the noisy data.

    ``images`` are integer levels (N, C, H, W) in 0..levels-1. The standard error is over images (each
    image's bits/dim averaged over its draws first). The noise of each image depends only on (seed, draw,
    its index) (see `dequantize_for_evaluation`), so the result is the same whatever ``batch_size`` and
    ``world_size``: rank r evaluates batches r, r + W, ... and the per-image figures are summed across ranks.

    For a class-conditional model, ``mixture=True`` also evaluates p(x) = (1/K) sum_y p(x | y) (log-sum-exp
    over the K labels, comparable with unconditional models) and the Bayes-classifier accuracy of
    argmax_y p(x | y) against ``labels``.
    """
    from ..progress import progress_bar

    model.eval()
    n, dims, bin_size = images.shape[0], images[0].numel(), bin_width(levels)
    num_classes = model.config.num_classes if mixture else 0
    conditioned = noise_level is not None and model.config.noise_conditioning
    at_level = dict(noise_level=noise_level, extrapolate=extrapolate) if conditioned else {}
    per_image = torch.zeros(n, dtype=torch.float64)
    per_image_mix = torch.zeros(n, dtype=torch.float64)
    correct = torch.zeros(n, dtype=torch.float64)
    dtype = next(model.parameters(), torch.empty(())).dtype  # float64 models get float64 inputs
    batches = [(i, min(i + batch_size, n)) for i in range(0, n, batch_size)][rank::world_size]
    for draw in range(draws):
        for lo, hi in progress_bar(batches, desc="eval bits/dim", enabled=progress, leave=False):
            x = dequantize_for_evaluation(images, levels, lo, hi, seed, draw, noise_block, noise_level)
            x = x.to(model.device, dtype)
            y = None if labels is None else labels[lo:hi].to(model.device)
            per_image[lo:hi] += bits_per_dim(model.log_prob(x, y, **at_level), dims, bin_size).double().cpu() / draws
            if num_classes:
                log_p_each_class = torch.stack([model.log_prob(x, torch.full_like(y, k), **at_level)
                                                for k in range(num_classes)], dim=1)
                log_p_mixture = torch.logsumexp(log_p_each_class, dim=1) - math.log(num_classes)
                per_image_mix[lo:hi] += bits_per_dim(log_p_mixture, dims, bin_size).double().cpu() / draws
                correct[lo:hi] += (log_p_each_class.argmax(dim=1) == y).double().cpu() / draws
    if world_size > 1:
        stacked = torch.stack([per_image, per_image_mix, correct])
        dist.all_reduce(stacked)
        per_image, per_image_mix, correct = stacked
    mean, stderr = mean_and_stderr(per_image)
    result = {"bits_per_dim": mean, "stderr": stderr, "images": n, "draws": draws}
    if noise_level is not None:
        result["noise_level"] = noise_level
    if num_classes:
        mean_mix, stderr_mix = mean_and_stderr(per_image_mix)
        result.update(mixture_bits_per_dim=mean_mix, mixture_stderr=stderr_mix,
                      bayes_accuracy=correct.mean().item())
    return result
