"""Normalizing Trajectory Models through the command line: `tarflow train` (and resume), `tarflow eval` printing
the bound under its name, `tarflow sample` writing the trajectory sampler's grid, and refusals by name."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tarflow.cli import main
from tarflow.flows import NormalizingTrajectoryModel
from tarflow.flows.trajectory import BOUND_NAME
from tarflow.presets import get_preset
from tarflow.sampling import Guidance, TrajectorySampler
from tarflow.train import train
from tarflow.train.checkpoint import MODEL
from tarflow.viz import save_grid, to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = {"width": 16, "head_dim": 8, "mlp_ratio": 2, "predictor_layers": 1, "trajectory_steps": 2}
TINY_TRAIN = {"steps": 6, "batch_size": 16, "warmup_steps": 2, "log_every": 2, "eval_every": 0, "sample_every": 0,
              "checkpoint_every": 0, "num_samples": 10}
TINY_FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in {**TINY, **TINY_TRAIN}.items()]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("ntm") / "run"
    assert main(["train", "--preset", "digits-ntm", "--out", str(run), "--no-progress", *TINY_FLAGS]) == 0
    return run


def test_train_prints_the_bound_and_writes_the_run(run_dir, capsys):
    assert main(["train", "--preset", "digits-ntm", "--out", str(run_dir), "--no-progress", *TINY_FLAGS]) == 0
    said = capsys.readouterr().out  # a finished run: evaluated again, not retrained
    m = re.search(r"test bits/dim: ([0-9.]+) ± [0-9.]+ \((.*); 360 digits test images, 1 draw", said)
    assert m and m[2] == BOUND_NAME, said
    saved = json.loads((run_dir / "eval.json").read_text())
    assert saved["bound"] == BOUND_NAME and saved["trajectory_steps"] == 2 and saved["images"] == 360
    assert float(m[1]) == pytest.approx(saved["bits_per_dim"], abs=5.1e-5)
    assert {"model", "samples.png", "metrics.jsonl", "report.html", "checkpoint"} <= {p.name for p in run_dir.iterdir()}
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "bpd" in r] == [2, 4, 6] and "test_bpd" in records[-1]
    model = NormalizingTrajectoryModel.from_pretrained(run_dir / "model")
    assert model.config.architecture == "ntm" and model.metadata["levels"] == 17


def test_eval_prints_the_bound_under_its_name(run_dir, capsys):
    """`tarflow eval` of the run (seed 0, one draw) is the figure the run saved, exactly."""
    assert main(["eval", str(run_dir), "--no-progress"]) == 0
    result = json.loads(capsys.readouterr().out)
    saved = json.loads((run_dir / "eval.json").read_text())
    assert result["bound"] == BOUND_NAME and result["bits_per_dim"] == saved["bits_per_dim"]
    assert main(["eval", str(run_dir), "--no-progress", "--seed", "1"]) == 0
    assert json.loads(capsys.readouterr().out)["bits_per_dim"] != saved["bits_per_dim"]


def test_sample_writes_the_trajectory_samplers_grid(run_dir, tmp_path, capsys):
    """The CLI's grid is, pixel for pixel, the trajectory sampler's under the same seed, guidance and temperature."""
    out = tmp_path / "grid.png"
    assert main(["sample", str(run_dir), "--out", str(out), "--count", "10", "--guidance", "1.5",
                 "--temperature", "0.9", "--seed", "3"]) == 0
    said = capsys.readouterr().out
    assert "10 samples" in said and "trajectory sampler (2 steps)" in said and "guidance w=1.5" in said
    model = NormalizingTrajectoryModel.from_pretrained(run_dir / "model")

    def grid(seed):
        x = TrajectorySampler(model).sample(10, torch.arange(10) % 10, 0.9, Guidance(1.5),
                                            generator=torch.Generator().manual_seed(seed))
        return np.asarray(Image.open(save_grid(to_uint8(x, 17), tmp_path / f"api{seed}.png", nrow=10)))

    cli = np.asarray(Image.open(out))
    assert np.array_equal(cli, grid(3))
    assert not np.array_equal(cli, grid(0))


@pytest.mark.parametrize("argv, message", [
    (["sample", "RUN", "--sampler", "jacobi"], "--sampler does not apply to a Normalizing Trajectory Model"),
    (["sample", "RUN", "--denoise", "tweedie"], "--denoise does not apply"),
    (["eval", "RUN", "--noise-level", "0.1"], "--noise-level does not apply"),
    (["calibrate", "RUN"], "holds a Normalizing Trajectory Model"),
    (["score", "RUN", "--out", "OUT"], "holds a Normalizing Trajectory Model"),
    (["train", "--preset", "digits-ntm", "--trajectory-signal", "0.5,0.7,0.2,0", "--out", "OUT"], "decrease strictly"),
    (["train", "--preset", "digits-ntm", "--trajectory-steps", "0", "--out", "OUT"], "at least 1"),
])
def test_refusals_name_the_problem(run_dir, tmp_path, capsys, argv, message):
    argv = [str(run_dir) if a == "RUN" else str(tmp_path / "out") if a == "OUT" else a for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert not (tmp_path / "out").exists()


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    """Checkpoints carry weights, EMA, optimizer and RNG; batches and trajectories are functions of (seed, step)."""
    base = get_preset("digits-ntm").to_dict()
    base["model"].update(TINY)
    base["train"].update(TINY_TRAIN, eval_every=0, sample_every=0)
    from tarflow.train.config import RunConfig

    config = RunConfig.from_dict(base)
    train(config, tmp_path / "whole", progress=False)
    assert train(config, tmp_path / "parts", progress=False, stop_at=3) == {"step": 3}
    train(config, tmp_path / "parts", progress=False)
    from safetensors.torch import load_file

    whole = load_file(str(tmp_path / "whole" / "checkpoint" / MODEL))
    parts = load_file(str(tmp_path / "parts" / "checkpoint" / MODEL))
    assert whole.keys() == parts.keys() and all(torch.equal(whole[k], parts[k]) for k in whole)
