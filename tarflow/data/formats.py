"""Readers of the original dataset file formats: IDX (MNIST, Fashion-MNIST) and the CIFAR-10 python batches."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from ..errors import DataError

IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: str | os.PathLike) -> np.ndarray:
    """An IDX file (gzipped if its name ends in .gz) as an array.

    Layout: bytes 0, 0, a type code, the number of dimensions d; d big-endian uint32 sizes; the values.
    """
    path = Path(path)
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path}: cannot read this IDX file ({e}); download it again") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_TYPES:
        raise DataError(f"{path} is not an IDX file (bad header {raw[:4]!r})")
    ndim = raw[3]
    dims = tuple(int(d) for d in np.frombuffer(raw, ">u4", ndim, offset=4))
    dtype = np.dtype(IDX_TYPES[raw[2]])
    start = 4 + 4 * ndim
    if len(raw) != start + dtype.itemsize * int(np.prod(dims)):
        raise DataError(f"{path}: its header says {dims} values but the file holds {len(raw) - start} bytes "
                        f"of data (truncated or damaged); download it again")
    return np.frombuffer(raw, dtype, offset=start).reshape(dims)


def read_idx_pair(images_file: Path, labels_file: Path, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 1, H, W) uint8 and labels (N,) int64 from an IDX image file and its label file."""
    images, labels = read_idx(images_file), read_idx(labels_file)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(f"{images_file}: expected uint8 images of shape (N, H, W), got {images.dtype} {images.shape}")
    if labels.shape != (len(images),):
        raise DataError(f"{labels_file} holds {labels.shape} labels for the {len(images)} images of {images_file}")
    if labels.size and int(labels.max()) >= num_classes:
        raise DataError(f"{labels_file}: label {int(labels.max())} is out of range 0..{num_classes - 1}")
    return images[:, None], labels.astype(np.int64)


CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_BATCHES = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


class ArrayUnpickler(pickle.Unpickler):
    """Unpickles plain containers and numpy arrays only: a pickle can otherwise run arbitrary code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")}  # encode: bytes in protocol 2

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR batch holds only arrays")
        return super().find_class(module, name)


def parse_cifar_batch(blob: bytes, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One pickled batch (a dict with ``data``: (n, 3072) uint8 rows, R then G then B planes, and ``labels``)."""
    try:
        d = ArrayUnpickler(io.BytesIO(blob), encoding="bytes").load()
        d = {k.decode() if isinstance(k, bytes) else k: v for k, v in d.items()}
        data = np.asarray(d["data"], dtype=np.uint8)
        labels = np.asarray(d["labels"], dtype=np.int64)
    except Exception as e:  # any malformed pickle: name the file rather than show an unpickling trace
        raise DataError(f"{where}: not a CIFAR-10 python batch ({type(e).__name__}: {e})") from e
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (len(data),):
        raise DataError(f"{where}: expected data (n, 3072) and n labels, got {data.shape} and {labels.shape}")
    if labels.size and not 0 <= labels.min() <= labels.max() <= 9:
        raise DataError(f"{where}: labels outside 0..9")
    return data.reshape(-1, 3, 32, 32), labels


def read_cifar_python(source: str | os.PathLike) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """CIFAR-10 {"train": (images, labels), "test": ...} from ``cifar-10-python.tar.gz`` or its extracted folder.

    Images (N, 3, 32, 32) uint8 and labels (N,) int64, batches in the official order (data_batch_1..5, test_batch).
    """
    source = Path(source)
    names = CIFAR_BATCHES["train"] + CIFAR_BATCHES["test"]
    blobs = {}
    if source.is_dir():
        folder = source / CIFAR_FOLDER if (source / CIFAR_FOLDER).is_dir() else source
        for b in names:
            if not (folder / b).is_file():
                raise DataError(f"{folder / b} is missing: an extracted CIFAR-10 folder holds {', '.join(names)}")
            blobs[b] = (folder / b).read_bytes()
    else:
        wanted = {f"{CIFAR_FOLDER}/{b}": b for b in names}
        try:
            with tarfile.open(source, "r:*") as tf:
                for m in tf:
                    if m.name in wanted and m.isfile():
                        blobs[wanted[m.name]] = tf.extractfile(m).read()
        except (OSError, EOFError, tarfile.TarError, zlib.error) as e:
            raise DataError(f"{source}: cannot read this archive ({e}); download it again") from e
        missing = [n for n, b in wanted.items() if b not in blobs]
        if missing:
            raise DataError(f"{source} lacks {', '.join(missing)}: not the official cifar-10-python.tar.gz")
    out = {}
    for split, batches in CIFAR_BATCHES.items():
        parts = [parse_cifar_batch(blobs[b], f"{source}:{b}") for b in batches]
        out[split] = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    return out
