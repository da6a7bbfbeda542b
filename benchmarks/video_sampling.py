"""Speed-up of video Jacobi sampling (frames in order, the tokens of each frame by Jacobi) over the exact
sequential sampler, on a trained video model, at batch 1 and 8.

    python benchmarks/video_sampling.py --model RUN_OR_MODEL_DIR          # a trained video model
    python benchmarks/video_sampling.py --data-dir MNIST_DIR              # train --preset first (into --out), then measure
    python benchmarks/video_sampling.py --data-dir MNIST_DIR --preset moving-mnist-tiny --train-steps 20 --reps 1
                                                                          # a seconds-long smoke run

An untrained flow is the identity (zero output projections), so Jacobi would converge at once: the benchmark
needs a trained model. Without ``--model`` it trains the preset for ``--train-steps`` steps (the library's
trainer) into ``--out`` and reuses it next time. Per batch size it prints the time per clip of each sampler (the
best of ``--reps`` runs, after one warm-up), the speed-up over sequential, the max abs difference to the
sequential output on the same noise (exactness at ``--tol``), and the Jacobi iterations each block used per
frame module.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tarflow.presets import get_preset  # noqa: E402
from tarflow.runs import load_model  # noqa: E402
from tarflow.sampling import SequentialSampler, VideoJacobiSampler  # noqa: E402
from tarflow.train import train  # noqa: E402


def trained_model(args: argparse.Namespace):
    if args.model:
        return load_model(args.model, "cpu")[0]
    out = Path(args.out)
    if not (out / "model" / "config.json").is_file():
        config = get_preset(args.preset)
        config.train.steps = args.train_steps
        config.train.data_dir = args.data_dir or ""
        train(config, out, progress=False)
    return load_model(out, "cpu")[0]


def best_time(sample, reps: int) -> tuple[float, torch.Tensor]:
    sample()  # warm-up
    times, x = [], None
    for _ in range(reps):
        started = time.perf_counter()
        x = sample()
        times.append(time.perf_counter() - started)
    return min(times), x


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a trained video model (run or model directory)")
    parser.add_argument("--preset", default="moving-mnist-likelihood", help="preset trained without --model")
    parser.add_argument("--data-dir", default=None, help="MNIST IDX files for training without --model")
    parser.add_argument("--out", default="runs/bench-video", help="where the trained model is kept")
    parser.add_argument("--train-steps", type=int, default=600, help="training steps without --model")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8], help="batch sizes (default 1 8)")
    parser.add_argument("--tol", type=float, default=1e-5, help="Jacobi relative-change tolerance")
    parser.add_argument("--reps", type=int, default=3, help="timed runs per sampler and batch (best kept)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    model = trained_model(args).eval()
    modality = model.modality
    print(f"model: {modality.frame_count} frames x {modality.tokens_per_frame} tokens, layout "
          f"{model.config.frame_layout}, {len(model.blocks)} blocks; torch threads {torch.get_num_threads()}")
    print(f"{'batch':>5} {'sequential s/clip':>18} {'video-jacobi s/clip':>20} {'speed-up':>9} {'max |diff|':>11}  "
          f"iterations per frame (block N-1 first)")
    for batch in args.batches:
        z = SequentialSampler(model).noise(batch, generator=torch.Generator().manual_seed(args.seed))
        sequential_time, reference = best_time(lambda: SequentialSampler(model).sample(batch, z=z), args.reps)
        jacobi = VideoJacobiSampler(model, tol=args.tol)
        jacobi_time, x = best_time(lambda: jacobi.sample(batch, z=z), args.reps)
        iterations = " | ".join(",".join(map(str, used)) for used in reversed(jacobi.last_iterations))
        print(f"{batch:>5} {sequential_time / batch:>18.4f} {jacobi_time / batch:>20.4f} "
              f"{sequential_time / jacobi_time:>8.2f}x {(x - reference).abs().max().item():>11.2e}  {iterations}")


if __name__ == "__main__":
    main()
