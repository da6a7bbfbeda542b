"""`tarflow sweep-denoising` (iTARFlow): one set of samples at t1, denoised by each setting; the figures are those
of the samples recomputed by hand, the cache spares a rerun its sampling, and the errors name the fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tarflow import ConfigError, IterativeDenoiser, SequentialSampler
from tarflow.cli import main
from tarflow.data import load_dataset
from tarflow.data.quantize import quantize
from tarflow.metrics import FeatureExtractor
from tarflow.metrics import denoising_sweep
from tarflow.metrics.denoising_sweep import Denoising, denoising_grid, sweep_denoising
from tarflow.metrics.fid import to_rgb_uint8
from tarflow.runs import load_model

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "tiny", "--steps", "4", "--eval-every", "0", "--sample-every", "0", "--no-progress"]
COUNT = 20


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("itarflow") / "run"
    assert main(["train", "--out", str(run), *TINY, "--noise-conditioning", "true"]) == 0
    return run


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "tarflow-cache"))


def frechet(features_a: np.ndarray, features_b: np.ndarray) -> float:
    (mu_a, cov_a), (mu_b, cov_b) = [(f.mean(0), np.cov(f, rowvar=False)) for f in (features_a, features_b)]
    w, v = np.linalg.eigh(cov_b)
    root_b = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_b @ cov_a @ root_b), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b) - 2 * cross)


def test_grid_lists_each_setting_once():
    grid = denoising_grid([0, 1, 5], ["ode", "sde"])
    assert grid == [Denoising(0), Denoising(1), Denoising(5, "ode"), Denoising(5, "sde")]
    assert [setting.name for setting in grid] == ["none (at t1)", "tweedie (1 step)", "5 ode steps", "5 sde steps"]
    assert Denoising(0).denoiser() is None and Denoising(5, "sde").denoiser() == IterativeDenoiser(5, "sde")
    with pytest.raises(ConfigError, match=">= 0"):
        denoising_grid([-1], ["ode"])


def test_rows_are_the_same_samples_denoised_by_each_setting(run_dir, pool_weights, tmp_path):
    model, _ = load_model(run_dir / "model", "cpu")
    extractor = FeatureExtractor(pool_weights)
    settings = denoising_grid([0, 1, 3], ["ode", "sde"])
    result = sweep_denoising(model, "digits", settings, COUNT, extractor, classifier_steps=5, batch_size=COUNT,
                             seed=2, cache_dir=tmp_path / "cache", progress=False)
    rows = {row["setting"]: row for row in result["rows"]}
    assert list(rows) == ["none (at t1)", "tweedie (1 step)", "3 ode steps", "3 sde steps"]

    labels = torch.arange(COUNT) % 10
    with torch.no_grad():
        at_t1 = SequentialSampler(model).sample(COUNT, labels, generator=torch.Generator().manual_seed(2 * 1_000_003))
    tweedie = IterativeDenoiser(1).denoise(model, at_t1, labels)
    test = load_dataset("digits", "test")
    reference = extractor(to_rgb_uint8(test.images, test.levels))
    for name, x in (("none (at t1)", at_t1), ("tweedie (1 step)", tweedie)):
        images = quantize(x.float(), 17)
        assert rows[name]["fid"] == pytest.approx(frechet(extractor(to_rgb_uint8(images, 17)), reference), rel=1e-4)
        assert torch.equal(rows[name]["strip"], images[:10])
    assert not torch.equal(rows["3 ode steps"]["strip"], rows["3 sde steps"]["strip"])
    generation = {row["seconds_per_image"]["generation"] for row in rows.values()}
    assert len(generation) == 1  # drawn once, shared
    for row in rows.values():
        seconds = row["seconds_per_image"]
        assert seconds["total"] == pytest.approx(seconds["generation"] + seconds["denoising"], abs=2e-6)
        assert 0 <= row["consistency"] <= 1
    assert rows["3 ode steps"]["seconds_per_image"]["denoising"] > rows["none (at t1)"]["seconds_per_image"]["denoising"]


def test_a_rerun_reads_its_rows_and_a_new_setting_reuses_the_samples(run_dir, pool_weights, tmp_path, monkeypatch):
    model, _ = load_model(run_dir / "model", "cpu")
    extractor = FeatureExtractor(pool_weights)
    options = dict(count=COUNT, extractor=extractor, classifier_steps=5, batch_size=COUNT,
                   cache_dir=tmp_path / "cache", progress=False)
    first = sweep_denoising(model, "digits", denoising_grid([1], ["ode"]), **options)

    class Refusing:
        def sample(self, *args, **kwargs):
            raise AssertionError("sampled again")

    again = sweep_denoising(model, "digits", denoising_grid([1, 2], ["ode"]), sampler=Refusing(), **options)
    assert again["rows"][0]["fid"] == first["rows"][0]["fid"] and again["rows"][1]["steps"] == 2
    monkeypatch.setattr(denoising_sweep, "denoised_levels", lambda *args: (_ for _ in ()).throw(AssertionError))
    cached = sweep_denoising(model, "digits", denoising_grid([1, 2], ["ode"]), sampler=Refusing(), **options)
    assert [row["fid"] for row in cached["rows"]] == [row["fid"] for row in again["rows"]]


def test_an_interrupted_setting_resumes_from_its_saved_images(run_dir, pool_weights, tmp_path, monkeypatch):
    """Denoising stopped after two of four batches: the rerun denoises the other two only and gives the row of an
    uninterrupted sweep; the FID pass keeps its sums beside them; the partial files go once the row is written."""
    model, _ = load_model(run_dir / "model", "cpu")
    extractor = FeatureExtractor(pool_weights)
    settings = denoising_grid([3], ["sde"])
    options = dict(count=COUNT, extractor=extractor, classifier_steps=5, batch_size=5, progress=False)
    whole = sweep_denoising(model, "digits", settings, cache_dir=tmp_path / "whole", **options)["rows"][0]

    calls = []
    denoise = IterativeDenoiser.denoise

    def stopping(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return denoise(self, *args, **kwargs)

    monkeypatch.setattr(denoising_sweep, "SAVE_EVERY_S", 0.0)
    monkeypatch.setattr(IterativeDenoiser, "denoise", stopping)
    cache = tmp_path / "stopped"
    with pytest.raises(KeyboardInterrupt):
        sweep_denoising(model, "digits", settings, cache_dir=cache, **options)
    saved = sorted(path.name for path in cache.glob("*partial-*"))
    assert len(saved) == 2 and torch.load(cache / saved[1], weights_only=True).shape[0] == 10
    assert json.loads((cache / saved[0]).read_text())["images"] == 10

    passes = []
    statistics = FeatureExtractor.statistics
    monkeypatch.setattr(FeatureExtractor, "statistics",
                        lambda self, *args, **kwargs: passes.append(kwargs["resume_file"]) or statistics(
                            self, *args, **kwargs))
    calls.clear()
    resumed = sweep_denoising(model, "digits", settings, cache_dir=cache, **options)["rows"][0]
    assert len(calls) == 2  # batches 3 and 4 only
    assert resumed["fid"] == whole["fid"] and torch.equal(resumed["strip"], whole["strip"])
    assert passes[-1].parent == cache and "partial-" in passes[-1].name
    assert not list(cache.glob("*partial-*"))


def test_cli_writes_the_table_json_and_picture(run_dir, pool_weights, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep-denoising", str(run_dir), "--steps", "0,1,2", "--dynamics", "ode", "--count", "12",
                 "--weights", str(pool_weights), "--classifier-steps", "5", "--sampler", "sequential", "--out",
                 str(out), "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "s/image (total)" in printed and "2 ode steps" in printed
    saved = json.loads((out / "denoising.json").read_text())
    assert [row["steps"] for row in saved["rows"]] == [0, 1, 2] and saved["samples"] == 12
    assert (out / "denoising.png").stat().st_size > 0


@pytest.mark.parametrize("flags, said", [
    (["--steps", "1,x"], "--steps must be comma-separated integers"),
    (["--steps", "-1"], "integers >= 0"),
    (["--dynamics", "euler"], "--dynamics takes ode, sde"),
])
def test_cli_option_errors(run_dir, tmp_path, capsys, flags, said):
    assert main(["sweep-denoising", str(run_dir), *flags, "--out", str(tmp_path / "o"), "--no-progress"]) != 0
    assert said in capsys.readouterr().err


def test_a_fixed_noise_model_is_refused(tmp_path, capsys):
    run = tmp_path / "plain"
    assert main(["train", "--out", str(run), *TINY, "--steps", "1"]) == 0
    assert main(["sweep-denoising", str(run), "--count", "4", "--no-progress"]) != 0
    assert "compares the iterative denoising of a noise-conditioned model" in capsys.readouterr().err
