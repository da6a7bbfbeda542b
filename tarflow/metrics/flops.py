"""Matmul FLOPs of a TarFlow, counted exactly from its config (every matmul, attention included).

Per image and flow block, with T tokens of D values, width W, L layers, MLP ratio r, and T' = T - 1
positions entering the Transformer (the last token only receives parameters):
    proj_in      2 T' D W
    per layer    2 T' W (3W)  qkv   +  2 T'^2 W  (q k^T)  +  2 T'^2 W  (A v)  +  2 T' W W  out
                 + 2 T' W (rW) + 2 T' (rW) W   MLP
    proj_out     2 T' W (2D)  (affine; D for additive)
Attention is counted dense (T'^2, as a dense kernel computes it, not the causal half). Elementwise work
(norms, activations, softmax, the affine update) is not counted. Backward = 2 x forward for every matmul
(one product for the weight gradient, one for the input gradient), less the input gradient of the first
block's proj_in, whose input (the data) needs none.

`matmul_peak` measures what those FLOPs are compared against: the device's dense matmul rate.
"""

from __future__ import annotations

import time

import torch

from ..flows.config import FlowConfig
from ..flows.transforms import build_transform


def block_forward_flops(c: FlowConfig, layers: int) -> tuple[int, int]:
    """(all matmul FLOPs, FLOPs of proj_in) of the forward of one flow block of ``layers`` layers, per image."""
    T, D, W, r = c.num_tokens - 1, c.token_dim, c.width, c.mlp_ratio
    out = build_transform(c).num_params(D)
    proj_in = 2 * T * D * W
    layer = 2 * T * W * 3 * W + 2 * T * W * W + 2 * 2 * T * W * r * W
    return proj_in + layers * layer + attention_forward_flops(c, layers) + 2 * T * W * out, proj_in


def attention_forward_flops(c: FlowConfig, layers: int) -> int:
    """FLOPs of q k^T and A v in the forward of one block of ``layers`` layers, per image: 4 T'^2 W a layer."""
    positions = c.num_tokens - 1
    return layers * 2 * 2 * positions * positions * c.width


def forward_flops(c: FlowConfig) -> int:
    """Matmul FLOPs of one image's forward pass (log-likelihood)."""
    return sum(block_forward_flops(c, layers)[0] for layers in c.block_layers)


def training_flops(c: FlowConfig, batch: int) -> int:
    """Matmul FLOPs of one training step (forward + backward) on ``batch`` images."""
    first_proj_in = block_forward_flops(c, c.block_layers[0])[1]
    return batch * (3 * forward_flops(c) - first_proj_in)


def training_attention_flops(c: FlowConfig, batch: int) -> int:
    """The part of `training_flops` inside the fused attention kernels (q k^T and A v, forward + backward)."""
    return batch * 3 * sum(attention_forward_flops(c, layers) for layers in c.block_layers)


def matmul_peak(device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32, seconds: float = 3.0) -> float:
    """The device's dense matmul peak as measured, FLOP/s: the best rate of n x n matmuls, n = 512, 1024, 2048,
    each size repeated for ``seconds`` / 3."""
    device = torch.device(device)

    def sync() -> None:
        if device.type == "cuda":
            torch.cuda.synchronize(device)

    best = 0.0
    for n in (512, 1024, 2048):
        a = torch.randn(n, n, device=device, dtype=dtype)
        b = torch.randn(n, n, device=device, dtype=dtype)
        a @ b
        sync()
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / 3:
            a @ b
            reps += 1
        sync()
        best = max(best, 2 * n ** 3 * reps / (time.perf_counter() - t0))
    return best


def peak_warning(before: float, after: float, tolerance: float = 0.1) -> str | None:
    """A warning when the peak measured before a benchmark and after it differ by more than ``tolerance``: other
    work shared the device, and fractions of either peak are unreliable (a low peak flatters them)."""
    if abs(after / before - 1) <= tolerance:
        return None
    return (f"warning: the matmul peak moved from {before / 1e9:.1f} to {after / 1e9:.1f} GFLOP/s during the run: "
            "other work shared the device, so fractions of peak are unreliable; rerun on quiet cores")
