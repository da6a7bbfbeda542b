"""The small classifier: it learns digits, its cache round-trips, and `tarflow guidance-accuracy` uses it."""

import json

import pytest
import torch

from tarflow import FlowConfig, TarFlow
from tarflow.cli import main
from tarflow.data import load_dataset
from tarflow.metrics.classifier import TrainBudget, dataset_classifier, load_classifier

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
def saved_model(path, num_classes):
    torch.manual_seed(0)
    model = TarFlow(FlowConfig(image_size=8, channels=1, patch_size=4, width=16, num_blocks=2, layers_per_block=1,
                               head_dim=8, num_classes=num_classes))
    model.save_pretrained(path, metadata={"dataset": "digits", "levels": 17})
    return path


def test_guidance_accuracy_table(trained, cache, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TARFLOW_CACHE", str(cache))
    path = saved_model(tmp_path / "model", 10)
    plot = tmp_path / "acc.png"
    assert main(["guidance-accuracy", str(path), "--weights", "0,2", "--count", "30", "--classifier-steps", "150",
                 "--plot", str(plot), "--device", "cpu", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    assert [row["guidance"] for row in r["rows"]] == [0.0, 2.0]
    for row in r["rows"]:
        assert 0 <= row["accuracy"] <= 1 and len(row["per_class"]) == 10 and row["samples"] == 30
        assert row["accuracy"] == pytest.approx(sum(row["per_class"]) / 10, abs=1e-3)  # 3 samples per class
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
    model = TarFlow.from_pretrained(saved_model(tmp_path / "model", 10))
    chosen = []

    def sampler_for(guidance):
        from tarflow import SequentialSampler

        chosen.append(guidance)
        return SequentialSampler(model)

    result = guidance_accuracy(model, "digits", [0, 2], count=20, sampler_for=sampler_for, classifier_steps=150,
                               progress=False)
    assert [row["guidance"] for row in result["rows"]] == [0, 2] and result["classifier"]["cached"]
    assert chosen[0] is None and chosen[1].weight == 2
    assert all(0 <= row["accuracy"] <= 1 and row["samples"] == 20 for row in result["rows"])
