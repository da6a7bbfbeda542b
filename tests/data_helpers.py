"""Tiny dataset files built by the tests: IDX .gz files, a CIFAR-10 python archive, image folders and tars."""

from __future__ import annotations

import gzip
import io
import pickle
import tarfile
from pathlib import Path

import numpy as np
from PIL import Image

from tarflow.data import SOURCES, md5sum
from tarflow.data.download import RemoteFile

CIFAR_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_idx(path: Path, a: np.ndarray) -> Path:
    """An IDX file of uint8 values, gzipped: 0, 0, 0x08, ndim, big-endian sizes, values."""
    header = bytes([0, 0, 0x08, a.ndim]) + np.array(a.shape, dtype=">u4").tobytes()
    path.write_bytes(gzip.compress(header + a.astype(np.uint8).tobytes(), mtime=0))
    return path


def make_idx_dataset(folder: Path, n_train: int = 12, n_test: int = 5, seed: int = 0) -> dict[str, np.ndarray]:
    """The four MNIST-style files with random 28x28 images and labels 0..9; returns the arrays."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"train_x": rng.integers(0, 256, (n_train, 28, 28)), "train_y": rng.integers(0, 10, n_train),
              "test_x": rng.integers(0, 256, (n_test, 28, 28)), "test_y": rng.integers(0, 10, n_test)}
    names = {"train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
             "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz"}
    for k, a in arrays.items():
        write_idx(folder / names[k], a)
    return arrays


def trust_files(monkeypatch, dataset: str, folder: Path) -> None:
    """Make ``dataset`` expect the md5s of the tiny files in ``folder`` (same names and URLs as the real ones)."""
    files = [RemoteFile(f.name, md5sum(folder / f.name), f.urls) for f in SOURCES[dataset]]
    monkeypatch.setitem(SOURCES, dataset, files)


def cifar_batch(data: np.ndarray, labels: np.ndarray) -> bytes:
    """A batch pickled as the official files are: protocol 2, bytes keys, data (n, 3072) uint8, labels a list."""
    return pickle.dumps({b"batch_label": b"tiny", b"labels": [int(v) for v in labels],
                         b"data": data.reshape(len(data), -1), b"filenames": [b"x.png"] * len(data)}, protocol=2)


def make_cifar_archive(path: Path, per_batch: int = 3, n_test: int = 4, seed: int = 0) -> dict[str, np.ndarray]:
    """A cifar-10-python.tar.gz in the official layout (cifar-10-batches-py/data_batch_1..5, test_batch)."""
    rng = np.random.default_rng(seed)
    out = {"train_x": rng.integers(0, 256, (5 * per_batch, 3, 32, 32), dtype=np.uint8),
           "train_y": rng.integers(0, 10, 5 * per_batch), "test_x": rng.integers(0, 256, (n_test, 3, 32, 32),
                                                                                 dtype=np.uint8),
           "test_y": rng.integers(0, 10, n_test)}
    blobs = {f"data_batch_{i + 1}": cifar_batch(out["train_x"][i * per_batch:(i + 1) * per_batch],
                                                out["train_y"][i * per_batch:(i + 1) * per_batch]) for i in range(5)}
    blobs["test_batch"] = cifar_batch(out["test_x"], out["test_y"])
    blobs["batches.meta"] = pickle.dumps({b"label_names": [c.encode() for c in CIFAR_CLASSES]}, protocol=2)
    write_tar(path, {f"cifar-10-batches-py/{k}": v for k, v in blobs.items()})
    return out


def write_tar(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, blob in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(blob)
            tf.addfile(info, io.BytesIO(blob))
    return path


def png_bytes(a: np.ndarray, mode: str | None = None, fmt: str = "PNG") -> bytes:
    """An image file's bytes from an (H, W) or (H, W, C) array."""
    buf = io.BytesIO()
    Image.fromarray(a, mode).save(buf, fmt)
    return buf.getvalue()


def make_image_folder(root: Path, classes=CIFAR_CLASSES, per_class=(2, 1), size: int = 32,
                      seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """train/<class>/*.png and test/<class>/*.png of random RGB images; returns {split: {relative path: (C,H,W)}}."""
    rng = np.random.default_rng(seed)
    out: dict[str, dict[str, np.ndarray]] = {"train": {}, "test": {}}
    for split, n in zip(("train", "test"), per_class):
        for c in classes:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                rel = f"{split}/{c}/{c}_{i:03d}.png"
                (root / rel).write_bytes(png_bytes(a))
                out[split][rel] = a.transpose(2, 0, 1)
    return out


def tar_folder(root: Path, path: Path, prefix: str = "") -> Path:
    """A .tar.gz of every file under ``root``, names relative to it (under ``prefix`` if given)."""
    return write_tar(path, {prefix + p.relative_to(root).as_posix(): p.read_bytes()
                            for p in sorted(root.rglob("*")) if p.is_file()})
