"""The test-set figure of a Normalizing Trajectory Model: bits/dim of its bound on log p(x_0).

With x_0 uniformly dequantized and one trajectory x_{1:K} ~ q(. | x_0) per image and draw,

    bpd_bound = (-[log p(x_{0:K}) - log q(x_{1:K} | x_0)] - D log(bin)) / (D ln 2),

whose expectation is at least the model's bits/dim (`NormalizingTrajectoryModel.bound`): an upper bound, reported
under the bound's name.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..data.quantize import bin_width
from ..flows.trajectory import BOUND_NAME
from .likelihood import bits_per_dim, dequantize_for_evaluation, mean_and_stderr

TRAJECTORY_SEED_OFFSET = 2 ** 40  # keeps the trajectory noise's generators apart from the dequantization's


@torch.no_grad()
def evaluate_trajectory_bound(model, images: Tensor, labels: Tensor | None, levels: int, draws: int = 1,
                              batch_size: int = 256, seed: int = 0, progress: bool = False) -> dict:
    """Mean bits/dim of the bound over every image and ``draws`` draws (each draw: fresh dequantization and a fresh
    trajectory), with its standard error over images. The dequantization noise of each image depends only on
    (seed, draw, its index), as in `evaluate_bpd`; the trajectory noise on (seed, draw, batch start), so the figure
    also depends on ``batch_size``. One process."""
    from ..progress import progress_bar

    model.eval()
    count, dims, bin_size = images.shape[0], images[0].numel(), bin_width(levels)
    per_image = torch.zeros(count, dtype=torch.float64)
    batches = [(start, min(start + batch_size, count)) for start in range(0, count, batch_size)]
    for draw in range(draws):
        for start, end in progress_bar(batches, desc="eval bound", enabled=progress, leave=False):
            x = dequantize_for_evaluation(images, levels, start, end, seed, draw).to(model.device, model.dtype)
            generator = torch.Generator().manual_seed(seed * 1_000_003 + draw * 7_919 + start + TRAJECTORY_SEED_OFFSET)
            y = None if labels is None else labels[start:end].to(model.device)
            bound = model.bound(model.noising.sample(x, generator), y)
            per_image[start:end] += bits_per_dim(bound, dims, bin_size).double().cpu() / draws
    mean, stderr = mean_and_stderr(per_image)
    return {"bits_per_dim": mean, "stderr": stderr, "images": count, "draws": draws, "bound": BOUND_NAME,
            "trajectory_steps": model.steps}
