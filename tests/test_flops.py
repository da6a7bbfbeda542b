"""The FLOP formula of tarflow.metrics.flops against torch's own matmul counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tarflow import FlowConfig, TarFlow
from tarflow.metrics.flops import forward_flops, training_attention_flops, training_flops


@pytest.mark.parametrize("transform", ["affine", "additive"])
def test_flops_match_torch_counter(transform):
    c = FlowConfig(image_size=8, patch_size=2, width=32, head_dim=16, num_blocks=3, layers_per_block=2,
                   num_classes=3, transform=transform)
    model, B = TarFlow(c), 5
    x, y = torch.rand(B, 1, 8, 8) * 2 - 1, torch.tensor([0, 1, 2, 0, 1])
    # torch's counter sees every linear layer but not the CPU fused attention kernel: add that by hand
    T = c.num_tokens - 1
    attention = B * c.num_blocks * c.layers_per_block * 2 * 2 * T * T * c.width
    with torch.no_grad(), FlopCounterMode(display=False) as fwd:
        model.log_prob(x, y)
    with FlopCounterMode(display=False) as step:
        model.log_prob(x, y).sum().backward()
    assert fwd.get_total_flops() + attention == B * forward_flops(c)
    assert step.get_total_flops() + 3 * attention == training_flops(c, B)
    # what benchmarks/profile_step.py takes out to rate the linear layers alone: exactly what torch counts
    assert training_flops(c, B) - training_attention_flops(c, B) == step.get_total_flops()


def test_forward_flops_counts_dense_attention_by_hand():
    """forward_flops recomputed from the module docstring's per-term formula, for a small config with one
    layer count per block. Causal attention is counted dense: q k^T and A v each cost 2 T'^2 W per layer
    (T' = T - 1 positions), not the causal half; the test fails if either product is dropped or halved."""
    c = FlowConfig(image_size=4, channels=2, patch_size=2, width=16, head_dim=8, mlp_ratio=3,
                   num_blocks=3, layers_per_block=[1, 2, 3], num_classes=0, transform="affine")
    T, D, W, r = 4 - 1, 2 * 2 * 2, 16, 3  # T' = (4/2)^2 - 1 tokens of D = 8 values
    attention = 2 * T * T * W + 2 * T * T * W  # q k^T + A v, dense
    layer = 2 * T * W * 3 * W + attention + 2 * T * W * W + 2 * T * W * r * W + 2 * T * r * W * W
    block = lambda L: 2 * T * D * W + L * layer + 2 * T * W * 2 * D  # proj_in + layers + affine proj_out
    assert forward_flops(c) == block(1) + block(2) + block(3)


class _Clock:
    """time.perf_counter under test control: every call advances by the step of the matmul size in use."""

    def __init__(self, steps):
        self.steps, self.n, self.now = steps, None, 0.0

    def perf_counter(self):
        self.now += self.steps[self.n]
        return self.now


def test_matmul_peak_is_two_n_cubed_reps_over_elapsed(monkeypatch):
    """With a known clock and counted matmuls, matmul_peak returns max over n of 2 n^3 reps / elapsed."""
    import types

    from tarflow.metrics import flops

    # binary fractions keep clock arithmetic exact; seconds=3 gives each size a 1 s budget
    clock = _Clock({512: 0.25, 1024: 0.125, 2048: 0.5})
    matmuls = {512: 0, 1024: 0, 2048: 0}

    class Matrix:
        def __init__(self, n):
            self.n = n

        def __matmul__(self, other):
            matmuls[self.n] += 1
            return self

    def randn(n, m, device=None, dtype=None):
        assert n == m
        clock.n = n
        return Matrix(n)

    monkeypatch.setattr(flops, "time", types.SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(flops, "torch", types.SimpleNamespace(randn=randn, device=torch.device))
    peak = flops.matmul_peak("cpu", seconds=3.0)
    # per size: t0, then loop checks at step, 2 step, ... while < 1 s, then one final read.
    # 512: checks 0.25, 0.5, 0.75 -> 3 reps, elapsed 1.25; 1024: 7 reps, elapsed 1.125; 2048: 1 rep, 1.5
    reps, elapsed = {512: 3, 1024: 7, 2048: 1}, {512: 1.25, 1024: 1.125, 2048: 1.5}
    assert matmuls == {n: reps[n] + 1 for n in reps}  # one warm-up product per size
    rates = {n: 2 * n ** 3 * reps[n] / elapsed[n] for n in reps}
    assert max(rates, key=rates.get) == 1024  # the best rate is neither the first nor the last size
    assert peak == pytest.approx(rates[1024], rel=1e-12)


def test_matmul_peak_and_its_drift_warning():
    from tarflow.metrics.flops import matmul_peak, peak_warning

    assert matmul_peak(seconds=0.03) > 1e6  # FLOP/s: any CPU does far more than a megaflop (real clock)
    assert peak_warning(100e9, 105e9) is None
    assert peak_warning(190e9, 101e9) is not None and "190.0 to 101.0" in peak_warning(190e9, 101e9)
