"""iTARFlow from the command line: training a noise-conditioned model, `sample --denoise iterative|tweedie`,
`eval --noise-level`, and their errors; and the noisy-data bits/dim against a closed form."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

from tarflow import FlowConfig, IterativeDenoiser, SequentialSampler, TarFlow
from tarflow.cli import main
from tarflow.data import load_dataset
from tarflow.metrics import evaluate_bpd
from tarflow.runs import load_model
from tarflow.viz import save_grid, to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "tiny", "--steps", "6", "--eval-every", "0", "--sample-every", "0", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("itarflow") / "run"
    assert main(["train", "--out", str(run), *TINY, "--noise-conditioning", "true", "--noise-schedule",
                 "log-normal", "--loss-weight", "t-normalised"]) == 0
    return run


@pytest.fixture(scope="module")
def plain_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("plain") / "run"
    assert main(["train", "--out", str(run), *TINY, "--steps", "2"]) == 0
    return run


def digits_test(model):
    data = load_dataset("digits", "test", image_size=model.config.image_size, channels=model.config.channels)
    return data.images, data.labels, data.levels


def test_training_evaluates_at_the_lowest_level(run_dir):
    saved = json.loads((run_dir / "eval.json").read_text())
    model, _ = load_model(run_dir / "model", "cpu")
    images, labels, levels = digits_test(model)
    api = evaluate_bpd(model, images, labels, levels, noise_level=model.config.noise_level_min)
    assert saved["noise_level"] == 0.01 and saved["bits_per_dim"] == pytest.approx(api["bits_per_dim"], rel=1e-9)


def grid_of(x, model, path):
    return np.asarray(Image.open(save_grid(to_uint8(x, int(model.metadata["levels"])), path, nrow=10)))


@pytest.mark.parametrize("flags", [["--denoise", "iterative", "--denoise-steps", "3", "--dynamics", "sde"],
                                   ["--denoise", "tweedie"], []], ids=["iterative-sde", "tweedie", "default"])
def test_sample_grid_is_the_api_pipeline(run_dir, tmp_path, capsys, flags):
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--out", str(out), "--count", "10", "--seed", "2", "--sampler",
                 "sequential", *flags]) == 0
    said = capsys.readouterr().out
    model, _ = load_model(run_dir / "model", "cpu")
    y = torch.arange(10)
    generator = torch.Generator().manual_seed(2)
    tweedie = flags == ["--denoise", "tweedie"]
    with torch.no_grad():
        x = SequentialSampler(model).sample(10, y, denoise_std=0.3 if tweedie else None, generator=generator)
    if not tweedie:
        steps, dynamics = (3, "sde") if flags else (10, "ode")
        x = IterativeDenoiser(steps, dynamics).denoise(model, x, y, generator)
        assert f"denoise iterative ({steps} {dynamics} steps, t 0.3 -> 0.01 -> 0)" in said
    else:
        assert "denoise on (sigma=0.3)" in said
    assert np.array_equal(np.asarray(Image.open(out)), grid_of(x, model, tmp_path / "api.png"))


def test_eval_at_a_noise_level(run_dir, capsys):
    assert main(["eval", str(run_dir), "--noise-level", "0.1", "--no-progress", "--seed", "4"]) == 0
    result = json.loads(capsys.readouterr().out)
    model, _ = load_model(run_dir / "model", "cpu")
    images, labels, levels = digits_test(model)
    api = evaluate_bpd(model, images, labels, levels, noise_level=0.1, seed=4, mixture=True)
    assert result["noise_level"] == 0.1 and result["bits_per_dim"] == pytest.approx(api["bits_per_dim"], rel=1e-12)
    assert "x + t eps" in result["density"]


@pytest.mark.parametrize("command, said", [
    (["eval", "RUN", "--no-progress"], r"pass --noise-level t.*\[0.01, 0.3\]"),
    (["eval", "RUN", "--no-progress", "--noise-level", "0.5"], r"0.5 lies outside the trained range \[0.01, 0.3\]"),
    (["sample", "RUN", "--count", "2", "--denoise", "tweedie", "--dynamics", "sde"], "apply to --denoise iterative"),
    (["eval", "PLAIN", "--no-progress", "--noise-level", "0.1"], "needs a model trained with gaussian noise, or a "
                                                                  "noise-conditioned one"),
    (["eval", "PLAIN", "--no-progress", "--extrapolate"], "--extrapolate needs a noise-conditioned model"),
    (["sample", "PLAIN", "--count", "2", "--denoise", "iterative"], "needs a noise-conditioned model"),
])
def test_clear_errors(run_dir, plain_run, tmp_path, capsys, command, said):
    import re

    paths = {"RUN": str(run_dir), "PLAIN": str(plain_run)}
    argv = [paths.get(part, part) for part in command] + (["--out", str(tmp_path / "g.png")]
                                                           if command[0] == "sample" else [])
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and re.search(said, err), err


def test_eval_of_a_fixed_noise_model_at_its_training_noise(tmp_path, capsys):
    """A model trained with gaussian noise sigma: `eval --noise-level sigma` gives the bits/dim of its training
    objective (the test data with that noise added, the model not told), and a Bayes accuracy on noisy images."""
    run = tmp_path / "gaussian"
    assert main(["train", "--preset", "tiny", "--steps", "5", "--eval-every", "0", "--sample-every", "0",
                 "--no-progress", "--noise", "gaussian", "--noise-std", "0.2", "--out", str(run)]) == 0
    capsys.readouterr()
    assert main(["eval", str(run), "--noise-level", "0.2", "--no-progress", "--seed", "3"]) == 0
    result = json.loads(capsys.readouterr().out)
    model, _ = load_model(run / "model", "cpu")
    images, labels, levels = digits_test(model)
    api = evaluate_bpd(model, images, labels, levels, noise_level=0.2, seed=3, mixture=True)
    assert result["bits_per_dim"] == pytest.approx(api["bits_per_dim"], rel=1e-12)
    assert result["bayes_accuracy"] == api["bayes_accuracy"] and "fixed noise std 0.2" in result["density"]
    clean = evaluate_bpd(model, images, labels, levels, seed=3)["bits_per_dim"]
    assert clean != pytest.approx(api["bits_per_dim"], rel=1e-6)  # the noise is really added


def test_eval_extrapolates_with_a_warning(run_dir, capsys):
    with pytest.warns(UserWarning, match=r"0.5 lies outside the trained range \[0.01, 0.3\]"):
        assert main(["eval", str(run_dir), "--no-progress", "--noise-level", "0.5", "--extrapolate"]) == 0
    assert math.isfinite(json.loads(capsys.readouterr().out)["bits_per_dim"])


def test_noisy_bits_per_dim_of_an_identity_flow_has_a_closed_form():
    """A fresh model is the identity with a N(0, I) prior, so log p_t(x) = log N(x; 0, I) and, per image,
    E[bpd_t] = (mean_d E[x_d^2] / 2 + log(2 pi) / 2 - log w) / ln 2 with E[x_d^2] = c_d^2 + w^2 / 12 + t^2
    (c the bin centre, w = 2 / L the bin width): the level's noise is really added."""
    torch.manual_seed(0)
    model = TarFlow(FlowConfig(image_size=8, channels=1, patch_size=2, width=16, num_blocks=2, layers_per_block=1,
                               head_dim=8, noise_conditioning=True)).double()
    images, _, levels = digits_test(model)
    width, level = 2 / levels, 0.3
    centres = (2 * (images.double() + 0.5) / levels - 1).flatten(1)
    second_moment = (centres ** 2 + width ** 2 / 12).mean(1) + level ** 2
    expected = ((second_moment / 2 + 0.5 * math.log(2 * math.pi) - math.log(width)) / math.log(2)).mean().item()
    result = evaluate_bpd(model, images, None, levels, noise_level=level)
    assert abs(result["bits_per_dim"] - expected) < 0.01
    assert level ** 2 / 2 / math.log(2) > 0.06  # so a missing t eps would fail the line above


def test_fid_samples_are_denoised_like_sample(run_dir, plain_run):
    """`tarflow fid`'s sampler for a noise-conditioned model: generated at t1, then the --denoise choice; the
    samples FID sees (generate_levels) are those of `sample` then `IterativeDenoiser.denoise`."""
    import argparse

    from tarflow import ConfigError
    from tarflow.cli.evaluate import fid_denoising
    from tarflow.data import quantize
    from tarflow.metrics import generate_levels

    def options(denoise=None, steps=None, dynamics=None):
        return argparse.Namespace(denoise=denoise, denoise_steps=steps, dynamics=dynamics, denoise_clip=False)

    model, _ = load_model(run_dir / "model", "cpu")
    base = SequentialSampler(model)
    sampler, said = fid_denoising(model, base, options())
    assert sampler.denoiser == IterativeDenoiser(10, "ode") and said["denoise"].startswith("iterative (10 ode")
    assert fid_denoising(model, base, options("tweedie"))[0].denoiser == IterativeDenoiser(1)
    assert fid_denoising(model, base, options("none"))[0] is base
    sampler = fid_denoising(model, base, options("iterative", 2, "sde"))[0]
    images = generate_levels(sampler, 6, torch.arange(6), 17, batch_size=6, seed=1)
    generator = torch.Generator().manual_seed(1 * 1_000_003)
    with torch.no_grad():
        x = IterativeDenoiser(2, "sde").denoise(model, base.sample(6, torch.arange(6), generator=generator),
                                                torch.arange(6), generator)
    assert torch.equal(images, quantize(x.float(), 17))
    plain, _ = load_model(plain_run / "model", "cpu")
    plain_sampler = SequentialSampler(plain)
    assert fid_denoising(plain, plain_sampler, options()) == (plain_sampler, {})  # fid's own denoising, as before
    with pytest.raises(ConfigError, match="for noise-conditioned models"):
        fid_denoising(plain, SequentialSampler(plain), options("iterative"))
