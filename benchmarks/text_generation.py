"""Generation speed of TarFlowLM (characters per second) at k = 1, 2, 4 characters per flow token, for each
coupling transform, beside the discrete baseline, with the speed-up of k = 2 and 4 over k = 1.

    python benchmarks/text_generation.py                                  # the shakespeare presets' shapes
    python benchmarks/text_generation.py --runs runs/shakespeare-mixd runs/shakespeare-ar   # trained runs too
    python benchmarks/text_generation.py --width 32 --length 64 --reps 1  # a smoke run

Models of the presets' shapes (`shakespeare`, `shakespeare-ar`) with ``chars_per_token`` k and each transform,
built with random weights (every parameter ~ N(0, 0.02^2), so the flows are not the identity): the work of
generation depends on the shapes, not on what was learned, except Mix-1/Mix-d's bisection, whose step count
depends on the spread of the components (trained runs given with ``--runs`` are timed as they are, for that).
Each line: one sample of ``--length`` characters after a 6-character prompt, the best of ``--reps`` runs after a
warm-up. Run it alone on the machine.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tarflow.flows.config import FlowConfig  # noqa: E402
from tarflow.flows.language import build_language_model, load_language_model  # noqa: E402
from tarflow.presets import PRESETS  # noqa: E402
from tarflow.runs import resolve_model_dir  # noqa: E402
from tarflow.sampling.text import generate  # noqa: E402

VOCABULARY = "\n !$&',-.3:;?ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"  # tinyshakespeare's 65
PROMPT = "ROMEO:"


def random_model(options: dict, seed: int):
    torch.manual_seed(seed)
    model = build_language_model(FlowConfig(**options, vocabulary=VOCABULARY))
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.normal_(0, 0.02)
    return model.eval()


def chars_per_second(model, length: int, reps: int, seed: int) -> float:
    """Characters generated per second, the best of ``reps`` timed samples after a warm-up."""
    vocabulary = model.config.vocabulary
    prompt = torch.tensor([vocabulary.index(char) for char in PROMPT])
    best = float("inf")
    for rep in range(reps + 1):
        started = time.perf_counter()
        generate(model, prompt, length, 0.8, torch.Generator().manual_seed(seed))
        if rep:
            best = min(best, time.perf_counter() - started)
    return length / best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="*", default=[], help="trained text runs (or model directories) to time too")
    parser.add_argument("--length", type=int, default=256, help="characters generated per sample (flows generate "
                        "windows of context / 2 new characters: keep it a multiple of that)")
    parser.add_argument("--reps", type=int, default=2, help="timed samples per model (best kept)")
    parser.add_argument("--width", type=int, default=None, help="override the presets' width (smoke runs)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    sizes = {} if args.width is None else {"width": args.width, "head_dim": min(32, args.width)}
    print(f"torch threads {torch.get_num_threads()}; {args.length} characters after {PROMPT!r}, best of {args.reps}")
    print(f"{'model':<34} {'k':>2} {'chars/s':>9} {'vs k=1':>7}")
    for transform in ("affine", "mixture", "mixture-d"):
        base = None
        for k in (1, 2, 4):
            options = {**PRESETS["shakespeare"]["model"], **sizes, "transform": transform, "chars_per_token": k}
            speed = chars_per_second(random_model(options, args.seed), args.length, args.reps, args.seed)
            base = speed if base is None else base
            print(f"{'flow, ' + transform + ' (random weights)':<34} {k:>2} {speed:>9.1f} {speed / base:>6.2f}x")
    options = {**PRESETS["shakespeare-ar"]["model"], **sizes}
    speed = chars_per_second(random_model(options, args.seed), args.length, args.reps, args.seed)
    print(f"{'discrete AR (random weights)':<34} {'-':>2} {speed:>9.1f}")
    for run in args.runs:
        model = load_language_model(resolve_model_dir(run)).eval()
        speed = chars_per_second(model, args.length, args.reps, args.seed)
        k = getattr(model.config, "chars_per_token", 1) if model.config.architecture == "flow" else "-"
        print(f"{Path(run).name + ' (trained)':<34} {k:>2} {speed:>9.1f}")


if __name__ == "__main__":
    main()
