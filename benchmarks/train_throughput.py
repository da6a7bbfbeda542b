"""Training throughput against this machine's measured matmul peak, in one process.

    python benchmarks/train_throughput.py                  # mnist-size model, float32, CPU
    python benchmarks/train_throughput.py --batch 64 --steps 5

Prints the dense matmul peak (float32 on CPU, bf16 on CUDA), images/s, achieved FLOP/s from the exact
matmul count of tarflow.metrics.flops, the fraction of the peak, and peak memory. Synthetic images of
the configured size: the arithmetic does not depend on pixel values.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch

from tarflow import FlowConfig, TarFlow
from tarflow.metrics.flops import matmul_peak, peak_warning, training_flops
from tarflow.train.device import pick_device


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--image-size", type=int, default=28)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--patch-size", type=int, default=4)
    p.add_argument("--width", type=int, default=128)
    p.add_argument("--num-blocks", type=int, default=4)
    p.add_argument("--layers-per-block", type=int, default=4)
    p.add_argument("--head-dim", type=int, default=64)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=8, help="timed steps (after 2 warm-up steps)")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the loss")
    args = p.parse_args()

    device = pick_device(args.device)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    config = FlowConfig(image_size=args.image_size, channels=args.channels, patch_size=args.patch_size,
                        width=args.width, num_blocks=args.num_blocks, layers_per_block=args.layers_per_block,
                        head_dim=args.head_dim, num_classes=args.num_classes)
    torch.manual_seed(0)
    model = TarFlow(config).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95))
    x = torch.rand(args.batch, args.channels, args.image_size, args.image_size, device=device) * 2 - 1
    y = torch.randint(0, args.num_classes, (args.batch,), device=device) if args.num_classes else None
    autocast = torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)

    def loss_fn(x, y):
        return -model.log_prob(x, y, validate=False).mean() / config.num_dims  # as the trainer calls it

    if args.compile:
        loss_fn = torch.compile(loss_fn)

    def step() -> None:
        with autocast:
            loss = loss_fn(x, y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()

    print(f"device {device}, {torch.get_num_threads()} threads, {str(dtype).removeprefix('torch.')}; "
          f"model: {sum(q.numel() for q in model.parameters()):,} parameters, T={config.num_tokens}, "
          f"batch {args.batch}")
    peak = matmul_peak(device, dtype)
    for _ in range(2):
        step()
    sync(device)
    t0 = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - t0) / args.steps
    peak_end = matmul_peak(device, dtype)  # again: a peak taken while other work ran would flatter the fraction
    if warning := peak_warning(peak, peak_end):
        print(warning)
    peak = max(peak, peak_end)
    flops = training_flops(config, args.batch)
    achieved = flops / seconds
    mem = (torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda"
           else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    print(f"matmul peak            {peak / 1e9:9.1f} GFLOP/s (best of before and after the steps)")
    print(f"step                   {seconds:9.3f} s   ({args.batch / seconds:.1f} images/s)")
    print(f"matmul FLOPs per step  {flops / 1e9:9.1f} GFLOP")
    print(f"achieved               {achieved / 1e9:9.1f} GFLOP/s")
    print(f"fraction of peak       {achieved / peak:9.3f}")
    print(f"peak memory            {mem:9.2f} GiB ({'CUDA allocated' if device.type == 'cuda' else 'process max RSS'})")


if __name__ == "__main__":
    main()
