"""The sequential sampler of two source trees side by side, in one run: is a change slower?

    python benchmarks/compare_trees.py --before ../tarflow-old --after . --model runs/bench-mnist/model

Each tree (a checkout of tarflow, e.g. a `git worktree` of the commit before a change) samples the same saved
model at the same batch sizes in its own subprocess; the subprocesses alternate (before, after, before, ...)
``--rounds`` times so that a busy machine slows both alike. Prints the best time of each tree per batch and the
ratio after / before (below 1: the change is faster). The model must be in a format both trees read.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

# Run inside each tree's subprocess: the best of ``reps`` timings of sampling ``batch`` images, seconds.
PROBE = """
import json, sys, time, torch
sys.path.insert(0, sys.argv[1])
from tarflow import SequentialSampler, TarFlow, Guidance
model = TarFlow.from_pretrained(sys.argv[2]).eval()
guidance = Guidance(float(sys.argv[5])) if float(sys.argv[5]) else None
sampler, batch, reps = SequentialSampler(model), int(sys.argv[3]), int(sys.argv[4])
classes = model.config.num_classes
y = torch.arange(batch) % classes if classes else None
z = sampler.noise(batch, 1.0, torch.Generator().manual_seed(0))
best = float("inf")
for _ in range(reps):
    start = time.perf_counter()
    x = sampler.sample(batch, y, guidance=guidance, z=z)
    best = min(best, time.perf_counter() - start)
print(json.dumps({"seconds": best, "checksum": float(x.double().abs().sum())}))
"""


def measure(tree: Path, model: Path, batch: int, reps: int, guidance: float) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE, str(tree), str(model), str(batch), str(reps), str(guidance)],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--before", type=Path, required=True, help="source tree of the baseline")
    parser.add_argument("--after", type=Path, default=Path("."), help="source tree of the change (default .)")
    parser.add_argument("--model", type=Path, required=True, help="saved model directory both trees can read")
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 100])
    parser.add_argument("--guidance", type=float, default=0.0, help="guidance weight (0: unguided)")
    parser.add_argument("--rounds", type=int, default=3, help="alternations of before/after (default 3)")
    parser.add_argument("--reps", type=int, default=2, help="timings per subprocess, best kept (default 2)")
    args = parser.parse_args()
    for batch in args.batches:
        best = {"before": float("inf"), "after": float("inf")}
        checksums = {}
        for _ in range(args.rounds):
            for name in ("before", "after"):
                result = measure(getattr(args, name).resolve(), args.model, batch, args.reps, args.guidance)
                best[name] = min(best[name], result["seconds"])
                checksums[name] = result["checksum"]
        agree = abs(checksums["before"] - checksums["after"]) <= 1e-3 * abs(checksums["before"])
        print(f"batch {batch:>4}: before {best['before']:.3f} s, after {best['after']:.3f} s, "
              f"after/before {best['after'] / best['before']:.3f} (samples agree: {agree})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
