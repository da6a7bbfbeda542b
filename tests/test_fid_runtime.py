"""The FID network through ONNX Runtime (`pip install tarflow[onnx]`): the same features as TorchScript's, the
export cached by the weights' hash, the choice of runtime (argument, $TARFLOW_FID_RUNTIME, auto) and its errors."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from conftest import Pool, scripted
from tarflow.errors import TarflowError
from tarflow.metrics import FeatureExtractor
from tarflow.metrics import onnx_runtime
from tarflow.metrics.fid import FeatureExtractorError

pytestmark = pytest.mark.usefixtures("one_thread")
INSTALLED = all(importlib.util.find_spec(name) is not None for name in ("onnxruntime", "onnx"))
needs_onnx = pytest.mark.skipif(not INSTALLED, reason="onnxruntime and onnx are not installed (the onnx extra)")


class Convolution(torch.nn.Module):
    """A stand-in that exports: a strided 3x3 convolution to 8 channels, ReLU, global average pool (N, 8, 1, 1)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 8, 3, stride=4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.adaptive_avg_pool2d(torch.relu(self.conv(x)), 1)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return scripted(Convolution(), tmp_path_factory.mktemp("fx") / "convolution.pt")


@pytest.fixture
def images():
    return torch.randint(0, 256, (5, 3, 32, 32), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)


@needs_onnx
def test_onnx_runtime_gives_torchscripts_features_and_exports_once(weights, images, tmp_path, monkeypatch):
    monkeypatch.delenv("TARFLOW_FID_RUNTIME")
    onnx = FeatureExtractor(weights, image_size=64, cache_dir=tmp_path, batch_size=2)
    assert onnx.runtime == "onnxruntime"  # auto, on a CPU, with the extra installed
    script = FeatureExtractor(weights, image_size=64, runtime="torch")
    ours, theirs = onnx(images), script(images)
    assert ours.shape == theirs.shape == (5, 8)
    assert np.abs(ours - theirs).max() <= 1e-5 * np.abs(theirs).max()
    exported = list((tmp_path / "fid").glob("inception-*-64.onnx"))
    assert len(exported) == 1
    monkeypatch.setattr(onnx_runtime, "export", lambda *args: pytest.fail("exported again"))
    again = FeatureExtractor(weights, image_size=64, cache_dir=tmp_path, runtime="onnxruntime")
    assert np.array_equal(again(images), ours)


def test_the_runtime_comes_from_the_argument_then_the_environment(weights, monkeypatch, tmp_path):
    assert FeatureExtractor(weights).runtime == "torch"  # the tests' environment says torch
    monkeypatch.setenv("TARFLOW_FID_RUNTIME", "tensorrt")
    with pytest.raises(TarflowError, match="one of auto, torch, onnxruntime"):
        FeatureExtractor(weights)
    assert FeatureExtractor(weights, runtime="torch").runtime == "torch"
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None)  # the extra not installed
    with pytest.raises(TarflowError, match=r"pip install tarflow\[onnx\]"):
        FeatureExtractor(weights, runtime="onnxruntime")
    monkeypatch.delenv("TARFLOW_FID_RUNTIME")
    assert FeatureExtractor(weights, cache_dir=tmp_path).runtime == "torch"  # auto without the extra


@needs_onnx
def test_a_network_that_does_not_export_is_an_error_when_asked_for_and_torch_otherwise(tmp_path, monkeypatch,
                                                                                      images, capfd):
    pool = scripted(Pool(), tmp_path / "pool.pt")  # adaptive pooling to 4x4 of 299 pixels: no ONNX export
    with pytest.raises(FeatureExtractorError, match="could not run through ONNX Runtime .*use runtime torch"):
        FeatureExtractor(pool, runtime="onnxruntime", cache_dir=tmp_path)
    monkeypatch.delenv("TARFLOW_FID_RUNTIME")
    with pytest.warns(UserWarning, match="the FID features come from TorchScript"):
        fallback = FeatureExtractor(pool, cache_dir=tmp_path)
    assert fallback.runtime == "torch" and fallback(images).shape == (5, 48)
    assert not list((tmp_path / "fid").glob("*.onnx*"))  # nothing half-written is left
    assert capfd.readouterr().out == ""  # the exporter's graph dump (from C++) does not reach standard output
