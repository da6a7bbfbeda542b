"""Draw docs/itarflow_denoising.png and write docs/itarflow_artifacts.json: the same samples of a noise-conditioned
model (iTARFlow) at its highest trained level t1, as drawn and after each denoising, with two measures of the
artifacts per setting, on --count samples (classes in turn) against --reference random test images:

- high-frequency energy: the mean square of the 3x3 Laplacian of the quantized images (values in [0, 1]),
  divided by that of the test images (1: as much fine detail as the data; above: noise left; below: blur);
- out of range: the fraction of pixel values outside [-1, 1] before quantization (clipped in the image).

    python docs/make_itarflow_artifacts.py runs/cifar10-itarflow --data-dir ../shared/data/cifar10_png.tar.gz
"""

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from tarflow.data import load_dataset
from tarflow.data.quantize import quantize
from tarflow.runs import load_model
from tarflow.sampling import IterativeDenoiser, SequentialSampler
from tarflow.viz import pyplot, save_figure

SETTINGS = {  # label: the denoiser (None: the samples at t1 as drawn)
    "as drawn at t1": None,
    "Tweedie (1 step)": IterativeDenoiser(steps=1),
    **{f"{dynamics.upper()}, {steps} steps": IterativeDenoiser(steps=steps, dynamics=dynamics)
       for dynamics in ("ode", "sde") for steps in (5, 10, 20)},
    "ODE, 10 steps, clipped": IterativeDenoiser(steps=10, dynamics="ode", clip=True),
}
LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])


def high_frequency_energy(levels_images: torch.Tensor, levels: int) -> float:
    """Mean squared 3x3 Laplacian (valid region, every channel) of integer-level images mapped to [0, 1]."""
    images = levels_images.float() / (levels - 1)
    channels = images.shape[1]
    kernel = LAPLACIAN.expand(channels, 1, 3, 3)
    return F.conv2d(images, kernel, groups=channels).pow(2).mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a noise-conditioned model's run or model directory")
    parser.add_argument("--data-dir", default=None, help="local copy of the model's dataset")
    parser.add_argument("--count", type=int, default=200, help="samples (default 200)")
    parser.add_argument("--reference", type=int, default=1000, help="random test images (default 1000)")
    parser.add_argument("--shown", type=int, default=10, help="samples in the picture (default 10)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(Path(__file__).parent), help="output folder (default docs/)")
    args = parser.parse_args()

    model, _ = load_model(args.run, "cpu")
    config = model.config
    test = load_dataset(model.metadata["dataset"], "test", data_dir=args.data_dir, progress=False)
    chosen = torch.randperm(len(test), generator=torch.Generator().manual_seed(args.seed))[:args.reference]
    real_energy = high_frequency_energy(test.images[chosen], test.levels)
    labels = torch.arange(args.count) % config.num_classes if config.num_classes else None
    started = time.perf_counter()
    drawn = SequentialSampler(model).sample(args.count, labels, generator=torch.Generator().manual_seed(args.seed))
    generation = time.perf_counter() - started
    rows = []
    for label, denoiser in SETTINGS.items():
        started = time.perf_counter()
        generator = torch.Generator().manual_seed(args.seed + 1)
        images = drawn if denoiser is None else denoiser.denoise(model, drawn, labels, generator)
        seconds = generation + time.perf_counter() - started  # generation at t1, then this denoising
        quantized = quantize(images, test.levels)
        rows.append({"setting": label, "seconds_per_image": round(seconds / args.count, 4),
                     "high_frequency_energy": round(high_frequency_energy(quantized, test.levels) / real_energy, 4),
                     "out_of_range": round((images.abs() > 1).float().mean().item(), 5), "strip": quantized})
        print({name: value for name, value in rows[-1].items() if name != "strip"}, flush=True)
    out = Path(args.out)
    summary = {"run": str(args.run), "samples": args.count, "reference_images": args.reference, "seed": args.seed,
               "noise_levels": [config.noise_level_min, config.noise_level_max],
               "rows": [{name: value for name, value in row.items() if name != "strip"} for row in rows]}
    (out / "itarflow_artifacts.json").write_text(json.dumps(summary, indent=2) + "\n")
    plot(rows, test.levels, args.shown, out / "itarflow_denoising.png")


def plot(rows: list[dict], levels: int, shown: int, path: Path) -> None:
    """One row of the first ``shown`` samples per setting, labelled with its measures."""
    plt = pyplot()
    fig, axes = plt.subplots(len(rows), 1, figsize=(10, 1.1 * len(rows) + 0.3), dpi=100, squeeze=False)
    for ax, row in zip(axes[:, 0], rows):
        strip = row["strip"][:shown].float() / (levels - 1)
        picture = torch.cat(list(strip), dim=2).permute(1, 2, 0).squeeze(-1).numpy()
        ax.imshow(picture, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_ylabel(f"{row['setting']}\nhigh-freq. {row['high_frequency_energy']:.2f}\n"
                      f"out of range {row['out_of_range']:.3f}", rotation=0, ha="right", va="center", fontsize=8)
        ax.set_xticks([])
        ax.set_yticks([])
    fig.tight_layout()
    print(save_figure(fig, path))


if __name__ == "__main__":
    main()
