"""Evaluation protocol: mixture over classes and Bayes-classifier accuracy."""

import math

import pytest
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


def noise_by_hand(images, seed, draw, block):
    """evaluate_bpd's dequantization, written out: image i gets row i - b of U[0, 1) drawn for its block of
    ``block`` images starting at b, from a generator seeded with seed * 1000003 + draw * 7919 + b."""
    rows = []
    for b in range(0, len(images), block):
        count = min(block, len(images) - b)
        g = torch.Generator().manual_seed(seed * 1_000_003 + draw * 7_919 + b)
        rows.append(torch.rand((count, *images.shape[1:]), generator=g))
    return (2 * (images.float() + torch.cat(rows)) / LEVELS - 1).double()  # float32 arithmetic, as evaluated


def bpd_by_hand(log_p, dims=16):
    return (-log_p - dims * math.log(2 / LEVELS)) / (dims * math.log(2))


def test_mixture_is_the_log_sum_exp_over_classes_by_hand():
    """mixture log p(x) = logsumexp_k log p(x | y=k) - log K, from model.log_prob per class on evaluate_bpd's own
    noise, in bits/dim with bin width 2/L, averaged over the draws per image and then over images; the
    conditional figure from the true labels likewise. Batches of 5 straddle the noise blocks of 4."""
    model, images, labels = model_and_data()
    draws = 2
    r = evaluate_bpd(model, images, labels, LEVELS, draws=draws, batch_size=5, mixture=True, noise_block=4)
    mix, cond = torch.zeros(12, dtype=torch.float64), torch.zeros(12, dtype=torch.float64)
    for draw in range(draws):
        x = noise_by_hand(images, 0, draw, 4)
        each = torch.stack([model.log_prob(x, torch.full((12,), k)) for k in range(K)], dim=1)
        mix += bpd_by_hand(torch.logsumexp(each, dim=1) - math.log(K)) / draws
        cond += bpd_by_hand(each.gather(1, labels[:, None])[:, 0]) / draws
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
    x = noise_by_hand(images, 0, 0, 256)
    lp = torch.stack([model.log_prob(x, torch.full((12,), k)) for k in range(K)], dim=1)
    expected = (lp.argmax(1) == labels).double().mean().item()
    assert r["bayes_accuracy"] == expected


def test_draws_are_averaged_per_image_by_hand():
    """draws=3 is the mean over images of each image's mean over three single draws (seed 4: noise from
    generators 4 * 1000003 + draw * 7919 + block start), and its standard error is over those per-image means."""
    model, images, labels = model_and_data()
    r = evaluate_bpd(model, images, labels, LEVELS, draws=3, seed=4)
    per_image = sum(bpd_by_hand(model.log_prob(noise_by_hand(images, 4, draw, 256), labels))
                    for draw in range(3)) / 3
    assert r["draws"] == 3 and r["images"] == 12
    assert r["bits_per_dim"] == pytest.approx(per_image.mean().item(), abs=1e-10)
    assert r["stderr"] == pytest.approx(per_image.std().item() / math.sqrt(12), abs=1e-10)
    one_draw = evaluate_bpd(model, images, labels, LEVELS, draws=1, seed=4)["bits_per_dim"]
    assert abs(one_draw - r["bits_per_dim"]) > 1e-4  # the other draws really moved the figure


@pytest.mark.parametrize("batch_size", [1, 3, 5, 12, 256])
def test_batch_size_does_not_change_the_result(batch_size):
    """Each image's noise depends on its index alone, not on which batch it falls in."""
    model, images, labels = model_and_data()
    reference = evaluate_bpd(model, images, labels, LEVELS, draws=2, batch_size=4, noise_block=5, mixture=True)
    got = evaluate_bpd(model, images, labels, LEVELS, draws=2, batch_size=batch_size, noise_block=5, mixture=True)
    for key, value in reference.items():
        assert got[key] == pytest.approx(value, abs=1e-12), key


def test_a_batch_of_one_noise_block_draws_the_released_figures_noise():
    """Before per-image seeding each batch drew its noise with a generator seeded by its start; batches equal to
    the noise block (256 by default, the evaluation batch of every released figure) draw exactly that."""
    from tarflow.data import dequantize

    model, images, labels = model_and_data(2)
    r = evaluate_bpd(model, images, labels, LEVELS, batch_size=5, noise_block=5, seed=1)
    x = torch.cat([dequantize(images[lo:lo + 5], LEVELS, generator=torch.Generator().manual_seed(1_000_003 + lo))
                   for lo in (0, 5, 10)]).double()
    assert r["bits_per_dim"] == pytest.approx(bpd_by_hand(model.log_prob(x, labels)).mean().item(), abs=1e-10)
