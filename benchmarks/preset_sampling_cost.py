"""Sampling time per image of image presets against a reference preset, in one process: what the FID tables'
"seconds per image" compare (pixel TarFlow's exact sequential sampler against an NTM's K steps, with and without
its self-distilled denoiser, or against a noise-conditioned model's generation at t1, with one Tweedie step and
with 5 steps of iterative denoising).

    python benchmarks/preset_sampling_cost.py cifar10-ntm                      # against cifar10, batch 256
    python benchmarks/preset_sampling_cost.py mnist-ntm --reference mnist --batch 64 256
    python benchmarks/preset_sampling_cost.py cifar10-itarflow --threads 2

Each preset's model is built fresh: these samplers do the same work whatever the weights (the sequential sampler
inverts every token of every block, the NTM runs its K steps, the denoiser is one forward, each step of iterative
denoising one forward and backward pass), so an untrained model costs what a trained one does. Class-conditional
presets sample classes in turn, unguided at temperature 1 (the FID tables' setting). Presets are timed in turn, round after round, so a disturbance of the machine falls on all
of them. Prints the best time per image over --rounds (after one warm-up round) and its ratio to the reference's.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tarflow import TarFlow  # noqa: E402
from tarflow.flows.trajectory import NormalizingTrajectoryModel  # noqa: E402
from tarflow.sampling import (DenoisedSampler, IterativeDenoiser, SequentialSampler,  # noqa: E402
                              TrajectorySampler)
from tarflow.sampling.trajectory_denoiser import DenoiserConfig, TrajectoryDenoiser, dequantization_std  # noqa: E402

from preset_timing import best_times, image_preset  # noqa: E402


def samplers(name: str) -> list[tuple[str, object, int | None]]:
    """[(label, sampler, number of classes)] of preset ``name``: an NTM gives two, without and with a denoiser
    of the distill-denoiser command's default size."""
    config = image_preset(name).model
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


def sample_call(sampler, batch: int, classes: int | None):
    """A function drawing ``batch`` samples (classes in turn) with the round's index as the seed."""
    y = torch.arange(batch) % classes if classes else None

    def call(round_index: int) -> None:
        with torch.no_grad():
            sampler.sample(batch, y, generator=torch.Generator().manual_seed(round_index))

    return call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="+", help="image presets to time")
    parser.add_argument("--reference", default="cifar10", help="the preset whose time is the unit (default cifar10)")
    parser.add_argument("--batch", type=int, nargs="+", default=[256], help="images per call (default 256, fid's)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds after the warm-up round (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    entries = samplers(args.reference)[:1]
    for name in args.presets:
        entries += samplers(name)
    print(f"{args.threads} thread(s), best of {args.rounds} rounds after a warm-up round")
    for batch in args.batch:
        calls = {label: sample_call(sampler, batch, classes) for label, sampler, classes in entries}
        best = best_times(calls, args.rounds)
        unit = best[entries[0][0]] / batch
        for label, call_seconds in best.items():
            seconds = call_seconds / batch
            print(f"batch {batch}: {label}: {seconds * 1000:.2f} ms/image, {seconds / unit:.3f}x "
                  f"{args.reference}'s, {1 / seconds:.1f} images/s")


if __name__ == "__main__":
    main()
