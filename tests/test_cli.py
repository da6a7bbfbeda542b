"""The command line end to end, and its errors: a message and a non-zero exit, never a traceback."""

import json
import subprocess
import sys

import pytest

from tarflow.cli import main

TINY = ["--preset", "tiny", "--steps", "10", "--eval-every", "0", "--sample-every", "0", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("cli") / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    return run


def test_train_prints_test_bits_per_dim(run_dir, capsys):
    """The printed test bits/dim (4 decimals) and eval.json are evaluate_bpd of the saved model on the digits
    test split, with the draws printed and seed 0."""
    import re

    from tarflow.data import load_dataset
    from tarflow.metrics import evaluate_bpd
    from tarflow.runs import load_model

    assert main(["train", "--out", str(run_dir), *TINY]) == 0  # a finished run: re-evaluated, not retrained
    said = capsys.readouterr().out
    m = re.search(r"test bits/dim: ([0-9.]+) ± ([0-9.]+) \((\d+) digits test images, (\d+) dequantization", said)
    assert m, said
    bpd, images, draws = float(m[1]), int(m[3]), int(m[4])
    model, _ = load_model(run_dir / "model", "cpu")
    data = load_dataset("digits", "test", image_size=model.config.image_size, channels=model.config.channels)
    api = evaluate_bpd(model, data.images, data.labels if model.config.num_classes else None, data.levels,
                       draws=draws, seed=0)
    assert images == 360 and bpd == pytest.approx(api["bits_per_dim"], abs=5.1e-5)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["bits_per_dim"] == pytest.approx(api["bits_per_dim"], rel=1e-9) and saved["draws"] == draws


def test_sample_writes_a_grid(run_dir, tmp_path, capsys):
    """The CLI's grid is, pixel for pixel, the sequential sampler's samples under the same seed, guidance,
    temperature and denoising, quantized with the CLI's function (viz.to_uint8)."""
    import numpy as np
    import torch
    from PIL import Image

    from tarflow import SequentialSampler
    from tarflow.runs import load_model
    from tarflow.sampling import Guidance
    from tarflow.viz import save_grid, to_uint8

    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--out", str(out), "--count", "20", "--guidance", "1.5",
                 "--temperature", "0.9", "--denoise", "--seed", "3", "--sampler", "sequential"]) == 0
    assert out.is_file() and out.read_bytes()[:4] == b"\x89PNG"
    said = capsys.readouterr().out
    assert "20 samples" in said and "guidance w=1.5" in said and "denoise on" in said
    model, _ = load_model(run_dir, "cpu")
    levels, sigma = int(model.metadata["levels"]), float(model.metadata["noise_std"])

    def grid(seed):
        with torch.no_grad():
            x = SequentialSampler(model).sample(20, torch.arange(20) % 10, 0.9, Guidance(1.5), sigma,
                                                generator=torch.Generator().manual_seed(seed))
        path = save_grid(to_uint8(x, levels), tmp_path / f"api{seed}.png", nrow=10)
        return np.asarray(Image.open(path))

    cli = np.asarray(Image.open(out))
    assert np.array_equal(cli, grid(3))
    assert not np.array_equal(cli, grid(0))  # so a CLI ignoring --seed (drawing with 0) fails the line above


def test_sample_without_flags_draws_the_runs_own_grid(tmp_path, capsys):
    """A model stores the settings of its run's sample grids (guidance, rule, temperature); `tarflow sample` uses
    them when no flag is given, so with the grid's count and seed it redraws samples.png pixel for pixel, Tweedie
    denoising included for a model trained with gaussian noise. A flag overrides its stored setting."""
    import numpy as np
    from PIL import Image

    from tarflow.runs import load_model

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--noise", "gaussian", "--noise-std", "0.1",
                 "--sample-guidance", "1.5", "--sample-temperature", "0.8", "--num-samples", "20"]) == 0
    model, _ = load_model(run, "cpu")
    assert model.metadata["sampling"] == {"temperature": 0.8, "guidance": 1.5, "guidance_rule": "tarflow"}
    capsys.readouterr()
    out = tmp_path / "again.png"
    assert main(["sample", str(run), "--out", str(out), "--count", "20", "--sampler", "sequential"]) == 0
    said = capsys.readouterr().out
    assert "stored with the model: guidance 1.5, guidance rule tarflow, temperature 0.8" in said
    assert "guidance w=1.5 (tarflow)" in said and "denoise on (sigma=0.1)" in said
    assert np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(run / "samples.png")))
    assert main(["sample", str(run), "--out", str(out), "--count", "20", "--sampler", "sequential",
                 "--guidance", "0", "--temperature", "1"]) == 0
    said = capsys.readouterr().out
    assert "no guidance" in said and "temperature 1," in said and "stored with the model" not in said
    assert not np.array_equal(np.asarray(Image.open(out)), np.asarray(Image.open(run / "samples.png")))


def test_eval_prints_json(run_dir, capsys):
    """`tarflow eval --seed 5` reports what evaluate_bpd gives on the same model, test split and seed."""
    from tarflow.data import load_dataset
    from tarflow.metrics import evaluate_bpd
    from tarflow.runs import load_model

    assert main(["eval", str(run_dir / "model"), "--no-progress", "--draws", "2", "--seed", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["images"] == 360 and result["draws"] == 2
    model, _ = load_model(run_dir / "model", "cpu")
    data = load_dataset("digits", "test", image_size=model.config.image_size, channels=model.config.channels)
    labels = data.labels if model.config.num_classes else None
    api = evaluate_bpd(model, data.images, labels, data.levels, draws=2, seed=5,
                       mixture=bool(model.config.num_classes))
    for key, value in api.items():
        assert result[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    other = evaluate_bpd(model, data.images, labels, data.levels, draws=2, seed=0)["bits_per_dim"]
    assert other != pytest.approx(api["bits_per_dim"], rel=1e-9)  # the seed matters, so --seed is checked


def test_eval_says_what_the_class_mixture_costs_and_how_to_skip_it(run_dir, capsys):
    """A class-conditional model's mixture takes K + 1 passes per batch (hours for a 55-class video model): eval
    says so on stderr with the flag that skips it, and --no-mixture skips it."""
    assert main(["eval", str(run_dir / "model"), "--no-progress"]) == 0
    said = capsys.readouterr()
    assert "mixture_bits_per_dim" in json.loads(said.out)
    assert "11 passes of the model per batch" in said.err and "--no-mixture" in said.err
    assert main(["eval", str(run_dir / "model"), "--no-progress", "--no-mixture"]) == 0
    said = capsys.readouterr()
    assert "mixture_bits_per_dim" not in json.loads(said.out) and "mixture" not in said.err


@pytest.mark.parametrize("argv, words", [
    (["train", "--preset", "nope"], ["unknown preset", "digits"]),
    (["train", "--widht", "64"], ["unknown config field", "width"]),
    (["train", "--width", "100"], ["divisible"]),
    (["train", "--steps", "0"], ["steps must be at least 1"]),
    (["train", "--resume", "nowhere"], ["not a training run"]),
    (["sample", "nowhere"], ["does not exist"]),
    (["eval", "nowhere"], ["does not exist"]),
])
def test_errors_are_messages(argv, words, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    for w in words:
        assert w in err


def test_truncated_checkpoint_is_a_message(run_dir, tmp_path, capsys):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run_dir / "model", broken)
    f = broken / "model.safetensors"
    f.write_bytes(f.read_bytes()[:100])
    assert main(["sample", str(broken)]) == 2
    assert "truncated or corrupt" in capsys.readouterr().err


def test_sample_label_out_of_range(run_dir, capsys):
    assert main(["sample", str(run_dir), "--label", "11"]) == 2
    assert "--label must be in 0..9, or 10 or null" in capsys.readouterr().err


def test_module_entry_point_exits_non_zero_without_traceback(tmp_path):
    p = subprocess.run([sys.executable, "-m", "tarflow", "eval", str(tmp_path / "missing")],
                       capture_output=True, text=True)
    assert p.returncode == 2
    assert "does not exist" in p.stderr and "Traceback" not in p.stderr


@pytest.mark.parametrize("text, value", [("true", True), ("false", False), ("0", False), ("yes", True)])
def test_bool_fields_parse_their_value(text, value):
    from tarflow.cli import build_parser, config_from_args

    args = build_parser().parse_args(["train", "--flip", text])
    args.preset = "digits"
    assert config_from_args(args).train.flip is value


def test_resume_may_change_where_a_run_executes_not_what_it_computes(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--steps", "4", "--checkpoint-every", "2"]) == 0
    assert main(["train", "--resume", str(run), "--lr", "0.1"]) == 2
    assert "only --data-dir, --device" in capsys.readouterr().err
    assert main(["train", "--resume", str(run), "--device", "cpu", "--no-progress"]) == 0


def test_the_sample_guidance_rule_is_stored():
    """--sample-guidance-rule picks the rule stored with the model; auto keeps each modality's default."""
    import dataclasses

    from tarflow.presets import get_preset
    from tarflow.train.trainer import sampling_settings

    config = get_preset("tiny")
    assert sampling_settings(config.train, config.model)["guidance_rule"] == "tarflow"
    starflow = dataclasses.replace(config.train, sample_guidance_rule="starflow")
    assert sampling_settings(starflow, config.model)["guidance_rule"] == "starflow"
    latent = dataclasses.replace(config.model, modality="latents", autoencoder="ae")
    assert sampling_settings(config.train, latent)["guidance_rule"] == "starflow"
