"""Every preset is a valid run configuration, and the samples presets keep their likelihood preset's model."""

from __future__ import annotations

from dataclasses import asdict

import pytest

from tarflow.presets import PRESETS, get_preset


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_is_a_valid_run_configuration(name):
    config = get_preset(name)  # RunConfig.from_dict checks every field and their combinations
    assert config.train.steps >= 1 and config.model.width >= 1


@pytest.mark.parametrize("samples, likelihood", [("mnist-samples", "mnist"), ("cifar10-samples", "cifar10"),
                                                 ("moving-mnist-samples", "moving-mnist")])
def test_a_samples_preset_changes_the_noise_and_the_sampling_only(samples, likelihood):
    noisy, plain = get_preset(samples), get_preset(likelihood)
    assert noisy.model == plain.model
    assert noisy.train.noise == "gaussian" and plain.train.noise == "uniform"
    changed = {name for name, value in asdict(noisy.train).items() if asdict(plain.train)[name] != value}
    assert changed <= {"noise", "noise_std", "sample_guidance", "sample_guidance_rule", "sample_temperature"}
