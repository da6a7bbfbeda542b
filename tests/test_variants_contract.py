"""The model contract for every Transformer option of FlowConfig (sigma-Reparam, XSA, the AFT mixers), in
float64 on CPU on tiny randomised models: inverse, log-det against autograd, the KV-cache sampler against a
naive full-recompute inverse, Jacobi / GS-Jacobi against sequential, save/load.

Each option is checked on two model kinds, class-conditional affine and unconditional additive (the
four-kind fixture of conftest.py covers the default Transformer).
"""

from __future__ import annotations

import json

import pytest
import torch

from tarflow import FlowConfig, Guidance, SequentialSampler, TarFlow
from tarflow.errors import ConfigError
from tarflow.nn import Attention, CausalAFT, SigmaReparamLinear
from tarflow.sampling import GSJacobiSampler, JacobiSampler

from conftest import BATCH, NUM_CLASSES, make_inputs, make_labels, randomise
from test_contract import per_sample_jacobian, prior_log_density
from test_sampling import naive_inverse, noise_like

pytestmark = pytest.mark.usefixtures("one_thread")

OPTIONS = {
    "sigma-reparam": dict(sigma_reparam=True),
    "xsa": dict(exclusive_attention=True),
    "sigma-xsa": dict(sigma_reparam=True, exclusive_attention=True),
    "aft-full": dict(mixer="aft-full"),
    "aft-local": dict(mixer="aft-local", aft_window=2),
    "aft-simple": dict(mixer="aft-simple"),
    "aft-conv": dict(mixer="aft-conv", aft_window=2),
    "sigma-aft-conv": dict(mixer="aft-conv", aft_window=2, sigma_reparam=True),
}
KINDS = {"cond-affine": (NUM_CLASSES, "affine"), "uncond-additive": (0, "additive")}
PARAMS = [pytest.param((opt, kind), id=f"{opt}-{kind}") for opt in OPTIONS for kind in KINDS]


def variant_config(option: str, kind: str) -> FlowConfig:
    num_classes, transform = KINDS[kind]
    # T = 9 tokens (image 6, patch 2) so the AFT windows (2) cut the position bias; 3 blocks, 2 layers.
    return FlowConfig(image_size=6, channels=1, patch_size=2, width=16, num_blocks=3, layers_per_block=2,
                      head_dim=8, mlp_ratio=2, num_classes=num_classes, transform=transform, **OPTIONS[option])


def build(option: str, kind: str) -> TarFlow:
    torch.manual_seed(0)
    m = randomise(TarFlow(variant_config(option, kind)).double(), std=0.25)
    with torch.no_grad():
        for layer in m.modules():
            if isinstance(layer, SigmaReparamLinear):
                layer.reset_sigma()  # u, v: the top singular vectors of the redrawn W ...
                layer.gamma.mul_(1.2)  # ... and W_hat = 1.2 W, so the reparametrisation is visible
    return m.eval()


@pytest.fixture(params=PARAMS)
def vmodel(request) -> TarFlow:
    return build(*request.param)


def test_option_is_wired_in(vmodel):
    """The option really changed the network (guards against a silently ignored config field)."""
    c = vmodel.config
    layer = vmodel.blocks[0].layers[0]
    if c.mixer == "attention":
        assert isinstance(layer.attn, Attention) and layer.attn.exclusive == c.exclusive_attention
    else:
        assert isinstance(layer.attn, CausalAFT) and layer.attn.variant == c.mixer.removeprefix("aft-")
    linears = [m for m in vmodel.modules() if isinstance(m, torch.nn.Linear)]
    reparam = [m for m in linears if isinstance(m, SigmaReparamLinear)]
    if c.sigma_reparam:  # every linear layer but the output projections
        assert len(reparam) == len(linears) - c.num_blocks
        assert not any(isinstance(b.proj_out, SigmaReparamLinear) for b in vmodel.blocks)
        x = torch.randn(3, reparam[0].in_features, dtype=torch.float64)
        plain = torch.nn.functional.linear(x, reparam[0].weight, reparam[0].bias)
        assert (reparam[0](x) - plain).abs().max() > 1e-3
    else:
        assert not reparam
    x, y = make_inputs(vmodel)
    z, logdet = vmodel(x, y)
    assert (z - x).abs().max() > 0.1  # not the identity


def test_inverse_of_forward(vmodel):
    x, y = make_inputs(vmodel)
    z, _ = vmodel(x, y)
    assert (vmodel.inverse(z, y) - x).abs().max() <= 1e-9


def test_logdet_matches_autograd_jacobian(vmodel):
    x, y = make_inputs(vmodel)
    z, logdet = vmodel(x, y)
    lp = vmodel.log_prob(x, y)
    for i in range(x.shape[0]):
        _, logabsdet = torch.linalg.slogdet(per_sample_jacobian(vmodel, x, y, i))
        assert abs(logabsdet.item() - logdet[i].item()) <= 1e-8
        assert abs(lp[i].item() - (prior_log_density(vmodel, z[i:i + 1]).item() + logabsdet.item())) <= 1e-8


@pytest.mark.parametrize("guidance", [None, Guidance(1.5, "tarflow", annealed=True, attn_temp=1.7)],
                         ids=["unguided", "guided"])
def test_kv_cache_sampler_matches_naive_inverse(vmodel, guidance):
    y = make_labels(vmodel)
    z = noise_like(vmodel)
    ref = naive_inverse(vmodel, z, y, guidance)
    out = SequentialSampler(vmodel).sample(BATCH, y, guidance=guidance, z=z)
    assert (out - ref).abs().max() <= 1e-9
    if guidance is None:
        assert (vmodel.inverse(z, y) - ref).abs().max() <= 1e-9
        z2, _ = vmodel(ref, y)
        assert (z2 - z).abs().max() <= 1e-9


@pytest.mark.parametrize("guidance", [None, Guidance(0.7, "starflow", annealed=False, attn_temp=1.8)],
                         ids=["unguided", "guided"])
def test_jacobi_matches_sequential(vmodel, guidance):
    y = make_labels(vmodel)
    ref = SequentialSampler(vmodel).sample(BATCH, y, guidance=guidance, generator=torch.Generator().manual_seed(3))
    for sampler in (JacobiSampler(vmodel, tol=0.0), GSJacobiSampler(vmodel, tol=1e-12, modules=3)):
        out = sampler.sample(BATCH, y, guidance=guidance, generator=torch.Generator().manual_seed(3))
        assert (out - ref).abs().max() <= 1e-9, sampler.name


def test_save_load_round_trip(vmodel, tmp_path):
    x, y = make_inputs(vmodel)
    loaded = TarFlow.from_pretrained(vmodel.save_pretrained(tmp_path / "m")).eval()
    assert loaded.config == vmodel.config
    state, state2 = vmodel.state_dict(), loaded.state_dict()
    assert state.keys() == state2.keys()
    assert all(torch.equal(state[k], state2[k]) for k in state)
    if vmodel.config.sigma_reparam:  # the power-iteration state travels with the weights
        assert any(k.endswith(".u") for k in state) and any(k.endswith(".gamma") for k in state)
    assert torch.equal(loaded.log_prob(x, y), vmodel.log_prob(x, y))
    z = noise_like(vmodel)
    assert torch.equal(loaded.inverse(z, make_labels(vmodel)), vmodel.inverse(z, make_labels(vmodel)))


# ----- sigma-Reparam in training and inference -------------------------------------------------------

def test_sigma_reparam_inference_is_deterministic_and_training_updates_the_estimate():
    model = build("sigma-reparam", "cond-affine")
    x, y = make_inputs(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)  # W moves away from the stored u, v
    before = model.log_prob(x, y)
    assert torch.equal(model.log_prob(x, y), before)  # eval: the stored u, v, no update
    model.train()
    model.log_prob(x, y)  # one power-iteration step per training forward
    model.eval()
    assert not torch.equal(model.log_prob(x, y), before)


def test_sigma_reparam_ema_follows_the_power_iteration():
    """The EMA copy evaluates with the training model's u, v (it has no power iteration of its own)."""
    from tarflow.train.step import update_ema

    model = build("sigma-reparam", "cond-affine").train()
    ema = build("sigma-reparam", "cond-affine")
    x, y = make_inputs(model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.1)
    model.log_prob(x, y)
    update_ema(ema, model, 0.999, 100)
    for (name, b), (_, e) in zip(model.named_buffers(), ema.named_buffers()):
        assert torch.equal(b, e), name


# ----- configs --------------------------------------------------------------------------------------

def test_old_config_files_load_with_defaults(tmp_path):
    """A model saved before these fields existed (no sigma_reparam, mixer, ... in config.json) still loads."""
    model = TarFlow(FlowConfig(image_size=4, channels=1, patch_size=2, width=16, num_blocks=1, layers_per_block=1,
                               head_dim=8))
    path = model.save_pretrained(tmp_path / "old")
    data = json.loads((path / "config.json").read_text())
    for name in ("sigma_reparam", "mixer", "aft_window", "exclusive_attention"):
        del data["model"][name]
    (path / "config.json").write_text(json.dumps(data))
    loaded = TarFlow.from_pretrained(path)
    c = loaded.config
    assert (c.sigma_reparam, c.mixer, c.exclusive_attention) == (False, "attention", False)


@pytest.mark.parametrize("fields,message", [
    (dict(mixer="aft"), "mixer"),
    (dict(aft_window=0), "aft_window"),
    (dict(mixer="aft-full", exclusive_attention=True), "exclusive_attention"),
    (dict(sigma_reparam="yes"), "sigma_reparam"),
])
def test_bad_option_values_are_refused(fields, message):
    with pytest.raises(ConfigError, match=message):
        FlowConfig(**fields)
