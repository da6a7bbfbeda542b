"""`tarflow generate` of a pretzel model (STARFlow2, issue 18), with a tiny random model: printed words, the HTML
page and PNG strip, images from files, and one-line errors for bad prompts; the text path is untouched (its own
tests and tests/test_bad_inputs.py -k generate)."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tarflow.cli import main
from tarflow.data.interleaved import WORDS
from tarflow.errors import InputError
from tarflow.flows.config import FlowConfig
from tarflow.flows.pretzel import Pretzel
from tarflow.interleaved_io import read_image_file
from conftest import randomise

pytestmark = pytest.mark.usefixtures("one_thread")

IMAGE_TOKENS = 4  # 8 px images, patch 4


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    torch.manual_seed(0)
    config = FlowConfig(architecture="pretzel", image_size=8, channels=1, patch_size=4, width=32, head_dim=16,
                        mlp_ratio=2, num_blocks=3, layers_per_block=[1, 1, 2], context=40, words=" ".join(WORDS))
    path = tmp_path_factory.mktemp("pretzel") / "model"
    randomise(Pretzel(config), seed=1, std=0.15).save_pretrained(path, {"noise": "gaussian", "noise_std": 0.3})
    return path


@pytest.fixture
def digit_file(tmp_path):
    """An 8x8 grey PNG of random levels, and its levels."""
    levels = np.random.default_rng(0).integers(0, 256, (8, 8)).astype(np.uint8)
    Image.fromarray(levels).save(tmp_path / "digit.png")
    return tmp_path / "digit.png", levels


def page_images(html: str) -> list[tuple[str, np.ndarray]]:
    """(class, uint8 pixels) of each <img> of a page, in order."""
    found = re.findall(r"<img class=(\w+) [^>]*src='data:image/png;base64,([^']+)'>", html)
    return [(kind, np.asarray(Image.open(io.BytesIO(base64.b64decode(data))))) for kind, data in found]


def test_text_to_image_prints_and_writes_each_sequence(model_dir, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["generate", str(model_dir), "--prompt", "a seven : <image>", "--count", "3", "--max-length", "30",
                 "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.startswith("<bos> a seven : <image>") for line in lines)
    html = (out / "sequences.html").read_text()
    assert html.count("<li>") == 3
    images = page_images(html)
    assert len(images) == sum(line.split().count("<image>") for line in lines)  # every image where its word stands
    assert all(kind == "generated" for kind, _ in images)
    strip = Image.open(out / "sequences.png")
    columns = max(line.split().count("<image>") for line in lines)
    scale = strip.width // (columns * 9 + 1)  # 8 px images, 1 px gaps
    assert strip.height == scale * (3 * 9 + 1)


def test_captioning_reads_the_image_file_and_marks_it_given(model_dir, digit_file, tmp_path, capsys):
    path, levels = digit_file
    out = tmp_path / "out"
    assert main(["generate", str(model_dir), "--prompt", "<image> shows", "--image", str(path), "--count", "2",
                 "--word-temperature", "0", "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and lines[0] == lines[1] and lines[0].startswith("<bos> <image> shows")  # greedy words
    kind, pixels = page_images((out / "sequences.html").read_text())[0]
    assert kind == "given"
    assert np.array_equal(pixels, levels)  # the given image as read, not its noisy copy


def test_image_files_become_bin_centres_of_the_model_size(digit_file, tmp_path):
    path, levels = digit_file
    expected = torch.from_numpy(2 * (levels.astype(np.float64) + 0.5) / 256 - 1).float()[None]
    assert torch.equal(read_image_file(path, 8, 1), expected)
    Image.new("RGB", (16, 16), (100, 100, 100)).save(tmp_path / "large.png")
    large = read_image_file(tmp_path / "large.png", 8, 1)  # RGB, 16 px: grey, resized to 8 px
    assert torch.equal(large, torch.full((1, 8, 8), 2 * 100.5 / 256 - 1))
    with pytest.raises(InputError, match="no such file"):
        read_image_file(tmp_path / "missing.png", 8, 1)


@pytest.mark.parametrize("arguments, message", [
    (["--prompt", "<image> plus <image> is"], "--image FILE"),
    (["--prompt", "a sevn : <image>"], "unknown words"),
    (["--prompt", "<image> shows", "--image", "notes.txt"], "not an image file"),
    (["--prompt", "<image> shows", "--image", "digit.png", "--image", "digit.png"], "2 images for the 1 <image>"),
    (["--prompt", "a seven : <image>", "--max-length", "5"], "max_length=5"),
    (["--prompt", "a seven : <image>", "--length", "5"], "--max-length"),
])
def test_bad_prompts_are_one_line_errors(arguments, message, model_dir, digit_file, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(digit_file[0].parent)
    (tmp_path / "notes.txt").write_text("not an image\n")
    assert main(["generate", str(model_dir), *arguments]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tarflow: error:") and message in err[0]
