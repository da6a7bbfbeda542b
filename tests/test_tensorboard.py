"""`--tensorboard`: the metric records, sample grids and log-scale histograms, read back from the event file with
TensorBoard's own EventAccumulator and compared with metrics.jsonl, the grid PNGs and a recomputation."""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tarflow import ConfigError, TarFlow
from tarflow.data import load_dataset
from tarflow.metrics.scales import log_scales
from tarflow.presets import get_preset
from tarflow.train import train
from tarflow.train.tensorboard import TENSORBOARD_DIR, TensorBoardLog
from tarflow.train.trainer import entropy_batch

pytestmark = pytest.mark.usefixtures("one_thread")
event_accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator",
                                        reason="the tensorboard package is not installed (pip install tensorboard)")


def tiny(**train_overrides):
    config = get_preset("tiny")
    for name, value in {"steps": 20, "eval_every": 10, "sample_every": 10, "checkpoint_every": 10, "log_every": 5,
                        "tensorboard": True, **train_overrides}.items():
        setattr(config.train, name, value)
    return config


def events(run_dir):
    accumulator = event_accumulator.EventAccumulator(str(run_dir / TENSORBOARD_DIR), size_guidance={
        event_accumulator.SCALARS: 0, event_accumulator.IMAGES: 0, event_accumulator.HISTOGRAMS: 0})
    return accumulator.Reload()


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_scalars_grids_and_log_scale_histograms(tmp_path):
    config, run_dir = tiny(), tmp_path / "run"
    train(config, run_dir, progress=False)
    board = events(run_dir)
    for name in ("loss", "bpd", "lr", "grad_norm", "test_bpd"):
        logged = [(event.step, event.value) for event in board.Scalars(name)]
        expected = [(record["step"], record[name]) for record in records(run_dir) if record.get(name) is not None]
        assert [step for step, _ in logged] == [step for step, _ in expected], name
        np.testing.assert_allclose([value for _, value in logged], [value for _, value in expected], rtol=1e-6)
    images = board.Images("samples")
    assert [image.step for image in images] == [10, 20]
    for image in images:
        shown = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB"))
        saved = np.asarray(Image.open(run_dir / "samples" / f"step_{image.step:06d}.png").convert("RGB"))
        assert np.array_equal(shown, saved)
    # the histograms at step 20 are of the final (EMA) model on the trainer's fixed probe images
    model = TarFlow.from_pretrained(run_dir / "model")
    probe = entropy_batch(load_dataset("digits", "train"), config.train, config.model, torch.device("cpu"))
    for block, scale in enumerate(log_scales(model, *probe)):
        histograms = board.Histograms(f"log_scale/block_{block}")
        assert [h.step for h in histograms] == [10, 20]
        last = histograms[-1].histogram_value
        assert last.num == scale.numel()
        np.testing.assert_allclose([last.min, last.max, last.sum], [scale.min(), scale.max(), scale.sum()],
                                   rtol=1e-4, atol=1e-4)


def test_a_resumed_run_logs_each_step_once(tmp_path):
    config, run_dir = tiny(), tmp_path / "run"
    train(config, run_dir, progress=False, stop_at=10)
    train(config, run_dir, progress=False)
    steps = [event.step for event in events(run_dir).Scalars("bpd")]
    assert steps == [record["step"] for record in records(run_dir) if "bpd" in record] == [5, 10, 15, 20]


def test_without_the_package_the_error_names_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import fails as if it were not installed
    with pytest.raises(ConfigError, match=r"pip install 'tarflow\[tensorboard\]'"):
        TensorBoardLog(tmp_path)
    assert not (tmp_path / TENSORBOARD_DIR).exists()
