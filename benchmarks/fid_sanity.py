"""FID between two splits of a dataset: the sanity check of the FID pipeline.

FID(CIFAR-10 train 50,000, CIFAR-10 test 10,000) is commonly reported as about 3 with the TensorFlow
Inception graph; smaller subsets give larger values (FID is biased upward by roughly 1/N). Both splits'
statistics go to the tarflow cache, where `tarflow fid` finds them again.

    python benchmarks/fid_sanity.py --weights default_1.pt --data-dir ../shared/data/cifar10_png.tar.gz
"""

from __future__ import annotations

import argparse
import json
import time

from tarflow.metrics.fid import FeatureExtractor, dataset_statistics, fid_from_stats


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--weights", required=True, help="TorchScript Inception feature extractor (see tarflow fid --help)")
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-dir", default=None, help="local copy of the dataset's files")
    p.add_argument("--count-a", type=int, default=None, help="images of the first split (default: all)")
    p.add_argument("--count-b", type=int, default=None, help="images of the second split (default: all)")
    p.add_argument("--splits", nargs=2, default=["train", "test"], metavar=("A", "B"))
    p.add_argument("--batch-size", type=int, default=32, help="images per feature-extractor call")
    p.add_argument("--device", default="cpu")
    args = p.parse_args()

    extractor = FeatureExtractor(args.weights, device=args.device, batch_size=args.batch_size)
    stats, infos, seconds = [], [], []
    for split, count in zip(args.splits, (args.count_a, args.count_b)):
        t0 = time.perf_counter()
        s, info = dataset_statistics(extractor, args.dataset, split, count, seed=0, data_dir=args.data_dir)
        stats.append(s)
        infos.append(info)
        seconds.append(round(time.perf_counter() - t0, 1))
    print(json.dumps({"fid": fid_from_stats(*stats), "dataset": args.dataset,
                      "a": {"split": args.splits[0], **infos[0], "seconds": seconds[0]},
                      "b": {"split": args.splits[1], **infos[1], "seconds": seconds[1]}}, indent=2))


if __name__ == "__main__":
    main()
