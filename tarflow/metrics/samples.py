"""Draw many samples in batches, as integer pixel levels, for sample-quality metrics (FID, class consistency)."""

from __future__ import annotations

from typing import Iterator

import torch
from torch import Tensor

from ..data.quantize import quantize


def default_sampler(model):
    """The metrics' sampler when none is given: the exact sequential one; for a latent model its samples decoded
    to images (fine-tuned decoder or one Tweedie step, `tarflow.sampling.choose_denoising`)."""
    from ..sampling import DecodedSampler, SequentialSampler, choose_denoising

    sampler = SequentialSampler(model)
    if model.config.modality != "latents":
        return sampler
    return DecodedSampler(sampler, *choose_denoising(model))


def generate_levels(sampler, n: int, labels: Tensor | None = None, levels: int = 256, temperature: float = 1.0,
                    guidance=None, denoise_std: float | None = None, batch_size: int = 256, seed: int = 0,
                    progress: bool = True, rank: int = 0, world_size: int = 1) -> Tensor:
    """``n`` samples (n, C, H, W) as integer levels 0..levels-1 (uint8 for <= 256 levels), drawn with
    ``sampler.sample`` in batches of ``batch_size``. Batch starting at image i uses the noise seed
    seed * 1_000_003 + i, so a sample does not depend on anything but its position, seed and batch size.
    NaN samples (a diverged sampler) are an error rather than silently clamped. Under torchrun, process
    ``rank`` of ``world_size`` draws batches rank, rank + W, ... only (the same samples, split)."""
    from ..errors import TarflowError

    out = []
    for lo, x in sample_batches(sampler, n, labels, temperature, guidance, denoise_std, batch_size, seed, progress,
                                rank, world_size):
        if not torch.isfinite(x).all():
            raise TarflowError(f"the sampler produced NaN or inf values (batch at image {lo}); try a lower "
                               f"temperature or guidance weight, or the exact sequential sampler")
        out.append(quantize(x.float().cpu(), levels))
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.uint8)


def sample_batches(sampler, n: int, labels: Tensor | None = None, temperature: float = 1.0, guidance=None,
                   denoise_std: float | None = None, batch_size: int = 256, seed: int = 0, progress: bool = True,
                   rank: int = 0, world_size: int = 1, desc: str = "sampling") -> Iterator[tuple[int, Tensor]]:
    """(i, samples of images i .. i + batch_size - 1) as ``sampler.sample`` draws them, the batch at image i with
    the noise seed seed * 1_000_003 + i and the labels ``labels[i:]``; process ``rank`` of ``world_size`` draws
    batches rank, rank + W, ... only."""
    from ..progress import progress_bar

    starts = list(range(0, n, batch_size))[rank::world_size]
    for lo in progress_bar(starts, desc=desc, enabled=progress, leave=False, unit="batch"):
        hi = min(lo + batch_size, n)
        y = None if labels is None else labels[lo:hi]
        yield lo, sampler.sample(hi - lo, y, temperature, guidance, denoise_std,
                                 generator=torch.Generator().manual_seed(seed * 1_000_003 + lo))
