"""Sampling time per image of image presets against a reference preset, in one process: what the FID tables'
"seconds per image" compare (pixel TarFlow's exact sequential sampler against an NTM's K steps, with and without
its self-distilled denoiser, or against a noise-conditioned model's generation at t1, with one Tweedie step and
with 5 steps of iterative denoising, or against a latent model's generation with its decoding: one Tweedie step
in latent space then the decoder, or the decoder alone, which is what a fine-tuned denoising decoder costs, or the
latents without decoding: the flow's share).

    python benchmarks/preset_sampling_cost.py cifar10-ntm                      # against cifar10, batch 256
    python benchmarks/preset_sampling_cost.py mnist-ntm --reference mnist --batch 64 256
    python benchmarks/preset_sampling_cost.py cifar10-itarflow --threads 2
    python benchmarks/preset_sampling_cost.py cifar10-latent --threads 2      # a fresh autoencoder of the default shape

Each preset's model is built fresh: these samplers do the same work whatever the weights (the sequential sampler
inverts every token of every block, the NTM runs its K steps, the denoiser is one forward, each step of iterative
denoising one forward and backward pass, the decoder one forward), so an untrained model costs what a trained one
does; a latent preset gets a fresh autoencoder of `tarflow autoencoder train`'s default shape unless --autoencoder
names one. Class-conditional presets sample classes in turn, unguided at temperature 1 (the FID tables'
setting). Presets are timed in turn, round after round, so a disturbance of the machine falls on all of them.
Prints the best time per image over --rounds (after one warm-up round) and its ratio to the reference's.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tarflow import TarFlow  # noqa: E402
from tarflow.autoencoders import AutoencoderConfig, KLAutoencoder  # noqa: E402
from tarflow.flows.trajectory import NormalizingTrajectoryModel  # noqa: E402
from tarflow.sampling import (DecodedSampler, DenoisedSampler, IterativeDenoiser,  # noqa: E402
                              SequentialSampler, TrajectorySampler)
from tarflow.sampling.trajectory_denoiser import DenoiserConfig, TrajectoryDenoiser, dequantization_std  # noqa: E402

from preset_timing import best_times, image_preset  # noqa: E402


def latent_samplers(name: str, preset, autoencoder_dir: str) -> list[tuple[str, object, int | None, dict]]:
    """A latent preset's sequential sampler with its two decodings and without decoding (the flow's share of the
    cost; see `samplers`); ``autoencoder_dir`` empty: a fresh autoencoder of the default shape, saved in a
    temporary directory that is gone once it is loaded (unit latent scale, zero shift)."""
    config = preset.model
    config.latent_scale, config.latent_shift = 1.0, 0.0
    with tempfile.TemporaryDirectory(prefix="tarflow-bench-autoencoder-") as fresh_dir:
        if not autoencoder_dir:
            autoencoder_dir = fresh_dir
            KLAutoencoder(AutoencoderConfig(latent_channels=config.channels)).save_pretrained(fresh_dir)
        config.autoencoder = str(Path(autoencoder_dir).resolve())
        sampler = SequentialSampler(TarFlow(config).eval())
        sampler.model.modality.autoencoder  # loaded now, while its directory exists
    classes = config.num_classes or None
    tweedie = {"denoise_std": preset.train.noise_std}
    return [(f"{name} (sequential + Tweedie + decoder)", DecodedSampler(sampler, "tweedie"), classes, tweedie),
            (f"{name} (sequential + decoder)", DecodedSampler(sampler, "none"), classes, {}),
            (f"{name} (sequential, latents only)", sampler, classes, {})]


def samplers(name: str, autoencoder_dir: str = "") -> list[tuple[str, object, int | None, dict]]:
    """[(label, sampler, number of classes, more keywords of its sample call)] of preset ``name``: an NTM gives
    two, without and with a denoiser of the distill-denoiser command's default size."""
    preset = image_preset(name, modalities=("pixels", "latents"))
    if preset.model.modality == "latents":
        return latent_samplers(name, preset, autoencoder_dir)
    return [entry + ({},) for entry in image_samplers(name, preset.model)]


def image_samplers(name: str, config) -> list[tuple[str, object, int | None]]:
    """A pixel preset's samplers (see `samplers`)."""
    classes = config.num_classes or None
    if config.noise_conditioning:
        sampler = SequentialSampler(TarFlow(config).eval())
        return [(f"{name} (sequential, at t1)", sampler, classes),
                (f"{name} (sequential + Tweedie)", DenoisedSampler(sampler, IterativeDenoiser(steps=1)), classes),
                (f"{name} (sequential + 5 ODE steps)", DenoisedSampler(sampler, IterativeDenoiser(steps=5)), classes)]
    if config.architecture != "ntm":
        return [(f"{name} (sequential)", SequentialSampler(TarFlow(config).eval()), classes)]
    model = NormalizingTrajectoryModel(config).eval()
    denoiser = TrajectoryDenoiser(DenoiserConfig(config.image_size, config.channels, config.patch_size,
                                                 sigma=dequantization_std(256), num_classes=config.num_classes))
    steps = config.trajectory_steps
    return [(f"{name} ({steps} steps)", TrajectorySampler(model), classes),
            (f"{name} ({steps} steps + denoiser)", TrajectorySampler(model, denoiser.eval()), classes)]


def sample_call(sampler, batch: int, classes: int | None, options: dict):
    """A function drawing ``batch`` samples (classes in turn) with the round's index as the seed; ``options``:
    more keywords of ``sampler.sample``."""
    y = torch.arange(batch) % classes if classes else None

    def call(round_index: int) -> None:
        with torch.no_grad():
            sampler.sample(batch, y, generator=torch.Generator().manual_seed(round_index), **options)

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="+", help="image presets to time")
    parser.add_argument("--reference", default="cifar10", help="the preset whose time is the unit (default cifar10)")
    parser.add_argument("--batch", type=int, nargs="+", default=[256], help="images per call (default 256, fid's)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up round (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--autoencoder", default="", metavar="DIR",
                        help="latent presets: this autoencoder instead of a fresh one of the default shape")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    entries = samplers(args.reference)[:1]
    for name in args.presets:
        entries += samplers(name, args.autoencoder)
    print(f"{args.threads} thread(s), best of {args.rounds} rounds after a warm-up round")
    for batch in args.batch:
        calls = {label: sample_call(sampler, batch, classes, options) for label, sampler, classes, options in entries}
        best = best_times(calls, args.rounds)
        unit = best[entries[0][0]] / batch
        for label, call_seconds in best.items():
            seconds = call_seconds / batch
            print(f"batch {batch}: {label}: {seconds * 1000:.2f} ms/image, {seconds / unit:.3f}x "
                  f"{args.reference}'s, {1 / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
