"""Bad input gets a clear TarflowError naming the input and what was expected."""

import json

import pytest
import torch

from tarflow import CheckpointError, ConfigError, FlowConfig, InputError, TarFlow


@pytest.fixture
def model():
    return TarFlow(FlowConfig(image_size=4, channels=1, patch_size=2, width=16, num_blocks=2, layers_per_block=1,
                              head_dim=8, num_classes=3))


def x(*shape):
    return torch.zeros(*shape)


@pytest.mark.parametrize("bad, words", [
    (x(2, 1, 8, 8), ["8x8", "4x4"]),
    (x(2, 3, 4, 4), ["3 channels", "expects 1"]),
    (x(1, 4, 4), ["(B, 1, 4, 4)"]),
    (torch.zeros(2, 1, 4, 4, dtype=torch.uint8), ["floating point"]),
])
def test_wrong_images(model, bad, words):
    with pytest.raises(InputError) as e:
        model.log_prob(bad, torch.zeros(bad.shape[0], dtype=torch.long))
    for w in words:
        assert w in str(e.value)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_input(model, value):
    bad = x(2, 1, 4, 4)
    bad[1, 0, 2, 3] = value
    with pytest.raises(InputError, match="NaN or inf"):
        model(bad, torch.tensor([0, 1]))


@pytest.mark.parametrize("y, words", [
    (None, ["class-conditional", "0..2"]),
    (torch.tensor([0, 4]), ["0..2", "4"]),
    (torch.tensor([-1, 0]), ["0..2"]),
    (torch.tensor([0.0, 1.0]), ["integers"]),
    (torch.tensor([0, 1, 2]), ["shape (2,)"]),
])
def test_bad_labels(model, y, words):
    with pytest.raises(InputError) as e:
        model.log_prob(x(2, 1, 4, 4), y)
    for w in words:
        assert w in str(e.value)


def test_unvalidated_log_prob_is_the_same_number(model):
    """validate=False (the trainer's compile-friendly call) skips the checks, not the arithmetic."""
    good = torch.rand(3, 1, 4, 4) * 2 - 1
    y = torch.tensor([0, 2, 3])
    torch.testing.assert_close(model.log_prob(good, y, validate=False), model.log_prob(good, y), rtol=0, atol=0)
    bad = good.clone()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(InputError, match="NaN or inf"):
        model.log_prob(bad, y)
    assert torch.isnan(model.log_prob(bad, y, validate=False)[0])


def test_null_label_is_allowed(model):
    assert model.log_prob(x(2, 1, 4, 4), torch.tensor([3, 3])).shape == (2,)


def test_labels_for_unconditional_model():
    m = TarFlow(FlowConfig(image_size=4, patch_size=2, width=16, num_blocks=1, layers_per_block=1, head_dim=8))
    with pytest.raises(InputError, match="unconditional"):
        m.log_prob(x(2, 1, 4, 4), torch.tensor([0, 1]))


@pytest.mark.parametrize("kwargs, words", [
    (dict(image_size=6, patch_size=4), ["divisible"]),
    (dict(width=30, head_dim=8), ["divisible"]),
    (dict(transform="spline"), ["transform", "affine"]),
    (dict(num_blocks=0), ["num_blocks"]),
])
def test_bad_config(kwargs, words):
    with pytest.raises(ConfigError) as e:
        FlowConfig(**kwargs)
    for w in words:
        assert w in str(e.value)


def test_missing_checkpoint(tmp_path):
    with pytest.raises(CheckpointError, match="no saved model"):
        TarFlow.from_pretrained(tmp_path / "nothing")


def test_truncated_weights(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "model.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="truncated or corrupt"):
        TarFlow.from_pretrained(tmp_path / "m")


def test_missing_weights(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="missing"):
        TarFlow.from_pretrained(tmp_path / "m")


def test_truncated_config(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "config.json"
    f.write_text(f.read_text()[:40])
    with pytest.raises(CheckpointError, match="not valid JSON"):
        TarFlow.from_pretrained(tmp_path / "m")


def test_other_format_version(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["format_version"] = 99
    f.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="format 99"):
        TarFlow.from_pretrained(tmp_path / "m")


def test_unknown_config_field_in_checkpoint(model, tmp_path):
    model.save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["model"]["widht"] = 3
    f.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="widht"):
        TarFlow.from_pretrained(tmp_path / "m")


def test_layout_mismatch_is_not_a_partial_load(model, tmp_path):
    """Weights from another layout (here: one more block) are refused, naming the tensors."""
    model.save_pretrained(tmp_path / "m")
    f = tmp_path / "m" / "config.json"
    cfg = json.loads(f.read_text())
    cfg["model"]["num_blocks"] = 3
    f.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="missing .* tensors"):
        TarFlow.from_pretrained(tmp_path / "m")
    cfg["model"]["num_blocks"], cfg["model"]["width"], cfg["model"]["head_dim"] = 2, 32, 8
    f.write_text(json.dumps(cfg))
    with pytest.raises(CheckpointError, match="wrong shape"):
        TarFlow.from_pretrained(tmp_path / "m")
