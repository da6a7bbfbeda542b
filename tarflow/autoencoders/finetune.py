"""A decoder fine-tuned on noisy latents (STARFlow's learned denoising): decode(z + sigma eps) ~ the clean image.

A latent flow trained on z + sigma eps samples noisy latents. Instead of one Tweedie step in latent space, a
copy of its autoencoder (the library's own or a diffusers AutoencoderKL) whose decoder is trained on noisy
latents of the training images,
loss = E || decode((z + sigma eps) / scale + shift) - x ||^2 per pixel value (encoder frozen), with sigma the
flow's noise level, maps them to clean images. It is saved in the flow model's directory as
``denoising_decoder/`` (a whole autoencoder directory in the autoencoder's own format, its sigma in the
metadata); `tarflow sample` uses it when present and its sigma is the flow's, and Tweedie denoising otherwise.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from ..data import dequantize, load_dataset
from ..errors import ConfigError, TarflowError
from ..progress import progress_bar
from ..train.device import pick_device
from .saving import load_autoencoder

DENOISING_DECODER = "denoising_decoder"


def noisy_decode_psnr(decoder_of, latents: torch.Tensor, images: torch.Tensor, levels: int, sigma: float,
                      seed: int = 0, batch_size: int = 256) -> float:
    """Mean PSNR (dB, peak L - 1) of quantized decode_of(latents + sigma eps) against the images; fixed noise."""
    values = []
    for start in range(0, len(latents), batch_size):
        chunk = latents[start:start + batch_size]
        eps = torch.randn(chunk.shape, generator=torch.Generator().manual_seed(seed * 1_000_003 + start))
        with torch.no_grad():
            decoded = decoder_of(chunk + sigma * eps).float().cpu()
        levels_out = ((decoded.clamp(-1, 1) + 1) * levels / 2).floor().clamp(0, levels - 1)
        error = (levels_out - images[start:start + batch_size].double()).pow(2).flatten(1).mean(1)
        values.append((10 * torch.log10((levels - 1) ** 2 / error)).clamp(max=100.0))
    return torch.cat(values).mean().item()


def finetune_decoder(flow, model_dir: str | Path, steps: int = 1000, batch_size: int = 64, lr: float = 1e-4,
                     seed: int = 0, data_dir: str | None = None, device: str = "auto", progress: bool = True
                     ) -> dict[str, Any]:
    """Fine-tune the decoder of ``flow``'s autoencoder on noisy latents and save it in ``model_dir``.

    Returns the test PSNR of decode(noisy latent) before and after, each with the same noise draws."""
    from ..train.latents import encode_images

    if not 0 < lr <= 1:
        raise ConfigError(f"lr must be in (0, 1], got {lr}")
    if flow.config.modality != "latents":
        raise ConfigError("finetune-decoder needs a latents model (trained with --modality latents); this one "
                          f"models {flow.config.modality}")
    metadata = flow.metadata
    if metadata.get("noise") != "gaussian" or not metadata.get("noise_std"):
        raise ConfigError("finetune-decoder needs the flow's training noise (metadata noise=gaussian and noise_std); "
                          "this model's metadata lacks it")
    modality, sigma = flow.modality, float(metadata["noise_std"])
    run_device = pick_device(device)
    autoencoder = load_autoencoder(modality.located(), run_device)
    decoder_parameters = [parameter for module in autoencoder.decoder_modules() for parameter in module.parameters()]
    size = modality.image_size * autoencoder.downsample
    load = dict(data_dir=data_dir, image_size=size if metadata.get("dataset") == "folder" else None,
                progress=progress)
    data = load_dataset(metadata["dataset"], "train", **load)
    test = load_dataset(metadata["dataset"], "test", **load)
    latents = (encode_images(modality, data, progress=progress) - modality.shift) * modality.scale
    test_latents = (encode_images(modality, test, progress=progress) - modality.shift) * modality.scale

    def decoder_of(scaled: torch.Tensor) -> torch.Tensor:
        return autoencoder.decode((scaled / modality.scale + modality.shift).to(run_device))

    before = noisy_decode_psnr(decoder_of, test_latents, test.images, test.levels, sigma)
    torch.manual_seed(seed)
    for module in autoencoder.decoder_modules():
        module.requires_grad_(True).train()
    optimizer = torch.optim.AdamW(decoder_parameters, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 0.5 * (1 + math.cos(math.pi * step / steps)))
    for step in progress_bar(range(steps), desc="finetune decoder", enabled=progress, unit="step"):
        generator = torch.Generator().manual_seed(seed * 1_000_003 + step)
        index = torch.randint(len(latents), (batch_size,), generator=generator)
        noisy = latents[index] + sigma * torch.randn(latents[index].shape, generator=generator)
        images = dequantize(data.images[index], data.levels, "gaussian", 0.0).to(run_device)
        loss = (decoder_of(noisy) - images).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        schedule.step()
    for module in autoencoder.decoder_modules():
        module.requires_grad_(False).eval()
    after = noisy_decode_psnr(decoder_of, test_latents, test.images, test.levels, sigma)
    if not math.isfinite(loss.item()) or not all(torch.isfinite(p).all() for p in decoder_parameters):
        raise TarflowError(f"fine-tuning diverged (loss {loss.item()}): lower --lr; nothing was saved")
    result = {"noise_std": sigma, "steps": steps, "noisy_psnr_db_before": before, "noisy_psnr_db_after": after,
              "images": len(test)}
    autoencoder.save_pretrained(Path(model_dir) / DENOISING_DECODER,
                                {**autoencoder.metadata, "noise_std": sigma, "finetune_steps": steps})
    return result
