"""Models saved by tarflow 0.1.0 (checkpoint format 1) load and give the same log p and inverse.

The fixture (tests/fixtures/format1) was written once by that release with its ``make_fixture.py``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tarflow import TarFlow

FIXTURES = Path(__file__).parent / "fixtures" / "format1"
EXPECTED = json.loads((FIXTURES / "expected.json").read_text())


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_format1_model_gives_the_same_log_prob_and_inverse(name):
    case = EXPECTED[name]
    model = TarFlow.from_pretrained(FIXTURES / name)
    c = model.config
    shape = (4, c.channels, c.image_size, c.image_size)
    x = torch.tensor(case["x"], dtype=torch.float64).view(shape)
    y = None if case["y"] is None else torch.tensor(case["y"])
    assert model.log_prob(x, y).tolist() == pytest.approx(case["log_prob"], abs=1e-10, rel=0)
    z = torch.tensor(case["z"], dtype=torch.float64).view(shape)
    y_inverse = None if case["y"] is None else torch.tensor([0, 1, 2, 0])
    x_back = model.inverse(z, y_inverse)
    assert torch.allclose(x_back.flatten(), torch.tensor(case["inverse"], dtype=torch.float64), atol=1e-10, rtol=0)
