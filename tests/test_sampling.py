"""Samplers against naive references, in float64 on CPU on tiny random models (fixture in conftest.py).

The references here recompute every block's full parallel parameter pass for each token (no KV
cache), so they check the cached, batched, guided paths of the library against the plain equations.
"""

from __future__ import annotations

import math

import pytest
import torch

from tarflow import ConfigError, Guidance, SequentialSampler, tweedie_denoise
from tarflow.flows import Condition
from tarflow.nn import Attention, KVCache

from conftest import BATCH, make_labels

pytestmark = pytest.mark.usefixtures("one_thread")


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def noise_like(model, n: int = BATCH, seed: int = 5) -> torch.Tensor:
    c = model.config
    return torch.randn(n, c.channels, c.image_size, c.image_size, generator=gen(seed), dtype=torch.float64)


# ----- naive references -------------------------------------------------------------------------

def starflow_rule(a_c, b_c, a_u, b_u, w):
    """Closed form for two Gaussians: sigma = exp(a), mu = b (DESIGN.md)."""
    sigma_c, sigma_u = a_c.exp(), a_u.exp()
    s = torch.minimum(sigma_c / sigma_u, torch.ones_like(sigma_c)) ** 2
    sigma = sigma_c / torch.sqrt(1 + w - w * s)
    mu = ((1 + w) * b_c - w * s * b_u) / (1 + w - w * s)
    return sigma.log(), mu


def last_token_params(block, x, condition):
    """The transform's params of the last token of an uncached pass over x; for affine and additive transforms
    written out as (log sigma, b)."""
    params = tuple(p[:, -1:] for p in block.params(x, condition))
    if block.transform.name == "additive":
        return torch.zeros_like(params[0]), params[0]
    return params


def solve_token(block, z_token, params_c, params_u, guidance, t, T):
    """x_t from z_t: by hand for Gaussian transforms (x = z exp(a) + b, the guidance rule written out); through the
    transform's own guide and inverse otherwise."""
    if block.transform.name not in ("affine", "additive"):
        if guidance is not None:
            params_c = block.transform.guide(tuple(torch.cat(p) for p in zip(params_c, params_u)), guidance, t, T)
        return block.transform.inverse(z_token, params_c)
    a, b = params_c
    if guidance is not None:
        a_u, b_u = params_u
        w = guidance.weight * t / (T - 1) if guidance.annealed else guidance.weight
        if guidance.rule == "tarflow":
            a, b = a + w * (a - a_u), b + w * (b - b_u)
        else:
            a, b = starflow_rule(a, b, a_u, b_u, w)
    return z_token * a.exp() + b


def naive_inverse(model, z, y=None, guidance: Guidance | None = None):
    """Blocks in reverse; token t solved from a full, uncached pass over the prefix x_<t.

    With guidance: a conditional pass (label y, no temperature) and an unconditional pass (null label,
    attention temperature tau), combined by the rule, with the annealed weight w t / (T - 1).
    """
    B = z.shape[0]
    T = model.config.num_tokens
    y_u = None if y is None else torch.full_like(y, model.config.num_classes)
    tau = None if guidance is None else torch.full((B,), float(guidance.attn_temp), dtype=torch.float64)
    tokens = model.patchify(z)
    with torch.no_grad():
        for block in reversed(model.blocks):
            zt = block.order.apply(tokens)
            x = torch.zeros_like(zt)
            x[:, :block.first] = zt[:, :block.first]
            for t in range(block.first, T):
                prefix = x[:, :t]  # tokens before t; with a learned start, a row for the start embedding in front
                if block.first == 0:
                    prefix = torch.cat([torch.zeros_like(x[:, :1]), prefix], dim=1)
                params_c = last_token_params(block, prefix, Condition(y))  # the params of token t
                params_u = None if guidance is None else last_token_params(block, prefix, Condition(y_u, tau))
                x[:, t:t + 1] = solve_token(block, zt[:, t:t + 1], params_c, params_u, guidance, t, T)
            tokens = block.order.undo(x)
    return model.unpatchify(tokens)


def refuses_starflow_rule(model, rule, sampler=None) -> bool:
    """The STARFlow closed form is for Gaussian transforms: a mixture model refuses it with a clear error, and the
    test that asked has nothing more to compare (True)."""
    if model.config.transform not in ("mixture", "mixture-d") or rule != "starflow":
        return False
    with pytest.raises(ConfigError, match="rule='tarflow'"):
        (sampler or SequentialSampler(model)).sample(BATCH, make_labels(model), guidance=Guidance(1.0, rule))
    return True


# ----- 5. the KV-cache inverse ------------------------------------------------------------------

def test_kv_cache_inverse_matches_naive_inverse(model):
    y = make_labels(model)
    z = noise_like(model)
    ref = naive_inverse(model, z, y)
    assert (model.inverse(z, y) - ref).abs().max() <= 1e-9
    assert (SequentialSampler(model).sample(BATCH, y, z=z) - ref).abs().max() <= 1e-9
    # The reference is a true inverse too (so the comparison is not between two wrong answers).
    z2, _ = model(ref, y)
    assert (z2 - z).abs().max() <= 1e-9


def chunked(attn_or_block_call, sizes, total):
    outs, pos = [], 0
    for L in sizes:
        outs.append(attn_or_block_call(pos, L))
        pos += L
    assert pos == total
    return outs


@pytest.mark.parametrize("sizes", [[1] * 9, [3, 3, 3], [1, 4, 2, 2], [2, 7], [9]])
@pytest.mark.parametrize("temp", [None, 1.7])
def test_attention_chunked_cache_matches_uncached(sizes, temp):
    """Feeding a sequence through a KVCache in chunks (L > 1 at pos > 0) = one causal uncached pass."""
    torch.manual_seed(0)
    B, T, W, hd = 2, 9, 16, 4
    attn = Attention(W, hd).double()
    h = torch.randn(B, T, W, dtype=torch.float64)
    tau = None if temp is None else torch.tensor([1.0, temp], dtype=torch.float64)
    full = attn(h, tau)
    cache = KVCache(1, B, attn.heads, T, hd, torch.float64, h.device, tau)  # the cache carries the temperatures
    outs = chunked(lambda pos, L: attn(h[:, pos:pos + L], tau, cache.layer(0), pos), sizes, T)
    assert (torch.cat(outs, 1) - full).abs().max() <= 1e-12
    # Causality: an output does not depend on later tokens.
    h2 = h.clone()
    h2[:, 5:] += 1.0
    assert (attn(h2, tau)[:, :5] - full[:, :5]).abs().max() <= 1e-12
    assert (attn(h2, tau)[:, 5:] - full[:, 5:]).abs().max() > 1e-3


@pytest.mark.parametrize("sizes", [[1, 1, 1, 1], [1, 3], [2, 2], [3, 1]])
def test_block_chunked_cache_matches_uncached(model, sizes):
    """GS-Jacobi-style use of a block: chunks of tokens against the cache give the uncached params.

    A chunk is first fed with a wrong guess and then re-fed at the same position (as a Jacobi
    iteration does): the cache slots are overwritten, and earlier chunks' entries are unaffected.
    """
    y = make_labels(model)
    T = model.config.num_tokens
    x = model.patchify(noise_like(model))
    guess = torch.zeros_like(x)
    for block in model.blocks:
        full = block.step(x, Condition(y))
        cache = block.new_cache(Condition(y), BATCH)

        def step(pos, L):
            block.step(guess[:, pos:pos + L], Condition(y), cache, pos)  # a wrong first iterate
            return block.step(x[:, pos:pos + L], Condition(y), cache, pos)

        outs = chunked(step, sizes, T)
        assert (torch.cat(outs, 1) - full).abs().max() <= 1e-12


# ----- 6. guidance ------------------------------------------------------------------------------

RULES = [pytest.param(r, an, id=f"{r}{'-annealed' if an else ''}")
         for r in ("tarflow", "starflow") for an in (False, True)]


@pytest.mark.parametrize("rule,annealed", RULES)
def test_zero_guidance_is_unguided(model, rule, annealed):
    if refuses_starflow_rule(model, rule):
        return
    y = make_labels(model)
    sampler = SequentialSampler(model)
    plain = sampler.sample(BATCH, y, generator=gen(7))
    guided = sampler.sample(BATCH, y, generator=gen(7), guidance=Guidance(0.0, rule, annealed, attn_temp=1.0))
    assert (guided - plain).abs().max() <= 1e-9


@pytest.mark.parametrize("rule,annealed", RULES)
def test_guidance_weight_changes_samples(model, rule, annealed):
    """Conditional: w > 0 moves the samples. Unconditional: only with tau != 1 (else both branches coincide)."""
    if refuses_starflow_rule(model, rule):
        return
    y = make_labels(model)
    sampler = SequentialSampler(model)
    plain = sampler.sample(BATCH, y, generator=gen(7))
    guided = sampler.sample(BATCH, y, generator=gen(7), guidance=Guidance(2.0, rule, annealed, attn_temp=1.0))
    if model.config.num_classes:
        assert (guided - plain).abs().max() > 1e-3
    else:
        assert (guided - plain).abs().max() <= 1e-9
    tempered = sampler.sample(BATCH, y, generator=gen(7), guidance=Guidance(2.0, rule, annealed, attn_temp=2.5))
    assert (tempered - plain).abs().max() > 1e-3


@pytest.mark.parametrize("rule,annealed", RULES)
@pytest.mark.parametrize("weight,attn_temp", [(1.5, 1.0), (0.7, 1.8)])
def test_guided_sampler_matches_naive_reference(model, rule, annealed, weight, attn_temp):
    if refuses_starflow_rule(model, rule):
        return
    y = make_labels(model)
    z = noise_like(model)
    g = Guidance(weight, rule, annealed, attn_temp)
    ref = naive_inverse(model, z, y, g)
    out = SequentialSampler(model).sample(BATCH, y, guidance=g, z=z)
    assert (out - ref).abs().max() <= 1e-9
    if model.config.num_classes or attn_temp != 1.0:  # the reference itself is guided
        assert (ref - naive_inverse(model, z, y)).abs().max() > 1e-3


def test_guidance_rules_closed_form():
    """The two rules on hand-picked params; STARFlow: product-of-Gaussians ratio with its variance floor."""
    a_c, a_u = torch.tensor([[0.0, math.log(2.0)]]), torch.tensor([[math.log(2.0), 0.0]])
    b_c, b_u = torch.tensor([[1.0, 1.0]]), torch.tensor([[0.0, 3.0]])
    a, b = Guidance(0.5, "tarflow").combine(torch.cat([a_c, a_u]), torch.cat([b_c, b_u]), 1, 4)
    assert torch.allclose(a, a_c + 0.5 * (a_c - a_u)) and torch.allclose(b, torch.tensor([[1.5, 0.0]]))
    a, b = Guidance(1.0, "starflow").combine(torch.cat([a_c, a_u]), torch.cat([b_c, b_u]), 1, 4)
    # dim 0: sigma_c = 1, sigma_u = 2, s = 1/4, 1 + w - w s = 7/4: sigma* = 1/sqrt(7/4), mu* = 2 / (7/4)
    # dim 1: sigma_c = 2, sigma_u = 1, s = 1 (clamped), denominator 1: sigma* = 2, mu* = 2 - 3 = -1
    assert torch.allclose(a.exp(), torch.tensor([[1 / math.sqrt(7 / 4), 2.0]]))
    assert torch.allclose(b, torch.tensor([[8 / 7, -1.0]]))
    annealed = Guidance(3.0, annealed=True)
    assert [annealed.weight_at(t, 4) for t in range(4)] == [0.0, 1.0, 2.0, 3.0]


# ----- 8. temperature and noise -----------------------------------------------------------------

def test_temperature_zero_is_inverse_of_zero_noise(model):
    y = make_labels(model)
    sampler = SequentialSampler(model)
    zero = torch.zeros_like(noise_like(model))
    expected = model.inverse(zero, y)
    a = sampler.sample(BATCH, y, temperature=0.0, generator=gen(1))
    b = sampler.sample(BATCH, y, temperature=0.0, generator=gen(2))
    assert torch.equal(a, b)
    assert (a - expected).abs().max() <= 1e-12
    assert (a - naive_inverse(model, zero, y)).abs().max() <= 1e-9


@pytest.mark.parametrize("temperature", [0.0, 0.3, 1.0, 1.7])
def test_noise_scales_with_temperature(model, temperature):
    sampler = SequentialSampler(model)
    unit = sampler.noise(BATCH, 1.0, gen(4))
    z = sampler.noise(BATCH, temperature, gen(4))
    assert z.shape == noise_like(model).shape and z.dtype == torch.float64
    assert (z - temperature * unit).abs().max() <= 1e-12


def test_noise_follows_the_prior(model):
    """Per token dim, the empirical std of the noise is temperature * prior std (1 for affine models)."""
    sampler = SequentialSampler(model)
    n, temperature = 4000, 0.6
    z = model.patchify(sampler.noise(n, temperature, gen(0)))
    std = model.prior_std()
    std = torch.ones(z.shape[1:], dtype=torch.float64) if std is None else std.detach()
    ratio = z.std(0) / (temperature * std)
    assert (ratio - 1).abs().max() < 0.08  # 4000 draws: the std's relative error is about 1.1%
    assert z.mean(0).div(std).abs().max() < 0.05


def test_sampling_is_seeded_and_restores_mode(model):
    y = make_labels(model)
    sampler = SequentialSampler(model)
    model.train()
    a = sampler.sample(BATCH, y, generator=gen(3))
    assert model.training
    model.eval()
    assert torch.equal(a, sampler.sample(BATCH, y, generator=gen(3)))
    assert (a - sampler.sample(BATCH, y, generator=gen(4))).abs().max() > 1e-3
    assert (a - naive_inverse(model, sampler.noise(BATCH, 1.0, gen(3)), y)).abs().max() <= 1e-9


# ----- 9. Tweedie denoising ---------------------------------------------------------------------

def test_tweedie_matches_finite_difference_score(model):
    """x + sigma^2 grad log p(x), with the gradient from 4th-order central differences of log_prob."""
    y = make_labels(model)
    x = 0.5 * noise_like(model, seed=8)
    sigma = 0.1
    out = tweedie_denoise(model, x, y, sigma)
    # h: the truncation error falls as h^4; at 1e-4 it reached 2.6e-7 on the curved Mix-d kind, at 5e-5 1.8e-8
    B, D, h = x.shape[0], x[0].numel(), 5e-5
    eye = torch.eye(D, dtype=torch.float64).view(1, D, *x.shape[1:])
    yy = None if y is None else y.repeat_interleave(D)

    def log_p(step):  # log p at x + step e_d for every sample and coordinate d, in one batch
        with torch.no_grad():
            return model.log_prob((x[:, None] + step * eye).reshape(B * D, *x.shape[1:]), yy).view_as(x)

    score = (8 * (log_p(h) - log_p(-h)) - (log_p(2 * h) - log_p(-2 * h))) / (12 * h)
    assert score.abs().max() > 1.0
    # Finite differences are good to ~1e-11 relative here; the score can be large on a random model.
    assert (out - (x + sigma ** 2 * score)).abs().max() <= sigma ** 2 * 1e-9 * (1 + score.abs().max())
    assert (out - x).abs().max() > 1e-3  # the step is not a no-op


@pytest.mark.parametrize("transform", ["affine", "additive"])
def test_tweedie_closed_form_for_gaussian_model(transform):
    """With identity blocks, p is N(0, s^2) per dim, so the denoiser is x (1 - sigma^2 / s^2)."""
    from conftest import tiny_config
    from tarflow import TarFlow

    torch.manual_seed(0)
    model = TarFlow(tiny_config(0, transform)).double().eval()  # zero output projections: identity blocks
    s2 = torch.ones(model.config.num_tokens, model.config.token_dim, dtype=torch.float64)
    if model.prior_std() is not None:
        with torch.no_grad():
            model.prior.log_std.copy_(torch.randn(s2.shape, generator=gen(2), dtype=torch.float64) * 0.3)
        s2 = model.prior.log_std.detach().exp() ** 2
    x = noise_like(model)
    sigma = 0.2
    expected = x * (1 - sigma ** 2 / model.unpatchify(s2.expand(BATCH, -1, -1)))
    assert (tweedie_denoise(model, x, None, sigma) - expected).abs().max() <= 1e-12


def test_sampler_denoise_is_tweedie_step(model):
    y = make_labels(model)
    sampler = SequentialSampler(model)
    raw = sampler.sample(BATCH, y, generator=gen(9))
    den = sampler.sample(BATCH, y, generator=gen(9), denoise_std=0.05)
    assert (den - tweedie_denoise(model, raw, y, 0.05)).abs().max() <= 1e-12
    assert (den - raw).abs().max() > 1e-6
