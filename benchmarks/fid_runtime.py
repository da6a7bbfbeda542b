"""FID features through ONNX Runtime against TorchScript: speed-up and agreement, in one process.

    python benchmarks/fid_runtime.py --weights default_1.pt                      # 256 digits test images
    python benchmarks/fid_runtime.py --weights default_1.pt --dataset cifar10 --data-dir CIFAR --count 512

Both runtimes extract the features of the same images in batches of --batch, in turn over --rounds rounds (best
kept), with --threads threads. Prints images/s of each and the speed-up, the largest feature difference against
the largest feature, and the FID between the two halves of the images by each runtime (what a cached reference
of one and samples of the other would give). Needs `pip install tarflow[onnx]`.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tarflow.data import load_dataset  # noqa: E402
from tarflow.metrics.fid import FeatureExtractor, FIDStats, fid_from_stats, to_rgb_uint8  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", required=True, help="the Inception TorchScript file (default_1.pt)")
    parser.add_argument("--dataset", default="digits", help="test images of this dataset (default digits)")
    parser.add_argument("--data-dir", default=None, help="the dataset's files, where it needs them")
    parser.add_argument("--count", type=int, default=256, help="images (default 256)")
    parser.add_argument("--batch", type=int, default=32, help="images per batch (default 32)")
    parser.add_argument("--rounds", type=int, default=2, help="timed rounds, best kept (default 2)")
    parser.add_argument("--threads", type=int, default=1, help="threads of both runtimes (default 1)")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    data = load_dataset(args.dataset, "test", data_dir=args.data_dir)
    images = to_rgb_uint8(data.images[:args.count], data.levels)
    with tempfile.TemporaryDirectory() as cache:
        runtimes = {name: FeatureExtractor(args.weights, batch_size=args.batch, runtime=name, cache_dir=cache)
                    for name in ("torch", "onnxruntime")}
        features, best = {}, {name: float("inf") for name in runtimes}
        runtimes["torch"](images[:args.batch])  # warm-up
        runtimes["onnxruntime"](images[:args.batch])
        for _ in range(args.rounds):
            for name, extractor in runtimes.items():
                started = time.perf_counter()
                features[name] = np.concatenate([extractor(images[low:low + args.batch])
                                                 for low in range(0, len(images), args.batch)])
                best[name] = min(best[name], time.perf_counter() - started)
    print(f"{len(images)} {args.dataset} test images, batch {args.batch}, {args.threads} thread(s), best of "
          f"{args.rounds} rounds")
    for name, seconds in best.items():
        print(f"{name}: {len(images) / seconds:.2f} images/s")
    print(f"speed-up of onnxruntime: {best['torch'] / best['onnxruntime']:.2f}x")
    difference = np.abs(features["onnxruntime"] - features["torch"]).max()
    print(f"largest feature difference {difference:.3g} (largest feature {np.abs(features['torch']).max():.3g})")
    half = len(images) // 2
    for name, values in features.items():
        parts = (values[:half], values[half:])
        stats = [FIDStats(part.mean(0), np.cov(part, rowvar=False), len(part)) for part in parts]
        print(f"FID of the two halves by {name}: {fid_from_stats(*stats):.6f}")


if __name__ == "__main__":
    main()
