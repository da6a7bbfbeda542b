"""The sequential sampler of two source trees side by side, in one process: is a change slower?

    python benchmarks/compare_trees.py --before ../tarflow-old --model runs/bench-mnist/model

``--before`` is a checkout of tarflow from before a change (e.g. a `git worktree` of that commit); its package is
copied to a temporary folder as ``tarflow_before`` so that both versions load in this one process, and
``--after`` (default: this tree) is imported as ``tarflow``. Both sample the same saved model from the same noise,
alternating ``--rounds`` times (before, after, after, before, ...) so that a busy machine slows both alike. Prints
the min and median time of each per batch size and the ratios after / before (below 1: the change is faster).
The model must be in a format both versions read (tarflow 0.1.0 reads format 1).
"""

from __future__ import annotations

import argparse
import importlib
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch


def load_versions(before: Path, after: Path):
    """(tarflow of ``before`` as tarflow_before, tarflow of ``after``): its relative imports keep it self-contained."""
    folder = Path(tempfile.mkdtemp(prefix="tarflow-before-"))
    shutil.copytree(before / "tarflow", folder / "tarflow_before")
    sys.path.insert(0, str(folder))
    sys.path.insert(0, str(after))
    return importlib.import_module("tarflow_before"), importlib.import_module("tarflow")


def timings(versions: dict, model_dir: Path, batch: int, guidance: float, rounds: int) -> dict[str, list[float]]:
    """Seconds of each sampling call per version, the versions alternating."""
    samplers, guides = {}, {}
    for name, package in versions.items():
        samplers[name] = package.SequentialSampler(package.TarFlow.from_pretrained(model_dir).eval())
        guides[name] = package.Guidance(guidance) if guidance else None
    classes = samplers["after"].model.config.num_classes
    labels = torch.arange(batch) % classes if classes else None
    noise = samplers["after"].noise(batch, 1.0, torch.Generator().manual_seed(0))
    seconds = {name: [] for name in versions}
    outputs = {}
    for name in versions:  # warm-up
        outputs[name] = samplers[name].sample(batch, labels, guidance=guides[name], z=noise)
    for round_index in range(rounds):
        order = ("before", "after") if round_index % 2 == 0 else ("after", "before")
        for name in order:
            start = time.perf_counter()
            samplers[name].sample(batch, labels, guidance=guides[name], z=noise)
            seconds[name].append(time.perf_counter() - start)
    difference = float((outputs["after"] - outputs["before"]).abs().max())
    print(f"batch {batch:>4}{' guided' if guidance else ''}: max abs difference of the samples {difference:.1e}")
    return seconds


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree of the baseline")
    parser.add_argument("--after", type=Path, default=Path(__file__).resolve().parents[1],
                        help="source tree of the change (default: this one)")
    parser.add_argument("--model", type=Path, required=True, help="saved model directory both versions read")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 100])
    parser.add_argument("--guidance", type=float, default=0.0, help="guidance weight (0: unguided)")
    parser.add_argument("--rounds", type=int, default=12, help="sampling calls per version and batch (default 12)")
    args = parser.parse_args()
    before, after = load_versions(args.before.resolve(), args.after.resolve())
    versions = {"before": before, "after": after}
    with torch.no_grad():
        for batch in args.batches:
            seconds = timings(versions, args.model, batch, args.guidance, args.rounds)
            low = {name: min(values) for name, values in seconds.items()}
            middle = {name: statistics.median(values) for name, values in seconds.items()}
            print(f"  before min {low['before']:.4f} s, median {middle['before']:.4f} s; after min {low['after']:.4f} s, "
                  f"median {middle['after']:.4f} s; after/before: min {low['after'] / low['before']:.3f}, "
                  f"median {middle['after'] / middle['before']:.3f}", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
