"""Likelihood per frame of a video model: log p(x_f | x_<f), and its bits/dim.

Every block of a video model keeps frames in order, so dz/dx is block lower-triangular over frames and

    log p(x) = sum_f log p(x_f | x_<f),   log p(x_f | x_<f) = log p_prior(z_f) + sum over blocks of log|det dz_f/dx_f|

where z_f are the frame's output tokens and each block's log|det| splits over the tokens it transforms (every
transform acts per token). Frame f's bits/dim: -(log p(x_f | x_<f) + D_f log(bin)) / (D_f ln 2), D_f = C H W.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..data.quantize import bin_width
from ..flows.conditioning import Condition
from ..flows.video import FrameLocalBlock
from .likelihood import dequantize_for_evaluation


def frame_logdets(block, tokens: Tensor, condition: Condition, frames: int) -> tuple[Tensor, Tensor]:
    """One block's (z tokens, log|det dz_f/dx_f| (B, F) in nats) on tokens (B, T, D)."""
    if isinstance(block, FrameLocalBlock):
        z, logdet = block.block(block.fold(tokens), block.fold_condition(condition))
        return block.unfold(z), logdet.view(tokens.shape[0], frames)
    x = block.order.apply(tokens)  # video orders keep every frame's tokens in the frame's place
    first, num_tokens = block.first, x.shape[1]
    params = block.params(block.inputs(x, first, num_tokens), condition)
    per_frame = num_tokens // frames
    z, logdets = [x[:, :first]], []
    for frame in range(frames):
        start, end = max(frame * per_frame, first), (frame + 1) * per_frame
        if end <= start:  # a one-token frame whose token passes unchanged (zero start)
            logdets.append(x.new_zeros(x.shape[0]))
            continue
        z_frame, logdet = block.transform.forward(x[:, start:end], tuple(p[:, start - first:end - first] for p in params))
        z.append(z_frame)
        logdets.append(logdet)
    return block.order.undo(torch.cat(z, dim=1)), torch.stack(logdets, dim=1)


def frame_log_prob(model, clips: Tensor, y: Tensor | None = None) -> Tensor:
    """log p(x_f | x_<f) (B, F) in nats for clips (B, F, C, H, W) in [-1, 1]; the rows sum to ``model.log_prob``."""
    model.check_images(clips)
    labels = model.check_labels(y, clips.shape[0])
    frames = model.modality.frame_count
    condition = Condition(labels)
    tokens = model.patchify(clips)
    total = tokens.new_zeros(clips.shape[0], frames, dtype=torch.promote_types(tokens.dtype, torch.float32))
    for block in model.blocks:
        tokens, logdets = frame_logdets(block, tokens, condition, frames)
        total = total + logdets
    prior = model.prior.densities(tokens).sum(-1).view(clips.shape[0], frames, -1).sum(-1)
    return total + prior


@torch.no_grad()
def evaluate_frame_bpd(model, clips: Tensor, labels: Tensor | None, levels: int, batch_size: int = 64,
                       seed: int = 0, progress: bool = False) -> list[float]:
    """Bits/dim of each frame given the earlier ones, averaged over uint8 ``clips`` (N, F, C, H, W), uniformly
    dequantized with the noise of draw 0 of `evaluate_bpd` (same ``seed``): their mean is its bits/dim."""
    from ..progress import progress_bar

    model.eval()
    dims = clips[0, 0].numel()
    dtype = model.dtype
    total = torch.zeros(clips.shape[1], dtype=torch.float64)
    starts = range(0, clips.shape[0], batch_size)
    for start in progress_bar(starts, desc="eval bits/dim per frame", enabled=progress, leave=False):
        end = min(start + batch_size, clips.shape[0])
        x = dequantize_for_evaluation(clips, levels, start, end, seed, 0).to(model.device, dtype)
        y = None if labels is None else labels[start:end].to(model.device)
        log_p = frame_log_prob(model, x, y).double().cpu()
        total += (-(log_p + dims * math.log(bin_width(levels))) / (dims * math.log(2))).sum(0)
    return (total / clips.shape[0]).tolist()


@torch.no_grad()
def evaluate_frame_latent_nll(model, test, labels: Tensor | None, noise_std: float, batch_size: int = 256,
                              seed: int = 0, progress: bool = False) -> list[float]:
    """Latent nats/dim of each frame given the earlier ones, -log p(z_f + sigma eps_f | z_<f + sigma eps_<f) / D_f,
    averaged over the scaled latent clips (N, F, C, S, S) of ``test`` (a `LatentData`) with the noise of
    `evaluate_latent_nll` (same ``seed`` and batches): their mean is its figure."""
    from ..progress import progress_bar

    model.eval()
    count, frames = test.latents.shape[:2]
    dims = test.latents[0, 0].numel()
    total = torch.zeros(frames, dtype=torch.float64)
    for start in progress_bar(range(0, count, batch_size), desc="eval nats/dim per frame", enabled=progress,
                              leave=False):
        index = torch.arange(start, min(start + batch_size, count))
        noisy = test.noisy(index, noise_std, torch.Generator().manual_seed(seed * 1_000_003 + start))
        y = None if labels is None else labels[index].to(model.device)
        log_p = frame_log_prob(model, noisy.to(model.device, model.dtype), y).double().cpu()
        total += (-log_p / dims).sum(0)
    return (total / count).tolist()


def frame_bpd_figures(model, clips: Tensor, labels: Tensor | None, levels: int, seed: int = 0,
                      progress: bool = False) -> dict:
    """`evaluate_frame_bpd` as the entries of `tarflow eval`'s output and of a video run's eval.json."""
    per_frame = evaluate_frame_bpd(model, clips, labels, levels, seed=seed, progress=progress)
    return {"bits_per_dim_per_frame": [round(bpd, 6) for bpd in per_frame],
            "per_frame": "bits/dim of frame f given frames < f (dequantization draw 0)"}


def frame_latent_figures(model, test, labels: Tensor | None, noise_std: float, seed: int = 0,
                         progress: bool = False) -> dict:
    """`evaluate_frame_latent_nll` as the entries of `tarflow eval`'s output and of a video run's eval.json."""
    per_frame = evaluate_frame_latent_nll(model, test, labels, noise_std, seed=seed, progress=progress)
    return {"latent_nats_per_dim_per_frame": [round(nats, 6) for nats in per_frame],
            "per_frame": "latent nats/dim of frame f given frames < f"}
