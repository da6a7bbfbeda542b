"""The metric commands on latent models (STARFlow, issue 13): `tarflow eval` gives the trainer's test latent nats/dim;
`fid`, `guidance-accuracy` and `sweep-sampling` measure decoded samples (fine-tuned decoder or one Tweedie step,
`--denoise tweedie` to compare), each against a pipeline written out here; `score` refuses with the reason."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch

from conftest import latent_config, randomise, save_tiny_autoencoder
from tarflow import ConfigError, FlowConfig, TarFlow
from tarflow.autoencoders import load_autoencoder
from tarflow.cli import main
from tarflow.data import load_dataset
from tarflow.data.quantize import quantize
from tarflow.presets import get_preset
from tarflow.sampling import DecodedSampler, Guidance, SequentialSampler
from tarflow.train import train

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]
SIGMA = 0.3




@pytest.fixture(autouse=True)
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))



@pytest.fixture
def latent_model(tmp_path):
    """A class-conditional latent flow on digits with randomised weights (guidance and Tweedie matter), saved as
    a model trained with noise sigma = 0.3."""
    save_tiny_autoencoder(tmp_path / "ae")
    torch.manual_seed(0)
    model = randomise(TarFlow(latent_config(tmp_path / "ae")), seed=3, std=0.3)
    model.save_pretrained(tmp_path / "model", {"dataset": "digits", "levels": 17, "noise": "gaussian",
                                               "noise_std": SIGMA})
    return tmp_path / "model"


def add_decoder(model_dir, seed: int = 5):
    """A stand-in for `tarflow autoencoder finetune-decoder`: another autoencoder, saved for the model's sigma."""
    save_tiny_autoencoder(model_dir / "denoising_decoder", seed=seed, metadata={"noise_std": SIGMA})


def decoded_by_hand(model_dir, count, guidance=None, tweedie=True, decoder=None):
    """``count`` samples as 17-level images, written out: one batch of sequential samples (classes in turn, noise
    seed 0), one Tweedie step or none, decode((z) / scale + shift) by the flow's or the given autoencoder."""
    model = TarFlow.from_pretrained(model_dir)
    labels = torch.arange(count) % 10
    latents = SequentialSampler(model).sample(count, labels, 1.0, guidance, SIGMA if tweedie else None,
                                              generator=torch.Generator().manual_seed(0))
    autoencoder = load_autoencoder(decoder) if decoder else load_autoencoder(model.modality.located())
    with torch.no_grad():
        images = autoencoder.decode(latents / 2.0 + 0.25)
    return quantize(images.float(), 17)


def fid_by_hand(images, weights):
    """FID of 17-level images against the digits test split with the extractor file, in numpy."""
    from tarflow.metrics.fid import FeatureExtractor, to_rgb_uint8

    fx = FeatureExtractor(weights)
    data = load_dataset("digits", "test")
    feats = [fx(to_rgb_uint8(images, 17)), fx(to_rgb_uint8(data.images, data.levels))]
    (mu_s, s_s), (mu_d, s_d) = [(f.mean(0), np.cov(f, rowvar=False)) for f in feats]
    w, v = np.linalg.eigh(s_d)
    root_d = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_d @ s_s @ root_d), 0, None)).sum()
    return float(((mu_s - mu_d) ** 2).sum() + np.trace(s_s) + np.trace(s_d) - 2 * cross)


# ----- eval ----------------------------------------------------------------------------------------

def test_eval_gives_the_trainers_latent_figure(tmp_path, capsys):
    save_tiny_autoencoder(tmp_path / "ae")
    config = get_preset("tiny")
    config.model = latent_config(tmp_path / "ae", latent_scale=0.0, latent_shift=0.0, width=32, head_dim=16)
    config.train = dataclasses.replace(config.train, noise="gaussian", noise_std=SIGMA, steps=10, eval_every=0,
                                       sample_every=0, checkpoint_every=0, num_samples=10)
    trained = train(config, tmp_path / "run", progress=False)
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "run"), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["latent_nats_per_dim"] == pytest.approx(trained["latent_nats_per_dim"], rel=0, abs=1e-6)
    assert (result["images"], result["latent_dims"], result["noise_std"], result["split"]) == (360, 64, SIGMA, "test")
    assert "not comparable with a pixel model's bits/dim" in result["unit"] and "bits_per_dim" not in result
    assert main(["eval", str(tmp_path / "run"), "--seed", "1", "--no-progress"]) == 0  # another noise draw
    assert json.loads(capsys.readouterr().out)["latent_nats_per_dim"] != result["latent_nats_per_dim"]
    page = (tmp_path / "run" / "report.html").read_text()
    assert "repeat: <code>tarflow eval" in page and "does not take latent models" not in page


@pytest.mark.parametrize("options, words", [(["--draws", "2"], "--draws do not apply to a latent model"),
                                            (["--noise-level", "0.1"], "--noise-level do not apply")])
def test_eval_refuses_pixel_options_on_a_latent_model(latent_model, options, words, capsys):
    assert main(["eval", str(latent_model), "--no-progress", *options]) == 2
    assert words in capsys.readouterr().err


# ----- fid and the denoising of decoded samples ----------------------------------------------------

def fid_argv(model_dir, weights, *options):
    return ["fid", str(model_dir), "--weights", str(weights), "--count", "30", "--split", "test", "--sampler",
            "sequential", "--device", "cpu", "--no-progress", *options]


def test_fid_of_a_latent_model_is_that_of_its_decoded_samples(latent_model, pool_weights, capsys):
    assert main(fid_argv(latent_model, pool_weights, "--guidance", "1")) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["denoise"], result["guidance_rule"]) == ("tweedie", "starflow")  # STARFlow's rule by default
    assert result["decoder"] == str(TarFlow.from_pretrained(latent_model).modality.located())
    assert result["reference"]["images"] == 360  # the digits test split: the autoencoder's images
    images = decoded_by_hand(latent_model, 30, Guidance(1.0, "starflow"))
    assert result["fid"] == pytest.approx(fid_by_hand(images, pool_weights), rel=1e-6)


def test_finetuned_decoder_is_the_default_and_denoise_tweedie_forces_the_step(latent_model, pool_weights, capsys):
    assert main(fid_argv(latent_model, pool_weights)) == 0
    tweedie = json.loads(capsys.readouterr().out)
    add_decoder(latent_model)
    assert main(fid_argv(latent_model, pool_weights)) == 0
    learned = json.loads(capsys.readouterr().out)
    assert (learned["denoise"], learned["decoder"]) == ("decoder", str(latent_model / "denoising_decoder"))
    images = decoded_by_hand(latent_model, 30, tweedie=False, decoder=latent_model / "denoising_decoder")
    assert learned["fid"] == pytest.approx(fid_by_hand(images, pool_weights), rel=1e-6)
    assert main(fid_argv(latent_model, pool_weights, "--denoise", "tweedie")) == 0
    forced = json.loads(capsys.readouterr().out)
    assert forced["denoise"] == "tweedie" and forced["fid"] == pytest.approx(tweedie["fid"], rel=1e-9)
    assert learned["fid"] != pytest.approx(tweedie["fid"], rel=1e-3)
    assert main(fid_argv(latent_model, pool_weights, "--denoise", "none")) == 0
    plain = json.loads(capsys.readouterr().out)
    images = decoded_by_hand(latent_model, 30, tweedie=False)
    assert plain["denoise"] == "none" and plain["fid"] == pytest.approx(fid_by_hand(images, pool_weights), rel=1e-6)


def test_fid_of_model_from_python_decodes_as_the_cli(latent_model, pool_weights, capsys):
    from tarflow.metrics import FeatureExtractor, fid_of_model

    add_decoder(latent_model)
    assert main(fid_argv(latent_model, pool_weights, "--sample-batch", "30")) == 0
    cli = json.loads(capsys.readouterr().out)
    model = TarFlow.from_pretrained(latent_model)
    result = fid_of_model(model, FeatureExtractor(pool_weights), "digits", "test", count=30, progress=False)
    assert result["fid"] == pytest.approx(cli["fid"], rel=1e-9)  # the default sampler: the fine-tuned decoder


def test_the_report_repeats_a_latent_fid_with_its_denoising(tmp_path):
    import shlex

    from tarflow.cli import build_parser
    from tarflow.report.contents import fid_command

    result = {"fid": 1.0, "samples": 30, "reference": {"split": "test"}, "seed": 0}
    for denoise, option in (("tweedie", "tweedie"), ("none", "none"), ("decoder", None)):
        command = fid_command({**result, "denoise": denoise}, tmp_path)
        assert build_parser().parse_args(shlex.split(command)[1:]).denoise == option


def test_decoder_and_tweedie_give_different_images(latent_model):
    add_decoder(latent_model)
    model = TarFlow.from_pretrained(latent_model)
    sequential = SequentialSampler(model)
    labels = torch.arange(6)
    drawn = {}
    for denoise, decoder in (("tweedie", None), ("decoder", model.modality.denoising_decoder(SIGMA)),
                             ("none", None)):
        sampler = DecodedSampler(sequential, denoise, decoder)
        drawn[denoise] = sampler.sample(6, labels, denoise_std=SIGMA, generator=torch.Generator().manual_seed(0))
    assert drawn["tweedie"].shape == (6, 1, 8, 8)
    assert not torch.allclose(drawn["tweedie"], drawn["decoder"], atol=1e-3)
    assert not torch.allclose(drawn["tweedie"], drawn["none"], atol=1e-3)
    assert torch.equal(quantize(drawn["tweedie"], 17), decoded_by_hand(latent_model, 6))


def test_decoded_sampler_refuses_what_does_not_fit(latent_model, tmp_path):
    model = TarFlow.from_pretrained(latent_model)
    with pytest.raises(ConfigError, match="already images"):
        DecodedSampler(SequentialSampler(TarFlow(FlowConfig())))
    with pytest.raises(ConfigError, match="needs the fine-tuned autoencoder"):
        DecodedSampler(SequentialSampler(model), "decoder")
    with pytest.raises(ConfigError, match="needs denoise_std"):
        DecodedSampler(SequentialSampler(model)).sample(2, torch.arange(2))


@pytest.mark.parametrize("options, words", [
    (["--denoise", "iterative"], "--denoise iterative is for noise-conditioned"),
    (["--denoise-steps", "5"], "a latent model takes --denoise tweedie or none")])
def test_fid_refuses_iterative_denoising_of_a_latent_model(latent_model, pool_weights, options, words, capsys):
    assert main(fid_argv(latent_model, pool_weights, *options)) == 2
    assert words in capsys.readouterr().err


# ----- guidance-accuracy and sweep-sampling --------------------------------------------------------

def test_guidance_accuracy_classifies_decoded_samples(latent_model, tmp_path, capsys):
    from tarflow.metrics.classifier import TrainBudget, dataset_classifier

    assert main(["guidance-accuracy", str(latent_model), "--guidance", "0,1", "--count", "20", "--classifier-steps",
                 "30", "--sampler", "sequential", "--sample-batch", "20", "--plot", str(tmp_path / "accuracy.png"),
                 "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert (result["guidance_rule"], result["denoise"]) == ("starflow", "tweedie")
    classifier, _ = dataset_classifier("digits", budget=TrainBudget(steps=30), progress=False)
    for row, guidance in zip(result["rows"], (None, Guidance(1.0, "starflow"))):
        predicted = classifier.predict(decoded_by_hand(latent_model, 20, guidance))
        assert row["accuracy"] == pytest.approx((predicted == torch.arange(20) % 10).double().mean().item())


def test_pixel_models_without_gaussian_noise_refuse_the_denoise_option(tmp_path, capsys):
    """Nothing to denoise: the model was trained with uniform dequantization (its metadata has no noise)."""
    TarFlow(FlowConfig(image_size=8, channels=1, patch_size=4, width=16, num_blocks=1, head_dim=8,
                       num_classes=10)).save_pretrained(tmp_path / "pixels", {"dataset": "digits", "levels": 17})
    assert main(["guidance-accuracy", str(tmp_path / "pixels"), "--denoise", "tweedie", "--plot",
                 str(tmp_path / "a.png"), "--no-progress"]) == 2
    assert "trained without gaussian noise, so its samples have none to remove" in capsys.readouterr().err


def test_sweep_measures_decoded_samples_and_a_new_decoder_is_a_new_cache_entry(latent_model, pool_weights, tmp_path,
                                                                                monkeypatch, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep-sampling", str(latent_model), "--guidance", "0,1", "--count", "20", "--classifier-steps", "30",
            "--weights", str(pool_weights), "--sampler", "sequential", "--sample-batch", "20", "--out", str(out),
            "--no-progress"]
    assert main(argv) == 0
    capsys.readouterr()
    saved = json.loads((out / "sweep.json").read_text())
    assert [row["setting"] for row in saved["rows"]] == ["w=0, T=1", "w=1 starflow, T=1"]
    assert saved["denoise"] == "tweedie" and len(saved["decoder_sha256"]) == 64
    assert main(fid_argv(latent_model, pool_weights, "--guidance", "1", "--count", "20")) == 0
    fid = json.loads(capsys.readouterr().out)["fid"]
    assert saved["rows"][1]["fid"] == pytest.approx(fid, rel=1e-3, abs=1e-3)  # rounded to 4 decimals in the row

    def no_sampling(*args, **kwargs):
        raise AssertionError("a cached setting was sampled again")

    monkeypatch.setattr("tarflow.metrics.sweep.generate_levels", no_sampling)
    assert main(argv) == 0  # the same decoding: from the cache
    add_decoder(latent_model)
    with pytest.raises(AssertionError, match="sampled again"):  # the fine-tuned decoder is another cache entry
        main(argv)


# ----- score -----------------------------------------------------------------------------------------

def test_score_refuses_a_latent_model_with_the_reason(latent_model, tmp_path, capsys):
    assert main(["score", str(latent_model), "--out", str(tmp_path / "scores.csv"), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "no bits/dim of images" in err and "`tarflow eval` gives its test latent nats/dim" in err
