"""Datasets as compact integer tensors: images (N, C, H, W) of levels 0..L-1, labels (N,).

Named datasets: ``digits`` (scikit-learn, 8x8 grey, 17 levels), ``mnist`` and ``fashion-mnist`` (28x28 grey,
the original IDX files), ``cifar10`` (32x32 RGB: the official python archive, its extracted folder, or
``train/<class>/*.png`` + ``test/<class>/*.png`` as a folder or a tar archive) and ``folder`` (any folder or
tar archive of images, a class per sub-folder, cut to the central square and resized to ``image_size``).
Raw files are found or downloaded by `download.fetch_files`; decoded splits are cached by `cache`.
"""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import Tensor

from ..errors import ConfigError, DataError
from . import cache
from .download import RemoteFile, default_cache_dir, fetch_files
from .formats import CIFAR_BATCHES, CIFAR_FOLDER, read_cifar_python, read_idx_pair
from .images import IMAGE_SUFFIXES, decode_many, layout, read_archive, scan_folder


@dataclass
class ImageData:
    """One split of an image dataset; pixel levels, not floats (dequantize per batch)."""

    name: str
    split: str
    images: Tensor  # (N, C, H, W), integer levels in 0..levels-1 (uint8; memory-mapped when cached)
    labels: Tensor  # (N,) int64
    levels: int  # L: number of grey levels per channel; bin width 2/L in [-1, 1]
    num_classes: int
    classes: tuple[str, ...] = ()  # class names, index = label

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def image_size(self) -> int:
        return self.images.shape[-1]

    @property
    def channels(self) -> int:
        return self.images.shape[1]


@dataclass(frozen=True)
class Options:
    """The arguments of `load_dataset` that every loader shares."""

    data_dir: Path | None = None
    cache_dir: Path = Path()
    download: bool = True
    image_size: int | None = None
    channels: int | None = None
    on_bad_image: str = "error"
    progress: bool = True


def urls(file: str, *bases: str) -> tuple[str, ...]:
    return tuple(b + file for b in bases)


MNIST_BASES = ("https://ossci-datasets.s3.amazonaws.com/mnist/", "http://yann.lecun.com/exdb/mnist/")
FASHION_BASES = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
CIFAR10_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"

# Raw files of each downloadable dataset (train images, train labels, test images, test labels for IDX).
SOURCES: dict[str, list[RemoteFile]] = {
    # (name, md5 of the .gz, md5 of its decompressed content: accepts packagers' re-compressed copies, such as
    # Debian's dataset-fashion-mnist, whose content is identical)
    "mnist": [RemoteFile(n, md5, urls(n, *MNIST_BASES), content) for n, md5, content in [
        ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873", "6bbc9ace898e44ae57da46a324031adb"),
        ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432", "a25bea736e30d166cdddb491f175f624"),
        ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3", "2646ac647ad5339dbf082846283269ea"),
        ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c", "27ae3e4e09519cfbb04c329615203637")]],
    "fashion-mnist": [RemoteFile(n, md5, urls(n, *FASHION_BASES), content) for n, md5, content in [
        ("train-images-idx3-ubyte.gz", "8d4fb7e6c68d591d4c3dfef9ec88bf0d", "f4a8712d7a061bf5bd6d2ca38dc4d50a"),
        ("train-labels-idx1-ubyte.gz", "25c81989df183df01b3e8a0aad5dffbe", "9018921c3c673c538a1fc5bad174d6f9"),
        ("t10k-images-idx3-ubyte.gz", "bef4ecab320f06d8554ea6380940ec79", "8181f5470baa50b63fa0f6fddb340f0a"),
        ("t10k-labels-idx1-ubyte.gz", "bb300cfdad3c16e7a12a480ee83cd310", "15d484375f8d13e6eb1aabb0c3f46965")]],
    "cifar10": [RemoteFile("cifar-10-python.tar.gz", "c58f30108f718f92721af3b95e74349a", (CIFAR10_URL,))],
}

CLASSES = {
    "mnist": tuple(str(i) for i in range(10)),
    "fashion-mnist": ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                      "Ankle boot"),
    "cifar10": ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"),
}


def check_shape(name: str, o: Options, size: int, channels: int) -> None:
    """A fixed-size dataset accepts image_size/channels only when they match its own."""
    if o.image_size not in (None, size) or o.channels not in (None, channels):
        raise ConfigError(f"{name} images are {channels}x{size}x{size}, not {o.channels or channels}x"
                          f"{o.image_size or size}x{o.image_size or size}: set image_size={size} channels={channels} "
                          f"(or use the folder dataset, which resizes)")


def load_digits(split: str, o: Options = Options()) -> ImageData:
    """scikit-learn's 8x8 digits (1,797 images, 17 grey levels 0..16, 10 classes).

    Split deterministically (a fixed permutation): 1,437 train and 360 test images.
    """
    from sklearn.datasets import load_digits as sk_digits

    check_shape("digits", o, 8, 1)
    d = sk_digits()
    order = np.random.RandomState(0).permutation(len(d.target))
    n_test = 360
    idx = order[n_test:] if split == "train" else order[:n_test]
    images = torch.from_numpy(d.images[idx].astype(np.uint8)).unsqueeze(1)
    labels = torch.from_numpy(d.target[idx].astype(np.int64))
    return ImageData("digits", split, images, labels, levels=17, num_classes=10, classes=CLASSES["mnist"])


Decoded = dict[str, tuple[np.ndarray, np.ndarray, dict[str, Any]]]  # split -> (images, labels, meta)


def cached(name: str, split: str, shape: tuple[int, ...], source: str, decode: Callable[[], Decoded],
           o: Options) -> tuple[np.ndarray, np.ndarray, dict[str, Any], Path]:
    """``split`` from the decoded cache; on a miss, ``decode()`` and cache every split it returns. ``shape`` is
    one item's: (C, H, W) for images, (F, C, H, W) for video clips."""
    path = cache.cache_path(o.cache_dir, name, split, shape, source)
    ndim = len(shape) + 1
    hit = cache.load(path, ndim)
    if hit is None:
        decoded = decode()
        for s, (x, y, meta) in decoded.items():
            p = cache.cache_path(o.cache_dir, name, s, shape, source)
            if len(x) and (s == split or cache.load(p, ndim) is None):
                if cache.save(p, x, y, {"name": name, "split": s, **meta}) and s == split:
                    hit = cache.load(p, ndim)
        if hit is None:  # not writable, or empty
            x, y, meta = decoded[split]
            hit = x, y, {**meta, "count": len(x)}
    return (*hit, path)


def image_data(name: str, split: str, x: np.ndarray, y: np.ndarray, classes: tuple[str, ...]) -> ImageData:
    return ImageData(name, split, torch.from_numpy(x), torch.from_numpy(np.asarray(y, dtype=np.int64)), levels=256,
                     num_classes=len(classes), classes=classes)


def idx_loader(name: str) -> Callable[[str, Options], ImageData]:
    """A loader of an MNIST-style dataset (four IDX files) called ``name``."""

    def load(split: str, o: Options) -> ImageData:
        check_shape(name, o, 28, 1)
        files = SOURCES[name][:2] if split == "train" else SOURCES[name][2:]

        def decode() -> Decoded:
            paths = fetch_files(name, files, o.data_dir, o.cache_dir, o.download, o.progress)
            x, y = read_idx_pair(paths[files[0].name], paths[files[1].name], len(CLASSES[name]))
            return {split: (x, y, {"source": [f.name for f in files]})}

        x, y, _, _ = cached(name, split, (1, 28, 28), "+".join(f.md5 for f in files), decode, o)
        return image_data(name, split, x, y, CLASSES[name])

    load.__doc__ = f"{name}: 28x28 grey, 256 levels, 10 classes; 60,000 train and 10,000 test images (IDX files)."
    return load


def load_cifar10(split: str, o: Options) -> ImageData:
    """CIFAR-10: 32x32 RGB, 256 levels, 10 classes; 50,000 train and 10,000 test images.

    From the official ``cifar-10-python.tar.gz`` (downloaded, or in ``data_dir``), its extracted
    ``cifar-10-batches-py/`` folder, or the image layout ``train/<class>/*.png`` + ``test/<class>/*.png``
    (``data_dir`` = that folder, or a tar archive of it).
    """
    check_shape("cifar10", o, 32, 3)
    archive = SOURCES["cifar10"][0]
    kind, where = cifar10_source(o.data_dir, archive)
    if kind == "images":
        return load_images("cifar10", where, split, 32, 3, o, CLASSES["cifar10"])
    if kind == "python":
        source = archive.md5

        def decode() -> Decoded:
            folder = None if where is None else where.parent
            path = fetch_files("cifar10", [archive], folder, o.cache_dir, o.download, o.progress)[archive.name]
            return {s: (*xy, {"source": archive.name}) for s, xy in read_cifar_python(path).items()}
    else:  # an extracted folder: identified by its files' sizes and times
        stats = [(where / b).stat() for b in CIFAR_BATCHES["train"] + CIFAR_BATCHES["test"] if (where / b).is_file()]
        source = f"batches|{where.resolve()}|" + ",".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stats)

        def decode() -> Decoded:
            return {s: (*xy, {"source": str(where)}) for s, xy in read_cifar_python(where).items()}

    x, y, _, _ = cached("cifar10", split, (3, 32, 32), source, decode, o)
    return image_data("cifar10", split, x, y, CLASSES["cifar10"])


def cifar10_source(data_dir: Path | None, archive: RemoteFile) -> tuple[str, Path | None]:
    """Which CIFAR-10 layout ``data_dir`` holds: ("python", archive path or None = cache), ("batches", folder)
    or ("images", folder or archive)."""
    if data_dir is None:
        return "python", None
    d = Path(data_dir)
    if d.is_file():
        return ("python", d) if d.name == archive.name else ("images", d)
    if (d / archive.name).is_file():
        return "python", d / archive.name
    for folder in (d / CIFAR_FOLDER, d):
        if (folder / "data_batch_1").is_file():
            return "batches", folder
    if (d / "train").is_dir() and (d / "test").is_dir():
        return "images", d
    where = f"{d} does not exist" if not d.exists() else f"found none of them in {d}"
    raise DataError(f"cifar10: expected one of: {archive.name} (md5 {archive.md5}); its extracted folder "
                    f"{CIFAR_FOLDER}/ (data_batch_1..5, test_batch); folders train/<class>/*.png and "
                    f"test/<class>/*.png; or a tar archive of those folders given as data_dir itself. {where}. "
                    f"Leave data_dir unset to download the official archive into the cache.")


def load_folder(split: str, o: Options) -> ImageData:
    """Any folder (or tar archive) of images: a class per sub-folder; ``train/`` and ``test/`` folders are the
    splits if present, else 1 in 10 images (by a hash of the path) is held out for test. Needs data_dir and
    image_size; channels 3 (RGB, the default) or 1 (grey)."""
    if o.data_dir is None:
        raise ConfigError("the folder dataset needs data_dir=PATH (--data-dir PATH): a folder of images, a class "
                          "per sub-folder, or a tar archive of one")
    if not o.image_size or o.image_size < 1:
        raise ConfigError("the folder dataset needs image_size=N: images are cut to their central square and "
                          "resized to N x N")
    if o.channels not in (None, 1, 3):
        raise ConfigError(f"channels must be 3 (RGB) or 1 (grey), got {o.channels}")
    return load_images("folder", Path(o.data_dir), split, o.image_size, o.channels or 3, o)


def load_images(name: str, root: Path, split: str, size: int, channels: int, o: Options,
                expected_classes: tuple[str, ...] | None = None) -> ImageData:
    """A split of a folder or tar archive of images, decoded once and cached; bad images per ``o.on_bad_image``."""
    if not root.exists():
        raise DataError(f"{name}: {root} does not exist; data_dir must be a folder of images or a tar archive")
    if root.is_file():
        st = root.stat()
        source = f"archive|{root.resolve()}|{st.st_size}|{st.st_mtime_ns}"

        def decode() -> Decoded:
            members, names, results = read_archive(root, size, channels, o.progress)
            splits, labels, classes = layout(names, str(root))
            shown = [f"{root}:{m}" for m in members]
            out = {}
            for s in ("train", "test"):
                idx = [i for i, sp in enumerate(splits) if sp == s]
                out[s] = assemble([results[i] for i in idx], [labels[i] for i in idx], [shown[i] for i in idx],
                                  classes, (channels, size, size))
            return out
    else:
        entries = scan_folder(root)
        if not entries:
            raise DataError(f"{name}: no image files in {root} (looked for {' '.join(IMAGE_SUFFIXES)} files)")
        listing = "\n".join(f"{p}|{n}|{t}" for p, n, t in entries)
        source = f"folder|{root.resolve()}|" + hashlib.sha1(listing.encode()).hexdigest()

        def decode() -> Decoded:
            names = [p for p, _, _ in entries]
            splits, labels, classes = layout(names, str(root))
            idx = [i for i, sp in enumerate(splits) if sp == split]
            paths = [str(root / names[i]) for i in idx]
            results = decode_many(zip(paths, paths), size, channels, len(idx), o.progress, f"decoding {name} {split}")
            return {split: assemble(results, [labels[i] for i in idx], paths, classes, (channels, size, size))}

    x, y, meta, path = cached(name, split, (channels, size, size), source, decode, o)
    classes = tuple(meta["classes"])
    if expected_classes is not None and classes != expected_classes:
        raise DataError(f"{name}: {root} has classes {', '.join(classes)}; expected the folders "
                        f"{', '.join(expected_classes)}")
    report_bad(name, root, split, meta, o.on_bad_image, path)
    if not len(x):
        raise DataError(f"{name}: the {split} split of {root} holds no images ({meta['total']} files, "
                        f"{len(meta['skipped'])} unreadable). Without train/ and test/ folders 1 in 10 images is "
                        f"held out for test, so a folder needs at least a few dozen images.")
    return image_data(name, split, x, y, classes)


def assemble(results: list[np.ndarray | str], labels: list[int], shown: list[str], classes: list[str],
             shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """One split's (images, labels, meta) from decoded arrays or failure reasons; failures go in meta["skipped"]."""
    good = [(r, lab) for r, lab in zip(results, labels) if not isinstance(r, str)]
    x = np.stack([r for r, _ in good]) if good else np.zeros((0, *shape), np.uint8)
    y = np.array([lab for _, lab in good], dtype=np.int64)
    skipped = [[where, r] for where, r in zip(shown, results) if isinstance(r, str)]
    return x, y, {"classes": classes, "total": len(results), "skipped": skipped}


def report_bad(name: str, root: Path, split: str, meta: dict[str, Any], policy: str, path: Path, items: str = "images",
               option: str = "on_bad_image", hint: str = "", warning: type[Warning] | None = None) -> None:
    """Unusable ``items`` of a folder dataset: a DataError listing them (``option`` = "error"), else one warning
    (``warning``, default BadImageWarning) with the count; ``hint`` adds a way to fix them."""
    skipped = meta["skipped"]
    if not skipped:
        return
    shown = "; ".join(f"{p} ({why})" for p, why in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
    if policy == "error":
        raise DataError(f"{name}: {len(skipped)} of the {meta['total']} {split} {items} in {root} cannot be used: "
                        f"{shown}. Fix or remove them, {hint}or set {option}='skip' to leave them out.")
    warnings.warn(f"{name}: skipped {len(skipped)} of the {meta['total']} {split} {items} in {root} that cannot be "
                  f"used: {shown} (full list: {path / 'meta.json'})", warning or BadImageWarning, stacklevel=3)


class BadImageWarning(UserWarning):
    """Images left out of a dataset because they cannot be read or converted (on_bad_image="skip")."""


DATASETS: dict[str, Callable[..., ImageData]] = {
    "digits": load_digits,
    "mnist": idx_loader("mnist"),
    "fashion-mnist": idx_loader("fashion-mnist"),
    "cifar10": load_cifar10,
    "folder": load_folder,
}


def load_dataset(name: str, split: str = "train", data_dir: str | os.PathLike | None = None,
                 cache_dir: str | os.PathLike | None = None, download: bool = True, image_size: int | None = None,
                 channels: int | None = None, on_bad_image: str = "error", progress: bool = True) -> ImageData:
    """A named dataset's ``split`` ("train" or "test") as uint8 levels (N, C, H, W) and int64 labels.

    data_dir: a local copy of the raw files (no network); for ``folder``, the image folder or archive.
    cache_dir: downloads and decoded splits (default ``$TARFLOW_CACHE``, else ``~/.cache/tarflow``).
    download: fetch missing raw files from the official location (or ``$TARFLOW_DATA_MIRROR``).
    image_size, channels: for ``folder``, the output size (pixels) and 3 (RGB) or 1 (grey); elsewhere they
    must match the dataset or be left unset.
    on_bad_image: for image folders, "error" (stop, naming every unreadable image) or "skip" (leave them out,
    with one warning that counts them).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in ("train", "test"):
        raise ConfigError(f"split must be 'train' or 'test', got {split!r}")
    if on_bad_image not in ("error", "skip"):
        raise ConfigError(f"on_bad_image must be 'error' or 'skip', got {on_bad_image!r}")
    if name == "digits" and data_dir not in (None, "") and not Path(data_dir).is_dir():
        raise DataError(f"data_dir {data_dir} is not a directory; digits is built in and needs no data_dir")
    o = Options(Path(data_dir) if data_dir is not None else None, Path(cache_dir or default_cache_dir()), download,
                image_size, channels, on_bad_image, progress)
    return DATASETS[name](split, o)
