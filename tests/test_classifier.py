"""The small classifier: it learns digits, its cache round-trips, and `tarflow guidance-accuracy` uses it."""

import json

import pytest
import torch

from tarflow import FlowConfig, TarFlow
from tarflow.cli import main
from tarflow.data import load_dataset
from tarflow.metrics.classifier import TrainBudget, dataset_classifier, load_classifier

from conftest import randomise

BUDGET = TrainBudget(steps=150)  # what `--classifier-steps 150` asks for: the CLI test reuses it


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="module")
def trained(cache):
    torch.set_num_threads(1)
    return dataset_classifier("digits", cache_dir=cache, budget=BUDGET, progress=False)


def test_classifier_learns_digits(trained):
    model, info = trained
    assert not info["cached"]
    assert info["test_accuracy"] > 0.9 and info["test_images"] == 360 and info["train_images"] == 1437
    test = load_dataset("digits", "test")
    assert model.accuracy(test.images, test.labels) == info["test_accuracy"]


def test_classifier_cache_round_trips(trained, cache, monkeypatch):
    model, info = trained
    import tarflow.metrics.classifier as clf

    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: pytest.fail("trained again although cached"))
    again, info2 = dataset_classifier("digits", cache_dir=cache, budget=BUDGET, progress=False)
    assert info2["cached"] and info2["path"] == info["path"] and info2["test_accuracy"] == info["test_accuracy"]
    test = load_dataset("digits", "test")
    assert torch.equal(again.predict(test.images), model.predict(test.images))
    loaded, meta = load_classifier(info["path"])
    assert meta["config"]["num_classes"] == 10 and meta["budget"]["steps"] == BUDGET.steps
    assert sorted(p.suffix for p in (cache / "classifiers").iterdir()) == [".json", ".safetensors"]


def test_another_budget_is_another_classifier(trained, cache, monkeypatch):
    import tarflow.metrics.classifier as clf

    monkeypatch.setattr(clf, "train_classifier", lambda *a, **k: pytest.fail("trains"))
    with pytest.raises(pytest.fail.Exception, match="trains"):
        dataset_classifier("digits", cache_dir=cache, budget=TrainBudget(steps=201), progress=False)


# ----- tarflow guidance-accuracy ------------------------------------------------------------------------
def saved_model(path, num_classes, randomised=False):
    """A tiny digits model; ``randomised`` redraws its weights so that blocks (and guidance) are not the identity."""
    torch.manual_seed(0)
    model = TarFlow(FlowConfig(image_size=8, channels=1, patch_size=4, width=16, num_blocks=2, layers_per_block=1,
                               head_dim=8, num_classes=num_classes))
    if randomised:
        randomise(model, seed=3, std=0.8)
    model.save_pretrained(path, metadata={"dataset": "digits", "levels": 17})
    return path


def expected_rows(model, classifier, weights, count, seed=0):
    """The guidance-accuracy rows recomputed by hand: one batch of ``count`` samples per weight drawn with the
    sequential sampler under noise seed ``seed * 1_000_003`` (the batch at image 0), quantized to the model's 17
    levels, classified, and counted per class. Also returns the samples so callers can check guidance acts."""
    from tarflow import SequentialSampler
    from tarflow.data.quantize import quantize
    from tarflow.sampling import Guidance

    labels = torch.arange(count) % 10
    rows, images = [], []
    for w in weights:
        with torch.no_grad():
            x = SequentialSampler(model).sample(count, labels, 1.0, Guidance(w) if w else None, None,
                                                generator=torch.Generator().manual_seed(seed * 1_000_003))
        levels = quantize(x.float(), 17)
        predicted = classifier.predict(levels)
        correct = [int((predicted[labels == k] == k).sum()) for k in range(10)]
        total = [int((labels == k).sum()) for k in range(10)]
        rows.append({"accuracy": sum(correct) / count, "per_class": [c / t for c, t in zip(correct, total)]})
        images.append(levels)
    return rows, images


def test_guidance_accuracy_table(trained, cache, tmp_path, monkeypatch, capsys):
    """The CLI's accuracies equal the classifier's verdicts on the same samples, counted by hand, on a
    randomised model whose guided samples (w = 2) differ from the unguided ones."""
    monkeypatch.setenv("TARFLOW_CACHE", str(cache))
    path = saved_model(tmp_path / "model", 10, randomised=True)
    plot = tmp_path / "acc.png"
    assert main(["guidance-accuracy", str(path), "--weights", "0,2", "--count", "30", "--classifier-steps", "150",
                 "--plot", str(plot), "--device", "cpu", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [row["guidance"] for row in r["rows"]] == [0.0, 2.0]
    classifier, _ = trained
    expected, images = expected_rows(TarFlow.from_pretrained(path), classifier, [0, 2], 30)
    assert not torch.equal(images[0], images[1])  # guidance is not the identity on this model,
    assert expected[0]["per_class"] != expected[1]["per_class"]  # and a CLI ignoring it gets other counts
    for row, want in zip(r["rows"], expected):
        assert row["samples"] == 30
        assert row["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
        assert row["per_class"] == pytest.approx(want["per_class"], abs=1e-4)
    assert r["classifier"]["cached"] and r["classifier"]["test_accuracy"] > 0.9
    assert plot.read_bytes()[:4] == b"\x89PNG" and r["plot"] == str(plot)


def test_guidance_accuracy_needs_a_conditional_model(tmp_path, capsys):
    path = saved_model(tmp_path / "u", 0)
    assert main(["guidance-accuracy", str(path), "--count", "10", "--device", "cpu"]) == 2
    assert "class-conditional" in capsys.readouterr().err


@pytest.mark.parametrize("weights", ["a,b", "-1,2", ""])
def test_guidance_accuracy_bad_weights(tmp_path, capsys, weights):
    path = saved_model(tmp_path / "m", 10)
    assert main(["guidance-accuracy", str(path), f"--guidance={weights}", "--device", "cpu"]) == 2
    assert "--guidance" in capsys.readouterr().err


def test_guidance_accuracy_from_python(trained, cache, tmp_path, monkeypatch):
    from tarflow.metrics import guidance_accuracy

    monkeypatch.setenv("TARFLOW_CACHE", str(cache))
    model = TarFlow.from_pretrained(saved_model(tmp_path / "model", 10, randomised=True))
    chosen = []

    def sampler_for(guidance):
        from tarflow import SequentialSampler

        chosen.append(guidance)
        return SequentialSampler(model)

    result = guidance_accuracy(model, "digits", [0, 2], count=20, sampler_for=sampler_for, classifier_steps=150,
                               progress=False)
    assert [row["guidance"] for row in result["rows"]] == [0, 2] and result["classifier"]["cached"]
    assert chosen[0] is None and chosen[1].weight == 2
    expected, _ = expected_rows(model, trained[0], [0, 2], 20)
    assert expected[0]["per_class"] != expected[1]["per_class"]
    for row, want in zip(result["rows"], expected):
        assert row["samples"] == 20 and row["accuracy"] == pytest.approx(want["accuracy"], abs=1e-6)
        assert row["per_class"] == pytest.approx(want["per_class"], abs=1e-4)
