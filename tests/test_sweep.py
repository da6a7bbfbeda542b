"""`tarflow sweep-sampling`: the grid of settings, each row's figures against the commands that measure one
setting (guidance-accuracy, fid), the picture, the cache, and clear errors."""

from __future__ import annotations

import json

import pytest

from tarflow.cli import main
from tarflow.metrics.sweep import Setting, settings_grid

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]
TINY = ["--preset", "tiny", "--steps", "10", "--eval-every", "0", "--sample-every", "0", "--no-progress"]
SWEEP = ["--guidance", "0,2", "--temperature", "0.9,1", "--count", "20", "--classifier-steps", "30",
         "--sampler", "sequential", "--sample-batch", "8", "--no-progress"]



@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("sweep") / "run"
    assert main(["train", "--out", str(run), *TINY]) == 0
    return run



def test_grid_varies_the_rule_only_with_guidance():
    grid = settings_grid([0, 1], ["tarflow", "starflow"], [0.9, 1.0])
    assert grid == [Setting(0, "tarflow", 0.9), Setting(0, "tarflow", 1.0), Setting(1, "tarflow", 0.9),
                    Setting(1, "tarflow", 1.0), Setting(1, "starflow", 0.9), Setting(1, "starflow", 1.0)]
    assert [setting.name for setting in grid[1:3]] == ["w=0, T=1", "w=1 tarflow, T=0.9"]


def test_rows_match_guidance_accuracy_and_fid_and_a_rerun_reads_the_cache(run_dir, pool_weights, tmp_path, capsys,
                                                                          monkeypatch):
    out = tmp_path / "sweep"
    assert main(["sweep-sampling", str(run_dir), *SWEEP, "--weights", str(pool_weights), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    result = json.loads((out / "sweep.json").read_text())
    rows = result["rows"]
    assert [row["setting"] for row in rows] == ["w=0, T=0.9", "w=0, T=1", "w=2 tarflow, T=0.9", "w=2 tarflow, T=1"]
    assert printed.splitlines()[0].split() == ["setting", "consistency", "FID"]
    assert (out / "sweep.png").read_bytes()[:4] == b"\x89PNG"
    for row in rows:  # each row is what the one-setting commands measure with the same options
        common = ["--count", "20", "--temperature", f"{row['temperature']:g}", "--sampler", "sequential",
                  "--sample-batch", "8", "--no-progress"]
        assert main(["guidance-accuracy", str(run_dir), "--guidance", f"{row['guidance']:g}", "--classifier-steps",
                     "30", "--plot", str(tmp_path / "accuracy.png"), *common]) == 0
        accuracy = json.loads(capsys.readouterr().out)["rows"][0]["accuracy"]
        assert row["consistency"] == pytest.approx(accuracy, abs=1e-6)
        assert main(["fid", str(run_dir), "--weights", str(pool_weights), "--split", "test",
                     "--guidance", f"{row['guidance']:g}", *common]) == 0
        assert row["fid"] == pytest.approx(json.loads(capsys.readouterr().out)["fid"], rel=1e-3, abs=1e-3)
    assert len({row["consistency"] for row in rows} | {row["fid"] for row in rows}) > 2  # the settings matter

    def no_sampling(*args, **kwargs):
        raise AssertionError("a cached setting was sampled again")

    monkeypatch.setattr("tarflow.metrics.sweep.generate_levels", no_sampling)
    assert main(["sweep-sampling", str(run_dir), *SWEEP, "--weights", str(pool_weights), "--out", str(out)]) == 0
    assert json.loads((out / "sweep.json").read_text())["rows"] == rows
    with pytest.raises(AssertionError, match="sampled again"):  # another seed is another cache entry
        main(["sweep-sampling", str(run_dir), *SWEEP, "--seed", "1", "--weights", str(pool_weights),
              "--out", str(out)])


def test_unconditional_model_needs_fid_and_bad_lists_are_errors(tmp_path, capsys):
    run = tmp_path / "uncond"
    assert main(["train", "--out", str(run), *TINY, "--num-classes", "0"]) == 0
    capsys.readouterr()
    assert main(["sweep-sampling", str(run), *SWEEP]) == 2
    assert "give an Inception feature extractor (--weights FILE)" in capsys.readouterr().err
    assert main(["sweep-sampling", str(run), "--guidance-rule", "tarflow,cfg"]) == 2
    assert "--guidance-rule takes tarflow, starflow or both" in capsys.readouterr().err
    assert main(["sweep-sampling", str(run), "--temperature", "0.9,-1"]) == 2
    assert "positive finite" in capsys.readouterr().err


def test_no_denoise_measures_the_raw_samples_of_a_gaussian_noise_model(pool_weights, tmp_path, capsys):
    """--no-denoise on a pixel model trained with gaussian noise skips its one Tweedie step, in sweep-sampling,
    guidance-accuracy and fid alike: the rows are those of the raw samples, not the denoised ones, and the cache
    keeps the two apart."""
    from tarflow.metrics.classifier import TrainBudget, dataset_classifier
    from tarflow.metrics.samples import generate_levels
    from tarflow.runs import load_model
    from tarflow.sampling import SequentialSampler

    run = tmp_path / "run"
    assert main(["train", "--out", str(run), *TINY, "--noise", "gaussian", "--noise-std", "0.3"]) == 0
    model, _ = load_model(run, "cpu")
    classifier, _ = dataset_classifier("digits", budget=TrainBudget(steps=30), progress=False)
    labels = __import__("torch").arange(20) % 10

    def consistency(denoise_std):
        images = generate_levels(SequentialSampler(model), 20, labels, 17, 1.0, None, denoise_std, 8, 0,
                                 progress=False)
        return (classifier.predict(images) == labels).double().mean().item(), images

    raw, raw_images = consistency(None)
    denoised, denoised_images = consistency(0.3)
    assert not raw_images.equal(denoised_images)  # so the step matters here
    out = tmp_path / "sweep"
    sweep = ["sweep-sampling", str(run), "--guidance", "0", "--count", "20", "--classifier-steps", "30",
             "--sampler", "sequential", "--sample-batch", "8", "--no-progress", "--out", str(out)]
    assert main([*sweep, "--no-denoise"]) == 0
    result = json.loads((out / "sweep.json").read_text())
    assert (result["denoise"], result["denoise_std"]) == ("none", None)
    assert result["rows"][0]["consistency"] == pytest.approx(raw)
    assert main(sweep) == 0  # the same cache, denoised: a new row, not the cached raw one
    assert json.loads((out / "sweep.json").read_text())["rows"][0]["consistency"] == pytest.approx(denoised)
    capsys.readouterr()
    assert main(["guidance-accuracy", str(run), "--guidance", "0", "--count", "20", "--classifier-steps", "30",
                 "--sampler", "sequential", "--sample-batch", "8", "--no-progress", "--no-denoise",
                 "--plot", str(tmp_path / "accuracy.png")]) == 0
    accuracy = json.loads(capsys.readouterr().out)
    assert accuracy["denoise"] == "none" and accuracy["rows"][0]["accuracy"] == pytest.approx(raw)
    fids = []
    for denoise in ([], ["--denoise", "none"]):
        assert main(["fid", str(run), "--weights", str(pool_weights), "--split", "test", "--count", "20",
                     "--sampler", "sequential", "--sample-batch", "8", "--no-progress", *denoise]) == 0
        fids.append(json.loads(capsys.readouterr().out)["fid"])
    assert fids[0] != fids[1]
