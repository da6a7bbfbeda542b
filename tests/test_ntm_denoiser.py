"""The self-distilled denoiser of Normalizing Trajectory Models: its target against the closed form of an
initial model's last step, distillation lowering its loss, sampling with it (by seed, against the trajectory
denoised by hand), save/load, `tarflow distill-denoiser`, `--denoise none`, and errors."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
import torch
from PIL import Image

from tarflow import ConfigError, FlowConfig
from tarflow.cli import main
from tarflow.errors import CheckpointError
from tarflow.flows import NormalizingTrajectoryModel
from tarflow.sampling import Guidance, TrajectorySampler
from tarflow.sampling.trajectory_denoiser import (DENOISER, DenoiserConfig, TrajectoryDenoiser, dequantization_std,
                                                  distill_denoiser, load_denoiser, score_correction)
from tarflow.viz import save_grid, to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")

SIGNAL = [0.8, 0.45, 0.0]
TINY = {"width": 16, "head_dim": 8, "mlp_ratio": 2, "predictor_layers": 1, "trajectory_steps": 2}
TINY_TRAIN = {"steps": 4, "batch_size": 16, "warmup_steps": 2, "log_every": 2, "eval_every": 0, "sample_every": 0,
              "checkpoint_every": 0, "num_samples": 10}
TINY_FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in {**TINY, **TINY_TRAIN}.items()]


def initial_model(dtype=torch.float64) -> NormalizingTrajectoryModel:
    """A fresh 4x4x2 model (patch 2): its last step is p_1(x_0 | x_1) = N(r_1 x_1, s_1^2 I) exactly."""
    torch.manual_seed(0)
    config = FlowConfig(architecture="ntm", image_size=4, channels=2, patch_size=2, width=16, num_blocks=2,
                        layers_per_block=1, head_dim=8, mlp_ratio=2, predictor_layers=1, trajectory_steps=3,
                        trajectory_signal=SIGNAL, num_classes=3)
    return NormalizingTrajectoryModel(config).to(dtype).eval()


def test_target_is_the_tweedie_correction_of_the_last_steps_score():
    """sigma^2 grad log N(x_0; r_1 x_1, s_1^2) = -sigma^2 (x_0 - r_1 x_1) / s_1^2 for the initial model."""
    model = initial_model()
    final, last_input = torch.randn(3, 2, 4, 4, dtype=torch.float64), torch.randn(3, 2, 4, 4, dtype=torch.float64)
    ratio, variance = SIGNAL[0], 1 - SIGNAL[0] ** 2
    expected = -0.05 ** 2 * (final - ratio * last_input) / variance
    got = score_correction(model, final, last_input, torch.arange(3), 0.05)
    assert torch.allclose(got, expected, atol=1e-12)


def test_distillation_lowers_the_loss_below_no_correction():
    """On held-out trajectories of the model, the distilled d is closer to the target than d = 0 is."""
    model = initial_model(torch.float32)
    denoiser, losses = distill_denoiser(model, steps=60, batch_size=16, lr=3e-3, width=16, layers=1, sigma=0.5)
    assert len(losses) == 60 and denoiser.config.sigma == 0.5 and denoiser.config.num_classes == 3
    trajectory = TrajectorySampler(model).trajectory(64, torch.arange(64) % 3,
                                                     generator=torch.Generator().manual_seed(99))
    final, last_input = trajectory[:, 0], trajectory[:, 1]
    target = -0.25 * (final - SIGNAL[0] * last_input) / (1 - SIGNAL[0] ** 2)  # closed form, as above
    with torch.no_grad():
        distilled = (denoiser(final, last_input, torch.arange(64) % 3) - target).pow(2).mean().item()
    assert distilled < 0.5 * target.pow(2).mean().item()
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:10])


def test_distillation_draws_trajectories_with_the_given_guidance_and_temperature(monkeypatch):
    model = initial_model(torch.float32)
    drawn = []
    original = TrajectorySampler.trajectory

    def recording(self, n, y=None, temperature=1.0, guidance=None, generator=None, noise=None):
        drawn.append((temperature, guidance))
        return original(self, n, y, temperature, guidance, generator, noise)

    monkeypatch.setattr(TrajectorySampler, "trajectory", recording)
    guidance = Guidance(1.5, "starflow")
    denoiser, _ = distill_denoiser(model, steps=2, batch_size=4, width=16, layers=1, sigma=0.5, guidance=guidance,
                                   temperature=0.8)
    assert drawn == [(0.8, guidance)] * 2
    assert (denoiser.config.guidance, denoiser.config.guidance_rule, denoiser.config.temperature) == (1.5, "starflow",
                                                                                                        0.8)
    unconditional = NormalizingTrajectoryModel(dataclasses.replace(model.config, num_classes=0))
    with pytest.raises(ConfigError, match="guidance needs a class-conditional model"):
        distill_denoiser(unconditional, steps=1, guidance=guidance)


def test_sampling_with_the_denoiser_is_the_trajectory_denoised_by_seed(tmp_path):
    model = initial_model(torch.float32)
    denoiser = TrajectoryDenoiser(DenoiserConfig(4, 2, 2, 0.1, width=16, layers=1, num_classes=3)).eval()
    torch.nn.init.normal_(denoiser.proj_out.weight, std=0.1)  # a non-zero correction
    sampler, y = TrajectorySampler(model, denoiser), torch.arange(4) % 3
    images = sampler.sample(4, y, 0.9, generator=torch.Generator().manual_seed(5))
    again = sampler.sample(4, y, 0.9, generator=torch.Generator().manual_seed(5))
    trajectory = TrajectorySampler(model).trajectory(4, y, 0.9, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        by_hand = trajectory[:, 0] + denoiser(trajectory[:, 0], trajectory[:, 1], y)
        other_classes = trajectory[:, 0] + denoiser(trajectory[:, 0], trajectory[:, 1], (y + 1) % 3)
        no_class = denoiser(trajectory[:, 0], trajectory[:, 1])
        null_class = denoiser(trajectory[:, 0], trajectory[:, 1], torch.full((4,), 3))
    assert torch.equal(images, again) and torch.equal(images, by_hand)
    assert not torch.allclose(images, other_classes)  # the class is read
    assert torch.equal(no_class, null_class)  # no class and the null label: the same row
    assert not torch.equal(images, trajectory[:, 0])
    assert not torch.equal(images, sampler.sample(4, y, 0.9, generator=torch.Generator().manual_seed(6)))
    assert sampler.describe() == "ntm, 3 steps, self-distilled denoiser"

    denoiser.save_pretrained(tmp_path / DENOISER)
    loaded = load_denoiser(model, tmp_path)
    assert all(torch.equal(a, b) for a, b in zip(denoiser.state_dict().values(), loaded.state_dict().values()))
    assert torch.equal(TrajectorySampler(model, loaded).sample(4, y, 0.9, generator=torch.Generator().manual_seed(5)),
                       images)
    assert load_denoiser(model, tmp_path / "elsewhere") is None


def test_bad_denoisers_are_refused(tmp_path):
    model = initial_model(torch.float32)
    TrajectoryDenoiser(DenoiserConfig(8, 1, 2, 0.1, width=16, layers=1)).save_pretrained(tmp_path / DENOISER)
    with pytest.raises(CheckpointError, match="distilled for 1x8x8 images"):
        load_denoiser(model, tmp_path)
    (tmp_path / DENOISER / "config.json").write_text("{}")
    with pytest.raises(CheckpointError, match="not a saved trajectory denoiser"):
        load_denoiser(model, tmp_path)
    TrajectoryDenoiser(DenoiserConfig(4, 2, 2, 0.1, width=16, layers=1, num_classes=5)).save_pretrained(
        tmp_path / DENOISER)
    with pytest.raises(CheckpointError, match="distilled for 5 classes, not this model's 3"):
        load_denoiser(model, tmp_path)
    with pytest.raises(ConfigError, match="not divisible"):
        DenoiserConfig(4, 2, 2, 0.1, width=15, heads=2)
    with pytest.raises(ConfigError, match="sigma"):
        DenoiserConfig(4, 2, 2, 0.0)
    assert dequantization_std(256) == pytest.approx(2 / 256 / 12 ** 0.5)


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("ntm-denoiser") / "run"
    assert main(["train", "--preset", "digits-ntm", "--out", str(run), "--no-progress", *TINY_FLAGS]) == 0
    return run


SETTING = ["--count", "10", "--guidance", "0", "--temperature", "1"]  # not the run's stored setting


def grid(images, path) -> np.ndarray:
    return np.asarray(Image.open(save_grid(to_uint8(images, 17), path, nrow=10)))


def test_cli_distills_and_sample_uses_it_unless_denoise_none(run_dir, tmp_path, capsys):
    raw = tmp_path / "raw.png"
    assert main(["sample", str(run_dir), *SETTING, "--out", str(raw)]) == 0  # before: no denoiser
    assert "no denoiser" in capsys.readouterr().out
    assert main(["distill-denoiser", str(run_dir), "--steps", "3", "--batch-size", "4", "--width", "16",
                 "--layers", "1"]) == 0
    said, progress = capsys.readouterr()
    said = json.loads(said)
    assert "distilling denoiser: 3/3" in progress  # a progress line (a bar on a terminal)
    model = NormalizingTrajectoryModel.from_pretrained(run_dir / "model")
    assert said["out"] == str(run_dir / "model" / DENOISER) and said["sigma"] == pytest.approx(dequantization_std(17))
    stored = model.metadata["sampling"]  # distilled on trajectories drawn as the model samples by default
    assert (said["guidance"], said["temperature"]) == (stored["guidance"], stored.get("temperature", 1.0))
    assert stored["guidance"] > 0 and load_denoiser(model, run_dir / "model").config.guidance == stored["guidance"]
    denoised, skipped = tmp_path / "denoised.png", tmp_path / "skipped.png"
    assert main(["sample", str(run_dir), *SETTING, "--out", str(denoised)]) == 0
    assert "the self-distilled denoiser" in capsys.readouterr().out
    assert main(["sample", str(run_dir), *SETTING, "--out", str(skipped), "--denoise", "none"]) == 0
    capsys.readouterr()
    denoiser = load_denoiser(model, run_dir / "model")
    y, seeded = torch.arange(10), torch.Generator().manual_seed(0)
    by_hand = TrajectorySampler(model, denoiser).sample(10, y, generator=seeded)
    assert np.array_equal(np.asarray(Image.open(denoised)), grid(by_hand, tmp_path / "hand.png"))
    assert np.array_equal(np.asarray(Image.open(skipped)), np.asarray(Image.open(raw)))


@pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")
def test_fid_names_the_denoiser_it_sampled_with(run_dir, pool_weights, capsys):
    fid = ["fid", str(run_dir), "--weights", str(pool_weights), "--count", "4", "--split", "test", "--no-progress"]
    if not (run_dir / "model" / DENOISER).exists():
        assert main(["distill-denoiser", str(run_dir), "--steps", "1", "--batch-size", "2", "--width", "16"]) == 0
    capsys.readouterr()
    assert main(fid) == 0
    assert json.loads(capsys.readouterr().out)["sampler"] == "ntm, 2 steps, self-distilled denoiser"
    assert main([*fid, "--denoise", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["sampler"] == "ntm, 2 steps"


def test_cli_refusals(run_dir, tmp_path, capsys):
    tarflow_run = tmp_path / "tarflow"
    assert main(["train", "--preset", "tiny", "--steps", "2", "--eval-every", "0", "--sample-every", "0",
                 "--no-progress", "--out", str(tarflow_run)]) == 0
    capsys.readouterr()
    assert main(["distill-denoiser", str(tarflow_run), "--steps", "1"]) == 2
    assert "distill-denoiser is for Normalizing Trajectory Models" in capsys.readouterr().err
    assert main(["distill-denoiser", str(run_dir), "--steps", "1", "--width", "15"]) == 2
    assert "not divisible" in capsys.readouterr().err
    assert main(["sample", str(run_dir), "--denoise", "tweedie"]) == 2
    assert "--denoise does not apply" in capsys.readouterr().err
