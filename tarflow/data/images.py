"""Image files to uint8 arrays: the mode rule, crop and resize, folder and archive layouts, a process pool.

Mode rule (what an image becomes before it is cropped and resized; ``channels`` is 3 for RGB, 1 for grey):

- palette ``P``/``PA``: expanded to RGBA if it has a transparent colour, else to RGB; ``1`` (bilevel): 0/255 grey.
- alpha (``RGBA``, ``LA``, ``PA``, ...): dropped if every pixel is opaque (alpha 255); an image with any
  transparent pixel is rejected (a bad image), since no background colour is right for every dataset.
- 16-bit and 32-bit integer grey (``I;16``, ``I;16B``, ``I``): values 0..65535 map to round(v / 257) in 0..255
  (65535 -> 255); values outside 0..65535 and floating-point ``F`` images are rejected (their range is unknown).
- then grey becomes RGB by repeating it; colour becomes grey by Pillow's ITU-R 601-2 luma
  (L = 0.299 R + 0.587 G + 0.114 B); ``CMYK``, ``YCbCr`` etc. go through Pillow's RGB conversion (no ICC profile).

Geometry: JPEG/TIFF/WebP EXIF orientation is applied; the central square (side = the shorter side) is cut out
and resized to ``size`` x ``size`` with Pillow's antialiased bicubic filter (skipped when it already fits).
"""

from __future__ import annotations

import hashlib
import io
import multiprocessing
import os
import tarfile
import zlib
from concurrent.futures import ProcessPoolExecutor
from itertools import islice
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from PIL import Image, ImageOps

from ..errors import DataError
from ..progress import progress_bar

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm")
SPLITS = ("train", "test")
NO_CLASS = "."  # the class name of images that sit directly in the root (one class)
CHUNK = 256  # images per task sent to a worker process
MIN_POOL = 2000  # fewer images than this are decoded in-process (starting workers would cost more)


class BadImage(Exception):
    """An image that cannot be read or converted; the message says why."""


def to_mode(im: Image.Image, channels: int) -> Image.Image:
    """The image in mode RGB (channels=3) or L (channels=1), by the rule in this module's docstring."""
    if im.mode in ("P", "PA"):
        im = im.convert("RGBA" if im.mode == "PA" or "transparency" in im.info else "RGB")
    elif im.mode == "1":
        im = im.convert("L")
    elif im.mode == "F":
        raise BadImage("floating-point pixels (mode F) have no fixed range; save it as 8-bit or 16-bit")
    elif im.mode.startswith("I"):
        v = np.asarray(im).astype(np.int64)
        if v.size and (v.min() < 0 or v.max() > 65535):
            raise BadImage(f"{im.mode} pixels span {v.min()}..{v.max()}, outside the 16-bit range 0..65535")
        im = Image.fromarray(np.round(v / 257).astype(np.uint8), "L")
    bands = im.getbands()
    if bands[-1] in ("A", "a"):
        lo, _ = im.getchannel(bands[-1]).getextrema()
        if lo < 255:
            raise BadImage(f"{im.mode} image with transparent pixels (alpha down to {lo}); flatten it onto the "
                           f"background you want first")
        im = im.convert("RGB" if len(bands) > 2 else "L")
    target = "RGB" if channels == 3 else "L"
    if im.mode not in ("RGB", "L"):
        try:
            im = im.convert("RGB")
        except ValueError as e:
            raise BadImage(f"mode {im.mode} cannot be converted to RGB ({e})") from e
    return im if im.mode == target else im.convert(target)


def center_square(im: Image.Image, size: int) -> Image.Image:
    """The central square of side min(w, h), resized to size x size (antialiased bicubic)."""
    w, h = im.size
    s = min(w, h)
    if (w, h) != (s, s):
        left, top = (w - s) // 2, (h - s) // 2
        im = im.crop((left, top, left + s, top + s))
    return im if s == size else im.resize((size, size), Image.Resampling.BICUBIC)


def decode(src: str | bytes, size: int, channels: int) -> np.ndarray:
    """One image file (a path, or its bytes) as a (channels, size, size) uint8 array; BadImage if it fails."""
    try:
        with Image.open(io.BytesIO(src) if isinstance(src, bytes) else src) as im:
            im.load()  # decodes now: a truncated file fails here
            if im.format in ("JPEG", "MPO", "TIFF", "WEBP"):
                im = ImageOps.exif_transpose(im)
            a = np.asarray(center_square(to_mode(im, channels), size), dtype=np.uint8)
    except BadImage:
        raise
    except Exception as e:  # PIL raises OSError, ValueError, SyntaxError, DecompressionBombError, ...
        raise BadImage(f"{type(e).__name__}: {e}" if str(e) else type(e).__name__) from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


def decode_chunk(items: list[tuple[str, str | bytes]], size: int, channels: int) -> list[np.ndarray | str]:
    """Decode each (name, path or bytes): its array, or the reason it failed (a string)."""
    out = []
    for _, src in items:
        try:
            out.append(decode(src, size, channels))
        except BadImage as e:
            out.append(str(e))
    return out


def pool_size() -> int:
    """Worker processes for decoding: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:
        n = os.cpu_count() or 1
    return min(n, 8)


def decode_many(items: Iterable[tuple[str, str | bytes]], size: int, channels: int, total: int | None,
                progress: bool, desc: str) -> list[np.ndarray | str]:
    """`decode_chunk` over all items, in order; worker processes when there are many and more than one CPU."""
    chunks = iter(lambda it=iter(items): list(islice(it, CHUNK)), [])
    bar = progress_bar(total=total, desc=desc, unit="img", enabled=progress, leave=False)
    out: list[np.ndarray | str] = []
    workers = pool_size()
    if workers <= 1 or (total is not None and total < MIN_POOL):
        for chunk in chunks:
            out += decode_chunk(chunk, size, channels)
            bar.update(len(chunk))
    else:
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else None)  # fork: no re-import of torch
        with ProcessPoolExecutor(workers, mp_context=ctx) as ex:
            futures = [ex.submit(decode_chunk, chunk, size, channels) for chunk in chunks]  # reads overlap decoding
            for f in futures:
                part = f.result()
                out += part
                bar.update(len(part))
    bar.close()
    return out


def scan_folder(root: Path) -> list[tuple[str, int, int]]:
    """(relative path, bytes, mtime in ns) of every image file under ``root``, sorted; hidden entries skipped."""
    out = []

    def walk(folder: Path, prefix: str):
        with os.scandir(folder) as it:
            for e in it:
                if e.name.startswith("."):
                    continue
                if e.is_dir():
                    walk(Path(e.path), prefix + e.name + "/")
                elif e.name.lower().endswith(IMAGE_SUFFIXES):
                    st = e.stat()
                    out.append((prefix + e.name, st.st_size, st.st_mtime_ns))

    walk(root, "")
    return sorted(out)


def read_archive(path: Path, size: int, channels: int, progress: bool
                 ) -> tuple[list[str], list[str], list[np.ndarray | str]]:
    """Every image in a tar archive (any compression tarfile reads): member names, names relative to the root,
    and decoded arrays or failure reasons. A single top-level folder that holds everything is the root.
    """
    names: list[str] = []

    def members() -> Iterator[tuple[str, bytes]]:
        try:
            with tarfile.open(path, "r:*") as tf:
                for m in tf:
                    base = m.name.rsplit("/", 1)[-1]
                    if m.isfile() and base.lower().endswith(IMAGE_SUFFIXES) and not base.startswith("."):
                        names.append(m.name.removeprefix("./"))
                        yield m.name, tf.extractfile(m).read()
        except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
            raise DataError(f"{path}: cannot read this archive ({e}); is it complete?") from e

    results = decode_many(members(), size, channels, None, progress, f"decoding {path.name}")
    members = list(names)
    tops = {n.split("/", 1)[0] for n in names}
    if len(tops) == 1 and all("/" in n for n in names):
        names = [n.split("/", 1)[1] for n in names]
    return members, names, results


def layout(paths: list[str], where: str) -> tuple[list[str | None], list[int], list[str]]:
    """Split ("train", "test" or None = unused) and class index of each relative path, and the class names.

    With ``train/`` and ``test/`` folders at the root, they are the splits (anything else is unused);
    otherwise about 1 in 10 images is held out for "test", chosen by a hash of its path (stable when
    files are added). Inside a split, each sub-folder is a class; images directly in it form one class.
    """
    tops = {p.split("/", 1)[0] for p in paths if "/" in p}
    if len(tops & set(SPLITS)) == 1:
        (have,), (lack,) = tops & set(SPLITS), set(SPLITS) - tops
        raise DataError(f"{where} has a {have}/ folder but no {lack}/ folder: add {lack}/<class>/ images, or drop the "
                        f"split level (class folders at the root; then 1 in 10 images is held out for test)")
    has_splits = tops >= set(SPLITS)
    splits: list[str | None] = []
    rest: list[str] = []
    for p in paths:
        if has_splits:
            head, _, tail = p.partition("/")
            splits.append(head if head in SPLITS and tail else None)
            rest.append(tail)
        else:
            held_out = int(hashlib.md5(p.encode()).hexdigest()[:8], 16) % 10 == 0
            splits.append("test" if held_out else "train")
            rest.append(p)
    used = [r for r, s in zip(rest, splits) if s is not None]
    loose = [r for r in used if "/" not in r]
    if loose and len(loose) < len(used):
        raise DataError(f"{where}: images such as {loose[0]!r} sit beside class folders: put every image in a class "
                        f"folder, or use a folder of images only (one class)")
    classes = [NO_CLASS] if loose else sorted({r.split("/", 1)[0] for r in used})
    index = {c: i for i, c in enumerate(classes)}
    labels = [index.get(r.split("/", 1)[0] if "/" in r else NO_CLASS, -1) for r in rest]
    return splits, labels, classes
