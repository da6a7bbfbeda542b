"""Jacobi and GS-Jacobi against the exact sequential sampler (float64, CPU, randomised tiny models), and
the automatic choice: calibration, its stored file, and the CLI flags."""

from __future__ import annotations

import json

import pytest
import torch

from tarflow import FlowConfig, Guidance, SequentialSampler, TarFlow, tweedie_denoise
from tarflow.flows import Condition
from tarflow.cli import main
from tarflow.sampling import BlockStrategy, GSJacobiSampler, JacobiSampler
from tarflow.sampling.calibrate import (SAMPLING_NAME, auto_sampler, calibrate, calibrate_and_save, entry_key,
                                        read_calibration, sampler_from_entry, write_calibration)
from tarflow.sampling.jacobi import module_bounds, solve_block

from conftest import BATCH, make_labels, randomise
from test_sampling import refuses_starflow_rule

pytestmark = pytest.mark.usefixtures("one_thread")

GUIDANCE = [None, Guidance(1.5, "tarflow", annealed=False, attn_temp=1.0),
            Guidance(0.7, "starflow", annealed=True, attn_temp=1.8)]
GUIDANCE_IDS = ["unguided", "tarflow", "starflow-annealed-tau"]


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def longer_model(num_classes: int = 3, transform: str = "affine", std: float = 0.05) -> TarFlow:
    """T = 16 tokens: long enough for Jacobi to converge before its exact iteration count."""
    torch.manual_seed(0)
    cfg = FlowConfig(image_size=8, channels=1, patch_size=2, width=16, num_blocks=2, layers_per_block=1,
                     head_dim=8, mlp_ratio=2, num_classes=num_classes, transform=transform)
    return randomise(TarFlow(cfg).double(), seed=1, std=std).eval()


def test_module_bounds():
    assert module_bounds(4, 1) == [(1, 4)]
    assert module_bounds(4, 3) == [(1, 2), (2, 3), (3, 4)]
    assert module_bounds(4, 10) == [(1, 2), (2, 3), (3, 4)]  # at most one module per token
    b = module_bounds(49, 7)
    assert b[0][0] == 1 and b[-1][1] == 49 and all(e == s2 for (_, e), (s2, _) in zip(b, b[1:]))
    assert len(b) == 7 and {e - s for s, e in b} <= {6, 7}


@pytest.mark.parametrize("guidance", GUIDANCE, ids=GUIDANCE_IDS)
@pytest.mark.parametrize("make", [
    pytest.param(lambda m: JacobiSampler(m, tol=0.0), id="jacobi-exact"),
    pytest.param(lambda m: JacobiSampler(m, tol=1e-12), id="jacobi-tol"),
    pytest.param(lambda m: GSJacobiSampler(m, tol=1e-12, modules=2), id="gs-jacobi"),
    pytest.param(lambda m: JacobiSampler(m, [BlockStrategy(1), BlockStrategy(3, 1), BlockStrategy(2)], 1e-12),
                 id="per-block"),
])
def test_parallel_samplers_match_sequential(model, make, guidance):
    if guidance is not None and refuses_starflow_rule(model, guidance.rule, make(model)):
        return
    y = make_labels(model)
    ref = SequentialSampler(model).sample(BATCH, y, temperature=0.9, guidance=guidance, generator=gen(3))
    out = make(model).sample(BATCH, y, temperature=0.9, guidance=guidance, generator=gen(3))
    assert out.shape == ref.shape and out.dtype == ref.dtype
    assert (out - ref).abs().max() <= 1e-9


@pytest.mark.parametrize("guidance", GUIDANCE, ids=GUIDANCE_IDS)
@pytest.mark.parametrize("transform", ["affine", "additive"])
def test_tolerance_stops_early_and_cap_is_exact(guidance, transform):
    model = longer_model(transform=transform)
    y = make_labels(model)
    ref = SequentialSampler(model).sample(BATCH, y, guidance=guidance, generator=gen(4))
    T = model.config.num_tokens
    # Iteration cap = the number of unknown tokens, no tolerance: exact, and it takes all T - 1 iterations.
    exact = JacobiSampler(model, BlockStrategy(1, T - 1), tol=0.0)
    assert (exact.sample(BATCH, y, guidance=guidance, generator=gen(4)) - ref).abs().max() <= 1e-12
    assert exact.last_iterations == [[T - 1]] * 2
    # With a tolerance it stops sooner and stays within a small multiple of it.
    s = JacobiSampler(model, tol=1e-8)
    out = s.sample(BATCH, y, guidance=guidance, generator=gen(4))
    assert max(max(it) for it in s.last_iterations) < T - 1
    assert (out - ref).abs().max() <= 1e-6
    gs = GSJacobiSampler(model, tol=1e-8, modules=3)
    assert (gs.sample(BATCH, y, guidance=guidance, generator=gen(4)) - ref).abs().max() <= 1e-6
    assert [len(it) for it in gs.last_iterations] == [3, 3]
    # One module per token and one iteration each is the sequential sampler.
    seq_like = JacobiSampler(model, BlockStrategy(T - 1, 1), tol=1.0)
    assert (seq_like.sample(BATCH, y, guidance=guidance, generator=gen(4)) - ref).abs().max() <= 1e-12


def test_a_low_cap_is_inexact_but_bounded_by_the_iterate():
    """A cap below the module length truncates the iteration (documented: exact only up to the cap)."""
    model = longer_model(std=0.3)
    y = make_labels(model)
    z = SequentialSampler(model).noise(BATCH, 1.0, gen(5))
    block = model.blocks[-1]
    tokens = model.patchify(z)
    exact = block.inverse(tokens, Condition(y))
    x1, it1 = solve_block(block, tokens, Condition(y), None, BlockStrategy(1, 1), 0.0)
    x3, it3 = solve_block(block, tokens, Condition(y), None, BlockStrategy(1, 3), 0.0)
    assert it1 == [1] and it3 == [3]
    # after k iterations the first k unknown tokens (in the block's order) are exact
    order = block.order.apply(torch.arange(16).view(1, 16, 1)).flatten()
    assert (x3[:, order[:4]] - exact[:, order[:4]]).abs().max() <= 1e-12
    assert (x1 - exact).abs().max() > 1e-6


def test_denoising_with_parallel_sampler(model):
    y = make_labels(model)
    s = GSJacobiSampler(model, tol=0.0, modules=2)
    raw = s.sample(BATCH, y, generator=gen(9))
    den = s.sample(BATCH, y, generator=gen(9), denoise_std=0.05)
    assert (den - tweedie_denoise(model, raw, y, 0.05)).abs().max() <= 1e-12
    ref = SequentialSampler(model).sample(BATCH, y, generator=gen(9), denoise_std=0.05)
    assert (den - ref).abs().max() <= 1e-9


def test_bad_strategies_are_refused():
    from tarflow.errors import ConfigError

    model = longer_model()
    with pytest.raises(ConfigError, match="3 block strategies"):
        JacobiSampler(model, [BlockStrategy()] * 3)
    with pytest.raises(ConfigError):
        BlockStrategy(0)
    with pytest.raises(ConfigError):
        JacobiSampler(model, tol=-1.0)


# ----- automatic choice -------------------------------------------------------------------------

def check_entry(entry, model, batch, guided):
    N, T = len(model.blocks), model.config.num_tokens
    assert entry["sampler"] in ("sequential", "jacobi", "gs-jacobi")
    assert entry["batch"] == batch and entry["guided"] == guided and entry["reason"]
    assert entry["sequential_seconds"] > 0
    if entry["sampler"] != "sequential":
        assert entry["parallel_max_abs_diff"] <= entry["max_abs_diff_allowed"]
        assert entry["parallel_seconds"] < entry["sequential_seconds"]
    if entry["blocks"] is not None:
        assert len(entry["blocks"]) == N
        for d in entry["blocks"]:
            strat = BlockStrategy.from_dict(d)
            longest = max(e - s for s, e in module_bounds(T, strat.modules))
            assert 1 <= strat.modules <= T - 1 and 1 <= strat.max_iters <= longest


@pytest.mark.parametrize("guidance", [None, Guidance(1.0)], ids=["unguided", "guided"])
def test_calibration_picks_a_valid_strategy(guidance):
    model = longer_model()
    entry = calibrate(model, 4, guidance, modules=[1, 3])
    check_entry(entry, model, 4, guidance is not None)
    sampler = sampler_from_entry(model, entry)
    y = make_labels(model)
    ref = SequentialSampler(model).sample(4, y, guidance=guidance, generator=gen(2))
    assert (sampler.sample(4, y, guidance=guidance, generator=gen(2)) - ref).abs().max() <= 1e-3


def test_calibration_file_round_trips(tmp_path):
    model = longer_model()
    model.save_pretrained(tmp_path / "m")
    d = tmp_path / "m"
    assert read_calibration(d) == {}
    s0, e0 = auto_sampler(model, d, 4)  # no calibration: the exact sampler, and nothing written
    assert e0 is None and isinstance(s0, SequentialSampler) and not (d / SAMPLING_NAME).exists()
    e1, file = calibrate_and_save(model, d, 4)
    assert file == d / SAMPLING_NAME and file.is_file()
    check_entry(e1, model, 4, False)
    key = entry_key(model.device, 4, False)
    assert read_calibration(d) == {key: json.loads(json.dumps(e1))}
    s2, e2 = auto_sampler(model, d, 4)  # read back, not recalibrated
    assert e2 == json.loads(json.dumps(e1)) and type(s2) is type(sampler_from_entry(model, e1))
    assert auto_sampler(model, d, 4, Guidance(1.0))[1] is None  # guided sampling has its own entry
    # A forced entry is honoured as stored, and other entries survive a write.
    forced = dict(e1, sampler="gs-jacobi", tol=1e-9, blocks=[{"modules": 3, "max_iters": None}] * 2)
    write_calibration(d, "other|batch=1|guided=0", {"sampler": "sequential"})
    write_calibration(d, key, forced)
    s3, e3 = auto_sampler(model, d, 4)
    assert e3 == forced and isinstance(s3, JacobiSampler) and s3.strategies == [BlockStrategy(3)] * 2
    assert set(read_calibration(d)) == {key, "other|batch=1|guided=0"}
    assert TarFlow.from_pretrained(d) is not None  # the model directory still loads
    (d / SAMPLING_NAME).write_text("{not json")
    from tarflow.errors import CheckpointError
    with pytest.raises(CheckpointError, match="recalibrate"):
        read_calibration(d)


@pytest.mark.parametrize("flags,said", [
    (["--sampler", "sequential"], "sequential sampler"),
    (["--sampler", "jacobi", "--tol", "1e-6"], "jacobi (tol 1e-06"),
    (["--sampler", "gs-jacobi", "--modules", "3"], "gs-jacobi (tol"),
    ([], "chosen automatically (no calibration"),
])
def test_cli_sampler_flags(tmp_path, capsys, flags, said):
    model = longer_model()
    model.save_pretrained(tmp_path / "m", metadata={"levels": 256})
    out = tmp_path / "grid.png"
    assert main(["sample", str(tmp_path / "m"), "--count", "6", "--out", str(out), *flags]) == 0
    captured = capsys.readouterr()
    assert said in captured.out and out.is_file()
    if not flags:  # auto without a calibration: one line on how to calibrate; sampling itself writes nothing
        assert f"tarflow calibrate {tmp_path / 'm'} --count 6" in captured.err
        assert not (tmp_path / "m" / SAMPLING_NAME).exists()
        assert main(["calibrate", str(tmp_path / "m"), "--count", "6"]) == 0
        assert str(tmp_path / "m" / SAMPLING_NAME) in capsys.readouterr().out
        assert main(["sample", str(tmp_path / "m"), "--count", "6", "--out", str(out)]) == 0
        assert f"from {tmp_path / 'm' / SAMPLING_NAME}" in capsys.readouterr().out


def test_cli_rejects_bad_sampler_flags(tmp_path, capsys):
    model = longer_model()
    model.save_pretrained(tmp_path / "m")
    assert main(["sample", str(tmp_path / "m"), "--sampler", "jacobi", "--tol", "-1"]) == 2
    assert main(["sample", str(tmp_path / "m"), "--modules", "3"]) == 2
    assert "--modules applies to --sampler gs-jacobi" in capsys.readouterr().err
