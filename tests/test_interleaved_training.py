"""`tarflow train --preset interleaved-mnist` (the pretzel model on interleaved MNIST sequences), cut to a tiny model,
a few steps and small splits: the printed figures are those of eval.json and of the saved model, samples are
written, a run resumes, and bad settings get clear errors. Needs the MNIST files in /work/shared/data/mnist
(skipped otherwise)."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import pytest
import torch

import tarflow.train.interleaved as job
from tarflow.cli import main
from tarflow.data.interleaved import WORDS
from tarflow.errors import ConfigError
from tarflow.flows.pretzel import Pretzel
from tarflow.nn.llama import LlamaLayer
from tarflow.presets import PRESETS
from tarflow.train import train
from tarflow.train.config import RunConfig
from tarflow.train.interleaved import evaluate_interleaved
from conftest import write_llama_directory

pytestmark = pytest.mark.usefixtures("one_thread")

MNIST = Path("/work/shared/data/mnist")
TINY = ["--preset", "interleaved-mnist", "--width", "16", "--head-dim", "8", "--mlp-ratio", "1", "--num-blocks", "2",
        "--layers-per-block", "1,1", "--batch-size", "4", "--steps", "3", "--warmup-steps", "1", "--eval-every", "2",
        "--sample-every", "0", "--checkpoint-every", "2", "--no-progress", "--data-dir", str(MNIST)]


@pytest.fixture
def small_splits(monkeypatch):
    """24 training and 12 test sequences instead of 60,000 and 5,000."""
    load = job.load_interleaved
    monkeypatch.setattr(job, "load_interleaved", lambda split, **options: load(split, count=24 if split == "train"
                                                                               else 12, **options))


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs the MNIST files in /work/shared/data/mnist")
def test_train_prints_and_saves_the_test_figures(small_splits, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--out", str(run)]) == 0
    result = json.loads((run / "eval.json").read_text())
    printed = capsys.readouterr().out
    assert (f"test text bits/word {result['text_bits_per_word']:.4f}, image bits/dim "
            f"{result['image_bits_per_dim']:.4f}") in printed and "not a bits/dim" in printed
    model = Pretzel.from_pretrained(run / "model")
    assert model.words == list(WORDS) and model.metadata["noise_std"] == 0.5
    recomputed = evaluate_interleaved(model, job.load_interleaved("test", data_dir=MNIST, progress=False),
                                      "gaussian", 0.5, 0)
    assert math.isclose(recomputed["text_bits_per_word"], result["text_bits_per_word"], rel_tol=1e-5)
    assert math.isclose(recomputed["image_bits_per_dim"], result["image_bits_per_dim"], rel_tol=1e-5)
    assert (run / "samples" / "final.png").is_file()
    lines = (run / "samples" / "final.txt").read_text().splitlines()
    assert len(lines) == 2 * job.SAMPLE_ROWS and all(line.startswith("<bos>") for line in lines)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any("test_text_bits_per_word" in record for record in records)
    assert main(["sample", str(run), "--count", "2"]) == 2
    assert "holds a pretzel model" in capsys.readouterr().err


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs the MNIST files in /work/shared/data/mnist")
def test_a_hugging_face_language_model_trains_as_the_lm_stream(small_splits, tmp_path, capsys):
    directory = write_llama_directory(tmp_path / "llama", hidden=16, layers=1, heads=2, kv_heads=1)
    run = tmp_path / "run"
    assert main(["train", *TINY, "--language-model", directory, "--out", str(run)]) == 0
    assert f"its language-model stream the layers of {directory} (0 of {len(WORDS)} words" in capsys.readouterr().out
    shutil.rmtree(directory)
    model = Pretzel.from_pretrained(run / "model")
    assert isinstance(model.lm_layers[0], LlamaLayer) and model.config.language_model == directory
    assert main(["generate", str(run), "--prompt", "a seven : <image>", "--out", str(tmp_path / "sequence")]) == 0
    assert main(["train", *TINY, "--language-model", directory, "--out", str(tmp_path / "again")]) == 2
    assert "holds no config.json" in capsys.readouterr().err


def tiny_config(**train_options) -> RunConfig:
    preset = PRESETS["interleaved-mnist"]
    model = {**preset["model"], "width": 16, "head_dim": 8, "mlp_ratio": 1, "num_blocks": 2, "layers_per_block": [1, 1]}
    train_settings = {**preset["train"], "batch_size": 4, "steps": 3, "warmup_steps": 1, "eval_every": 0,
                      "sample_every": 0, "checkpoint_every": 0, "data_dir": str(MNIST), **train_options}
    return RunConfig.from_dict({"model": model, "train": train_settings})


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs the MNIST files in /work/shared/data/mnist")
def test_a_resumed_run_ends_as_an_uninterrupted_one(small_splits, tmp_path):
    config = tiny_config()
    whole = train(config, tmp_path / "whole", progress=False)
    assert train(config, tmp_path / "parts", progress=False, stop_at=2) == {"step": 2}
    resumed = train(config, tmp_path / "parts", progress=False)
    assert resumed["text_bits_per_word"] == whole["text_bits_per_word"]
    assert resumed["image_bits_per_dim"] == whole["image_bits_per_dim"]
    first, second = (Pretzel.from_pretrained(tmp_path / name / "model").state_dict() for name in ("whole", "parts"))
    assert all(torch.equal(first[name], second[name]) for name in first)


@pytest.mark.parametrize("options, message", [
    ({"train": {"dataset": "digits"}}, "set dataset=mnist"),
    ({"model": {"context": 60}}, "longest interleaved sequence takes 109 positions"),
])
def test_bad_settings_are_clear_errors(small_splits, tmp_path, options, message):
    config = tiny_config(**options.get("train", {}))
    if "model" in options:
        config = RunConfig(dataclasses.replace(config.model, **options["model"]), config.train)
    with pytest.raises(ConfigError, match=message):
        train(config, tmp_path / "run", progress=False)


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs the MNIST files in /work/shared/data/mnist")
@pytest.mark.parametrize("modality", ["text", "image"])
def test_a_single_modality_baseline_trains_on_its_view_and_says_so(modality, small_splits, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *TINY, "--single-modality", modality, "--out", str(run)]) == 0
    result = json.loads((run / "eval.json").read_text())
    printed = capsys.readouterr().out
    model = Pretzel.from_pretrained(run / "model")
    assert model.metadata["single_modality"] == modality
    view = job.load_interleaved("test", data_dir=MNIST, progress=False).one_modality(modality)
    recomputed = evaluate_interleaved(model, view, "gaussian", 0.5, 0)
    assert math.isclose(recomputed["text_bits_per_word"], result["text_bits_per_word"], rel_tol=1e-5)
    if modality == "text":
        assert result["image_bits_per_dim"] is None and "image bits/dim" not in printed and "samples/" not in printed
        assert not (run / "samples").exists()
        assert main(["generate", str(run), "--prompt", "a seven : <image>"]) == 2
        assert "text-only baseline" in capsys.readouterr().err
    else:
        assert math.isclose(recomputed["image_bits_per_dim"], result["image_bits_per_dim"], rel_tol=1e-5)
        assert (run / "samples" / "final.png").is_file()
        lines = (run / "samples" / "final.txt").read_text().splitlines()
        assert all(line.startswith("<bos> [image]") for line in lines)
    assert main(["eval", str(run), "--likelihood-count", "12", "--no-progress", "--data-dir", str(MNIST)]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["single_modality"] == modality and "image_to_text_accuracy" not in evaluated
    assert math.isclose(evaluated["text_bits_per_word"], result["text_bits_per_word"], rel_tol=1e-5)
    assert main(["eval", str(run), "--arithmetic-count", "5", "--no-progress", "--data-dir", str(MNIST)]) == 2
    assert "need words and images" in capsys.readouterr().err


def test_single_modality_is_for_pretzel_models_only():
    with pytest.raises(ConfigError, match="single_modality='text' makes a baseline of a pretzel model"):
        RunConfig.from_dict({"train": {"single_modality": "text"}})
