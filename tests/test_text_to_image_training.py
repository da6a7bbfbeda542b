"""The offline text-to-image demo, small: a digits-text model (text encoder trained with the flow from scratch) for
300 steps, then samples for held-out phrasings (sentences never seen in training) must show their class more often
than chance, and the CLI's --prompt and --prompts paths and their errors."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from tarflow import FlowConfig, SequentialSampler, TarFlow
from tarflow.cli import main
from tarflow.data.quantize import quantize
from tarflow.presets import get_preset
from tarflow.sampling import Guidance
from tarflow.train import train

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    config = get_preset("digits-text")
    config.train = dataclasses.replace(config.train, steps=300, eval_every=0, sample_every=0, checkpoint_every=0,
                                       num_samples=10)
    run_dir = tmp_path_factory.mktemp("digits-text")
    train(config, run_dir, progress=False)
    return run_dir


@pytest.fixture(scope="module")
def digit_classifier():
    """scikit-learn's logistic regression on the 1,797 digits at their 17 levels (an independent judge)."""
    from sklearn.datasets import load_digits
    from sklearn.linear_model import LogisticRegression

    digits = load_digits()
    return LogisticRegression(max_iter=2000).fit(digits.data, digits.target)


def test_held_out_prompts_land_in_their_class(run, digit_classifier):
    """200 samples (20 per class) from held-out phrasings at guidance w = 4: class consistency above chance (0.1) by
    more than 4 binomial standard deviations (0.1 + 4 * 0.021); and the caption, not the noise, decides them."""
    model = TarFlow.from_pretrained(run / "model")
    labels = torch.arange(200) % 10
    captions = model.conditioning.captions(labels, "held-out")
    z = SequentialSampler(model).noise(200, 0.9, torch.Generator().manual_seed(0))
    x = SequentialSampler(model).sample(200, captions, guidance=Guidance(4.0), z=z)
    predicted = torch.as_tensor(digit_classifier.predict(quantize(x.float(), 17).reshape(200, -1).numpy()))
    assert (predicted == labels).double().mean().item() > 0.185
    shifted = SequentialSampler(model).sample(200, captions.roll(10, 0), guidance=Guidance(4.0), z=z)
    assert not torch.allclose(shifted, x, atol=1e-3)


def test_sample_cli_draws_one_row_per_prompt(run, tmp_path, capsys):
    from PIL import Image

    out = tmp_path / "prompts.png"
    assert main(["sample", str(run), "--prompt", "a handwritten seven", "--prompt", "the digit 0", "--count", "6",
                 "--sampler", "sequential", "--out", str(out), "--device", "cpu"]) == 0
    assert "6 samples" in capsys.readouterr().out
    width, height = Image.open(out).size
    assert height < width  # 2 rows of 3
    assert main(["sample", str(run), "--prompt", " ", "--count", "2", "--out", str(out), "--device", "cpu"]) == 2
    assert "empty prompt" in capsys.readouterr().err
    assert main(["sample", str(run), "--prompt", "a seven", "--label", "3", "--out", str(out), "--device", "cpu"]) == 2
    assert "not both" in capsys.readouterr().err


def test_prompt_on_a_model_without_text_encoder(tmp_path, capsys):
    path = TarFlow(FlowConfig(num_classes=10, width=16, head_dim=8, num_blocks=1, layers_per_block=1)).save_pretrained(
        tmp_path / "model", metadata={"dataset": "digits", "levels": 17})
    assert main(["sample", str(path), "--prompt", "a seven", "--out", str(tmp_path / "s.png"), "--device", "cpu"]) == 2
    assert "text encoder" in capsys.readouterr().err
    assert main(["guidance-accuracy", str(path), "--prompts", "held-out", "--count", "10", "--device", "cpu"]) == 2
    assert "caption-conditioned" in capsys.readouterr().err


def test_guidance_accuracy_of_held_out_prompts(run, tmp_path, monkeypatch, capsys):
    """The CLI's held-out accuracy is the classifier's verdict on samples of the held-out captions (drawn by hand
    with the same noise), which differ from the samples of the default (first train phrasing) captions."""
    from tarflow.metrics.classifier import TrainBudget, dataset_classifier

    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    args = ["guidance-accuracy", str(run), "--weights", "2", "--count", "20", "--classifier-steps", "150",
            "--sampler", "sequential", "--plot", str(tmp_path / "acc.png"), "--device", "cpu", "--no-progress"]
    assert main([*args, "--prompts", "held-out"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["prompts"] == "held-out"
    classifier, _ = dataset_classifier("digits", cache_dir=tmp_path / "cache", budget=TrainBudget(steps=150),
                                       progress=False)
    model = TarFlow.from_pretrained(run / "model")
    labels = torch.arange(20) % 10
    generator = torch.Generator().manual_seed(0)
    x = SequentialSampler(model).sample(20, model.conditioning.captions(labels, "held-out"), 1.0, Guidance(2.0),
                                        generator=generator)
    predicted = classifier.predict(quantize(x.float(), 17))
    assert result["rows"][0]["accuracy"] == pytest.approx((predicted == labels).double().mean().item(), abs=1e-6)
    generator = torch.Generator().manual_seed(0)
    default = SequentialSampler(model).sample(20, labels, 1.0, Guidance(2.0), generator=generator)
    assert not torch.allclose(default, x, atol=1e-3)
