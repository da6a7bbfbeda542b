"""Attention entropy (explicit-softmax probe, per block/layer/head, logged in training) and the XSA projection."""

from __future__ import annotations

import json
import math

import pytest
import torch

from tarflow.metrics.entropy import attention_entropy, collapsed_heads, uniform_entropy
from tarflow.nn import Attention, CausalAFT, KVCache, exclude_self
from tarflow.presets import get_preset
from tarflow.train import train

from conftest import make_inputs
from test_variants_contract import build

pytestmark = pytest.mark.usefixtures("one_thread")

B, T, W, HD = 2, 7, 16, 4


def attention(exclusive=False, seed=0):
    torch.manual_seed(seed)
    return Attention(W, HD, exclusive).double()


def reference_entropy(attn: Attention, h, tau=None):
    """H per head from the attention weights written out: softmax of masked q k^T / (sqrt(d) tau)."""
    q, k, _ = attn.qkv(h).view(B, T, 3, attn.heads, HD).permute(2, 0, 3, 1, 4)
    if tau is not None:
        q = q / tau.view(B, 1, 1, 1)
    s = q @ k.transpose(-1, -2) / math.sqrt(HD)
    s = s.masked_fill(~torch.ones(T, T, dtype=torch.bool).tril(), float("-inf"))
    a = torch.softmax(s, -1)
    terms = torch.where(a > 0, -a * a.log(), torch.zeros_like(a))
    return terms.sum(-1).mean(dim=(0, 2))


@pytest.mark.parametrize("exclusive", [False, True])
@pytest.mark.parametrize("temp", [None, 1.6])
def test_explicit_path_matches_fused_and_entropy_is_correct(exclusive, temp):
    attn = attention(exclusive)
    h = torch.randn(B, T, W, dtype=torch.float64)
    tau = None if temp is None else torch.tensor([1.0, temp], dtype=torch.float64)
    fused = attn(h, tau)
    assert attn.entropy is None  # nothing computed unless asked
    attn.record_entropy = True
    explicit = attn(h, tau)
    assert (explicit - fused).abs().max() <= 1e-12
    assert attn.entropy.shape == (attn.heads,)
    assert (attn.entropy - reference_entropy(attn, h, tau)).abs().max() <= 1e-12
    # ... also against the cache, in chunks
    cache = KVCache(1, B, attn.heads, T, HD, torch.float64, h.device, tau)  # the cache carries the temperatures
    outs = [attn(h[:, :3], tau, cache.layer(0), 0), attn(h[:, 3:], tau, cache.layer(0), 3)]
    assert (torch.cat(outs, 1) - fused).abs().max() <= 1e-12


def test_uniform_attention_has_the_maximal_entropy():
    attn = attention()
    with torch.no_grad():
        attn.qkv.weight[:W].zero_()  # q = bias only ...
        attn.qkv.bias[:W].zero_()  # ... = 0: every visible key gets the same weight
    attn.record_entropy = True
    attn(torch.randn(B, T, W, dtype=torch.float64))
    expected = sum(math.log(i + 1) for i in range(T)) / T
    assert abs(uniform_entropy(T) - expected) < 1e-12
    assert (attn.entropy - expected).abs().max() <= 1e-12


def test_aft_weight_entropy_of_the_simple_variant_with_constant_keys():
    torch.manual_seed(0)
    aft = CausalAFT(W, T, "simple").double()
    with torch.no_grad():
        aft.qkv.weight[W:2 * W].zero_()  # K = its bias, the same at every position: uniform weights
    aft.record_entropy = True
    aft(torch.randn(B, T, W, dtype=torch.float64))
    assert aft.entropy.shape == (1,)
    assert abs(aft.entropy.item() - uniform_entropy(T)) <= 1e-12


def test_exclude_self_removes_the_own_value_component():
    y, v = torch.randn(3, 5, 8, dtype=torch.float64), torch.randn(3, 5, 8, dtype=torch.float64)
    z = exclude_self(y, v)
    assert ((z * v).sum(-1)).abs().max() <= 1e-12
    assert ((y - z) - ((y * v).sum(-1, keepdim=True) / (v * v).sum(-1, keepdim=True)) * v).abs().max() <= 1e-12
    assert torch.equal(exclude_self(y, torch.zeros_like(v)), y)  # a zero value: nothing to remove, no NaN


def test_xsa_head_outputs_are_orthogonal_to_the_own_value():
    attn = attention(exclusive=True)
    h = torch.randn(B, T, W, dtype=torch.float64)
    assert (attention(exclusive=False)(h) - attn(h)).abs().max() > 1e-3
    with torch.no_grad():  # an identity output projection shows the head outputs themselves
        attn.proj.weight.copy_(torch.eye(W))
        attn.proj.bias.zero_()
    o = attn(h).view(B, T, attn.heads, HD).transpose(1, 2)
    v = attn.qkv(h).view(B, T, 3, attn.heads, HD)[:, :, 2].transpose(1, 2)
    assert (o * v).sum(-1).abs().max() <= 1e-12


@pytest.mark.parametrize("option", ["sigma-xsa", "aft-local"])
def test_model_attention_entropy_has_no_side_effects(option):
    model = build(option, "cond-affine").train()
    x, y = make_inputs(model)
    buffers = {k: v.clone() for k, v in model.named_buffers()}
    model.eval()
    before = model.log_prob(x, y)
    model.train()
    ent = attention_entropy(model, x, y)
    heads = 2 if option == "sigma-xsa" else 1
    c = model.config
    assert len(ent) == c.num_blocks and all(len(b) == c.layers_per_block for b in ent)
    assert all(len(layer) == heads for b in ent for layer in b)
    assert all(0 <= e <= uniform_entropy(c.num_tokens - 1) + 1e-9 for b in ent for layer in b for e in layer)
    assert model.training  # the mode is restored, the u, v of sigma-Reparam untouched, the probe switched off
    assert all(torch.equal(buffers[k], v) for k, v in model.named_buffers())
    assert not any(getattr(m, "record_entropy", False) for m in model.modules())
    model.eval()
    assert torch.equal(model.log_prob(x, y), before)
    assert collapsed_heads([[[0.5, 0.05]], [[0.01]]], 0.1) == [(0, 0, 1, 0.05), (1, 0, 0, 0.01)]


def test_training_logs_and_plots_entropy_and_warns_once_per_head(tmp_path, capsys):
    config = get_preset("tiny")
    config.train.steps, config.train.entropy_every, config.train.eval_every = 20, 5, 0
    config.train.sample_every = config.train.checkpoint_every = 0
    config.train.entropy_warn = 100.0  # every head is "collapsed": each warned of once
    train(config, tmp_path / "run", progress=False)
    run = tmp_path / "run"
    rows = [json.loads(r) for r in (run / "metrics.jsonl").read_text().splitlines()]
    ent = [r for r in rows if "attn_entropy" in r]
    assert [r["step"] for r in ent] == [5, 10, 15, 20]
    c = config.model
    heads = c.width // c.head_dim
    for r in ent:
        assert len(r["attn_entropy"]) == c.num_blocks
        assert all(len(b) == c.layers_per_block and all(len(l) == heads for l in b) for b in r["attn_entropy"])
    warned = [w for r in rows for w in r.get("entropy_warning", [])]
    assert sorted(map(tuple, warned)) == [(b, l, h) for b in range(c.num_blocks)
                                         for l in range(c.layers_per_block) for h in range(heads)]
    out = capsys.readouterr().out
    assert out.count("attention entropy of block") == len(warned)
    assert (run / "attention_entropy.png").is_file()


def test_entropy_off(tmp_path):
    config = get_preset("tiny")
    config.train.steps, config.train.entropy_every = 10, 0
    config.train.eval_every = config.train.sample_every = config.train.checkpoint_every = 0
    train(config, tmp_path / "run", progress=False)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert not any("attn_entropy" in r for r in rows)
    assert not (tmp_path / "run" / "attention_entropy.png").exists()
