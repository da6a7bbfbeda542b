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
                                                 ("moving-mnist-samples", "moving-mnist-likelihood")])
def test_a_samples_preset_changes_the_noise_and_the_sampling_only(samples, likelihood):
    noisy, plain = get_preset(samples), get_preset(likelihood)
    assert noisy.model == plain.model
    assert noisy.train.noise == "gaussian" and plain.train.noise == "uniform"
    changed = {name for name, value in asdict(noisy.train).items() if asdict(plain.train)[name] != value}
    assert changed <= {"noise", "noise_std", "sample_guidance", "sample_guidance_rule", "sample_temperature"}


def test_the_moving_mnist_preset_is_the_samples_model_conditioned_on_the_digit_pair():
    from tarflow.data.moving_mnist import digit_sets

    digits, samples = get_preset("moving-mnist"), get_preset("moving-mnist-samples")
    changed = {name for name, value in asdict(digits.model).items() if asdict(samples.model)[name] != value}
    assert changed == {"num_classes", "positions"}
    assert digits.model.num_classes == len(digit_sets(2))  # one class per unordered pair of digits
    assert digits.train.noise_std == samples.train.noise_std and digits.train.sample_guidance > 0


def test_a_renamed_preset_names_its_new_name():
    from tarflow.errors import ConfigError

    with pytest.raises(ConfigError, match="'moving-mnist-digits' is now called 'moving-mnist'"):
        get_preset("moving-mnist-digits")
