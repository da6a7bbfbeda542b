"""`tarflow train | eval | generate` of text models on a tiny text file: the printed bits/char and its bound, the
saved model, resuming, and clear errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tarflow.cli import main
from tarflow.data.text import load_text
from tarflow.flows.language import bits_per_char, load_language_model, log_likelihood
from tarflow.presets import get_preset
from tarflow.train import train
from tarflow.train.config import RunConfig

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--context", "8", "--width", "16", "--head-dim", "8", "--num-blocks", "2", "--layers-per-block", "1",
        "--embed-dim", "2", "--mixture-components", "2", "--batch-size", "4", "--steps", "3", "--warmup-steps", "1",
        "--eval-every", "0", "--checkpoint-every", "0", "--no-progress", "--dataset", "text"]
LINES = ["ROMEO: but soft, what light", "JULIET: ay me", "the quick brown fox jumps over the lazy dog"]


@pytest.fixture
def text_file(tmp_path):
    file = tmp_path / "tiny.txt"
    file.write_text("\n".join(LINES[i % 3] for i in range(40)) + "\n")
    return file


@pytest.mark.parametrize("preset, extra", [("shakespeare", ["--chars-per-token", "2"]), ("shakespeare-ar", [])])
def test_train_eval_generate(preset, extra, text_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", preset, "--out", str(run), "--data-dir", str(text_file), *TINY, *extra]) == 0
    printed = capsys.readouterr().out
    result = json.loads((run / "eval.json").read_text())
    assert f"test bits/char: {result['bits_per_char']:.4f}" in printed and result["bound"] in printed
    model = load_language_model(run / "model")
    test = load_text("text", "test", 8, data_dir=str(text_file), vocabulary=model.config.vocabulary)
    windows = test.windows(8)
    generator = torch.Generator().manual_seed(0)  # evaluate_text's draws, recomputed by hand
    with torch.no_grad():
        expected = torch.cat([bits_per_char(log_likelihood(model, chunk, generator).double(), 8)
                              for chunk in windows.split(64)])
    assert abs(result["bits_per_char"] - expected.mean().item()) <= 1e-9
    assert result["windows"] == len(windows) and (run / "samples.txt").is_file()

    assert main(["eval", str(run), "--no-progress"]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated["bits_per_char"] == result["bits_per_char"] and evaluated["bound"] == result["bound"]
    assert main(["eval", str(run), "--split", "validation", "--no-progress"]) == 0
    validation = load_text("text", "validation", 8, data_dir=str(text_file), vocabulary=model.config.vocabulary)
    assert json.loads(capsys.readouterr().out)["windows"] == len(validation.windows(8))

    assert main(["generate", str(run), "--prompt", "ROMEO:", "--length", "20", "--temperature", "0.8"]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("ROMEO:") and len(captured.out.rstrip("\n")) >= 26
    assert "characters/s" in captured.err


def test_resumed_text_run_equals_an_uninterrupted_one(text_file, tmp_path):
    config = get_preset("shakespeare").to_dict()
    config["model"].update(context=8, width=16, head_dim=8, num_blocks=2, layers_per_block=1, embed_dim=2,
                           mixture_components=2)
    config["train"].update(dataset="text", data_dir=str(text_file), batch_size=4, steps=4, warmup_steps=1,
                           eval_every=0, checkpoint_every=0)
    whole = train(RunConfig.from_dict(config), tmp_path / "whole", progress=False)
    assert train(RunConfig.from_dict(config), tmp_path / "split", progress=False, stop_at=2) == {"step": 2}
    resumed = train(RunConfig.from_dict(config), tmp_path / "split", progress=False)
    assert resumed["bits_per_char"] == whole["bits_per_char"]


def test_text_run_report_has_bits_per_char_curves_and_text_samples(text_file, tmp_path):
    import html

    from tarflow.report import REPORT_FILE

    run = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare", "--out", str(run), "--data-dir", str(text_file), *TINY,
                 "--steps", "4", "--eval-every", "2", "--sample-every", "2", "--log-every", "1"]) == 0
    samples = [run / "samples" / "step_000002.txt", run / "samples" / "step_000004.txt", run / "samples.txt"]
    assert all(sample.read_text().count("|") >= 1 for sample in samples)
    page = (run / REPORT_FILE).read_text()
    for sample in samples:  # every text sample, escaped, in the page
        assert html.escape(sample.read_text()) in page
    result = json.loads((run / "eval.json").read_text())
    assert f"{result['bits_per_char']:.4f} ± {result['stderr']:.4f} ({result['chars']:,} characters" in page
    assert "bits/char against step: train (raw, smoothed) and validation" in page
    assert page.count("<img src=\"data:image/png;base64,") == 2  # bits/char curves, lr and gradient norm
    assert "characters/s" in page and "tarflow train --preset shakespeare" in page


def test_a_bad_text_step_is_skipped_and_logged_as_for_images(text_file, tmp_path, monkeypatch):
    """A non-finite loss at step 2 skips that step and is logged as bad_step (grad_norm null), and every metrics
    line is strict JSON (no Infinity)."""
    import tarflow.train.text as text_training

    calls = []
    exact = text_training.log_likelihood

    def broken_at_step_two(model, ids, *rest):
        value = exact(model, ids, *rest)
        if model.training:
            calls.append(1)
            if len(calls) == 2:
                return value * float("nan")
        return value

    monkeypatch.setattr(text_training, "log_likelihood", broken_at_step_two)
    run = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare", "--out", str(run), "--data-dir", str(text_file), *TINY,
                 "--steps", "4", "--log-every", "1"]) == 0

    def refuse(constant):
        raise ValueError(f"{constant} is not JSON")

    records = [json.loads(line, parse_constant=refuse) for line in (run / "metrics.jsonl").read_text().splitlines()]
    second = next(record for record in records if record["step"] == 2)
    assert second["bad_step"] == "the loss is nan" and second.get("grad_norm") is None
    assert all("bad_step" not in record for record in records if record["step"] != 2)


def test_class_conditional_text_model_is_refused(text_file, tmp_path, capsys):
    code = main(["train", "--preset", "shakespeare", "--out", str(tmp_path / "run"), "--data-dir", str(text_file),
                 *TINY, "--num-classes", "3"])
    assert code == 2 and "text models are unconditional" in capsys.readouterr().err


@pytest.mark.parametrize("content, message", [("", "is empty"), ("abc\n" * 10, "too short")])
def test_empty_or_short_file_is_a_clear_error(content, message, tmp_path, capsys):
    file = tmp_path / "t.txt"
    file.write_text(content)
    code = main(["train", "--preset", "shakespeare", "--out", str(tmp_path / "run"), "--data-dir", str(file), *TINY])
    assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "run").exists()


def test_unknown_prompt_character_and_image_commands_are_clear_errors(text_file, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare-ar", "--out", str(run), "--data-dir", str(text_file), *TINY]) == 0
    capsys.readouterr()
    assert main(["generate", str(run), "--prompt", "ROMEO: Z€"]) == 2
    err = capsys.readouterr().err
    assert "['Z', '€'] are not in the model's vocabulary" in err and "Traceback" not in err
    assert main(["sample", str(run), "--count", "2"]) == 2  # image commands refuse a text model
    assert "holds a text model: use `tarflow generate`" in capsys.readouterr().err


def test_keep_best_saves_the_best_validation_weights_as_the_model(text_file, tmp_path, monkeypatch):
    """With keep_best, RUN/model holds the weights of the lowest validation bits/char (here step 3 of 6, the
    validation figures stubbed to dip there; the EMA copy evaluated then) and eval.json the test figure of those."""
    import tarflow.train.text as text_training
    from tarflow.flows.language import DiscreteAR

    real, figures = text_training.evaluate_text, iter([5.0, 4.0, 3.5, 3.9, 4.2, 4.4])

    def evaluate(model, data, *args, **kwargs):
        result = real(model, data, *args, **kwargs)
        return {**result, "bits_per_char": next(figures)} if data.split == "validation" else result

    monkeypatch.setattr(text_training, "evaluate_text", evaluate)
    saved = {}
    real_save = DiscreteAR.save_pretrained

    def save(model, path, metadata=None):  # the weights of each save, to compare with the final model
        saved[Path(path).name, (metadata or {}).get("step")] = {k: v.clone() for k, v in model.state_dict().items()}
        return real_save(model, path, metadata)

    monkeypatch.setattr(DiscreteAR, "save_pretrained", save)
    run = tmp_path / "run"
    assert main(["train", "--preset", "shakespeare-ar", "--out", str(run), "--data-dir", str(text_file), *TINY,
                 "--steps", "6", "--eval-every", "1", "--keep-best", "true"]) == 0
    assert sorted(step for name, step in saved if name == "best") == [1, 2, 3]  # each new best, then none
    model = load_language_model(run / "model")
    assert (model.metadata["best_step"], model.metadata["best_validation_bits_per_char"]) == (3, 3.5)
    assert all(torch.equal(value, saved["best", 3][name]) for name, value in model.state_dict().items())
    assert any(not torch.equal(value, saved["best", 1][name]) for name, value in model.state_dict().items())
    result = json.loads((run / "eval.json").read_text())
    assert result["best_step"] == 3 and result["weights"] == "best validation (step 3)"
    test = load_text("text", "test", 8, data_dir=str(text_file), vocabulary=model.config.vocabulary)
    with torch.no_grad():
        expected = torch.cat([bits_per_char(log_likelihood(model, chunk).double(), 8)
                              for chunk in test.windows(8).split(64)])
    assert abs(result["bits_per_char"] - expected.mean().item()) <= 1e-9


def test_keep_best_is_for_text_models(tmp_path, capsys):
    assert main(["train", "--preset", "tiny", "--keep-best", "true", "--out", str(tmp_path / "run"),
                 "--no-progress"]) == 2
    assert "keep_best chooses weights by their validation figure" in capsys.readouterr().err
