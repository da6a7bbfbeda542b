"""Normalizing Trajectory Models (architecture=ntm), in float64 on CPU on tiny random models.

The contract of every model kind (tests/test_contract.py), step by step: each step's flow x_{k-1} -> z_k given x_k
inverts exactly and its log-determinant matches a brute-force autograd Jacobian. Then the trajectory: its batched
log-likelihood equals the per-step terms computed naively, the bound subtracts the exact log q, the noising chain
has the stated marginals, sampling is deterministic given the seed and inverts the noise it drew, and the config
refuses what it cannot model.
"""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from tarflow import ConfigError, FlowConfig, InputError
from tarflow.flows import NormalizingTrajectoryModel
from tarflow.flows.noising import NoisingTrajectory
from tarflow.presets import get_preset
from tarflow.sampling import Guidance, TrajectorySampler
from tarflow.train.config import RunConfig
from conftest import NUM_CLASSES, TRANSFORMS, randomise

pytestmark = pytest.mark.usefixtures("one_thread")

BATCH, STEPS, SIGNAL = 3, 3, [0.8, 0.45, 0.0]
LAYOUTS = {"zero-start": {"layers_per_block": 1},
           "learned-start-rope": {"layers_per_block": [1, 2], "start_token": "learned", "positions": "rope"}}
CONDITIONING = {"uncond": {"num_classes": 0}, "cond": {"num_classes": NUM_CLASSES}}
KINDS = [pytest.param({**TRANSFORMS[t], **LAYOUTS[l], **CONDITIONING[c]}, id=f"{c}-{t}-{l}")
         for t, l, c in itertools.product(TRANSFORMS, LAYOUTS, CONDITIONING)
         if l == "zero-start" or t == "affine"]


def ntm_config(**options) -> FlowConfig:
    # T = (4/2)^2 = 4 tokens of D = 2*2*2 = 8 dims; 32 dims per image; 2 blocks (both token orders), K = 3 steps.
    settings = dict(architecture="ntm", image_size=4, channels=2, patch_size=2, width=16, num_blocks=2,
                    layers_per_block=1, head_dim=8, mlp_ratio=2, predictor_layers=1, trajectory_steps=STEPS,
                    trajectory_signal=SIGNAL)
    return FlowConfig(**{**settings, **options})


@pytest.fixture(params=KINDS)
def model(request) -> NormalizingTrajectoryModel:
    torch.manual_seed(0)
    return randomise(NormalizingTrajectoryModel(ntm_config(**request.param)).double()).eval()


def labels_of(model, null: bool = True):
    """Labels 0, 1, 2 (and the null class 3 when ``null``) for a conditional model, else None."""
    if not model.config.num_classes:
        return None
    return torch.arange(BATCH) % (model.config.num_classes + (1 if null else 0))


@pytest.fixture
def trajectory(model):
    generator = torch.Generator().manual_seed(1)
    x = torch.rand(BATCH, 2, 4, 4, generator=generator, dtype=torch.float64) * 2 - 1
    return model.noising.sample(x, generator)


def step_jacobian(model, trajectory, y, step: int, i: int) -> torch.Tensor:
    """d z_k / d x_{k-1} of sample i, (D, D), by autograd through the flattened step flow."""
    current = trajectory[i:i + 1, step]
    label = None if y is None else y[i:i + 1]
    return jacobian(lambda v: model(v.view(current.shape), current, step, label)[0].flatten(),
                    trajectory[i, step - 1].flatten(), vectorize=True)


def standard_normal_log_density(values: torch.Tensor) -> torch.Tensor:
    return (-0.5 * values ** 2 - 0.5 * math.log(2 * math.pi)).flatten(1).sum(1)


# ----- each step's flow: the contract -------------------------------------------------------------

def test_fixture_model_is_not_the_identity(model, trajectory):
    """Guard against trivially passing contracts: the step flow moves x, its log-det varies, and it reads x_k."""
    y = labels_of(model)
    previous, current = trajectory[:, 0], trajectory[:, 1]
    z, logdet = model(previous, current, 1, y)
    assert (z - previous).abs().max() > 0.1
    assert logdet.std() > 1e-3
    z_other, _ = model(previous, trajectory[:, 2], 1, y)
    assert (z - z_other).abs().max() > 1e-3
    if model.config.num_classes:
        z_label, _ = model(previous, current, 1, (y + 1) % NUM_CLASSES)
        assert (z - z_label).abs().max() > 1e-3


@pytest.mark.parametrize("step", range(1, STEPS + 1))
def test_step_inverse_of_forward(model, trajectory, step):
    y = labels_of(model)
    z, _ = model(trajectory[:, step - 1], trajectory[:, step], step, y)
    assert (model.inverse(z, trajectory[:, step], step, y) - trajectory[:, step - 1]).abs().max() <= 1e-9


@pytest.mark.parametrize("step", range(1, STEPS + 1))
def test_step_forward_of_inverse(model, trajectory, step):
    y = labels_of(model)
    z = torch.randn(trajectory[:, 0].shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    x = model.inverse(z, trajectory[:, step], step, y)
    z2, _ = model(x, trajectory[:, step], step, y)
    assert (z2 - z).abs().max() <= 1e-9


@pytest.mark.parametrize("step", range(1, STEPS + 1))
def test_step_logdet_matches_autograd_jacobian(model, trajectory, step):
    y = labels_of(model)
    _, logdet = model(trajectory[:, step - 1], trajectory[:, step], step, y)
    for i in range(BATCH):
        sign, logabsdet = torch.linalg.slogdet(step_jacobian(model, trajectory, y, step, i))
        assert sign != 0
        assert abs(logabsdet.item() - logdet[i].item()) <= 1e-8, (step, i, logabsdet.item(), logdet[i].item())


def test_samples_are_independent(model, trajectory):
    """The batch dimension does not mix: sample i's z_k depends on its own x_{k-1} and x_k only."""
    y = labels_of(model)
    z, logdet = model(trajectory[:, 1], trajectory[:, 2], 2, y)
    for i in range(BATCH):
        zi, ldi = model(trajectory[i:i + 1, 1], trajectory[i:i + 1, 2], 2, None if y is None else y[i:i + 1])
        assert (zi - z[i:i + 1]).abs().max() <= 1e-12 and abs(ldi.item() - logdet[i].item()) <= 1e-12


@pytest.mark.parametrize("token", [0, 2])
def test_a_token_reads_its_own_context(model, trajectory, token):
    """Through `Condition.context`, token t's params read token t's features (and earlier tokens' in the block's
    order), never a later token's: moving token t's features moves z_t and leaves the tokens before it."""
    from tarflow.flows import Condition

    block = model.blocks[0]  # identity order
    tokens = model.patchify(trajectory[:, 0])
    features = torch.randn(BATCH, tokens.shape[1], model.config.width, generator=torch.Generator().manual_seed(7),
                           dtype=torch.float64)
    z, _ = block(tokens, Condition(context=features))
    moved = features.clone()
    moved[:, token] += 1.0
    z_moved, _ = block(tokens, Condition(context=moved))
    assert torch.equal(z_moved[:, :token], z[:, :token])
    fixed = block.first > token  # a zero start passes token 0 unchanged
    assert fixed or (z_moved[:, token] - z[:, token]).abs().max() > 1e-3


def test_predictor_reads_every_token_of_x_k(model, trajectory):
    """The predictor is bidirectional: changing x_k's last token changes step k's features at its first token."""
    tokens = model.patchify(trajectory[:, 1])
    steps = torch.ones(BATCH, dtype=torch.long)
    features, _, _ = model.predictor(tokens, steps, labels_of(model))
    moved = tokens.clone()
    moved[:, -1] += 1.0
    features_moved, _, _ = model.predictor(moved, steps, labels_of(model))
    assert (features_moved[:, 0] - features[:, 0]).abs().max() > 1e-3


# ----- the trajectory ------------------------------------------------------------------------------

def test_trajectory_log_prob_is_the_sum_of_naive_step_terms(model, trajectory):
    """log p(x_0:K) = log N(x_K; 0, I) + sum_k [log N(z_k; 0, I) + log|det dz_k/dx_k-1|], each step on its own
    (B rows, its own predictor call) against the batched K B-row pass, and with the log-det from autograd."""
    y = labels_of(model)
    batched = model.trajectory_log_prob(trajectory, y)
    naive = standard_normal_log_density(trajectory[:, STEPS])
    for step in range(1, STEPS + 1):
        z, logdet = model(trajectory[:, step - 1], trajectory[:, step], step, y)
        naive = naive + standard_normal_log_density(z) + logdet
    assert (batched - naive).abs().max() <= 1e-9
    i = 0  # sample 0 once more with every log-det from slogdet
    by_jacobian = standard_normal_log_density(trajectory[i:i + 1, STEPS]).item()
    for step in range(1, STEPS + 1):
        z, _ = model(trajectory[i:i + 1, step - 1], trajectory[i:i + 1, step], step, None if y is None else y[:1])
        by_jacobian += standard_normal_log_density(z).item()
        by_jacobian += torch.linalg.slogdet(step_jacobian(model, trajectory, y, step, i))[1].item()
    assert abs(batched[i].item() - by_jacobian) <= 1e-7


def test_bound_subtracts_the_exact_log_q(model, trajectory):
    """bound = log p(x_0:K) - sum_k log N(x_k; r_k x_k-1, s_k^2 I), r_k = a_k / a_k-1, s_k^2 = 1 - r_k^2."""
    y = labels_of(model)
    levels = [1.0, *SIGNAL]
    log_q = torch.zeros(BATCH, dtype=torch.float64)
    for step in range(1, STEPS + 1):
        ratio = levels[step] / levels[step - 1]
        normal = torch.distributions.Normal(ratio * trajectory[:, step - 1], math.sqrt(1 - ratio ** 2))
        log_q = log_q + normal.log_prob(trajectory[:, step]).flatten(1).sum(1)
    expected = model.trajectory_log_prob(trajectory, y) - log_q
    assert (model.bound(trajectory, y) - expected).abs().max() <= 1e-9


def test_gradients_reach_every_parameter(model, trajectory):
    """Training goes through the bound: every parameter (the null class's row included) gets a gradient."""
    model.bound(trajectory, labels_of(model)).sum().backward()
    unused = [name for name, p in model.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not unused, unused


def test_noising_chain_has_the_stated_marginals():
    """q(x_k | x_0) = N(a_k x_0, (1 - a_k^2) I), and x_K is independent of x_0 when a_K = 0."""
    noising = NoisingTrajectory(SIGNAL)
    x0 = torch.tensor([[-0.9, 0.0, 0.5, 1.0]], dtype=torch.float64).expand(40_000, 4)
    path = noising.sample(x0, torch.Generator().manual_seed(0))
    assert path.shape == (40_000, STEPS + 1, 4) and torch.equal(path[:, 0], x0)
    for step, level in enumerate(SIGNAL, start=1):
        mean, var = path[:, step].mean(0), path[:, step].var(0)
        assert (mean - level * x0[0]).abs().max() < 4 * math.sqrt((1 - level ** 2) / 40_000) + 1e-12
        assert (var - (1 - level ** 2)).abs().max() < 0.03
    assert noising.ratios[-1] == 0.0 and noising.stds[-1] == 1.0


def test_default_schedule_is_the_cosine_one():
    config = FlowConfig(architecture="ntm", image_size=8, patch_size=2)
    assert config.trajectory_steps == 4
    assert config.signal_levels == pytest.approx([math.cos(math.pi * k / 8) for k in (1, 2, 3)] + [0.0], abs=1e-15)
    assert config.signal_levels[-1] == 0.0


# ----- sampling -----------------------------------------------------------------------------------

def test_sampling_is_deterministic_given_the_seed(model):
    sampler = TrajectorySampler(model)
    y = labels_of(model, null=False)
    guidance = Guidance(1.5, attn_temp=1.3) if model.config.num_classes else None
    for how in (None, guidance):
        first = sampler.trajectory(BATCH, y, 0.9, how, generator=torch.Generator().manual_seed(5))
        again = sampler.trajectory(BATCH, y, 0.9, how, generator=torch.Generator().manual_seed(5))
        other = sampler.trajectory(BATCH, y, 0.9, how, generator=torch.Generator().manual_seed(6))
        assert first.shape == (BATCH, STEPS + 1, 2, 4, 4) and torch.isfinite(first).all()
        assert torch.equal(first, again)
        assert (first - other).abs().max() > 1e-3
        assert torch.equal(sampler.sample(BATCH, y, 0.9, how, generator=torch.Generator().manual_seed(5)),
                           first[:, 0])


def test_sampled_trajectory_inverts_the_noise_it_drew(model):
    """x_K is the first draw, and step k's flow maps the sampled x_{k-1} back to the k-th draw z_k."""
    sampler = TrajectorySampler(model)
    y = labels_of(model, null=False)
    noise = sampler.noise(BATCH, 0.8, torch.Generator().manual_seed(2))
    path = sampler.trajectory(BATCH, y, noise=noise)
    assert torch.equal(model.patchify(path[:, STEPS]), noise[0])
    for step in range(1, STEPS + 1):
        z, _ = model(path[:, step - 1], path[:, step], step, y)
        assert (model.patchify(z) - noise[STEPS + 1 - step]).abs().max() <= 1e-9


@pytest.mark.parametrize("rule", ["tarflow", "starflow"])
def test_guidance_of_weight_zero_is_the_conditional_model(rule):
    """w = 0 (tau = 1) takes the conditional branch's params everywhere; w > 0 moves the samples."""
    torch.manual_seed(0)
    model = randomise(NormalizingTrajectoryModel(ntm_config(num_classes=NUM_CLASSES)).double()).eval()
    sampler, y = TrajectorySampler(model), torch.arange(BATCH) % NUM_CLASSES
    noise = sampler.noise(BATCH, 1.0, torch.Generator().manual_seed(4))
    plain = sampler.trajectory(BATCH, y, noise=noise)
    assert (sampler.trajectory(BATCH, y, guidance=Guidance(0.0, rule), noise=noise) - plain).abs().max() <= 1e-9
    assert (sampler.trajectory(BATCH, y, guidance=Guidance(2.0, rule), noise=noise) - plain).abs().max() > 1e-3


# ----- save / load --------------------------------------------------------------------------------

def test_save_load_round_trip(model, trajectory, tmp_path):
    from tarflow.runs import load_model

    y = labels_of(model)
    path = model.save_pretrained(tmp_path / "model", metadata={"dataset": "digits", "levels": 17})
    data = json.loads((path / "config.json").read_text())
    assert data["format"] == "tarflow" and data["model"]["architecture"] == "ntm"
    loaded = NormalizingTrajectoryModel.from_pretrained(path)
    assert loaded.config == model.config and loaded.metadata == {"dataset": "digits", "levels": 17}
    state, state2 = model.state_dict(), loaded.state_dict()
    assert state.keys() == state2.keys() and all(torch.equal(state[k], state2[k]) for k in state)
    assert torch.equal(loaded.trajectory_log_prob(trajectory, y), model.trajectory_log_prob(trajectory, y))
    by_runs, _ = load_model(path, "cpu", trajectory=True)
    assert isinstance(by_runs, NormalizingTrajectoryModel)
    with pytest.raises(ConfigError, match="Normalizing Trajectory Model"):
        load_model(path, "cpu")  # commands that do not support it refuse it by name


# ----- errors -------------------------------------------------------------------------------------

@pytest.mark.parametrize("options, message", [
    ({"trajectory_steps": 0}, "at least 1"),
    ({"trajectory_steps": -2}, "at least 1"),
    ({"trajectory_steps": True}, "at least 1"),
    ({"trajectory_signal": [0.5, 0.6, 0.0]}, "decrease strictly"),
    ({"trajectory_signal": [0.8, 0.8, 0.0]}, "decrease strictly"),
    ({"trajectory_signal": [0.9, 0.5]}, "lists 2 levels but trajectory_steps=3"),
    ({"trajectory_signal": [1.0, 0.5, 0.0]}, r"in \[0, 1\)"),
    ({"trajectory_signal": [0.9, 0.5, -0.1]}, r"in \[0, 1\)"),
    ({"trajectory_signal": [0.9, float("nan"), 0.0]}, r"in \[0, 1\)"),
    ({"trajectory_signal": "0.9,0.5,0"}, "list of numbers"),
    ({"predictor_layers": 0}, "predictor_layers"),
    ({"noise_conditioning": True}, "noise_conditioning=false"),
    ({"modality": "text", "vocabulary": "ab"}, "modality=pixels"),
])
def test_config_errors_name_the_problem(options, message):
    with pytest.raises(ConfigError, match=message):
        ntm_config(**options)


def test_run_config_refuses_gaussian_noise():
    with pytest.raises(ConfigError, match="noise=uniform"):
        RunConfig.from_dict({"model": {"architecture": "ntm"}, "train": {"noise": "gaussian"}})


def test_input_errors(model, trajectory):
    y = labels_of(model)
    for step in (0, STEPS + 1, 1.5):
        with pytest.raises(InputError, match="step must be an integer"):
            model(trajectory[:, 0], trajectory[:, 1], step, y)
    with pytest.raises(InputError, match="a trajectory must be"):
        model.trajectory_log_prob(trajectory[:, 1:], y)
    broken = trajectory.clone()
    broken[0, 2, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN"):
        model.bound(broken, y)


@pytest.mark.parametrize("name", ["digits-ntm", "mnist-ntm", "cifar10-ntm"])
def test_presets_build(name):
    config = get_preset(name)
    assert config.model.architecture == "ntm" and config.model.trajectory_steps == 4
    model = NormalizingTrajectoryModel(config.model)
    assert len(model.blocks) == config.model.num_blocks and len(model.predictor.layers) == config.model.predictor_layers
