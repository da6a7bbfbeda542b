"""tarflow.runs: a run directory or a saved model directory, from Python, with the CLI's messages."""

import pytest
import torch

from tarflow import ConfigError, FlowConfig, TarFlow
from tarflow.runs import load_model, resolve_model_dir


@pytest.fixture
def saved(tmp_path):
    torch.manual_seed(0)
    model = TarFlow(FlowConfig(image_size=4, patch_size=2, width=16, num_blocks=1, layers_per_block=1, head_dim=8))
    model.save_pretrained(tmp_path / "run" / "model")
    (tmp_path / "run" / "metrics.jsonl").write_text("")
    (tmp_path / "run" / "config.json").write_text("{}")
    return tmp_path / "run"


def test_a_run_directory_and_its_model_directory(saved):
    assert resolve_model_dir(saved) == saved / "model"
    assert resolve_model_dir(str(saved / "model")) == saved / "model"
    model, model_dir = load_model(saved, "cpu")
    assert model_dir == saved / "model" and model.device == torch.device("cpu")


@pytest.mark.parametrize("setup, words", [
    ("missing", "does not exist"), ("unfinished", "tarflow train --resume"), ("foreign", "neither a run directory"),
])
def test_what_is_not_a_model(tmp_path, setup, words):
    path = tmp_path / "x"
    if setup != "missing":
        path.mkdir()
        (path / ("checkpoint" if setup == "unfinished" else "notes.txt")).write_text("")
    with pytest.raises(ConfigError, match=words):
        resolve_model_dir(path)
