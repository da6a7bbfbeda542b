"""The contract every TarFlow model kind must keep, checked in float64 on CPU on tiny random models.

One parametrised fixture (`model`, see conftest.py) covers {unconditional, class-conditional} x
{affine, additive}; every test here runs on all four.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from torch.autograd.functional import jacobian

from tarflow import TarFlow, bits_per_dim
from tarflow.flows import Condition
from tarflow.metrics import evaluate_bpd

pytestmark = pytest.mark.usefixtures("one_thread")


def per_sample_jacobian(model: TarFlow, x: torch.Tensor, y: torch.Tensor | None, i: int) -> torch.Tensor:
    """d z_i / d x_i, (D, D), for sample i, by brute-force autograd through the flattened forward."""
    shape = (1, *x.shape[1:])
    yi = None if y is None else y[i:i + 1]

    def f(v):
        return model(v.view(shape), yi)[0].flatten()

    return jacobian(f, x[i].flatten(), vectorize=True)


def prior_log_density(model: TarFlow, z: torch.Tensor) -> torch.Tensor:
    """log N(z; 0, diag(s^2)) summed per sample, written out by hand in image layout.

    s = 1 for affine models. For additive models s = exp(prior.log_std), stored per token (raster
    order over patches) and per token dim (ordered patch row, patch column, channel).
    """
    c = model.config
    p, n = c.patch_size, c.image_size // c.patch_size
    log_s = torch.zeros_like(z[0])
    if model.prior_std() is not None:
        for i in range(n):
            for j in range(n):
                for ph in range(p):
                    for pw in range(p):
                        for ch in range(c.channels):
                            log_s[ch, i * p + ph, j * p + pw] = model.prior.log_std[i * n + j,
                                                                                    (ph * p + pw) * c.channels + ch]
    lp = -0.5 * (z / log_s.exp()) ** 2 - log_s - 0.5 * math.log(2 * math.pi)
    return lp.flatten(1).sum(1)


# ----- the fixture itself -----------------------------------------------------------------------

def test_fixture_model_is_not_the_identity(model, inputs):
    """Guard against trivially passing contracts: the randomised model really transforms x."""
    x, y = inputs
    z, logdet = model(x, y)
    assert (z - x).abs().max() > 0.1
    if model.config.transform != "additive":
        assert logdet.abs().min() > 1e-2
        assert logdet.std() > 1e-3  # and it depends on the input
    else:
        assert model.prior.log_std.abs().max() > 0.1
    if model.config.num_classes:  # the label matters
        z_other, _ = model(x, (y + 1) % model.config.num_classes)
        assert (z - z_other).abs().max() > 1e-3


def test_config_shapes_the_blocks(model):
    """Layer counts, token orders and where the class enters follow the config."""
    c = model.config
    assert [len(block.layers) for block in model.blocks] == c.block_layers
    probe = torch.arange(c.num_tokens).view(1, -1, 1)
    flipped = [bool((block.order.apply(probe) != probe).any()) for block in model.blocks]
    assert flipped == ([False, True, False] if c.order == "alternate" else [False, False, False])
    conditioned = [block.class_embed is not None for block in model.blocks]
    expected = [bool(c.num_classes)] * 3 if not c.condition_top_only else [False, False, True]
    assert conditioned == expected
    assert all(block.transform.name == c.transform for block in model.blocks)
    rotary = [layer.attn.rotary is not None for block in model.blocks for layer in block.layers]
    assert all(rotary) if c.positions == "rope" else not any(rotary)
    assert all((block.pos_embed is None) == (c.positions == "rope") for block in model.blocks)


def test_start_token_decides_whether_token_1_is_transformed(model, inputs):
    """TarFlow's zero start passes a block's first token through; a learned start transforms it too."""
    x, y = inputs
    tokens = model.patchify(x)
    block = model.blocks[0]
    z, _ = block(tokens, Condition(model.check_labels(y, x.shape[0])))
    first_token_moved = bool((z[:, 0] - tokens[:, 0]).abs().max() > 1e-3)
    assert first_token_moved == (model.config.start_token == "learned")


# ----- 1. shapes --------------------------------------------------------------------------------

def test_shapes_and_dtype(model, inputs):
    x, y = inputs
    z, logdet = model(x, y)
    assert z.shape == x.shape
    assert logdet.shape == (x.shape[0],)
    assert z.dtype == logdet.dtype == torch.float64
    lp = model.log_prob(x, y)
    assert lp.shape == (x.shape[0],) and lp.dtype == torch.float64
    assert model.inverse(z, y).shape == x.shape


def test_patchify_layout(model, inputs):
    """Tokens are p x p x C patches in raster order, and unpatchify inverts patchify."""
    x, _ = inputs
    c = model.config
    p, n = c.patch_size, c.image_size // c.patch_size
    tokens = model.patchify(x)
    assert tokens.shape == (x.shape[0], c.num_tokens, c.token_dim)
    for i in range(n):
        for j in range(n):
            patch = x[:, :, i * p:(i + 1) * p, j * p:(j + 1) * p]  # (B, C, p, p)
            assert torch.equal(tokens[:, i * n + j], patch.permute(0, 2, 3, 1).reshape(x.shape[0], -1))
    assert torch.equal(model.unpatchify(tokens), x)


# ----- 2. invertibility -------------------------------------------------------------------------

def test_inverse_of_forward(model, inputs):
    x, y = inputs
    z, _ = model(x, y)
    assert (model.inverse(z, y) - x).abs().max() <= 1e-9


def test_forward_of_inverse(model, inputs):
    _, y = inputs
    z = torch.randn(len(inputs[0]), *inputs[0].shape[1:], generator=torch.Generator().manual_seed(3),
                    dtype=torch.float64)
    x = model.inverse(z, y)
    z2, _ = model(x, y)
    assert (z2 - z).abs().max() <= 1e-9


# ----- 3. log-determinant -----------------------------------------------------------------------

def test_logdet_matches_autograd_jacobian(model, inputs):
    x, y = inputs
    _, logdet = model(x, y)
    for i in range(x.shape[0]):
        J = per_sample_jacobian(model, x, y, i)
        assert J.shape == (x[i].numel(), x[i].numel())
        sign, logabsdet = torch.linalg.slogdet(J)
        assert sign != 0
        assert abs(logabsdet.item() - logdet[i].item()) <= 1e-8, (i, logabsdet.item(), logdet[i].item())


def test_samples_are_independent(model, inputs):
    """The batch dimension does not mix: sample i's z depends on x_i only."""
    x, y = inputs
    z, logdet = model(x, y)
    for i in range(x.shape[0]):
        zi, ldi = model(x[i:i + 1], None if y is None else y[i:i + 1])
        assert (zi - z[i:i + 1]).abs().max() <= 1e-12
        assert abs(ldi.item() - logdet[i].item()) <= 1e-12


# ----- 4. log-density ---------------------------------------------------------------------------

def test_log_prob_is_prior_plus_logdet(model, inputs):
    x, y = inputs
    z, logdet = model(x, y)
    expected = prior_log_density(model, z) + logdet
    assert (model.log_prob(x, y) - expected).abs().max() <= 1e-10


def test_log_prob_change_of_variables(model, inputs):
    """log p(x) = log N(z; 0, s^2) + log|det dz/dx| with the determinant from autograd, per sample."""
    x, y = inputs
    z, _ = model(x, y)
    lp = model.log_prob(x, y)
    for i in range(x.shape[0]):
        _, logabsdet = torch.linalg.slogdet(per_sample_jacobian(model, x, y, i))
        assert abs(lp[i].item() - (prior_log_density(model, z[i:i + 1]).item() + logabsdet.item())) <= 1e-8


def test_additive_model_uses_learned_prior_std(model, inputs):
    x, y = inputs
    z, logdet = model(x, y)
    if model.config.transform != "additive":
        assert model.prior_std() is None
        standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
        assert (model.log_prob(x, y) - (standard + logdet)).abs().max() <= 1e-10
        return
    # Volume preserving: log|det| is 0, so log p(x) is the prior density of z alone.
    assert logdet.abs().max() == 0
    s = model.prior.log_std.exp()  # (T, D)
    closed = torch.distributions.Normal(torch.zeros_like(s), s).log_prob(model.patchify(z)).sum((1, 2))
    assert (model.log_prob(x, y) - closed).abs().max() <= 1e-10
    # ... and differs from the standard-normal density (the learned std is not ignored).
    standard = torch.distributions.Normal(0.0, 1.0).log_prob(z).flatten(1).sum(1)
    assert (model.log_prob(x, y) - standard).abs().min() > 1e-3


def test_log_prob_gradients_reach_every_parameter(model, inputs):
    """log_prob is differentiable in x and in every parameter (training goes through it).

    `inputs` include the null label, so the class table's null row is used too.
    """
    x, y = inputs
    x = x.clone().requires_grad_(True)
    model.log_prob(x, y).sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().max() > 0
    unused = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().max() > 0]
    assert not unused, unused


# ----- 7. save / load ---------------------------------------------------------------------------

def test_save_load_round_trip(model, inputs, tmp_path):
    x, y = inputs
    metadata = {"step": 123, "dataset": "digits", "ema": True, "nested": {"levels": [2, 256], "sigma": 0.05}}
    path = model.save_pretrained(tmp_path / "model", metadata=metadata)
    assert sorted(p.name for p in path.iterdir()) == ["config.json", "model.safetensors"]
    data = json.loads((path / "config.json").read_text())
    assert data["format"] == "tarflow" and "tarflow_version" in data

    loaded = TarFlow.from_pretrained(path)
    assert loaded.config == model.config
    assert loaded.metadata == metadata
    state, state2 = model.state_dict(), loaded.state_dict()
    assert state.keys() == state2.keys()
    for k in state:
        assert state2[k].dtype == state[k].dtype, k
        assert torch.equal(state2[k], state[k]), k
    loaded.eval()
    assert torch.equal(loaded.log_prob(x, y), model.log_prob(x, y))


def test_save_replaces_previous_save(model, inputs, tmp_path):
    x, y = inputs
    model.save_pretrained(tmp_path / "model", metadata={"step": 1})
    with torch.no_grad():
        model.blocks[0].proj_out.bias.add_(0.1)
    model.save_pretrained(tmp_path / "model", metadata={"step": 2})
    loaded = TarFlow.from_pretrained(tmp_path / "model").eval()
    assert loaded.metadata == {"step": 2}
    assert torch.equal(loaded.log_prob(x, y), model.log_prob(x, y))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temporary or .old leftovers


# ----- 10. bits per dimension -------------------------------------------------------------------

@pytest.mark.parametrize("levels", [2, 16, 256])
@pytest.mark.parametrize("dims", [1, 32, 3 * 64 * 64])
def test_bits_per_dim_of_uniform_density(levels, dims):
    """The uniform density on [-1, 1]^D (log p = -D log 2), binned at width 2/L, costs log2(L) bits/dim."""
    log_prob = torch.full((5,), -dims * math.log(2.0), dtype=torch.float64)
    bpd = bits_per_dim(log_prob, dims, 2.0 / levels)
    assert torch.allclose(bpd, torch.full_like(bpd, math.log2(levels)), rtol=0, atol=1e-12)


def test_bits_per_dim_of_standard_normal_at_origin():
    """N(0, I) at x = 0: -log p = D/2 log(2 pi); with bin width 2/256: ((1/2) log(2 pi) - log(2/256)) / ln 2."""
    dims = 12
    log_prob = torch.tensor([-0.5 * dims * math.log(2 * math.pi)], dtype=torch.float64)
    expected = (0.5 * math.log(2 * math.pi) - math.log(2 / 256)) / math.log(2)
    assert abs(bits_per_dim(log_prob, dims, 2 / 256).item() - expected) <= 1e-12


class UniformModel(torch.nn.Module):
    """The uniform density on [-1, 1]^D, as a model with the TarFlow log_prob interface."""

    device = torch.device("cpu")

    def log_prob(self, x, y=None):
        assert ((x >= -1) & (x <= 1)).all()
        return torch.full((x.shape[0],), -x[0].numel() * math.log(2.0), dtype=torch.float64)


@pytest.mark.parametrize("levels", [2, 256])
def test_evaluate_bpd_of_uniform_density(levels):
    images = torch.randint(0, levels, (10, 1, 4, 4), generator=torch.Generator().manual_seed(0))
    result = evaluate_bpd(UniformModel(), images, None, levels=levels, draws=2, batch_size=4)
    assert abs(result["bits_per_dim"] - math.log2(levels)) <= 1e-6
    assert result["images"] == 10 and result["draws"] == 2


def test_bits_per_dim_of_model_matches_formula(model, inputs):
    x, y = inputs
    lp = model.log_prob(x, y)
    D = model.config.num_dims
    assert D == x[0].numel()
    bpd = bits_per_dim(lp, D, 2 / 256)
    assert torch.allclose(bpd, (-lp / D + math.log(128)) / math.log(2), rtol=0, atol=1e-12)

