"""Attention entropy per flow block, layer and head: the early sign of attention-entropy collapse.

H = -sum_j A_ij log A_ij per head, averaged over queries i and samples (nats). Query 0 of a block sees one
token, so its entropy is always 0; a head attending uniformly over the visible tokens averages
mean_i log(i + 1). For AFT mixers the implicit weights softmax_j(K_j + w_ij), per feature, stand in for
A (one "head" per layer).
"""

from __future__ import annotations

import torch
from torch import Tensor


def mixers(model) -> list[list[torch.nn.Module]]:
    """The mixing module of every layer, per block."""
    return [[layer.attn for layer in block.layers] for block in model.blocks]


@torch.no_grad()
def attention_entropy(model, x: Tensor, y: Tensor | None = None, noise_level: float | None = None
                      ) -> list[list[list[float]]]:
    """Entropy [block][layer][head] in nats of the model's attention on images x (B, C, H, W), labels y (and noise
    level t for a noise-conditioned model).

    Runs one forward in eval mode (sigma-Reparam uses its stored estimate, nothing is updated) with the
    explicit-softmax path switched on only for this call; restores the model's mode.
    """
    was_training = model.training
    mods = [m for block in mixers(model) for m in block]
    model.eval()
    for m in mods:
        m.record_entropy = True
    try:
        model(x, y) if noise_level is None else model(x, y, noise_level=noise_level)
        return [[[round(float(h), 5) for h in m.entropy] for m in block] for block in mixers(model)]
    finally:
        for m in mods:
            m.record_entropy, m.entropy = False, None
        model.train(was_training)


def collapsed_heads(entropy: list[list[list[float]]], threshold: float) -> list[tuple[int, int, int, float]]:
    """(block, layer, head, entropy) of every head whose entropy is below ``threshold`` nats."""
    return [(b, l, h, e) for b, block in enumerate(entropy) for l, layer in enumerate(block)
            for h, e in enumerate(layer) if e < threshold]


def uniform_entropy(num_queries: int) -> float:
    """The average entropy of a head that attends uniformly: mean over queries i of log(i + 1)."""
    return float(torch.log(torch.arange(1, num_queries + 1, dtype=torch.float64)).mean())


__all__ = ["attention_entropy", "collapsed_heads", "uniform_entropy"]
