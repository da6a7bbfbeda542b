"""Evaluation protocol: mixture over classes and Bayes-classifier accuracy."""

import math

import torch

from tarflow import FlowConfig, TarFlow
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


def test_mixture_is_within_log_k_of_the_conditional_bound():
    model, images, labels = model_and_data()
    r = evaluate_bpd(model, images, labels, LEVELS, mixture=True)
    # log (1/K) sum_y p(x|y) >= log p(x|y_true) - log K, per image
    assert r["mixture_bits_per_dim"] <= r["bits_per_dim"] + math.log2(K) / 16 + 1e-9
    assert 0 <= r["bayes_accuracy"] <= 1


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
