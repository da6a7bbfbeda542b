"""Where one training step's time goes: shares of the step by kind of operator, from torch.profiler.

    python benchmarks/profile_step.py                  # mnist-size model, batch 256, float32, CPU
    python benchmarks/profile_step.py --batch 64 --steps 2

Same model and step as benchmarks/train_throughput.py. Prints, for the profiled steps, each kind's share of
the operators' summed self time (matmuls, the exact GELU and its backward, the copies of the bias into
addmm's output, fused attention forward and backward, everything else), and the matmuls' own rate as a
fraction of this machine's measured matmul peak: the exact FLOPs of the step's linear layers
(tarflow.metrics.flops, less the attention products, which run inside the fused kernels) over the matmul
operators' self time. The profiler adds a little time per operator,
so the shares are approximate; read them beside the throughput benchmark's fraction of peak.
"""

from __future__ import annotations

import argparse
from collections import defaultdict

import torch
from torch.profiler import ProfilerActivity, profile

from tarflow import FlowConfig, TarFlow
from tarflow.metrics.flops import matmul_peak, peak_warning, training_attention_flops, training_flops

MATMULS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"}
GELU = {"aten::gelu", "aten::gelu_backward"}
ATTENTION_PREFIX = "aten::_scaled_dot_product"  # the fused CPU kernels, forward and backward
COPIES = {"aten::copy_"}


def kind_of(event) -> str:
    """The kind of a profiled operator; a copy directly under addmm is its bias written into the output."""
    name = event.name
    if name in MATMULS:
        return "matmuls"
    if name in GELU:
        return "GELU (forward + backward)"
    if name.startswith(ATTENTION_PREFIX):
        return "fused attention (forward + backward)"
    parent = event.cpu_parent
    if name in COPIES and parent is not None and parent.name == "aten::addmm":
        return "addmm bias copies"
    return "everything else"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--patch-size", type=int, default=4)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--num-blocks", type=int, default=4)
    parser.add_argument("--layers-per-block", type=int, default=4)
    parser.add_argument("--head-dim", type=int, default=64)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps (after 2 warm-up steps)")
    args = parser.parse_args()

    config = FlowConfig(image_size=args.image_size, channels=1, patch_size=args.patch_size, width=args.width,
                        num_blocks=args.num_blocks, layers_per_block=args.layers_per_block, head_dim=args.head_dim,
                        num_classes=10)
    torch.manual_seed(0)
    model = TarFlow(config)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    images = torch.rand(args.batch, 1, args.image_size, args.image_size) * 2 - 1
    labels = torch.randint(0, 10, (args.batch,))

    def step() -> None:
        loss = -model.log_prob(images, labels, validate=False).mean() / config.num_dims  # as the trainer calls it
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()

    print(f"{torch.get_num_threads()} threads, float32; model: {sum(p.numel() for p in model.parameters()):,} "
          f"parameters, T={config.num_tokens}, batch {args.batch}, {args.steps} profiled steps")
    peak = matmul_peak("cpu", torch.float32)
    for _ in range(2):
        step()
    with profile(activities=[ProfilerActivity.CPU]) as profiler:
        for _ in range(args.steps):
            step()
    peak_end = matmul_peak("cpu", torch.float32)
    if warning := peak_warning(peak, peak_end):
        print(warning)
    peak = max(peak, peak_end)

    seconds_by_kind: dict[str, float] = defaultdict(float)
    seconds_of_others: dict[str, float] = defaultdict(float)
    for event in profiler.events():
        kind = kind_of(event)
        seconds_by_kind[kind] += event.self_cpu_time_total / 1e6
        if kind == "everything else":
            seconds_of_others[event.name] += event.self_cpu_time_total / 1e6
    total = sum(seconds_by_kind.values())
    print(f"operators' self time   {total / args.steps:8.3f} s per step")
    for kind, seconds in sorted(seconds_by_kind.items(), key=lambda item: -item[1]):
        print(f"  {kind:<38} {seconds / total:6.1%}")
    largest_others = sorted(seconds_of_others.items(), key=lambda item: -item[1])[:6]
    print("largest of everything else: " + ", ".join(f"{name} {seconds / total:.1%}" for name, seconds in largest_others))
    linear_flops = training_flops(config, args.batch) - training_attention_flops(config, args.batch)
    matmul_rate = linear_flops * args.steps / seconds_by_kind["matmuls"]
    print(f"matmul peak            {peak / 1e9:8.1f} GFLOP/s (best of before and after the steps)")
    print(f"matmuls' own rate      {matmul_rate / 1e9:8.1f} GFLOP/s = {matmul_rate / peak:.2f} of peak")


if __name__ == "__main__":
    main()
