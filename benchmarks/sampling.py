"""Sampling speed of every sampler on a trained MNIST-size TarFlow, as machine-independent ratios.

    python benchmarks/sampling.py                      # train (or reuse) runs/bench-mnist/model, then measure
    python benchmarks/sampling.py --model DIR          # a saved model directory instead
    python benchmarks/sampling.py --quick              # batch sizes 1 and 8 only
    python benchmarks/sampling.py --compile            # also torch.compile of the per-token step

An untrained TarFlow is the identity (zero output projections) and every parallel sampler converges in one
iteration, so the benchmark needs a trained model: without ``--model`` it trains the issue's reference
case (28x28x1, patch 4, width 128, 4 blocks x 4 layers, class-conditional) on MNIST for ``--train-steps``
steps (a few minutes on 2 CPU cores; the IDX files are read from ``--data-dir``) and keeps it in
``--out`` for the next run.

Everything is measured in one process: the float32 matmul peak (`tarflow.metrics.flops.matmul_peak`, with
the same thread count; measured again at the end, with a warning when the two differ, and every fraction of
peak divided by the better (higher) of the two, as benchmarks/train_throughput.py does, so a peak taken while
other work ran cannot flatter it; the fractions are printed at the end, once both peaks are known), then for
each sampler and batch size the time per image, the fraction of that peak achieved (useful FLOPs: the
matmuls of one exact sequential inverse, counted below, divided by time; a parallel sampler that does more
arithmetic gets no credit for it), the speed-up over our sequential sampler, the max abs difference to the
sequential output on the same noise, and the fraction of 8-bit pixels that differ. A "straightforward"
sequential sampler (a KV cache grown by torch.cat, each guidance branch in its own pass, module calls per
token) is measured at batch 100 for comparison, timed as the lean sampler is (the best of ``--baseline-reps``
runs of each), and the cost of classifier-free guidance (both branches
in one batched pass) at every batch size. The "auto" row is the sampler that `tarflow calibrate` picks
for that batch size; its time excludes the calibration, which is printed beside it. ``--compile`` also times torch.compile of the per-token step.

FLOPs of one exact inverse per image (2 per multiply-add; W width, D token dim, T tokens, r MLP ratio,
L layers per block, N blocks, n branches: 2 with guidance): for each block and each of the T-1 steps
(step t attends to t+1 cached positions): n * 2 * [D W + L ((4 + 2r) W^2 + 2 W (t + 1)) + W * 2D].
"""

from __future__ import annotations

import argparse
import functools
import gzip
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tarflow import FlowConfig, Guidance, TarFlow  # noqa: E402
from tarflow.flows.block import ARFlowBlock  # noqa: E402
from tarflow.flows.transforms import build_transform  # noqa: E402
from tarflow.metrics.flops import matmul_peak, peak_warning  # noqa: E402
from tarflow.sampling import GSJacobiSampler, JacobiSampler, SequentialSampler  # noqa: E402
from tarflow.sampling.calibrate import calibrate, sampler_from_entry  # noqa: E402

MNIST_MODEL = dict(image_size=28, channels=1, patch_size=4, width=128, num_blocks=4, layers_per_block=4,
                   head_dim=32, num_classes=10)


# ----- data and a short training run --------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    shape = [int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(shape)


def train_model(data_dir: Path, out: Path, steps: int, batch: int, lr: float, seed: int) -> TarFlow:
    images = torch.from_numpy(read_idx(data_dir / "train-images-idx3-ubyte.gz").copy())[:, None]
    labels = torch.from_numpy(read_idx(data_dir / "train-labels-idx1-ubyte.gz").astype(np.int64))
    torch.manual_seed(seed)
    model = TarFlow(FlowConfig(**MNIST_MODEL))
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=1e-4)
    warmup = max(1, steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    g = torch.Generator().manual_seed(seed)
    t0 = time.perf_counter()
    for step in range(steps):
        idx = torch.randint(0, images.shape[0], (batch,), generator=g)
        x = (2 * (images[idx].float() + torch.rand(batch, 1, 28, 28, generator=g)) / 256 - 1)
        y = labels[idx].clone()
        y[torch.rand(batch, generator=g) < 0.1] = 10  # label dropout: the null class, for guidance
        loss = -model.log_prob(x, y).mean() / model.config.num_dims
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % 25 == 0 or step == steps - 1:
            bpd = (loss.item() + math.log(128)) / math.log(2)
            print(f"  train step {step + 1}/{steps}: {bpd:.3f} bits/dim ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    model.save_pretrained(out, metadata={"dataset": "mnist", "levels": 256, "noise": "uniform",
                                         "train_steps": steps, "note": "benchmarks/sampling.py"})
    return model


# ----- the straightforward baseline ----------------------------------------------------------------
@torch.no_grad()
def straightforward_sample(model: TarFlow, z: torch.Tensor, y, guidance: Guidance | None) -> torch.Tensor:
    """Token by token; each layer's keys/values grown by torch.cat; modules called per token; the two
    guidance branches in separate passes. Written independently as the issue's comparison point."""
    T = model.config.num_tokens
    tokens = model.patchify(z)
    y_null = None if y is None else torch.full_like(y, model.config.num_classes)
    for block in reversed(model.blocks):
        x = block.order.apply(tokens).clone()
        branches = [(y, 1.0)] if guidance is None else [(y, 1.0), (y_null, guidance.attn_temp)]
        caches = [[([], []) for _ in block.layers] for _ in branches]
        for t in range(T - 1):
            params = []
            for (yb, tau), cache in zip(branches, caches):
                h = block.proj_in(x[:, t:t + 1]) + block.pos_embed[t:t + 1]
                if block.class_embed is not None:
                    h = h + block.class_embed(yb)[:, None]
                for layer, (ks, vs) in zip(block.layers, cache):
                    attn = layer.attn
                    B = h.shape[0]
                    q, k, v = attn.qkv(layer.norm1(h)).view(B, 1, 3, attn.heads, attn.head_dim).permute(2, 0, 3, 1, 4)
                    ks.append(k)
                    vs.append(v)
                    o = F.scaled_dot_product_attention(q / tau, torch.cat(ks, 2), torch.cat(vs, 2))
                    h = h + attn.proj(o.transpose(1, 2).reshape(B, 1, -1))
                    h = h + layer.mlp(layer.norm2(h))
                params.append(block.transform.split(block.proj_out(block.norm(h) if block.norm is not None else h)))
            chosen = params[0]
            if guidance is not None:
                both = tuple(torch.cat(pair) for pair in zip(*params))
                chosen = block.transform.guide(both, guidance, t + 1, T)
            x[:, t + 1:t + 2] = block.transform.inverse(x[:, t + 1:t + 2], chosen)
        tokens = block.order.undo(x)
    return model.unpatchify(tokens)


# ----- measurements -------------------------------------------------------------------------------
def sampling_flops(c: FlowConfig, branches: int = 1) -> float:
    """Matmul FLOPs of one exact inverse of one image (see the module docstring)."""
    W, D, T, r = c.width, c.token_dim, c.num_tokens, c.mlp_ratio
    out = build_transform(c).num_params(D)
    per_layer = sum((4 + 2 * r) * W * W + 2 * W * (t + 1) for t in range(T - 1))
    per_block = [(T - 1) * (D * W + W * out) + layers * per_layer for layers in c.block_layers]
    return branches * 2 * sum(per_block)


def timed(fn, reps: int) -> tuple[float, torch.Tensor]:
    best, out = math.inf, None
    for _ in range(reps):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    return ((x.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


def compiled_step(model: TarFlow, seq: SequentialSampler, batches, gen, labels) -> None:
    """The lean sequential sampler with its per-token step (`ARFlowBlock.step`) under torch.compile
    (dynamic shapes: one graph for every position and batch size), against the eager step."""
    print("\n== torch.compile of the per-token step (dynamic shapes) vs eager, lean sequential ==")
    step = torch.compile(ARFlowBlock.step, dynamic=True)
    for B in batches:
        z, y = seq.noise(B, 1.0, gen), labels(B)
        reps = 3 if B <= 8 else 1
        t_eager, x_eager = timed(lambda: seq.sample(B, y, z=z), reps)
        for block in model.blocks:  # an instance attribute shadows the method for this measurement only
            block.step = functools.partial(step, block)
        try:
            t0 = time.perf_counter()
            seq.sample(B, y, z=z)
            t_first = time.perf_counter() - t0
            t_comp, x_comp = timed(lambda: seq.sample(B, y, z=z), reps)
        finally:
            for block in model.blocks:
                del block.step
        print(f"batch {B:>4}: eager {1e3 * t_eager / B:7.2f} ms/image, compiled {1e3 * t_comp / B:7.2f} ms/image: "
              f"{t_eager / t_comp:.2f}x (first call, compiling: {t_first:.1f} s); max abs diff "
              f"{(x_comp - x_eager).abs().max():.1e}", flush=True)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=None, help="a saved model directory (skips training)")
    p.add_argument("--out", type=Path, default=ROOT / "runs" / "bench-mnist" / "model",
                   help="where the trained model is kept (reused when present)")
    p.add_argument("--data-dir", type=Path, default=ROOT.parent / "shared" / "data" / "mnist")
    p.add_argument("--train-steps", type=int, default=150)
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batches", type=int, nargs="+", default=[1, 8, 64, 256])
    p.add_argument("--quick", action="store_true", help="batch sizes 1 and 8 only")
    p.add_argument("--tol", type=float, default=1e-5, help="Jacobi relative-change tolerance")
    p.add_argument("--modules", type=int, default=7, help="GS-Jacobi modules per block (fixed strategy)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile", action="store_true", help="also time torch.compile of the per-token step")
    p.add_argument("--baseline-reps", type=int, default=2,
                   help="runs of the straightforward and the lean sampler at batch 100; the best of each (default 2)")
    args = p.parse_args()
    if args.baseline_reps < 1:
        p.error("--baseline-reps must be at least 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [1, 8] if args.quick else args.batches
    t_start = time.perf_counter()

    model_dir = args.model or args.out
    if (model_dir / "model.safetensors").exists():
        model = TarFlow.from_pretrained(model_dir)
        print(f"model: {model_dir} (loaded)")
    elif args.model:
        raise SystemExit(f"no saved model at {args.model}")
    else:
        print(f"training the MNIST-size model for {args.train_steps} steps -> {args.out}")
        model = train_model(args.data_dir, args.out, args.train_steps, args.train_batch, args.lr, args.seed)
    model.eval()
    c = model.config
    peak = matmul_peak()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; float32 matmul peak "
          f"{peak / 1e9:.1f} GFLOP/s (best of 512^3 to 2048^3 matmuls; measured again at the end, fractions of "
          f"peak are printed then)")
    fractions = []  # (label, useful FLOPs, seconds): divided by the better peak once both are measured
    print(f"model: {c.image_size}x{c.image_size}x{c.channels}, patch {c.patch_size}, T={c.num_tokens}, width {c.width}, "
          f"{c.num_blocks} blocks x {c.layers_per_block} layers; {sampling_flops(c) / 1e6:.1f} MFLOP per image "
          f"(exact inverse, unguided)")
    seq = SequentialSampler(model)
    gen = torch.Generator().manual_seed(args.seed)

    def labels(n):
        return torch.arange(n) % c.num_classes if c.num_classes else None

    # The straightforward baseline against the lean sequential sampler at batch 100.
    print("\n== lean sequential vs straightforward, batch 100 ==")
    z = seq.noise(100, 1.0, gen)
    y = labels(100)
    for g in (None, Guidance(1.0)):
        t_lean, x_lean = timed(lambda: seq.sample(100, y, guidance=g, z=z), args.baseline_reps)
        t_base, x_base = timed(lambda: straightforward_sample(model, z, y, g), args.baseline_reps)
        flops = 100 * sampling_flops(c, 1 if g is None else 2)
        kind = 'guided w=1' if g else 'unguided  '
        fractions += [(f"batch 100 {kind.strip()}, straightforward", flops, t_base),
                      (f"batch 100 {kind.strip()}, lean sequential", flops, t_lean)]
        print(f"{kind}: straightforward {t_base:.3f} s, lean {t_lean:.3f} s (best of {args.baseline_reps} each): "
              f"{t_base / t_lean:.2f}x; max abs diff {(x_lean - x_base).abs().max():.1e}")
        if g is None:
            t_unguided = t_lean
    print(f"guidance costs {t_lean / t_unguided:.2f}x an unguided lean pass (2x the rows)")

    print(f"\n== samplers (tol {args.tol:g}; GS-Jacobi {args.modules} modules/block; auto = calibrated for "
          f"this batch; its time excludes the calibration, shown separately) ==")
    header = (f"{'batch':>5} {'sampler':<11} {'ms/image':>9} {'speed-up':>8} {'max|dx|':>8} "
              f"{'px differ':>9}  iterations per block (last block first)")
    print(header)
    rows = []
    for B in batches:
        z = seq.noise(B, 1.0, gen)
        y = labels(B)
        reps = 3 if B <= 8 else 1
        seq.sample(min(B, 8), None if y is None else y[:min(B, 8)], z=z[:min(B, 8)])  # warm-up
        t_seq, x_seq = timed(lambda: seq.sample(B, y, z=z), reps)
        t0 = time.perf_counter()
        entry = calibrate(model, B, tol=args.tol)
        t_cal = time.perf_counter() - t0
        samplers = [("sequential", seq), ("jacobi", JacobiSampler(model, tol=args.tol)),
                    ("gs-jacobi", GSJacobiSampler(model, tol=args.tol, modules=args.modules)),
                    ("auto", sampler_from_entry(model, entry))]
        flops = B * sampling_flops(c)
        for name, s in samplers:
            if name == "sequential":
                t, x = t_seq, x_seq
            else:
                t, x = timed(lambda: s.sample(B, y, z=z), reps)
            iters = getattr(s, "last_iterations", None)
            it = "" if not iters else " | ".join(
                "seq" if len(b) == c.num_tokens - 1 and set(b) == {1} else ",".join(map(str, b)) for b in reversed(iters))
            if name == "auto":
                it = f"[{entry['sampler']}; calibration {t_cal:.1f} s] " + it
            diff = float((x - x_seq).abs().max())
            px = float((to_uint8(x) != to_uint8(x_seq)).float().mean())
            fractions.append((f"batch {B} {name}", flops, t))
            print(f"{B:>5} {name:<11} {1e3 * t / B:>9.2f} {t_seq / t:>7.2f}x {diff:>8.1e} "
                  f"{px:>9.2e}  {it}", flush=True)
            rows.append((B, name, t / B, t_seq / t, diff, px))
    print("\n== guidance cost per batch size (lean sequential, both branches in one pass) ==")
    for B in batches:
        z, y = seq.noise(B, 1.0, gen), labels(B)
        reps = 3 if B <= 8 else 1
        t_plain, _ = timed(lambda: seq.sample(B, y, z=z), reps)  # again, beside the guided run: a steadier ratio
        t_guided, _ = timed(lambda: seq.sample(B, y, guidance=Guidance(1.0), z=z), reps)
        print(f"batch {B:>4}: unguided {1e3 * t_plain / B:7.2f} ms/image, guided {1e3 * t_guided / B:7.2f} "
              f"ms/image: {t_guided / t_plain:.2f}x", flush=True)
    if args.compile:
        compiled_step(model, seq, batches, gen, labels)
    peak_end = matmul_peak()
    print(f"\nmatmul peak measured again at the end: {peak_end / 1e9:.1f} GFLOP/s (start: {peak / 1e9:.1f})")
    if warning := peak_warning(peak, peak_end):
        print(warning)
    best_peak = max(peak, peak_end)
    print(f"\n== fraction of the better peak ({best_peak / 1e9:.1f} GFLOP/s), useful FLOPs of the exact inverse ==")
    for label, flops, t in fractions:
        print(f"{label:<40} {flops / t / best_peak:.3f}")
    print(f"\ntotal benchmark time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
