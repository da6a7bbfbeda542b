"""Flow-score matching: the causal denoiser (block-causal over frames), its target (the flow's Tweedie correction),
fitting, the sampler that applies it, and save/load."""

from __future__ import annotations

import pytest
import torch

from tarflow import FlowConfig, SequentialSampler, TarFlow, tweedie_denoise
from tarflow.data import dequantize
from tarflow.errors import ConfigError
from tarflow.sampling.flow_score import (CausalScoreDenoiser, ScoreDenoisedSampler, ScoreDenoiserConfig,
                                         denoising_errors, fit_score_denoiser, flow_correction,
                                         noisy_clips)

from conftest import randomise

pytestmark = pytest.mark.usefixtures("one_thread")

SIGMA = 0.1


def video_model(num_classes: int = 0):
    torch.manual_seed(0)
    config = FlowConfig(modality="video", frame_count=3, image_size=4, channels=1, patch_size=2, width=16,
                        head_dim=8, mlp_ratio=2, num_blocks=2, layers_per_block=1, num_classes=num_classes)
    return randomise(TarFlow(config).double(), std=0.1).eval()


def random_denoiser():
    torch.manual_seed(1)
    denoiser = CausalScoreDenoiser(ScoreDenoiserConfig(3, 4, 1, 2, SIGMA, width=16, layers=1)).double()
    with torch.no_grad():
        for p in denoiser.parameters():
            p.add_(torch.randn_like(p) * 0.2)
    return denoiser.eval()


def test_denoiser_is_causal_over_frames():
    denoiser = random_denoiser()
    clips = torch.rand(2, 3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    out = denoiser(clips)
    for frame in range(3):
        moved = clips.clone()
        moved[:, frame] += 0.5
        change = (denoiser(moved) - out).abs().amax(dim=(0, 2, 3, 4))
        assert frame == 0 or change[:frame].max() <= 1e-12  # earlier frames do not see it
        assert change[frame:].min() > 1e-6  # its own and later frames do


def test_target_is_the_tweedie_correction():
    model = video_model()
    noisy = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(2)) * 0.5
    expected = tweedie_denoise(model, noisy, None, SIGMA) - noisy
    assert (flow_correction(model, noisy, SIGMA) - expected).abs().max() <= 1e-12


def test_fitting_reduces_the_loss_and_the_sampler_applies_the_correction(tmp_path):
    model = video_model()
    clips = torch.randint(0, 256, (16, 3, 1, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    torch.manual_seed(5)
    denoiser, losses = fit_score_denoiser(model, clips, 256, SIGMA, steps=60, batch_size=8, lr=3e-3, width=16,
                                          layers=1)
    assert sum(losses[-10:]) < 0.6 * sum(losses[:10])  # the zero correction it starts from: ratio 1
    z = torch.randn(2, 3, 1, 4, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    noisy = SequentialSampler(model).sample(2, z=z)
    denoised = ScoreDenoisedSampler(SequentialSampler(model), denoiser).sample(2, z=z)
    assert (denoised - (noisy + denoiser(noisy))).abs().max() <= 1e-12
    loaded = CausalScoreDenoiser.from_pretrained(denoiser.save_pretrained(tmp_path / "denoiser"))
    assert loaded.config == denoiser.config and loaded.proj_in.weight.dtype == torch.float64
    assert (loaded(noisy) - denoiser(noisy)).abs().max() <= 1e-12


def test_a_conditional_flow_is_matched_on_the_score_given_each_clips_own_class():
    """The denoiser starts at zero, so the first loss is the mean square of the first batch's targets: recomputed
    here with the drawn clips' labels, it matches; with every label moved to the next class, it does not."""
    model = video_model(num_classes=3)
    clips = torch.randint(0, 256, (8, 3, 1, 4, 4), generator=torch.Generator().manual_seed(3), dtype=torch.uint8)
    labels = torch.arange(8) % 3
    _, losses = fit_score_denoiser(model, clips, 256, SIGMA, steps=1, batch_size=4, width=16, layers=1,
                                   labels=labels)
    generator = torch.Generator().manual_seed(0)
    rows = torch.randint(0, 8, (4,), generator=generator)
    _, noisy = noisy_clips(model, clips[rows], 256, SIGMA, generator)
    own = flow_correction(model, noisy, SIGMA, labels[rows]).pow(2).mean().item()
    other = flow_correction(model, noisy, SIGMA, (labels[rows] + 1) % 3).pow(2).mean().item()
    assert abs(losses[0] - own) <= 1e-12 * own and abs(losses[0] - other) > 1e-6 * own
    with pytest.raises(ConfigError, match="3 classes, so labels must be the clips' labels"):
        fit_score_denoiser(model, clips, 256, SIGMA, steps=1)


def test_denoising_errors_are_the_squared_errors_of_each_estimate_to_the_clean_clips():
    """One batch (seed 0) recomputed by hand; the noisy clips' error is sigma^2 up to sampling (768 dims)."""
    model, denoiser = video_model(), random_denoiser()
    clips = torch.randint(0, 256, (16, 3, 1, 4, 4), generator=torch.Generator().manual_seed(6), dtype=torch.uint8)
    errors = denoising_errors(model, clips, 256, SIGMA, denoiser=denoiser, batch_size=16)
    clean = dequantize(clips, 256, "gaussian", 0.0).double()
    noisy = clean + SIGMA * torch.randn(clean.shape, generator=torch.Generator().manual_seed(0)).double()
    expected = {"noisy": noisy, "tweedie": noisy + flow_correction(model, noisy, SIGMA),
                "score_denoiser": denoiser.denoise(noisy)}
    assert errors.keys() == expected.keys()
    for name, estimate in expected.items():
        assert abs(errors[name] - float(((estimate - clean) ** 2).mean())) <= 1e-12
    assert 0.8 * SIGMA ** 2 <= errors["noisy"] <= 1.2 * SIGMA ** 2
    assert errors["tweedie"] != errors["noisy"] != errors["score_denoiser"]
    batched = denoising_errors(model, clips, 256, SIGMA, batch_size=5)  # other noise, the same kinds
    assert batched.keys() == {"noisy", "tweedie"} and 0.8 * SIGMA ** 2 <= batched["noisy"] <= 1.2 * SIGMA ** 2
