"""`tarflow demo`: the model side against the samplers and scores it wraps, and the real web app started on a free
local port, asked for one sample over HTTP (gradio_client) and stopped."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import free_port, randomise
from tarflow import FlowConfig, Guidance, InputError, SequentialSampler, TarFlow
from tarflow.cli import main
from tarflow.cli.demo import NULL, Demo
from tarflow.data import load_dataset
from tarflow.metrics import evaluate_bpd, score_bpd
from tarflow.viz import save_grid, to_uint8

pytestmark = pytest.mark.usefixtures("one_thread")
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """A small class-conditional digits-shaped model (8x8, 17 levels) with randomised weights."""
    torch.manual_seed(0)
    model = randomise(TarFlow(FlowConfig(image_size=8, channels=1, patch_size=4, width=16, num_blocks=2,
                                         layers_per_block=1, head_dim=8, num_classes=10)), std=0.1)
    path = tmp_path_factory.mktemp("demo") / "model"
    model.save_pretrained(path, metadata={"dataset": "digits", "levels": 17})
    return path


def expected_grid(model_dir, tmp_path, label, guidance, temperature, seed, count) -> np.ndarray:
    """The same samples drawn directly with the sequential sampler, saved as `tarflow sample` saves them."""
    model = TarFlow.from_pretrained(model_dir)
    labels = torch.full((count,), label) if label is not None else torch.arange(count) % 10
    x = SequentialSampler(model).sample(count, labels, temperature, Guidance(guidance) if guidance else None,
                                        generator=torch.Generator().manual_seed(seed))
    path = save_grid(to_uint8(x, 17), tmp_path / "expected.png", nrow=min(count, 10))
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.mark.parametrize("label, guidance", [("3", 1.5), ("each class in turn", 0.0)])
def test_samples_are_the_samplers_own(model_dir, tmp_path, label, guidance):
    grid, how = Demo(str(model_dir), "cpu").sample(label, guidance, 0.8, "sequential", 7, 12)
    wanted = int(label) if label.isdigit() else None
    assert np.array_equal(grid, expected_grid(model_dir, tmp_path, wanted, guidance, 0.8, 7, 12))
    assert "12 samples, seed 7, sequential" in how


def test_the_stored_guidance_rule_is_used(model_dir, tmp_path):
    """A model that stores STARFlow's rule (metadata "sampling") is guided by it, not by the default."""
    model = TarFlow.from_pretrained(model_dir)
    stored = tmp_path / "starflow"
    model.save_pretrained(stored, metadata={**model.metadata, "sampling": {"guidance": 2.0, "temperature": 0.7,
                                                                             "guidance_rule": "starflow"}})
    demo = Demo(str(stored), "cpu")
    assert demo.stored["guidance"] == 2.0 and demo.stored["temperature"] == 0.7  # the sliders' start values
    grid, _ = demo.sample("3", 2.0, 0.7, "sequential", 1, 10)
    x = SequentialSampler(model).sample(10, torch.full((10,), 3), 0.7, Guidance(2.0, "starflow"),
                                        generator=torch.Generator().manual_seed(1))
    path = save_grid(to_uint8(x, 17), tmp_path / "expected.png", nrow=10)
    assert np.array_equal(grid, np.asarray(Image.open(path).convert("RGB")))
    default_rule, _ = Demo(str(model_dir), "cpu").sample("3", 2.0, 0.7, "sequential", 1, 10)
    assert not np.array_equal(grid, default_rule)  # the rule matters here, so the first check means something


def test_an_uploaded_test_image_scores_as_the_dataset_image(model_dir):
    demo = Demo(str(model_dir), "cpu")
    test = load_dataset("digits", "test")
    levels = test.images[:1]  # (1, 1, 8, 8) in 0..16
    upload = Image.fromarray(np.round(levels[0, 0].double().numpy() * 255 / 16).astype(np.uint8))  # as an 8-bit image
    text = demo.score(upload, "4")
    assert f"p(x): {score_bpd(demo.model, levels, 17)[0].item():.4f}" in text
    expected = evaluate_bpd(demo.model, levels, torch.tensor([4]), 17)["bits_per_dim"]
    assert f"p(x | y=4): {expected:.4f}" in text
    assert "p(x | y" not in demo.score(upload, NULL)


def test_without_gradio_the_error_names_the_extra(model_dir, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "gradio", None)  # import fails as if it were not installed
    assert main(["demo", str(model_dir), "--port", "7860"]) == 2
    assert "pip install 'tarflow[demo]'" in capsys.readouterr().err


def test_the_web_app_serves_one_sample_over_http(model_dir, tmp_path):
    pytest.importorskip("gradio", reason="Gradio is not installed (pip install 'tarflow[demo]')")
    client_module = pytest.importorskip("gradio_client", reason="gradio_client is not installed (comes with gradio)")
    port = free_port()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GRADIO_ANALYTICS_ENABLED": "False"}
    server = subprocess.Popen([sys.executable, "-m", "tarflow", "demo", str(model_dir), "--port", str(port),
                               "--device", "cpu"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 180
        while True:
            try:
                client = client_module.Client(f"http://127.0.0.1:{port}/", verbose=False)
                break
            except Exception:
                assert server.poll() is None, server.stdout.read().decode()
                assert time.monotonic() < deadline, "the demo did not answer within 180 s"
                time.sleep(1)
        image_file, how = client.predict("3", 1.5, 0.8, "sequential", 7, 12, api_name="/sample")
        served = np.asarray(Image.open(image_file).convert("RGB"))
        assert np.array_equal(served, expected_grid(model_dir, tmp_path, 3, 1.5, 0.8, 7, 12))
        assert "12 samples, seed 7" in how
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert server.returncode is not None


def test_a_noise_conditioned_model_samples_denoised_and_refuses_to_score(tmp_path):
    """iTARFlow: samples are denoised iteratively, as `tarflow sample` does by default; it has no clean-image
    likelihood to score with."""
    torch.manual_seed(0)
    model = randomise(TarFlow(FlowConfig(image_size=8, channels=1, patch_size=4, width=16, num_blocks=2,
                                         layers_per_block=1, head_dim=8, noise_conditioning=True)), std=0.1)
    model.save_pretrained(tmp_path / "model", metadata={"dataset": "digits", "levels": 17})
    demo = Demo(str(tmp_path / "model"), "cpu")
    grid, how = demo.sample(NULL, 0.0, 1.0, "sequential", 0, 4)
    assert "denoise iterative" in how and grid.shape[-1] == 3
    with pytest.raises(InputError, match="noise-conditioned"):
        demo.score(Image.new("L", (8, 8)), NULL)
