"""The decoded cache: one folder per (dataset, split, shape, source), written once, memory-mapped on load.

``<cache>/decoded/<name>-<split>-<C>x<H>x<W>-<hash of the source>/`` holds ``images.npy`` (N, C, H, W) uint8,
``labels.npy`` (N,) int64 and ``meta.json``; a video dataset's folder is named by (F, C, H, W) and holds
clips (N, F, C, H, W) and labels (N,) or (N, K). The folder is written under a temporary name and renamed,
so it is either complete or absent. Delete it to force a new decode.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from ..io import atomic_dir

VERSION = 1  # bump when decoding changes meaning: old caches are then ignored


def cache_path(cache_dir: Path, name: str, split: str, shape: tuple[int, ...], source: str) -> Path:
    """Where the decoded split lives; ``source`` identifies the input (checksums, or path + sizes + times)."""
    h = hashlib.sha1(f"v{VERSION}|{source}".encode()).hexdigest()[:12]
    return Path(cache_dir) / "decoded" / f"{name}-{split}-{'x'.join(map(str, shape))}-{h}"


def load(path: Path, ndim: int = 4) -> tuple[np.ndarray, np.ndarray, dict[str, Any]] | None:
    """(images memory-mapped copy-on-write, labels, meta), or None if absent, damaged, or not ``ndim``-dimensional.

    Copy-on-write ("c") maps the file like "r" but an accidental in-place write changes only this process's
    copy instead of crashing it.
    """
    try:
        meta = json.loads((path / "meta.json").read_text())
        images = np.load(path / "images.npy", mmap_mode="c")
        labels = np.load(path / "labels.npy")
    except (OSError, ValueError):
        return None
    n = len(images)
    if images.dtype != np.uint8 or images.ndim != ndim or labels.shape[:1] != (n,) or meta.get("count") != n:
        return None
    return images, labels, meta


def save(path: Path, images: np.ndarray, labels: np.ndarray, meta: dict[str, Any]) -> bool:
    """Write the folder atomically; False (with a warning) if it cannot be written, e.g. a read-only cache."""
    try:
        with atomic_dir(path) as tmp:
            np.save(tmp / "images.npy", np.ascontiguousarray(images, dtype=np.uint8))
            np.save(tmp / "labels.npy", np.asarray(labels, dtype=np.int64))
            (tmp / "meta.json").write_text(json.dumps({**meta, "count": len(images)}, indent=1) + "\n")
    except OSError as e:
        warnings.warn(f"could not write the decoded cache {path} ({e}); the data will be decoded again next "
                      f"time. Set cache_dir (or $TARFLOW_CACHE) to a writable folder.", stacklevel=3)
        return False
    return True
