"""Files of interleaved sequences (STARFlow2, `tarflow generate` of pretzel models): prompt images read from image
files, generated sequences written as an HTML page and a PNG strip.

- An image file (any format Pillow reads) becomes one model image: grey (or RGB for 3 channels), resized to the
  model's size when it differs (Lanczos), its 8-bit levels k placed at their bin centres, x = 2 (k + 1/2) / 256 - 1.
- ``sequences.html``: one row per sequence, its words in order with each image inline where it stands (given
  images framed and titled "given"), self-contained (images as PNG data URIs).
- ``sequences.png``: one strip per sequence, its images left to right, white after its last image.
"""

from __future__ import annotations

import base64
import html
import io
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import Tensor

from .data.interleaved import WORDS, InterleavedBatch
from .errors import InputError
from .io import OutputError, atomic_write_text
from .viz import grid_image, save_grid, to_uint8

LEVELS = 256  # 8-bit files
DISPLAY_PIXELS = 84  # the height of an image in the page


def read_image_file(path: str | os.PathLike, image_size: int, channels: int) -> Tensor:
    """The image at ``path`` as a model image (channels, image_size, image_size) in [-1, 1] at bin centres."""
    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (image_size, image_size):
                image = image.resize((image_size, image_size), Image.LANCZOS)
            levels = np.asarray(image, dtype=np.float32).reshape(image_size, image_size, channels)
    except FileNotFoundError:
        raise InputError(f"--image {path}: no such file; give an image file (PNG, JPEG, ...)") from None
    except (UnidentifiedImageError, IsADirectoryError, OSError, ValueError) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise InputError(f"--image {path} is not an image file Pillow can read ({reason}): give a PNG or JPEG "
                         f"(a digit drawn light on dark, as MNIST)") from None
    return torch.from_numpy(2 * (levels + 0.5) / LEVELS - 1).permute(2, 0, 1).contiguous()


def row_words(batch: InterleavedBatch, row: int) -> list[str]:
    """The words of sequence ``row`` through its end, ``<image>`` standing for each image."""
    length = int(batch.lengths[row])
    ids = batch.ids[row, :length][~batch.is_image[row, :length]]
    return [WORDS[int(i)] for i in ids if i >= 0]


def sequence_strip(batch: InterleavedBatch) -> Tensor:
    """uint8 images (B * K, C, H, W): each row's images, white in the slots after its last."""
    images = to_uint8(batch.images.detach().cpu().float(), LEVELS)
    used = torch.arange(images.shape[1]) < batch.image_count.cpu()[:, None]
    images[~used] = 255
    return images.reshape(-1, *images.shape[2:])


def write_sequences(batch: InterleavedBatch, given: Tensor, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """``out_dir``/sequences.html and ``out_dir``/sequences.png of generated sequences (``given`` (B, K): the image
    slots given in the prompt). Other files in ``out_dir`` are kept; these two are replaced."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir} is a file: give a directory (new, or one to add sequences.html and "
                          f"sequences.png to)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise OutputError(f"cannot create the directory {out_dir}: {e.strerror or e}") from None
    columns = max(1, batch.images.shape[1])
    strip = sequence_strip(batch) if batch.images.shape[1] else torch.full((len(batch.ids), 1, 1, 1), 255,
                                                                            dtype=torch.uint8)
    png = save_grid(strip, out_dir / "sequences.png", nrow=columns)
    page = out_dir / "sequences.html"
    atomic_write_text(page, sequences_html(batch, given))
    return page, png


def sequences_html(batch: InterleavedBatch, given: Tensor) -> str:
    """The page of `write_sequences`."""
    images = to_uint8(batch.images.detach().cpu().float(), LEVELS)
    rows = []
    for row in range(len(batch.ids)):
        slot, parts = 0, []
        for word in row_words(batch, row):
            parts.append(f"<span class=word>{html.escape(word)}</span>")
            if word == "<image>" and slot < int(batch.image_count[row]):
                is_given = bool(given[row, slot])
                title = "given" if is_given else "generated"
                source = data_uri(images[row, slot])
                parts.append(f"<img class={title} title='image {slot + 1}, {title}' src='{source}'>")
                slot += 1
        rows.append(f"<li>{' '.join(parts)}</li>")
    return ("<!doctype html>\n<meta charset=utf-8>\n<title>generated sequences</title>\n<style>"
            f"img {{height: {DISPLAY_PIXELS}px; image-rendering: pixelated; vertical-align: middle; margin: 2px}}"
            " img.given {outline: 3px solid #2a7ae2} li {margin: 6px 0; font-family: monospace; font-size: 16px}"
            "</style>\n<p>One sequence per line; images framed in blue were given in the prompt, the others were "
            "generated.</p>\n<ol>\n" + "\n".join(rows) + "\n</ol>\n")


def data_uri(image: Tensor) -> str:
    """A uint8 image (C, H, W) as a PNG data URI."""
    buffer = io.BytesIO()
    grid_image(image[None], nrow=1, scale=1, pad=0).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()
