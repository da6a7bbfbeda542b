"""Evaluation protocol: mixture over classes and Bayes-classifier accuracy."""

import math

import pytest
import torch

from tarflow import FlowConfig, TarFlow
from tarflow.data import dequantize
from tarflow.metrics import evaluate_bpd

K, LEVELS = 3, 17


def model_and_data(seed=0):
    torch.manual_seed(seed)
    model = TarFlow(FlowConfig(image_size=4, channels=1, patch_size=2, width=16, num_blocks=2, layers_per_block=1,
                               head_dim=8, num_classes=K)).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    images = torch.randint(0, LEVELS, (12, 1, 4, 4))
    labels = torch.arange(12) % K
    return model, images, labels


def test_mixture_is_the_log_sum_exp_over_classes_by_hand():
    """mixture log p(x) = logsumexp_k log p(x | y=k) - log K, from model.log_prob per class on evaluate_bpd's own
    noise (seed 0: generator seed draw * 7919 + batch start), in bits/dim with bin width 2/L, averaged over the
    draws per image and then over images; the conditional figure from the true labels likewise."""
    model, images, labels = model_and_data()
    draws, batch, dims = 2, 5, 16
    r = evaluate_bpd(model, images, labels, LEVELS, draws=draws, batch_size=batch, mixture=True)
    mix, cond = torch.zeros(12, dtype=torch.float64), torch.zeros(12, dtype=torch.float64)
    for draw in range(draws):
        for lo in range(0, 12, batch):
            g = torch.Generator().manual_seed(draw * 7_919 + lo)
            x = dequantize(images[lo:lo + batch], LEVELS, generator=g).double()
            n = x.shape[0]
            each = torch.stack([model.log_prob(x, torch.full((n,), k)) for k in range(K)], dim=1)
            for out, log_p in ((mix, torch.logsumexp(each, dim=1) - math.log(K)),
                               (cond, each.gather(1, labels[lo:lo + batch, None])[:, 0])):
                out[lo:lo + n] += (-log_p - dims * math.log(2 / LEVELS)) / (dims * math.log(2)) / draws
    assert r["mixture_bits_per_dim"] == pytest.approx(mix.mean().item(), abs=1e-10)
    assert r["mixture_stderr"] == pytest.approx(mix.std().item() / math.sqrt(12), abs=1e-10)
    assert r["bits_per_dim"] == pytest.approx(cond.mean().item(), abs=1e-10)
    assert abs(r["mixture_bits_per_dim"] - r["bits_per_dim"]) > 1e-3  # the classes really differ here


def test_mixture_equals_conditional_when_labels_do_not_matter():
    model, images, labels = model_and_data()
    with torch.no_grad():
        for block in model.blocks:
            block.class_embed.weight.copy_(block.class_embed.weight[:1].expand_as(block.class_embed.weight))
    r = evaluate_bpd(model, images, labels, LEVELS, mixture=True)
    assert abs(r["mixture_bits_per_dim"] - r["bits_per_dim"]) < 1e-9


def test_bayes_accuracy_is_argmax_of_class_likelihoods():
    model, images, labels = model_and_data(1)
    r = evaluate_bpd(model, images, labels, LEVELS, mixture=True, batch_size=5)
    from tarflow.data import dequantize

    g = [torch.Generator().manual_seed(lo) for lo in (0, 5, 10)]  # evaluate_bpd's noise for seed 0, draw 0
    xs = torch.cat([dequantize(images[lo:lo + 5], LEVELS, generator=gen) for lo, gen in zip((0, 5, 10), g)])
    lp = torch.stack([model.log_prob(xs.double(), torch.full((12,), k)) for k in range(K)], dim=1)
    expected = (lp.argmax(1) == labels).double().mean().item()
    assert r["bayes_accuracy"] == expected


def test_draws_average_and_batches_do_not_change_the_result():
    model, images, labels = model_and_data()
    a = evaluate_bpd(model, images, labels, LEVELS, draws=3, batch_size=4)
    b = evaluate_bpd(model, images, labels, LEVELS, draws=3, batch_size=4)
    assert a == b and a["draws"] == 3 and a["images"] == 12
