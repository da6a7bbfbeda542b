"""Training on digits: the loss goes down, checkpoints resume exactly, run directories are checked."""

import dataclasses
import json

import pytest
import torch
from safetensors.torch import load_file

from tarflow import ConfigError, TarFlow
from tarflow.data import load_dataset
from tarflow.metrics import evaluate_bpd
from tarflow.presets import get_preset
from tarflow.train import train
from tarflow.train.step import lr_factor


def tiny(**train_overrides):
    config = get_preset("tiny")
    for k, v in train_overrides.items():
        setattr(config.train, k, v)
    return config


@pytest.mark.parametrize("model_fields", [{}, {"transform": "mixture", "mixture_components": 3},
                                          {"layers_per_block": [1, 2], "start_token": "learned",
                                           "positions": "rope", "condition_top_only": True, "scale": "softplus"}],
                         ids=["default", "mixture", "starflow-options"])
def test_a_few_steps_lower_the_loss(tmp_path, model_fields):
    config = tiny(steps=30, eval_every=0, sample_every=0, checkpoint_every=0, ema_decay=0.0)
    config.model = dataclasses.replace(config.model, **model_fields)
    test = load_dataset("digits", "test")
    torch.manual_seed(config.train.seed)
    before = evaluate_bpd(TarFlow(config.model), test.images, test.labels, test.levels)["bits_per_dim"]
    result = train(config, tmp_path / "run", progress=False)
    assert result["bits_per_dim"] < before - 0.3, (before, result)
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in rows if "loss" in r]
    assert losses[-1] < losses[0]


def test_run_directory_contents(tmp_path):
    train(tiny(steps=20), tmp_path / "run", progress=False)
    run = tmp_path / "run"
    for name in ["config.json", "metrics.jsonl", "loss_curve.png", "samples.png", "eval.json",
                 "model/config.json", "model/model.safetensors", "checkpoint/trainer.pt", "samples/step_000020.png"]:
        assert (run / name).is_file(), name
    model = TarFlow.from_pretrained(run / "model")
    assert model.metadata["dataset"] == "digits" and model.metadata["levels"] == 17
    assert json.loads((run / "eval.json").read_text())["images"] == 360


def test_the_last_steps_evaluation_is_the_final_one(tmp_path, monkeypatch):
    """The test set is evaluated once at the end: the last step's evaluation, with eval_draws, is eval.json's."""
    import tarflow.train.trainer as trainer

    calls = []
    evaluate = trainer.evaluate
    monkeypatch.setattr(trainer, "evaluate", lambda *args, **kwargs: calls.append(kwargs) or evaluate(*args, **kwargs))
    result = train(tiny(steps=20, eval_every=10, eval_draws=2, sample_every=0), tmp_path / "run", progress=False)
    assert [call.get("draws", 1) for call in calls] == [1, 2]  # step 10, then step 20 as the final evaluation
    rows = [json.loads(row) for row in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [row["test_bpd"] for row in rows if "test_bpd" in row][-1] == result["bits_per_dim"]
    test = load_dataset("digits", "test")
    model = TarFlow.from_pretrained(tmp_path / "run" / "model")
    again = evaluate_bpd(model, test.images, test.labels, test.levels, draws=2)
    assert result["draws"] == 2 and abs(again["bits_per_dim"] - result["bits_per_dim"]) < 1e-6


def weights(run):
    return {name: load_file(str(run / "checkpoint" / name)) for name in ("model.safetensors", "ema.safetensors")}


def test_resume_reproduces_the_uninterrupted_run_exactly(tmp_path):
    config = tiny(steps=24, checkpoint_every=8, eval_every=0, sample_every=0)
    train(config, tmp_path / "straight", progress=False)
    out = train(config, tmp_path / "resumed", progress=False, stop_at=12)  # as if killed after step 12
    assert out == {"step": 12}
    state = torch.load(tmp_path / "resumed" / "checkpoint" / "trainer.pt", weights_only=True)
    assert state["step"] == 12
    train(config, tmp_path / "resumed", progress=False)  # same command again: continues from step 12
    a, b = weights(tmp_path / "straight"), weights(tmp_path / "resumed")
    for file in a:
        assert a[file].keys() == b[file].keys()
        for k in a[file]:
            assert torch.equal(a[file][k], b[file][k]), (file, k)
    steps = [json.loads(r)["step"] for r in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(set(steps))  # no duplicated log lines after the resume


def test_a_different_config_in_an_existing_run_is_refused(tmp_path):
    train(tiny(steps=4, checkpoint_every=2), tmp_path / "run", progress=False, stop_at=2)
    with pytest.raises(ConfigError, match="train.lr"):
        train(tiny(steps=4, checkpoint_every=2, lr=0.5), tmp_path / "run", progress=False)


def test_dataset_and_model_must_fit(tmp_path):
    config = tiny()
    config.model.image_size = 16
    with pytest.raises(ConfigError, match="image_size=8"):
        train(config, tmp_path / "run", progress=False)


def test_lr_schedule_warmup_then_cosine_to_zero():
    tc = tiny(steps=100, warmup_steps=10).train
    assert lr_factor(0, tc) == pytest.approx(0.1)
    assert lr_factor(9, tc) == pytest.approx(1.0)
    assert lr_factor(10, tc) == pytest.approx(1.0)
    assert lr_factor(55, tc) == pytest.approx(0.5)
    assert lr_factor(100, tc) == pytest.approx(0.0)
