"""The flow's log-scales per block: how much each block stretches or shrinks every token dimension.

For a block z_t = f(x_t; theta_t) the log-scale of dimension i is log sigma_i = -log|dz_i/dx_i| (nats): log sigma
itself for the affine transform z = (x - b) / sigma, 0 for the additive one, the log of the inverse map's local
slope for the mixtures. Each token's Jacobian is diagonal (elementwise transforms) or lower triangular (Mix-d,
dimension by dimension), so their sum over a block is minus the block's log-determinant. Large magnitudes mean a block that collapses or explodes a direction.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..flows.conditioning import Condition


def log_scales(model, x: Tensor, y: Tensor | None = None, noise_level=None) -> list[Tensor]:
    """Per block, log sigma (B, T - first, D) of the tokens it transforms (in the block's order), on images x
    (B, C, H, W) with labels y (and noise level t for a noise-conditioned model). Runs in eval mode without
    updating the model; restores its mode."""
    was_training = model.training
    model.eval()
    try:
        condition = Condition(model.check_labels(y, x.shape[0]),
                              noise_level=model.check_noise_level(noise_level, x.shape[0]))
        tokens, scales = model.patchify(x), []
        for block in model.blocks:
            with torch.no_grad():
                ordered = block.order.apply(tokens)
                params = block.params(block.inputs(ordered, block.first, ordered.shape[1]), condition)
            transformed = ordered[:, block.first:].detach().requires_grad_()
            with torch.enable_grad():
                z, _ = block.transform.forward(transformed, params)
                slope = torch.stack([torch.autograd.grad(z[..., i].sum(), transformed, retain_graph=True)[0][..., i]
                                     for i in range(z.shape[-1])], dim=-1)  # the diagonal of a triangular Jacobian
            scales.append(-slope.abs().log())
            with torch.no_grad():
                tokens, _ = block(tokens, condition)
        return scales
    finally:
        model.train(was_training)
