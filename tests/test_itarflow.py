"""iTARFlow: the noise-level input, its contract (float64 on tiny random models), the iterative denoiser against
closed-form Gaussian answers, training across noise levels, and the errors for levels a model was not trained on.
"""

from __future__ import annotations

import dataclasses
import itertools
import json

import pytest
import torch
from torch.autograd.functional import jacobian

from tarflow import ConfigError, Guidance, InputError, IterativeDenoiser, SequentialSampler, TarFlow
from tarflow import tweedie_denoise
from tarflow.flows import Condition
from tarflow.sampling import GSJacobiSampler, JacobiSampler, model_score
from tarflow.train.config import RunConfig, TrainConfig
from tarflow.train.noise_levels import add_noise_levels, draw_levels, loss_weights

from conftest import BATCH, LAYOUTS, NUM_CLASSES, TRANSFORMS, make_inputs, make_labels, randomise, tiny_config

pytestmark = pytest.mark.usefixtures("one_thread")

T0, T1 = 0.01, 0.3
LEVELS = torch.tensor([0.01, 0.07, 0.2, 0.3], dtype=torch.float64)  # one per row of the fixture's batch
KINDS = [pytest.param({**TRANSFORMS[t], **LAYOUTS[l], "num_classes": c}, id=f"{t}-{l}-{'cond' if c else 'uncond'}")
         for t, l, c in itertools.product(TRANSFORMS, LAYOUTS, (0, NUM_CLASSES))]


def noisy_model(seed: int = 1, **options) -> TarFlow:
    """A randomised noise-conditioned tiny model (seed 1: under seed 0 one mixture row is so flat that z barely
    depends on x, and the bisection inverse loses 1e-5 to conditioning, not to a bug)."""
    torch.manual_seed(seed)
    config = tiny_config(noise_conditioning=True, noise_level_min=T0, noise_level_max=T1, **options)
    return randomise(TarFlow(config).double(), seed).eval()


@pytest.fixture(params=KINDS)
def model(request) -> TarFlow:
    return noisy_model(**request.param)


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ----- the contract with a noise-level input ----------------------------------------------------

def test_the_level_changes_every_block(model):
    """Guard against a trivially passing contract: t reaches every block's output."""
    x, y = make_inputs(model)
    tokens, condition = model.patchify(x), Condition(model.check_labels(y, BATCH), noise_level=LEVELS)
    other = dataclasses.replace(condition, noise_level=LEVELS.flip(0))
    for block in model.blocks:
        assert (block(tokens, condition)[0] - block(tokens, other)[0]).abs().max() > 1e-3


def test_inverse_of_forward_at_each_level(model):
    x, y = make_inputs(model)
    z, _ = model(x, y, noise_level=LEVELS)
    x_back = model.inverse(z, y, noise_level=LEVELS)
    # exact in z; in x within 1e-8, since a flat mixture row (small dz/dx) magnifies the bisection's last bit
    # (Mix-d, seed 1: 3.4e-9 in x while z comes back to 5e-15)
    assert (model(x_back, y, noise_level=LEVELS)[0] - z).abs().max() <= 1e-12
    assert (x_back - x).abs().max() <= 1e-8
    assert (model.inverse(z, y, noise_level=LEVELS.flip(0)) - x).abs().max() > 1e-3


def test_logdet_matches_jacobian_in_x_at_fixed_level(model):
    """log|det dz/dx| at fixed t against autograd's Jacobian in x; t carrying a gradient changes neither."""
    x, y = make_inputs(model)
    levels = LEVELS.clone().requires_grad_(True)
    z, logdet = model(x, y, noise_level=levels)
    _, logdet_plain = model(x, y, noise_level=LEVELS)
    assert torch.equal(logdet.detach(), logdet_plain)
    for i in range(BATCH):
        yi = None if y is None else y[i:i + 1]

        def f(v):
            return model(v.view(1, *x.shape[1:]), yi, noise_level=levels[i:i + 1])[0].flatten()

        _, logabsdet = torch.linalg.slogdet(jacobian(f, x[i].flatten(), vectorize=True))
        assert abs(logabsdet.item() - logdet[i].item()) <= 1e-8


def test_log_prob_is_prior_plus_logdet(model):
    x, y = make_inputs(model)
    z, logdet = model(x, y, noise_level=LEVELS)
    expected = model.prior.log_prob(model.patchify(z)) + logdet
    assert (model.log_prob(x, y, noise_level=LEVELS) - expected).abs().max() <= 1e-12


def test_cached_chunks_match_the_uncached_pass(model):
    """The KV-cache path (input_bias holds the level's embedding) gives the uncached params, chunk by chunk."""
    y = make_labels(model)
    x = model.patchify(torch.randn(BATCH, 2, 4, 4, generator=gen(5), dtype=torch.float64))
    condition = Condition(model.check_labels(y, BATCH), noise_level=LEVELS)
    for block in model.blocks:
        full = block.step(x, condition)
        cache = block.new_cache(condition, BATCH)
        chunks = [block.step(x[:, pos:pos + 1], condition, cache, pos) for pos in range(x.shape[1])]
        assert (torch.cat(chunks, 1) - full).abs().max() <= 1e-12


@pytest.mark.parametrize("guidance", [None, Guidance(1.5, annealed=True, attn_temp=1.7)], ids=["plain", "guided"])
def test_parallel_samplers_match_sequential_at_a_level(model, guidance):
    y = make_labels(model)
    reference = SequentialSampler(model).sample(BATCH, y, guidance=guidance, generator=gen(3), noise_level=0.2)
    for sampler in (JacobiSampler(model, tol=0), GSJacobiSampler(model, tol=0, modules=2)):
        out = sampler.sample(BATCH, y, guidance=guidance, generator=gen(3), noise_level=0.2)
        assert (out - reference).abs().max() <= 1e-9
    z = SequentialSampler(model).noise(BATCH, generator=gen(3))
    if guidance is None:  # the sampler inverts the model at that level
        assert (reference - model.inverse(z, y, noise_level=0.2)).abs().max() <= 1e-9


def test_samplers_generate_at_the_highest_level_by_default(model):
    y = make_labels(model)
    sampler = SequentialSampler(model)
    default = sampler.sample(BATCH, y, generator=gen(4))
    assert torch.equal(default, sampler.sample(BATCH, y, generator=gen(4), noise_level=T1))
    assert (default - sampler.sample(BATCH, y, generator=gen(4), noise_level=0.05)).abs().max() > 1e-3


def test_save_load_round_trip(model, tmp_path):
    x, y = make_inputs(model)
    loaded = TarFlow.from_pretrained(model.save_pretrained(tmp_path / "m"))
    assert loaded.config == model.config and loaded.config.noise_conditioning
    assert torch.equal(loaded.log_prob(x, y, noise_level=LEVELS), model.log_prob(x, y, noise_level=LEVELS))


# ----- default models are unchanged ---------------------------------------------------------------

def test_plain_models_have_no_noise_input_and_old_configs_load(tmp_path):
    torch.manual_seed(0)
    plain = randomise(TarFlow(tiny_config(num_classes=NUM_CLASSES)).double()).eval()
    assert not any("noise" in name for name in plain.state_dict())
    path = plain.save_pretrained(tmp_path / "m")
    saved = json.loads((path / "config.json").read_text())
    for name in ("noise_conditioning", "noise_level_min", "noise_level_max"):  # as a model saved before iTARFlow
        del saved["model"][name]
    (path / "config.json").write_text(json.dumps(saved))
    loaded = TarFlow.from_pretrained(path)
    x, y = make_inputs(plain)
    assert not loaded.config.noise_conditioning
    assert torch.equal(loaded.log_prob(x, y), plain.log_prob(x, y))


# ----- errors -----------------------------------------------------------------------------------

def test_clear_errors_for_missing_unwanted_and_untrained_levels():
    model = noisy_model()
    x, _ = make_inputs(model)
    with pytest.raises(InputError, match=r"noise-conditioned: pass noise_level.*\[0.01, 0.3\]"):
        model.log_prob(x)
    with pytest.raises(InputError, match=r"0.5 lies outside the trained range \[0.01, 0.3\].*extrapolate=True"):
        model.log_prob(x, noise_level=0.5)
    with pytest.raises(InputError, match="outside the trained range"):
        model.inverse(x, noise_level=torch.tensor([0.1, 0.1, 0.1, 0.005]))
    with pytest.raises(InputError, match="outside the trained range"):
        SequentialSampler(model).sample(2, noise_level=0.31)
    for bad in (0.0, -0.1, float("nan")):
        with pytest.raises(InputError, match="finite and positive"):
            model.log_prob(x, noise_level=bad)
    with pytest.raises(InputError, match=r"shape \(4,\)"):
        model.log_prob(x, noise_level=torch.full((3,), 0.1))
    with pytest.warns(UserWarning, match=r"0.5 lies outside the trained range \[0.01, 0.3\]"):
        log_p = model.log_prob(x, noise_level=0.5, extrapolate=True)
    assert torch.isfinite(log_p).all()
    plain = TarFlow(tiny_config()).double()
    with pytest.raises(InputError, match="not noise-conditioned"):
        plain.log_prob(x, noise_level=0.1)
    with pytest.raises(InputError, match="needs a noise-conditioned model"):
        IterativeDenoiser().denoise(plain, x)


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="noise_level_min < noise_level_max"):
        tiny_config(noise_conditioning=True, noise_level_min=0.3, noise_level_max=0.1)
    with pytest.raises(ConfigError, match="noise_level_min < noise_level_max"):
        tiny_config(noise_level_min=0.0)
    with pytest.raises(ConfigError, match="set noise=uniform"):
        RunConfig(tiny_config(noise_conditioning=True), TrainConfig(noise="gaussian"))
    with pytest.raises(ConfigError, match="log_normal_std"):
        TrainConfig(log_normal_std=0.0)
    with pytest.raises(ConfigError, match="at least 1 step"):
        IterativeDenoiser(steps=0)
    with pytest.raises(ConfigError, match="dynamics"):
        IterativeDenoiser(dynamics="heun")


# ----- the iterative denoiser against closed forms ----------------------------------------------

MEAN, STD = 0.3, 0.1  # clean data x ~ N(MEAN, STD^2) per dimension: p_t = N(MEAN, STD^2 + t^2)


def gaussian_score(x: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    return -(x - MEAN) / (STD ** 2 + levels.view(-1, *[1] * (x.dim() - 1)) ** 2)


def test_ode_follows_the_closed_form_recurrence_and_reduces_error():
    """For Gaussian data, x - m is scaled at each level by (s^2 + t_i t_{i+1}) / (s^2 + t_i^2) (Tweedie's
    posterior mean, then the ODE step), and the result is closer to the clean data than the noisy input."""
    clean = MEAN + STD * torch.randn(4000, 3, generator=gen(0), dtype=torch.float64)
    noisy = clean + T1 * torch.randn(clean.shape, generator=gen(1), dtype=torch.float64)
    denoiser = IterativeDenoiser(steps=10)
    out = denoiser.run(gaussian_score, noisy, T0, T1)
    levels = [T1 + (T0 - T1) * i / 9 for i in range(10)] + [0.0]
    expected = noisy - MEAN
    for level, following in zip(levels[:-1], levels[1:]):
        expected = expected * (STD ** 2 + level * following) / (STD ** 2 + level ** 2)
    assert (out - (MEAN + expected)).abs().max() <= 1e-12
    error_in, error_out = (noisy - clean).pow(2).mean(), (out - clean).pow(2).mean()
    assert error_out < 0.5 * error_in


def test_each_denoised_estimate_is_the_exact_posterior_mean():
    """x0 at level t is E[clean | x] = m + s^2 / (s^2 + t^2) (x - m): one step from t1 gives it at t1."""
    noisy = torch.randn(50, 3, generator=gen(2), dtype=torch.float64)
    one = IterativeDenoiser(steps=1).run(gaussian_score, noisy, T0, T1)
    assert (one - (MEAN + STD ** 2 / (STD ** 2 + T1 ** 2) * (noisy - MEAN))).abs().max() <= 1e-12


def test_sde_is_seeded_reduces_error_and_differs_from_ode():
    clean = MEAN + STD * torch.randn(4000, 3, generator=gen(0), dtype=torch.float64)
    noisy = clean + T1 * torch.randn(clean.shape, generator=gen(1), dtype=torch.float64)
    sde = IterativeDenoiser(steps=10, dynamics="sde")
    out = sde.run(gaussian_score, noisy, T0, T1, gen(7))
    assert torch.equal(out, sde.run(gaussian_score, noisy, T0, T1, gen(7)))
    assert (out - IterativeDenoiser(steps=10).run(gaussian_score, noisy, T0, T1)).abs().max() > 1e-3
    assert (out - clean).pow(2).mean() < 0.5 * (noisy - clean).pow(2).mean()


def test_clip_bounds_the_estimates():
    far = torch.full((2, 3), 50.0, dtype=torch.float64)  # posterior mean 0.3 + 0.01 / 0.1 * 49.7 = 5.27
    assert torch.allclose(IterativeDenoiser(steps=1).run(gaussian_score, far, T0, T1), torch.full_like(far, 5.27))
    out = IterativeDenoiser(steps=1, clip=True).run(gaussian_score, far, T0, T1)
    assert torch.equal(out, torch.ones_like(out))


def test_single_level_ode_is_one_tweedie_step_of_the_model():
    model = noisy_model(num_classes=NUM_CLASSES)
    y = make_labels(model)
    x = SequentialSampler(model).sample(BATCH, y, generator=gen(1))
    once = IterativeDenoiser(steps=1).denoise(model, x, y)
    assert (once - tweedie_denoise(model, x, y, T1, noise_level=T1)).abs().max() <= 1e-12
    sampled = SequentialSampler(model).sample(BATCH, y, generator=gen(1), denoise_std=T1)
    assert (once - sampled).abs().max() <= 1e-12
    assert (once - x).abs().max() > 1e-3


def test_model_score_drives_the_closed_form_on_an_identity_flow():
    """A fresh model's blocks are the identity, so log p_t(x) = log N(x; 0, I) at every t: x0 = (1 - t^2) x and
    the ODE step scales x by 1 - t_i^2 + t_i t_{i+1}: the model's score reaches the denoiser unchanged."""
    torch.manual_seed(0)
    model = TarFlow(tiny_config(noise_conditioning=True)).double().eval()
    x = torch.randn(3, 2, 4, 4, generator=gen(3), dtype=torch.float64)
    denoiser = IterativeDenoiser(steps=4)
    levels = denoiser.levels(T0, T1)
    expected = x.clone()
    for level, following in zip(levels[:-1], levels[1:]):
        expected = expected * (1 - level ** 2 + level * following)
    assert (denoiser.denoise(model, x) - expected).abs().max() <= 1e-12
    score = model_score(model)(x, torch.full((3,), 0.1, dtype=torch.float64))
    assert (score + x).abs().max() <= 1e-12


def test_model_score_in_chunks_is_the_whole_batchs_score():
    """Rows in chunks of 2 (and a last chunk of 1), each with its own label and level: the scores of one pass."""
    model = noisy_model(num_classes=NUM_CLASSES)
    x = torch.randn(5, 2, 4, 4, generator=gen(4), dtype=torch.float64) * 0.5
    y = torch.arange(5) % NUM_CLASSES
    levels = torch.linspace(T0, T1, 5, dtype=torch.float64)
    with torch.enable_grad():
        inputs = x.clone().requires_grad_(True)
        (whole,) = torch.autograd.grad(model.log_prob(inputs, y, noise_level=levels).sum(), inputs)
    chunked = model_score(model, y, chunk=2)(x, levels)
    assert (chunked - whole).abs().max() <= 1e-12 * whole.abs().max() and whole.abs().max() > 1e-3


# ----- training across noise levels ---------------------------------------------------------------

def empirical_cdf_gap(samples: torch.Tensor, cdf) -> float:
    sorted_samples, _ = samples.sort()
    ranks = torch.arange(1, len(samples) + 1, dtype=torch.float64) / len(samples)
    return float((ranks - cdf(sorted_samples)).abs().max())


@pytest.mark.parametrize("schedule", ["uniform", "uniform-squared", "log-normal"])
def test_level_schedules_follow_their_distributions(schedule):
    config = TrainConfig(noise_schedule=schedule)
    levels = draw_levels(config, T0, T1, 20000, gen(0))
    assert levels.min() >= T0 and levels.max() <= T1

    def log_normal(t):
        return 0.5 * (1 + torch.erf((torch.log(t) - config.log_normal_mean) / (config.log_normal_std * 2 ** 0.5)))

    cdf = {"uniform": lambda t: (t - T0) / (T1 - T0),
           "uniform-squared": lambda t: (t ** 2 - T0 ** 2) / (T1 ** 2 - T0 ** 2),
           "log-normal": lambda t: (log_normal(t) - log_normal(torch.tensor(T0))) / (
               log_normal(torch.tensor(T1)) - log_normal(torch.tensor(T0)))}[schedule]
    assert empirical_cdf_gap(levels, cdf) < 0.015  # Kolmogorov-Smirnov: 99.9% band at n = 20000 is 0.0138


def test_loss_weights():
    t = torch.tensor([0.01, 0.1, 0.3], dtype=torch.float64)
    expected = {"one": [1, 1, 1], "t": [0.01, 0.1, 0.3], "t-squared": [1e-4, 1e-2, 0.09],
                "t-normalised": [0.01 / 0.31, 0.1 / 0.31, 0.3 / 0.31],
                "t-squared-normalised": [1e-4 / 0.0901, 1e-2 / 0.0901, 0.09 / 0.0901]}
    for name, values in expected.items():
        assert torch.allclose(loss_weights(name, t, T0, T1), torch.tensor(values, dtype=torch.float64), atol=1e-15)


def test_noise_of_a_batch_does_not_depend_on_how_it_is_split():
    config, model_config = TrainConfig(batch_size=6, seed=3), tiny_config(noise_conditioning=True)
    x = torch.rand(6, 2, 4, 4, dtype=torch.float64)
    whole, levels = add_noise_levels(x, 5, config, model_config)
    parts = [add_noise_levels(x[part], 5, config, model_config, part) for part in (slice(0, 3), slice(3, 6))]
    assert torch.equal(torch.cat([p[0] for p in parts]), whole)
    assert torch.equal(torch.cat([p[1] for p in parts]), levels)
    eps = (whole - x) / levels.view(-1, 1, 1, 1)
    assert levels.min() >= T0 and levels.max() <= T1 and 0.7 < eps.std() < 1.3
    assert not torch.equal(add_noise_levels(x, 6, config, model_config)[0], whole)  # a new draw each step


def test_train_step_loss_is_the_weighted_noisy_likelihood():
    from tarflow.train.step import start_optimisation, train_step

    model = noisy_model(num_classes=NUM_CLASSES)
    config = TrainConfig(loss_weight="t-normalised", ema_decay=0)
    x, y = make_inputs(model)
    expected = -(LEVELS / (T0 + T1) * model.log_prob(x, y, noise_level=LEVELS)).mean() / model.config.num_dims
    run = start_optimisation(model.train(), config, torch.device("cpu"))
    result = train_step(run, x, y, 0, LEVELS)
    assert abs(result.loss.item() - expected.item()) <= 1e-12 and result.skipped is None
    assert (model.log_prob(x, y, noise_level=LEVELS) - expected).abs().max() > 0  # the step moved the model


@pytest.mark.parametrize("guidance", [None, Guidance(1.0)], ids=["plain", "guided"])
def test_calibration_runs_at_the_generation_level(guidance):
    """`calibrate` inverts a noise-conditioned model at its highest level t1, as `sample` does."""
    from tarflow.sampling.calibrate import calibrate, sampler_from_entry

    model = noisy_model(num_classes=NUM_CLASSES)
    entry = calibrate(model, 4, guidance, modules=[1, 2])
    y = make_labels(model)
    reference = SequentialSampler(model).sample(4, y, guidance=guidance, generator=gen(2))
    sampled = sampler_from_entry(model, entry).sample(4, y, guidance=guidance, generator=gen(2))
    assert (sampled - reference).abs().max() <= 1e-3
