"""The flow's log-scales per block (tarflow.metrics.scales), on every model kind of the contract fixture (float64):
minus their sum over a block is the block's log-determinant, and the affine transform's are its log sigma."""

import torch

from conftest import make_inputs, randomise, tiny_config
from tarflow import TarFlow
from tarflow.flows.conditioning import Condition
from tarflow.metrics.scales import log_scales


def test_log_scales_sum_to_each_blocks_log_determinant(model, inputs):
    x, y = inputs
    scales = log_scales(model, x, y)
    tokens, condition = model.patchify(x), Condition(y)
    assert len(scales) == len(model.blocks)
    for block, scale in zip(model.blocks, scales):
        tokens, logdet = block(tokens, condition)
        assert scale.shape == (x.shape[0], tokens.shape[1] - block.first, tokens.shape[2])
        torch.testing.assert_close(-scale.sum(dim=(1, 2)), logdet, rtol=1e-10, atol=1e-10)
    total = -sum(scale.sum(dim=(1, 2)) for scale in scales)
    torch.testing.assert_close(total, model(x, y)[1], rtol=1e-10, atol=1e-10)


def test_affine_log_scales_are_log_sigma_and_additive_ones_zero(model, inputs):
    x, y = inputs
    block = model.blocks[0]
    scale = log_scales(model, x, y)[0]
    if model.config.transform == "additive":
        assert torch.equal(scale, torch.zeros_like(scale))
    elif model.config.transform == "affine":
        ordered = block.order.apply(model.patchify(x))
        log_sigma, _ = block.params(block.inputs(ordered, block.first, ordered.shape[1]), Condition(y))
        torch.testing.assert_close(scale, log_sigma, rtol=1e-10, atol=1e-12)


def test_the_model_mode_is_restored(model, inputs):
    model.train()
    log_scales(model, *inputs)
    assert model.training


def test_a_noise_conditioned_model_at_its_level():
    """iTARFlow: the level is part of the condition; at two levels the scales differ and each sums to the logdet."""
    torch.manual_seed(0)
    model = randomise(TarFlow(tiny_config(num_classes=3, noise_conditioning=True, noise_level_min=0.05,
                                          noise_level_max=0.5)).double()).eval()
    x, y = make_inputs(model)
    low, high = (log_scales(model, x, y, level) for level in (0.05, 0.5))
    for level, scales in ((0.05, low), (0.5, high)):
        total = -sum(scale.sum(dim=(1, 2)) for scale in scales)
        torch.testing.assert_close(total, model(x, y, noise_level=level)[1], rtol=1e-10, atol=1e-10)
    assert not torch.allclose(low[0], high[0])
