"""The cost of one training step of image presets against a reference preset, in one process: how many steps of a
new preset fit the reference's budget (the cifar10 preset: 2,800 steps in about an hour on 2 CPU cores).

    python benchmarks/preset_step_cost.py cifar10-ntm mnist-ntm                 # against cifar10
    python benchmarks/preset_step_cost.py cifar10-ntm --batch 16 32 64 --reference cifar10
    python benchmarks/preset_step_cost.py cifar10-latent cifar10-latent-patch2 --batch 64 128 --threads 2

Each preset's model (pixel TarFlow, NTM, or a latent flow on random latents: the dataset is encoded once before
training, so a step costs the flow alone) takes steps of its own batch size (or each --batch) on random images:
-log p (the NTM's trajectory bound), backward, AdamW, as the trainers do; presets are timed in turn, round after
round, so a disturbance of the machine falls on all of them. Prints the best step time over --rounds (after one
warm-up round) and its ratio to the reference's step, and the steps that fit the reference's budget.
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
from tarflow.presets import get_preset  # noqa: E402

from preset_timing import best_times, image_preset  # noqa: E402


def step_function(name: str, batch: int | None):
    """(label, a function doing one training step) of preset ``name`` at ``batch`` (None: the preset's)."""
    preset = image_preset(name, modalities=("pixels", "latents"))
    config = preset.model
    batch = batch or preset.train.batch_size
    trajectory = config.architecture == "ntm"
    model = NormalizingTrajectoryModel(config) if trajectory else TarFlow(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    generator = torch.Generator().manual_seed(0)
    x = torch.rand(batch, config.channels, config.image_size, config.image_size, generator=generator) * 2 - 1
    y = torch.arange(batch) % config.num_classes if config.num_classes else None
    path = model.noising.sample(x, generator) if trajectory else None

    def step(round_index: int) -> None:
        log_prob = model.bound(path, y, validate=False) if trajectory else model.log_prob(x, y, validate=False)
        optimizer.zero_grad()
        (-log_prob.mean()).backward()
        optimizer.step()

    return f"{name} (batch {batch})", step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("presets", nargs="+", help="image presets to time")
    parser.add_argument("--reference", default="cifar10", help="the preset whose budget is the unit (default cifar10)")
    parser.add_argument("--batch", type=int, nargs="+", default=[None], help="batch sizes (default: each preset's)")
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds after the warm-up round (default 3)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    reference = get_preset(args.reference)
    reference_label, reference_step = step_function(args.reference, None)
    steps = {reference_label: reference_step}
    for name in args.presets:
        for batch in args.batch:
            label, step = step_function(name, batch)
            steps[label] = step
    best = best_times(steps, args.rounds)
    unit = best[reference_label]
    print(f"{args.threads} thread(s), best of {args.rounds} rounds; budget: {reference.train.steps} steps of "
          f"{args.reference}")
    for label, seconds in best.items():
        ratio = seconds / unit
        print(f"{label}: {seconds:.3f} s/step, {ratio:.2f}x {args.reference}'s step, "
              f"{reference.train.steps / ratio:,.0f} steps in its budget")


if __name__ == "__main__":
    main()
