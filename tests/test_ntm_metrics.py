"""The metric commands on a Normalizing Trajectory Model: `tarflow fid`, `guidance-accuracy` and `sweep-sampling`
draw with its K-step sampler, and their figures are those of samples drawn by hand with the same seeds; TarFlow's
sampler and denoising options are refused by name."""

from __future__ import annotations

import json

import pytest
import torch

from tarflow.cli import main
from tarflow.data.quantize import quantize
from tarflow.flows import NormalizingTrajectoryModel
from tarflow.metrics import FeatureExtractor
from tarflow.metrics.classifier import TrainBudget, dataset_classifier
from tarflow.metrics.fid import dataset_statistics, fid_from_stats
from tarflow.sampling import Guidance, TrajectorySampler

pytestmark = [pytest.mark.usefixtures("one_thread"),
              pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")]

TINY = {"width": 16, "head_dim": 8, "mlp_ratio": 2, "predictor_layers": 1, "trajectory_steps": 2}
TINY_TRAIN = {"steps": 4, "batch_size": 16, "warmup_steps": 2, "log_every": 2, "eval_every": 0, "sample_every": 0,
              "checkpoint_every": 0, "num_samples": 10}
TINY_FLAGS = [f"--{name.replace('_', '-')}={value}" for name, value in {**TINY, **TINY_TRAIN}.items()]
COUNT, BATCH, LEVELS = 20, 8, 17
COMMON = ["--count", str(COUNT), "--sample-batch", str(BATCH), "--temperature", "0.9", "--no-progress"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    run = tmp_path_factory.mktemp("ntm-metrics") / "run"
    assert main(["train", "--preset", "digits-ntm", "--out", str(run), "--no-progress", *TINY_FLAGS]) == 0
    return run


def by_hand(run_dir, weight: float, seed: int = 0) -> torch.Tensor:
    """COUNT samples (classes in turn) as integer levels, drawn batch by batch with the seeds of the metrics
    (seed * 1_000_003 + first image) straight from the trajectory sampler."""
    model = NormalizingTrajectoryModel.from_pretrained(run_dir / "model")
    sampler, labels = TrajectorySampler(model), torch.arange(COUNT) % 10
    guidance = Guidance(weight) if weight else None
    batches = [sampler.sample(min(BATCH, COUNT - lo), labels[lo:lo + BATCH], 0.9, guidance,
                              generator=torch.Generator().manual_seed(seed * 1_000_003 + lo))
               for lo in range(0, COUNT, BATCH)]
    return quantize(torch.cat(batches).float(), LEVELS)


def fid_by_hand(images, pool_weights) -> float:
    extractor = FeatureExtractor(str(pool_weights))
    reference, _ = dataset_statistics(extractor, "digits", "test", progress=False)
    return fid_from_stats(extractor.statistics(images, LEVELS, progress=False), reference)


def test_fid_is_that_of_the_samples_drawn_by_hand(run_dir, pool_weights, capsys):
    assert main(["fid", str(run_dir), "--weights", str(pool_weights), "--split", "test", "--guidance", "1",
                 *COMMON]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["sampler"] == "ntm, 2 steps" and result["samples"] == COUNT
    seconds = result["seconds"]
    assert seconds["sampling_per_image"] == pytest.approx(seconds["sampling"] / COUNT, abs=0.01)
    assert result["fid"] == pytest.approx(fid_by_hand(by_hand(run_dir, 1.0), pool_weights), rel=1e-6)
    assert result["fid"] != pytest.approx(fid_by_hand(by_hand(run_dir, 1.0, seed=1), pool_weights), rel=1e-6)


def test_guidance_accuracy_rows_are_those_of_samples_drawn_by_hand(run_dir, tmp_path, capsys):
    assert main(["guidance-accuracy", str(run_dir), "--guidance", "0,2", "--classifier-steps", "30",
                 "--plot", str(tmp_path / "accuracy.png"), *COMMON]) == 0
    rows = json.loads(capsys.readouterr().out)["rows"]
    classifier, _ = dataset_classifier("digits", budget=TrainBudget(steps=30), progress=False)
    labels = torch.arange(COUNT) % 10
    for row in rows:
        predicted = classifier.predict(by_hand(run_dir, row["guidance"]))
        assert row["accuracy"] == pytest.approx((predicted == labels).double().mean().item(), abs=1e-6)


def test_sweep_rows_match_the_one_setting_commands(run_dir, pool_weights, tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep-sampling", str(run_dir), "--guidance", "0,1", "--temperature", "0.9", "--count", str(COUNT),
                 "--classifier-steps", "30", "--sample-batch", str(BATCH), "--weights", str(pool_weights),
                 "--no-progress", "--out", str(out)]) == 0
    capsys.readouterr()
    result = json.loads((out / "sweep.json").read_text())
    assert result["sampler"] == "ntm, 2 steps"
    for row in result["rows"]:
        assert row["fid"] == pytest.approx(fid_by_hand(by_hand(run_dir, row["guidance"]), pool_weights), abs=5.1e-5)
    assert len({row["fid"] for row in result["rows"]}) == 2


@pytest.mark.parametrize("argv, message", [
    (["fid", "RUN", "--weights", "POOL", "--sampler", "jacobi"], "--sampler does not apply to a Normalizing Traj"),
    (["fid", "RUN", "--weights", "POOL", "--calibration", "x.json"], "--calibration does not apply"),
    (["fid", "RUN", "--weights", "POOL", "--denoise", "iterative"], "--denoise does not apply"),
    (["fid", "RUN", "--weights", "POOL", "--denoise-steps", "3"], "--denoise-steps does not apply"),
    (["guidance-accuracy", "RUN", "--sampler", "gs-jacobi"], "--sampler does not apply"),
    (["sweep-sampling", "RUN", "--denoise", "tweedie"], "--denoise does not apply"),
    (["score", "RUN", "--out", "OUT"], "holds a Normalizing Trajectory Model"),
])
def test_options_that_do_not_apply_are_refused(run_dir, pool_weights, tmp_path, capsys, argv, message):
    names = {"RUN": str(run_dir), "POOL": str(pool_weights), "OUT": str(tmp_path / "out.csv")}
    assert main([names.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_the_sampler_refuses_a_tweedie_step(run_dir):
    model = NormalizingTrajectoryModel.from_pretrained(run_dir / "model")
    with pytest.raises(Exception, match="trained on clean data"):
        TrajectorySampler(model).sample(2, torch.arange(2), 1.0, None, 0.1)
