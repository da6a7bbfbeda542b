"""Time to generate an interleaved sequence of 2 / 4 / 8 segments with one KV cache (STARFlow2, issue 18).

    python benchmarks/interleaved_generation.py                        # MNIST-sized model of the preset's shape
    python benchmarks/interleaved_generation.py --image-size 8 --width 32 --layers 1,1,2 --repeats 1   # smoke run

A sequence of n segments alternates text and images: "a seven : <image> and a seven : <image> ...", n / 2 text
segments forced and n / 2 images generated token by token (`sampling.interleaved_layout.generate_template`, one
position per step, one cache for the whole sequence, images decoded once at the end, no re-encoding). A random
model (weights do not change the work done); timing: the best of ``--repeats`` runs after one warm-up. Printed per
length: seconds per sequence, seconds per segment, and the per-segment time relative to the shortest length
(1.0 everywhere: the time grows linearly with the number of segments; attention over a longer cache makes it grow
above 1 as the sequence lengthens).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tarflow.data.interleaved import WORDS, encode_words  # noqa: E402
from tarflow.flows.config import FlowConfig  # noqa: E402
from tarflow.flows.pretzel import Pretzel  # noqa: E402
from tarflow.sampling.interleaved_layout import generate_template  # noqa: E402


def template(segments: int) -> list[int]:
    """<bos> and ``segments`` / 2 pairs "a seven : <image>", joined by "and"."""
    return encode_words("<bos> " + " and ".join(["a seven : <image>"] * (segments // 2)))


def build_model(args: argparse.Namespace, longest: int) -> Pretzel:
    layers = [int(part) for part in args.layers.split(",")]
    config = FlowConfig(architecture="pretzel", image_size=args.image_size, channels=1, patch_size=args.patch_size,
                        width=args.width, head_dim=args.head_dim, num_blocks=len(layers), layers_per_block=layers,
                        context=longest, words=" ".join(WORDS))
    torch.manual_seed(0)
    return Pretzel(config).eval()


def seconds_per_sequence(model: Pretzel, words: list[int], batch: int, repeats: int) -> float:
    generate_template(model, words, batch, generator=torch.Generator().manual_seed(0))  # warm-up
    times = []
    for repeat in range(repeats):
        started = time.perf_counter()
        generate_template(model, words, batch, generator=torch.Generator().manual_seed(repeat + 1))
        times.append(time.perf_counter() - started)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--segments", default="2,4,8", help="sequence lengths in segments, even (default 2,4,8)")
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--layers", default="2,2,2,6", help="layers per shallow block, then the joint layers")
    parser.add_argument("--batch", type=int, default=1, help="sequences generated together (default 1)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per length, the best kept (default 3)")
    args = parser.parse_args()
    lengths = [int(part) for part in args.segments.split(",")]
    if any(length < 2 or length % 2 for length in lengths):
        parser.error(f"--segments must be even numbers of at least 2, got {args.segments}")
    image_tokens = (args.image_size // args.patch_size) ** 2
    positions = {length: len(template(length)) + length // 2 * image_tokens for length in lengths}
    model = build_model(args, max(positions.values()))
    print(f"pretzel model: {sum(p.numel() for p in model.parameters()):,} parameters, {model.image_tokens} tokens "
          f"per image, batch {args.batch}, best of {args.repeats}, {torch.get_num_threads()} threads")
    first = None
    for length in lengths:
        seconds = seconds_per_sequence(model, template(length), args.batch, args.repeats)
        per_segment = seconds / length
        first = first or per_segment
        print(f"{length} segments ({positions[length]} positions): {seconds:.3f} s per sequence, "
              f"{per_segment * 1000:.1f} ms per segment, {per_segment / first:.2f} x the per-segment time of "
              f"{lengths[0]} segments")


if __name__ == "__main__":
    main()
