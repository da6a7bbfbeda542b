"""The FLOP formula of tarflow.metrics.flops against torch's own matmul counter."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tarflow import FlowConfig, TarFlow
from tarflow.metrics.flops import forward_flops, training_flops


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


def test_matmul_peak_and_its_drift_warning():
    from tarflow.metrics.flops import matmul_peak, peak_warning

    assert matmul_peak(seconds=0.03) > 1e6  # FLOP/s: any CPU does far more than a megaflop
    assert peak_warning(100e9, 105e9) is None
    assert peak_warning(190e9, 101e9) is not None and "190.0 to 101.0" in peak_warning(190e9, 101e9)
