"""The latent modality (STARFlow, issue 13): scaled autoencoder latents, where the autoencoder lives, training a
flow on latents, and the CLI from `tarflow autoencoder train` to a decoded sample grid, on digits."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch
from PIL import Image

from conftest import latent_config, save_tiny_autoencoder, tiny_diffusers_vae
from tarflow import CheckpointError, ConfigError, FlowConfig, InputError, TarFlow
from tarflow.autoencoders import load_autoencoder
from tarflow.cli import main
from tarflow.data import dequantize, load_dataset
from tarflow.modalities import measure_latent_scale
from tarflow.presets import get_preset
from tarflow.sampling.guidance import default_rule
from tarflow.train import train
from tarflow.train.latents import encode_images, evaluate_latent_nll, prepare_latents

pytestmark = pytest.mark.usefixtures("one_thread")



def test_encode_and_decode_are_the_autoencoders_scaled(tmp_path):
    save_tiny_autoencoder(tmp_path / "ae")
    model = TarFlow(latent_config(tmp_path / "ae")).double()
    autoencoder = load_autoencoder(tmp_path / "ae").double()
    images = torch.rand(3, 1, 8, 8, dtype=torch.float64) * 2 - 1
    latents = model.modality.encode(images)
    assert torch.allclose(latents, (autoencoder.encode(images) - 0.25) * 2.0, rtol=0, atol=1e-6)
    assert torch.allclose(model.modality.decode(latents), autoencoder.decode(latents / 2.0 + 0.25), rtol=0, atol=1e-6)
    assert model.log_prob(latents, torch.tensor([0, 1, 10])).shape == (3,)
    assert model.config.num_dims == 64  # latent dimensions, not pixels


def test_encode_and_decode_take_the_autoencoder_a_chunk_at_a_time(tmp_path, monkeypatch):
    """A batch of clips is B F images: they go through the autoencoder CHUNK_IMAGES at a time (memory), with the
    result of one call on the whole batch."""
    import tarflow.modalities.latents as latents_module

    save_tiny_autoencoder(tmp_path / "ae")
    model = TarFlow(latent_config(tmp_path / "ae")).double()
    autoencoder = model.modality.autoencoder.double()
    images = torch.rand(7, 1, 8, 8, dtype=torch.float64) * 2 - 1
    latents = torch.randn(7, 4, 4, 4, dtype=torch.float64)
    whole = model.modality.encode(images), model.modality.decode(latents)
    sizes = []
    for name in ("encode", "decode"):
        original = getattr(autoencoder, name)
        monkeypatch.setattr(autoencoder, name, lambda batch, original=original: sizes.append(len(batch)) or
                            original(batch))
    monkeypatch.setattr(latents_module, "CHUNK_IMAGES", 3)
    chunked = model.modality.encode(images), model.modality.decode(latents)
    assert sizes == [3, 3, 1, 3, 3, 1]
    assert all(torch.allclose(one, other, rtol=0, atol=1e-12) for one, other in zip(whole, chunked))


def test_measured_scale_gives_unit_variance():
    raw = torch.randn(500, 4, 4, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 3.7 + 1.2
    shift, scale = measure_latent_scale(raw)
    scaled = (raw - shift) * scale
    assert abs(scaled.mean().item()) < 1e-5 and abs(scaled.std().item() - 1) < 1e-5
    with pytest.raises(InputError, match="constant"):
        measure_latent_scale(torch.ones(3, 4, 2, 2))


def test_images_given_to_a_latent_model_are_refused_with_the_fix(tmp_path):
    save_tiny_autoencoder(tmp_path / "ae")
    model = TarFlow(latent_config(tmp_path / "ae"))
    with pytest.raises(InputError, match=r"scaled latents \(B, 4, 4, 4\).*modality.encode"):
        model.log_prob(torch.zeros(2, 1, 8, 8))
    with pytest.raises(ConfigError, match="nats/dim"):
        model.modality.bin_width(256)


# ----- where the autoencoder lives ---------------------------------------------------------------

def test_relative_autoencoder_path_is_read_from_the_model_directory(tmp_path):
    """A run moved whole keeps working: "../autoencoder" is found beside the model, wherever it is."""
    save_tiny_autoencoder(tmp_path / "run" / "autoencoder")
    torch.manual_seed(0)
    model = TarFlow(latent_config("../autoencoder"))
    model.save_pretrained(tmp_path / "run" / "model")
    shutil.move(tmp_path / "run", tmp_path / "moved")
    loaded = TarFlow.from_pretrained(tmp_path / "moved" / "model")
    images = torch.rand(2, 1, 8, 8) * 2 - 1
    expected = (load_autoencoder(tmp_path / "moved" / "autoencoder").encode(images) - 0.25) * 2.0
    assert torch.allclose(loaded.modality.encode(images), expected, rtol=0, atol=1e-6)


def test_missing_autoencoder_is_named_on_load(tmp_path):
    save_tiny_autoencoder(tmp_path / "ae")
    TarFlow(latent_config(tmp_path / "ae")).save_pretrained(tmp_path / "model")
    shutil.rmtree(tmp_path / "ae")
    with pytest.raises(CheckpointError, match=r"autoencoder directory .*ae does not exist; expected a directory "
                                              r"saved by `tarflow autoencoder train`.*set \"autoencoder\""):
        TarFlow.from_pretrained(tmp_path / "model")


def test_incompatible_autoencoder_is_named_on_load(tmp_path):
    save_tiny_autoencoder(tmp_path / "ae")
    TarFlow(latent_config(tmp_path / "ae")).save_pretrained(tmp_path / "model")
    save_tiny_autoencoder(tmp_path / "ae", latent_channels=8)  # replaced by one of other latents
    with pytest.raises(CheckpointError, match="makes 8-channel latents but the flow models 4-channel ones"):
        TarFlow.from_pretrained(tmp_path / "model")


def test_a_directory_that_is_no_autoencoder_is_named(tmp_path):
    (tmp_path / "ae").mkdir()
    (tmp_path / "ae" / "config.json").write_text("{}")
    TarFlow(latent_config(tmp_path / "ae")).save_pretrained(tmp_path / "model")
    with pytest.raises(CheckpointError, match="is not an autoencoder directory: expected"):
        TarFlow.from_pretrained(tmp_path / "model")


def test_pixel_models_save_the_new_fields_with_their_defaults(tmp_path):
    model = TarFlow(FlowConfig())
    model.save_pretrained(tmp_path / "m")
    saved = json.loads((tmp_path / "m" / "config.json").read_text())["model"]
    assert (saved["modality"], saved["autoencoder"], saved["latent_scale"], saved["latent_shift"]) == \
        ("pixels", "", 0.0, 0.0)
    assert default_rule(model.config) == "tarflow"


# ----- training on latents -----------------------------------------------------------------------

def latent_run(autoencoder, **train_fields):
    config = get_preset("tiny")
    config.model = latent_config(autoencoder, latent_scale=0.0, latent_shift=0.0, width=32, head_dim=16)
    fields = dict(noise="gaussian", noise_std=0.3, steps=20, eval_every=0, sample_every=0, checkpoint_every=0,
                  num_samples=10)
    config.train = dataclasses.replace(config.train, **{**fields, **train_fields})
    return config


def test_prepare_latents_measures_the_scale_on_training_data(tmp_path):
    save_tiny_autoencoder(tmp_path / "ae")
    config = latent_run(tmp_path / "ae")
    data, test = load_dataset("digits", "train"), load_dataset("digits", "test")
    model_config, train_latents, test_latents = prepare_latents(config.model, config.train, data, test)
    assert model_config.latent_scale > 0 and model_config.autoencoder == str((tmp_path / "ae").absolute())
    assert abs(train_latents.latents.std().item() - 1) < 1e-3 and abs(train_latents.latents.mean().item()) < 1e-3
    raw = load_autoencoder(tmp_path / "ae").encode(dequantize(test.images, test.levels, "gaussian", 0.0))
    expected = (raw - model_config.latent_shift) * model_config.latent_scale
    assert torch.allclose(test_latents.latents, expected, rtol=0, atol=1e-5)
    assert torch.equal(train_latents.labels, data.labels)


@pytest.mark.parametrize("field, value, words", [("noise", "uniform", "noise=gaussian"), ("flip", True, "--flip false")])
def test_settings_meaningless_on_latents_are_refused(tmp_path, field, value, words):
    save_tiny_autoencoder(tmp_path / "ae")
    with pytest.raises(ConfigError, match=words):
        train(latent_run(tmp_path / "ae", **{field: value}), tmp_path / "run", progress=False)


def test_a_latent_grid_that_does_not_fit_names_the_fix(tmp_path):
    save_tiny_autoencoder(tmp_path / "ae")
    config = latent_run(tmp_path / "ae")
    config.model = dataclasses.replace(config.model, channels=8)
    with pytest.raises(ConfigError, match="set image_size=4 channels=4"):
        train(config, tmp_path / "run", progress=False)


def test_training_lowers_latent_nll_and_its_figure_is_recomputable(tmp_path):
    save_tiny_autoencoder(tmp_path / "ae")
    config = latent_run(tmp_path / "ae", ema_decay=0.0)
    result = train(config, tmp_path / "run", progress=False)
    model = TarFlow.from_pretrained(tmp_path / "run" / "model")
    test = load_dataset("digits", "test")
    latents = model.modality.encode(dequantize(test.images, test.levels, "gaussian", 0.0))
    # an independent recompute: the same noise draw per batch of 256, -log p / D per image
    per_image = []
    for start in range(0, len(latents), 256):
        chunk = latents[start:start + 256]
        noise = torch.randn(chunk.shape, generator=torch.Generator().manual_seed(start))
        per_image.append(-model.log_prob(chunk + 0.3 * noise, test.labels[start:start + 256]) / 64)
    assert result["latent_nats_per_dim"] == pytest.approx(torch.cat(per_image).mean().item(), abs=1e-5)
    assert "bits_per_dim" not in result
    torch.manual_seed(config.train.seed)
    untrained = TarFlow(dataclasses.replace(model.config))
    _, _, test_latents = prepare_latents(model.config, config.train, load_dataset("digits", "train"), test)
    before = evaluate_latent_nll(untrained, test_latents, test.labels, 0.3)["latent_nats_per_dim"]
    assert result["latent_nats_per_dim"] < before - 0.05
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert "nats_per_dim" in rows[-1] and "bpd" not in rows[-1]
    assert (tmp_path / "run" / "loss_curve.png").is_file()  # plotted in latent nats/dim
    page = (tmp_path / "run" / "report.html").read_text()
    assert f"{result['latent_nats_per_dim']:.4f}" in page and "test latent nats/dim" in page and "bits/dim" not in page


def test_encode_images_matches_the_autoencoder_in_batches(tmp_path):
    save_tiny_autoencoder(tmp_path / "ae")
    model = TarFlow(latent_config(tmp_path / "ae"))
    test = load_dataset("digits", "test")
    raw = encode_images(model.modality, test, batch_size=100)
    expected = load_autoencoder(tmp_path / "ae").encode(dequantize(test.images, test.levels, "gaussian", 0.0))
    assert torch.allclose(raw, expected, rtol=0, atol=1e-6)



def test_encoded_latents_are_cached_per_autoencoder_and_data(tmp_path, monkeypatch):
    """The second encode of the same images by the same weights reads the file; other weights, other images or a
    damaged file encode afresh (and the damaged file is replaced)."""
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    save_tiny_autoencoder(tmp_path / "ae")
    model = TarFlow(latent_config(tmp_path / "ae"))
    test = load_dataset("digits", "test")
    calls = []
    encode = model.modality.autoencoder.encode
    monkeypatch.setattr(model.modality.autoencoder, "encode", lambda batch: calls.append(len(batch)) or encode(batch))
    first = encode_images(model.modality, test)
    assert sum(calls) == len(test)
    [cached] = (tmp_path / "cache" / "latents").glob("digits-test-*.npy")
    assert torch.equal(encode_images(model.modality, test), first) and sum(calls) == len(test)
    cached.write_bytes(b"not an array")
    assert torch.equal(encode_images(model.modality, test), first) and sum(calls) == 2 * len(test)
    fewer = dataclasses.replace(test, images=test.images[:10], labels=test.labels[:10])
    assert torch.equal(encode_images(model.modality, fewer), first[:10]) and sum(calls) == 2 * len(test) + 10
    with torch.no_grad():
        next(model.modality.autoencoder.parameters()).add_(0.1)
    assert not torch.equal(encode_images(model.modality, test), first) and sum(calls) == 3 * len(test) + 10
    assert len(list((tmp_path / "cache" / "latents").glob("*.npy"))) == 3


def test_a_diffusers_latent_key_follows_its_encoder_not_its_decoder():
    """Fine-tuning the decoder keeps the cached latents; other encoder weights or scaling give another key."""
    from tarflow.autoencoders.diffusers import DiffusersAutoencoder
    from tarflow.train.latent_cache import latent_key

    autoencoder = DiffusersAutoencoder(tiny_diffusers_vae(channels=1, latent_channels=4, scaling_factor=0.5))
    images = torch.randint(0, 256, (3, 1, 8, 8), dtype=torch.uint8)
    key = latent_key(autoencoder, images, 256)
    assert not any(name.startswith(("decoder.", "post_quant_conv.")) for name in autoencoder.encoder_state())
    with torch.no_grad():
        autoencoder.vae.decoder.conv_in.weight.add_(1.0)
    assert latent_key(autoencoder, images, 256) == key
    assert latent_key(autoencoder, images, 255) != key
    autoencoder.scaling_factor = 0.25
    assert latent_key(autoencoder, images, 256) != key
    autoencoder.scaling_factor = 0.5
    with torch.no_grad():
        autoencoder.vae.encoder.conv_in.weight.add_(1.0)
    assert latent_key(autoencoder, images, 256) != key

# ----- the command line ------------------------------------------------------------------------

def test_cli_from_autoencoder_to_decoded_samples(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["autoencoder", "train", "--dataset", "digits", "--steps", "20", "--batch-size", "16", "--widths",
                 "8,16", "--out", "ae", "--no-progress"]) == 0
    assert "test PSNR:" in capsys.readouterr().out
    assert main(["autoencoder", "eval", "ae", "--no-progress", "--out", "psnr.json"]) == 0
    shown = capsys.readouterr().out
    psnr = json.loads((tmp_path / "psnr.json").read_text())["psnr_db"]
    assert f"PSNR: {psnr:.2f}" in shown
    assert psnr == pytest.approx(json.loads((tmp_path / "ae" / "eval.json").read_text())["psnr_db"])
    assert main(["train", "--preset", "tiny", "--modality", "latents", "--autoencoder", "ae", "--image-size", "4",
                 "--channels", "4", "--patch-size", "1", "--noise", "gaussian", "--noise-std", "0.3", "--steps", "6",
                 "--eval-every", "0", "--sample-every", "0", "--num-samples", "10", "--out", "flow",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    figure = json.loads((tmp_path / "flow" / "eval.json").read_text())["latent_nats_per_dim"]
    assert f"test latent nats/dim: {figure:.4f}" in out
    assert main(["sample", "flow", "--count", "10", "--guidance", "1", "--sampler", "sequential",
                 "--out", "grid.png"]) == 0
    assert "(starflow)" in capsys.readouterr().out
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size[1] < grid.size[0] and grid.mode == "L"  # 10 decoded 8x8 grey digits in a row


def test_latent_presets_carry_the_starflow_recipe():
    for name in ("cifar10-latent", "imagenet256-latent-gpu"):
        config = get_preset(name)
        model = config.model
        assert (model.modality, model.patch_size, model.channels, model.start_token, model.positions,
                model.scale, model.log_scale_clip, model.condition_top_only) == \
            ("latents", 1, 4, "learned", "rope", "softplus", 4.0, True)
        assert model.block_layers[-1] > 2 * max(model.block_layers[:-1])  # one deep block, the rest shallow
        assert (config.train.noise, config.train.noise_std, config.train.flip) == ("gaussian", 0.3, False)
        assert default_rule(model) == "starflow"
    assert get_preset("imagenet256-latent-gpu").model.block_layers == [2, 2, 2, 2, 2, 24]


# ----- the decoder fine-tuned on noisy latents ----------------------------------------------------

def saved_latent_flow(tmp_path, sigma: float = 0.3, autoencoder: str = "library"):
    """A latent flow over a tiny autoencoder (the library's, or a diffusers AutoencoderKL of SD-VAE layout), its
    scale measured on digits, saved with its noise level."""
    if autoencoder == "library":
        save_tiny_autoencoder(tmp_path / "ae")
    else:
        tiny_diffusers_vae(channels=1, latent_channels=4, scaling_factor=0.18215).save_pretrained(tmp_path / "ae")
    config = latent_run(tmp_path / "ae")
    model_config, _, _ = prepare_latents(config.model, config.train, load_dataset("digits", "train"),
                                         load_dataset("digits", "test"))
    torch.manual_seed(0)
    TarFlow(model_config).save_pretrained(tmp_path / "model", {"dataset": "digits", "levels": 17,
                                                               "noise": "gaussian", "noise_std": sigma})
    return TarFlow.from_pretrained(tmp_path / "model")


def weights(autoencoder) -> dict[str, torch.Tensor]:
    """Every tensor of a library or diffusers autoencoder, by name (the encoder's start with "encoder.")."""
    return (autoencoder.vae if hasattr(autoencoder, "vae") else autoencoder).state_dict()


def noisy_error(autoencoder, flow, latents, sigma):
    """Mean squared error of decode(z + sigma eps) against the images' bin centres, fixed noise: recomputed here."""
    eps = torch.randn(latents.shape, generator=torch.Generator().manual_seed(123))
    with torch.no_grad():
        return autoencoder.decode((latents + sigma * eps) / flow.modality.scale + flow.modality.shift)


@pytest.mark.parametrize("autoencoder", ["library", "diffusers"])
def test_finetuned_decoder_lowers_the_error_of_noisy_latents(autoencoder, tmp_path):
    from tarflow.autoencoders.finetune import finetune_decoder

    flow = saved_latent_flow(tmp_path, autoencoder=autoencoder)
    test = load_dataset("digits", "test")
    images = dequantize(test.images, test.levels, "gaussian", 0.0)
    latents = flow.modality.encode(images)
    result = finetune_decoder(flow, tmp_path / "model", steps=40, batch_size=32, lr=3e-3, progress=False)
    original = load_autoencoder(tmp_path / "ae")
    tuned = load_autoencoder(tmp_path / "model" / "denoising_decoder")
    assert type(tuned) is type(original)  # saved in the autoencoder's own format
    error_before = (noisy_error(original, flow, latents, 0.3) - images).pow(2).mean()
    error_after = (noisy_error(tuned, flow, latents, 0.3) - images).pow(2).mean()
    assert error_after < 0.5 * error_before
    assert result["noisy_psnr_db_after"] > result["noisy_psnr_db_before"]
    assert tuned.metadata["noise_std"] == 0.3
    assert torch.equal(tuned.encode(images), original.encode(images))  # the encoder is frozen
    before, after = weights(original), weights(tuned)
    encoder = [name for name in before if name.startswith(("encoder.", "quant_conv."))]
    assert encoder
    for name in encoder:
        assert torch.equal(before[name], after[name]), name
    assert TarFlow.from_pretrained(tmp_path / "model").modality.denoising_decoder(0.3) is not None
    assert TarFlow.from_pretrained(tmp_path / "model").modality.denoising_decoder(0.2) is None  # another sigma


def test_sample_denoises_with_the_finetuned_decoder_when_present(tmp_path, capsys):
    from tarflow.autoencoders.finetune import DENOISING_DECODER

    saved_latent_flow(tmp_path)
    argv = ["sample", str(tmp_path / "model"), "--count", "4", "--sampler", "sequential"]
    assert main([*argv, "--out", str(tmp_path / "tweedie.png")]) == 0
    assert "denoise on (sigma=0.3) ->" in capsys.readouterr().out  # one Tweedie step
    save_tiny_autoencoder(tmp_path / "model" / DENOISING_DECODER, seed=5, metadata={"noise_std": 0.3})
    assert main([*argv, "--out", str(tmp_path / "learned.png")]) == 0
    assert "denoise on (sigma=0.3, fine-tuned decoder)" in capsys.readouterr().out
    assert (tmp_path / "tweedie.png").read_bytes() != (tmp_path / "learned.png").read_bytes()
    assert main([*argv, "--denoise", "tweedie", "--out", str(tmp_path / "forced.png")]) == 0  # asked for Tweedie
    assert "denoise on (sigma=0.3) ->" in capsys.readouterr().out
    assert (tmp_path / "tweedie.png").read_bytes() == (tmp_path / "forced.png").read_bytes()


def test_finetune_decoder_refuses_a_pixel_model(tmp_path):
    from tarflow.autoencoders.finetune import finetune_decoder

    with pytest.raises(ConfigError, match="needs a latents model"):
        finetune_decoder(TarFlow(FlowConfig()), tmp_path, steps=1, progress=False)


def test_score_refuses_latent_models_by_name(tmp_path, capsys):
    saved_latent_flow(tmp_path)  # eval, fid and the other metrics take latent models: tests/test_latent_metrics.py
    assert main(["score", str(tmp_path / "model"), "--no-progress", "--out", str(tmp_path / "scores.csv")]) == 2
    assert "is a latent model: its density is of noisy autoencoder latents" in capsys.readouterr().err


def test_latent_preset_without_its_autoencoder_says_how_to_make_one(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--preset", "cifar10-latent", "--out", "run", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "runs/autoencoder-cifar10 is not trained yet" in err and "Traceback" not in err
    assert "`tarflow autoencoder train --dataset cifar10 --out runs/autoencoder-cifar10`" in err
    assert not (tmp_path / "run").exists()
    argv = ["train", "--preset", "moving-mnist-latent", "--data-dir", "mnist", "--out", "run", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err  # the frames' autoencoder is trained on MNIST digits, from the same files
    assert "`tarflow autoencoder train --dataset mnist --data-dir mnist --out runs/autoencoder-mnist`" in err
    assert not (tmp_path / "run").exists()
