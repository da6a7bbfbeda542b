"""Autoencoders (issue 13): the in-library KL autoencoder's save/load, loss, training and PSNR; diffusers
AutoencoderKL directories (SD, SDXL, FLUX layouts); clear errors for missing or foreign directories."""

from __future__ import annotations

import json
import math

import pytest
import torch

from conftest import Pool, save_tiny_autoencoder, tiny_diffusers_vae
from tarflow.autoencoders import (AutoencoderConfig, AutoencoderTrainConfig, KLAutoencoder, autoencoder_geometry,
                                  load_autoencoder)
from tarflow.autoencoders.train import evaluate_psnr, to_model_space, train_autoencoder
from tarflow.errors import CheckpointError, ConfigError
from tarflow.io import OutputError

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny(channels: int = 1, seed: int = 0, **options) -> KLAutoencoder:
    torch.manual_seed(seed)
    config = AutoencoderConfig(**{**dict(channels=channels, latent_channels=4, widths=[4, 8], norm_groups=4),
                                  **options})
    return KLAutoencoder(config)


def test_geometry_follows_the_widths():
    """Each width after the first halves the side: 3 widths downsample x4, 4 widths x8 (SD-VAE)."""
    for widths, factor in (([8], 1), ([8, 8, 8], 4), ([8, 8, 8, 8], 8)):
        model = tiny(widths=widths).double()
        x = torch.zeros(2, 1, 16, 16, dtype=torch.float64)
        assert model.encode(x).shape == (2, 4, 16 // factor, 16 // factor)
        assert model.decode(model.encode(x)).shape == x.shape
        assert model.downsample == factor


def test_save_load_round_trip(tmp_path):
    model = tiny(channels=3, widths=[8, 16, 16], norm_groups=8).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(tmp_path / "ae", metadata={"dataset": "x"})
    loaded = load_autoencoder(tmp_path / "ae")
    assert isinstance(loaded, KLAutoencoder) and loaded.config == model.config
    assert loaded.metadata == {"dataset": "x"}
    x = torch.rand(3, 3, 8, 8, dtype=torch.float64) * 2 - 1
    assert torch.equal(loaded.encode(x), model.encode(x))
    assert torch.equal(loaded.decode(model.encode(x)), model.decode(model.encode(x)))
    assert not any(p.requires_grad for p in loaded.parameters())  # frozen
    assert autoencoder_geometry(tmp_path / "ae") == (3, 4, 4)
    saved = json.loads((tmp_path / "ae" / "config.json").read_text())
    assert saved["format"] == "tarflow-autoencoder" and saved["model"]["widths"] == [8, 16, 16]


def test_save_refuses_a_directory_of_user_files(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(OutputError, match="not a tarflow model directory"):
        tiny().save_pretrained(tmp_path)
    assert (tmp_path / "config.json").read_text() == "{}"


def test_loss_is_squared_error_plus_weighted_closed_form_kl():
    """KL(q || N(0, I)) against torch.distributions, summed per image and divided by the image's values."""
    model = tiny().double()
    x = torch.rand(2, 1, 8, 8, dtype=torch.float64) * 2 - 1
    generator = torch.Generator().manual_seed(3)
    loss, squared_error, kl = model.loss(x, 0.25, generator)
    mean, log_var = model.posterior(x)
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    expected_kl = torch.distributions.kl_divergence(q, torch.distributions.Normal(0.0, 1.0)).sum() / x.numel()
    assert torch.allclose(kl, expected_kl, rtol=1e-12, atol=0)
    eps = torch.randn(mean.shape, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    expected_error = (model.decode(mean + (0.5 * log_var).exp() * eps) - x).pow(2).mean()
    assert torch.allclose(squared_error, expected_error, rtol=1e-12, atol=0)
    assert torch.allclose(loss, expected_error + 0.25 * expected_kl, rtol=1e-12, atol=0)


class ShiftByLevels:
    """A fake autoencoder: the identity, with decode adding ``shift`` levels (bin width 2 / L)."""

    def __init__(self, levels: int, shift: int):
        self.levels, self.shift = levels, shift

    def encode(self, images):
        return images

    def decode(self, latents):
        return latents + 2 * self.shift / self.levels


@pytest.mark.parametrize("shift", [0, 1, 3])
def test_psnr_closed_form(shift):
    """Reconstructions off by s levels everywhere: PSNR = 10 log10((L - 1)^2 / s^2); exact ones count 100 dB."""
    levels = 256
    images = torch.randint(0, levels - 4, (5, 3, 4, 4), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    result = evaluate_psnr(ShiftByLevels(levels, shift), images, levels, batch_size=2)
    expected = 100.0 if shift == 0 else 10 * math.log10((levels - 1) ** 2 / shift ** 2)
    assert result["psnr_db"] == pytest.approx(expected, abs=1e-9)
    assert result["images"] == 5


def test_training_lowers_reconstruction_error(tmp_path):
    """A few dozen steps on digits: test PSNR above that of the same initial weights, untrained."""
    from tarflow.data import load_dataset

    model_config = AutoencoderConfig(channels=1, latent_channels=4, widths=[8, 16], norm_groups=4)
    train_config = AutoencoderTrainConfig(dataset="digits", steps=60, batch_size=32, lr=3e-3, warmup_steps=5,
                                          log_every=20, checkpoint_every=30)
    result = train_autoencoder(model_config, train_config, tmp_path / "run", progress=False)
    torch.manual_seed(train_config.seed)
    untrained = KLAutoencoder(model_config).eval()
    test = load_dataset("digits", "test")
    before = evaluate_psnr(untrained, test.images, test.levels)["psnr_db"]
    trained = load_autoencoder(tmp_path / "run")  # a run directory resolves to its model/
    after = evaluate_psnr(trained, test.images, test.levels)["psnr_db"]
    assert after == pytest.approx(result["psnr_db"], abs=1e-9)
    assert after > before + 3.0
    x = to_model_space(test.images[:50], test.levels)
    with torch.no_grad():
        error_before = (untrained.decode(untrained.encode(x)) - x).pow(2).mean()
        error_after = (trained.decode(trained.encode(x)) - x).pow(2).mean()
    assert error_after < 0.5 * error_before
    lines = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [20, 40, 60]
    assert (tmp_path / "run" / "reconstructions.png").is_file()
    assert json.loads((tmp_path / "run" / "eval.json").read_text())["psnr_db"] == pytest.approx(after)


def test_resumed_training_equals_uninterrupted(tmp_path):
    """Stopping at a checkpoint and training again in the same directory gives the same weights."""
    model_config = AutoencoderConfig(channels=1, latent_channels=4, widths=[4, 8], norm_groups=4)
    short = AutoencoderTrainConfig(dataset="digits", steps=6, batch_size=8, warmup_steps=2, checkpoint_every=3)
    train_autoencoder(model_config, short, tmp_path / "whole", progress=False)
    from tarflow.autoencoders import train as training

    original = training.save_checkpoint
    calls = []

    def stop_after_first(*args):
        original(*args)
        calls.append(1)
        raise KeyboardInterrupt

    training.save_checkpoint = stop_after_first
    try:
        with pytest.raises(KeyboardInterrupt):
            train_autoencoder(model_config, short, tmp_path / "split", progress=False)
    finally:
        training.save_checkpoint = original
    train_autoencoder(model_config, short, tmp_path / "split", progress=False)
    whole, split = load_autoencoder(tmp_path / "whole"), load_autoencoder(tmp_path / "split")
    for (name, a), (_, b) in zip(whole.state_dict().items(), split.state_dict().items()):
        assert torch.equal(a, b), name


def test_run_with_another_config_is_refused(tmp_path):
    model_config = AutoencoderConfig(channels=1, latent_channels=4, widths=[4, 8], norm_groups=4)
    train_autoencoder(model_config, AutoencoderTrainConfig(dataset="digits", steps=1, batch_size=4), tmp_path,
                      progress=False)
    with pytest.raises(ConfigError, match="different config"):
        train_autoencoder(model_config, AutoencoderTrainConfig(dataset="digits", steps=2, batch_size=4), tmp_path,
                          progress=False)


def test_bad_configs_are_refused():
    with pytest.raises(ConfigError, match="widths"):
        AutoencoderConfig(widths=[])
    with pytest.raises(ConfigError, match="norm_groups"):
        AutoencoderConfig(widths=[8, 12], norm_groups=8)
    with pytest.raises(ConfigError, match="kl_weight"):
        AutoencoderTrainConfig(kl_weight=-1.0)


# ----- errors naming what was expected ----------------------------------------------------------

def test_missing_directory_names_what_was_expected(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist; expected a directory saved by `tarflow autoencoder"):
        load_autoencoder(tmp_path / "nowhere")


def test_foreign_directory_names_what_was_expected(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="is not an autoencoder directory: expected .*AutoencoderKL"):
        load_autoencoder(tmp_path)


def test_truncated_weights_are_a_checkpoint_error(tmp_path):
    save_tiny_autoencoder(tmp_path / "ae")
    (tmp_path / "ae" / "model.safetensors").write_bytes(b"\x00" * 10)
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        load_autoencoder(tmp_path / "ae")


# ----- diffusers AutoencoderKL ------------------------------------------------------------------

LAYOUTS = {  # the factors and channel counts of each family, on a tiny random network
    "sd-vae": dict(latent_channels=4, scaling_factor=0.18215),
    "sdxl-vae": dict(latent_channels=4, scaling_factor=0.13025, force_upcast=False),
    "flux-vae": dict(latent_channels=16, scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False,
                     use_post_quant_conv=False),
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_diffusers_autoencoder_from_a_local_directory(name, tmp_path):
    layout = LAYOUTS[name]
    vae = tiny_diffusers_vae(**layout)
    vae.save_pretrained(tmp_path / "vae")
    loaded = load_autoencoder(tmp_path / "vae")
    assert (loaded.channels, loaded.latent_channels, loaded.downsample) == (3, layout["latent_channels"], 2)
    assert autoencoder_geometry(tmp_path / "vae") == (3, layout["latent_channels"], 2)
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    shift, scale = layout.get("shift_factor", 0.0), layout["scaling_factor"]
    with torch.no_grad():
        expected = (vae.encode(x).latent_dist.mean - shift) * scale
        assert torch.allclose(loaded.encode(x), expected, rtol=1e-5, atol=1e-6)
        assert torch.allclose(loaded.decode(expected), vae.decode(expected / scale + shift).sample, rtol=1e-5,
                              atol=1e-6)


def test_diffusers_save_round_trip_keeps_metadata_and_user_files(tmp_path):
    """A diffusers autoencoder saves in its own layout plus tarflow.json; a second save replaces only those files,
    and a folder whose config.json is not an AutoencoderKL's is refused untouched."""
    loaded = load_autoencoder(save_diffusers(tmp_path / "vae"))
    (tmp_path / "copy").mkdir()
    (tmp_path / "copy" / "notes.txt").write_text("mine")
    for metadata in ({"noise_std": 0.3}, {"noise_std": 0.5}):
        loaded.save_pretrained(tmp_path / "copy", metadata)
        again = load_autoencoder(tmp_path / "copy")
        assert again.metadata == metadata
    latents = torch.randn(2, 4, 4, 4, generator=torch.Generator().manual_seed(3))
    assert torch.equal(again.decode(latents), loaded.decode(latents))
    assert (tmp_path / "copy" / "notes.txt").read_text() == "mine"
    (tmp_path / "foreign").mkdir()
    (tmp_path / "foreign" / "config.json").write_text("{}")
    with pytest.raises(OutputError, match="not a tarflow model directory"):
        loaded.save_pretrained(tmp_path / "foreign")
    assert (tmp_path / "foreign" / "config.json").read_text() == "{}"


def save_diffusers(path):
    tiny_diffusers_vae(**LAYOUTS["sd-vae"]).save_pretrained(path)
    return path


def test_diffusers_pipeline_folder_uses_its_vae(tmp_path):
    tiny_diffusers_vae(**LAYOUTS["sd-vae"]).save_pretrained(tmp_path / "pipeline" / "vae")
    (tmp_path / "pipeline" / "model_index.json").write_text("{}")
    assert load_autoencoder(tmp_path / "pipeline").latent_channels == 4


def test_diffusers_missing_extra_is_named(tmp_path, monkeypatch):
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    monkeypatch.setitem(__import__("sys").modules, "diffusers", None)
    with pytest.raises(ConfigError, match=r"pip install 'tarflow\[diffusers\]'"):
        load_autoencoder(tmp_path)


def test_diffusers_directory_without_weights_is_a_checkpoint_error(tmp_path):
    pytest.importorskip("diffusers", reason="the diffusers extra is not installed")
    (tmp_path / "config.json").write_text(json.dumps({"_class_name": "AutoencoderKL", "latent_channels": 4}))
    with pytest.raises(CheckpointError, match="cannot be loaded as a diffusers AutoencoderKL"):
        load_autoencoder(tmp_path)


def test_latent_flow_over_a_diffusers_autoencoder_round_trips(tmp_path):
    """A flow saved with a diffusers VAE directory reloads without flags and encodes through the VAE's factors."""
    from tarflow import FlowConfig, TarFlow

    layout = LAYOUTS["flux-vae"]
    vae = tiny_diffusers_vae(**layout)
    vae.save_pretrained(tmp_path / "vae")
    config = FlowConfig(modality="latents", autoencoder=str(tmp_path / "vae"), image_size=4, channels=16,
                        patch_size=1, width=16, num_blocks=2, layers_per_block=[1, 2], head_dim=8,
                        latent_scale=1.5, latent_shift=0.1)
    TarFlow(config).save_pretrained(tmp_path / "flow")
    flow = TarFlow.from_pretrained(tmp_path / "flow")
    x = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(2)) * 2 - 1
    with torch.no_grad():
        expected = ((vae.encode(x).latent_dist.mean - 0.1159) * 0.3611 - 0.1) * 1.5
    latents = flow.modality.encode(x)
    assert torch.allclose(latents, expected, rtol=1e-5, atol=1e-6)
    assert flow.log_prob(latents).shape == (2,)
    assert flow.modality.decode(latents).shape == x.shape


# ----- FID of reconstructions --------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_reconstruction_fid_is_that_of_the_reconstructed_set(tmp_path):
    """Exact reconstructions: FID 0; reconstructions off by 3 levels: the FID of the images against the shifted
    images, computed from the extractor's statistics directly."""
    from tarflow.autoencoders.train import reconstruction_fid
    from tarflow.metrics import FeatureExtractor, fid_from_stats

    torch.jit.save(torch.jit.script(Pool()), str(tmp_path / "pool.pt"))
    extractor = FeatureExtractor(tmp_path / "pool.pt", image_size=32, batch_size=16)
    images = torch.randint(0, 250, (40, 3, 8, 8), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    assert reconstruction_fid(ShiftByLevels(256, 0), extractor, images, 256) == pytest.approx(0.0, abs=1e-6)
    shifted = (images.int() + 3).to(torch.uint8)
    expected = fid_from_stats(extractor.statistics(images, 256, False), extractor.statistics(shifted, 256, False))
    assert expected > 1e-3
    assert reconstruction_fid(ShiftByLevels(256, 3), extractor, images, 256, batch_size=7) == \
        pytest.approx(expected, rel=1e-9)


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_autoencoder_eval_cli_reports_reconstruction_fid(tmp_path, capsys, monkeypatch):
    """The images' statistics are the dataset's, cached as `tarflow fid` caches them: a second eval reads them
    from the cache and reports the same FID."""
    from tarflow.cli import main

    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    torch.jit.save(torch.jit.script(Pool()), str(tmp_path / "pool.pt"))
    save_tiny_autoencoder(tmp_path / "ae", metadata={"dataset": "digits", "levels": 17})
    command = ["autoencoder", "eval", str(tmp_path / "ae"), "--count", "50", "--weights", str(tmp_path / "pool.pt"),
               "--no-progress"]
    assert main(command + ["--out", str(tmp_path / "eval.json")]) == 0
    result = json.loads((tmp_path / "eval.json").read_text())
    assert result["images"] == 50 and result["reconstruction_fid"] > 0
    assert f"FID of the reconstructions against the images: {result['reconstruction_fid']:.2f}" in \
        capsys.readouterr().out
    cached = list((tmp_path / "cache" / "fid").glob("digits-test-50-*.npz"))
    assert len(cached) == 1
    written = cached[0].stat().st_mtime_ns
    assert main(command + ["--out", str(tmp_path / "again.json")]) == 0
    assert cached[0].stat().st_mtime_ns == written  # read, not computed again
    assert json.loads((tmp_path / "again.json").read_text())["reconstruction_fid"] == \
        pytest.approx(result["reconstruction_fid"], rel=1e-9)
