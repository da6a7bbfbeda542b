"""Dataset loaders on tiny files the tests build: IDX, the CIFAR-10 python archive, image folders and tars,
the decoded cache, bad images and image modes, the flip augmentation; and one test on the real MNIST files."""

from __future__ import annotations

import gzip
import hashlib
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import tarflow.data.datasets as datasets_mod
import tarflow.data.images as images_mod
from data_helpers import (CIFAR_CLASSES, make_cifar_archive, make_idx_dataset, make_image_folder,
                          png_bytes, tar_folder, trust_files, write_idx, write_tar)
from tarflow.data import BadImageWarning, flip_batch, load_dataset, md5sum, reverse_time_batch
from tarflow.data import cache as cache_mod
from tarflow.data.formats import read_idx
from tarflow.errors import ConfigError, DataError

SHARED_MNIST = Path(__file__).resolve().parents[2] / "shared" / "data" / "mnist"
SHARED_FASHION = SHARED_MNIST.parent / "fashion-mnist"


def load(name, split, tmp_path, **kw):
    kw.setdefault("cache_dir", tmp_path / "cache")
    return load_dataset(name, split, progress=False, **kw)


# ---------------------------------------------------------------- IDX: MNIST and Fashion-MNIST

def test_read_idx_values_and_damage(tmp_path):
    a = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert np.array_equal(read_idx(write_idx(tmp_path / "a.gz", a)), a)
    raw = gzip.decompress((tmp_path / "a.gz").read_bytes())
    (tmp_path / "short.gz").write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(DataError, match=r"short\.gz.*truncated"):
        read_idx(tmp_path / "short.gz")
    (tmp_path / "bad.gz").write_bytes(gzip.compress(b"\x01\x02\x03\x04rest"))
    with pytest.raises(DataError, match="not an IDX file"):
        read_idx(tmp_path / "bad.gz")
    (tmp_path / "cut.gz").write_bytes((tmp_path / "a.gz").read_bytes()[:20])
    with pytest.raises(DataError, match=r"cut\.gz.*cannot read"):
        read_idx(tmp_path / "cut.gz")


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_dataset_from_data_dir(tmp_path, monkeypatch, name):
    arrays = make_idx_dataset(tmp_path / "raw")
    trust_files(monkeypatch, name, tmp_path / "raw")
    for split in ("train", "test"):
        d = load(name, split, tmp_path, data_dir=tmp_path / "raw")
        assert d.images.dtype == torch.uint8 and d.images.shape == (len(arrays[f"{split}_y"]), 1, 28, 28)
        assert np.array_equal(d.images[:, 0].numpy(), arrays[f"{split}_x"])
        assert d.labels.dtype == torch.int64 and np.array_equal(d.labels.numpy(), arrays[f"{split}_y"])
        assert (d.levels, d.num_classes, d.image_size, d.channels, d.split) == (256, 10, 28, 1, split)
    assert load(name, "train", tmp_path, data_dir=tmp_path / "raw").classes[9] in ("9", "Ankle boot")


def test_mnist_and_fashion_share_file_names_but_not_caches(tmp_path, monkeypatch):
    a = make_idx_dataset(tmp_path / "m", seed=1)
    b = make_idx_dataset(tmp_path / "f", seed=2)
    trust_files(monkeypatch, "mnist", tmp_path / "m")
    trust_files(monkeypatch, "fashion-mnist", tmp_path / "f")
    m = load("mnist", "train", tmp_path, data_dir=tmp_path / "m")
    f = load("fashion-mnist", "train", tmp_path, data_dir=tmp_path / "f")
    assert np.array_equal(m.images[:, 0].numpy(), a["train_x"]) and np.array_equal(f.images[:, 0].numpy(), b["train_x"])


def test_data_dir_missing_or_wrong_file_lists_what_is_expected(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "raw")
    trust_files(monkeypatch, "mnist", tmp_path / "raw")
    (tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DataError) as e:
        load("mnist", "test", tmp_path, data_dir=tmp_path / "raw")
    msg = str(e.value)
    assert "t10k-labels-idx1-ubyte.gz is missing" in msg and str(tmp_path / "raw") in msg
    assert "t10k-images-idx3-ubyte.gz (md5 " in msg  # the list of expected files
    write_idx(tmp_path / "raw" / "t10k-labels-idx1-ubyte.gz", np.zeros(3))  # not the expected file
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte.gz has md5 [0-9a-f]{32}, expected"):
        load("mnist", "test", tmp_path, data_dir=tmp_path / "raw")
    # the real checksums reject the tiny files
    monkeypatch.undo()
    with pytest.raises(DataError, match="has md5"):
        load("mnist", "train", tmp_path, data_dir=tmp_path / "raw")


def test_second_load_reads_the_memory_mapped_cache(tmp_path, monkeypatch):
    arrays = make_idx_dataset(tmp_path / "raw")
    trust_files(monkeypatch, "mnist", tmp_path / "raw")
    first = load("mnist", "train", tmp_path, data_dir=tmp_path / "raw")
    folders = list((tmp_path / "cache" / "decoded").iterdir())
    assert [f.name.rsplit("-", 1)[0] for f in folders] == ["mnist-train-1x28x28"]
    assert sorted(p.name for p in folders[0].iterdir()) == ["images.npy", "labels.npy", "meta.json"]
    assert isinstance(cache_mod.load(folders[0])[0], np.memmap)

    def no_decode(*a, **k):
        raise AssertionError("decoded again")
    monkeypatch.setattr(datasets_mod, "read_idx_pair", no_decode)
    monkeypatch.setattr(datasets_mod, "fetch_files", no_decode)
    again = load("mnist", "train", tmp_path, data_dir=tmp_path / "raw")
    assert torch.equal(again.images, first.images) and torch.equal(again.labels, first.labels)
    assert np.array_equal(again.images[:, 0].numpy(), arrays["train_x"])
    again.images[0] = 0  # copy-on-write: the file on disk keeps its values
    assert np.array_equal(cache_mod.load(folders[0])[0][0, 0], arrays["train_x"][0])


def test_damaged_cache_is_rebuilt(tmp_path, monkeypatch):
    make_idx_dataset(tmp_path / "raw")
    trust_files(monkeypatch, "mnist", tmp_path / "raw")
    first = load("mnist", "train", tmp_path, data_dir=tmp_path / "raw").images.clone()
    (folder,) = (tmp_path / "cache" / "decoded").iterdir()
    (folder / "images.npy").unlink()  # (truncating a memory-mapped file in place would crash its readers)
    (folder / "images.npy").write_bytes(b"not numpy")
    assert torch.equal(load("mnist", "train", tmp_path, data_dir=tmp_path / "raw").images, first)


def test_real_mnist_files():
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"the MNIST copy {SHARED_MNIST} is absent (it is only on the development machine)")
    md5 = {"train-images-idx3-ubyte.gz": "f68b3c2dcbeaaa9fbdd348bbdeb94873",
           "train-labels-idx1-ubyte.gz": "d53e105ee54ea40749a09fcbcd1e9432",
           "t10k-images-idx3-ubyte.gz": "9fb629c4189551a2d022fa330f9573f3",
           "t10k-labels-idx1-ubyte.gz": "ec29112dd5afa0611ce80d1b7f02629c"}
    assert {n: md5sum(SHARED_MNIST / n) for n in md5} == md5


def test_real_mnist_loads(tmp_path):
    if not SHARED_MNIST.is_dir():
        pytest.skip(f"the MNIST copy {SHARED_MNIST} is absent (it is only on the development machine)")
    train = load("mnist", "train", tmp_path, data_dir=SHARED_MNIST)
    test = load("mnist", "test", tmp_path, data_dir=SHARED_MNIST)
    assert train.images.shape == (60000, 1, 28, 28) and test.images.shape == (10000, 1, 28, 28)
    assert train.labels[:5].tolist() == [5, 0, 4, 1, 9]  # the well-known first training labels
    assert np.bincount(test.labels.numpy()).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


def test_real_fashion_mnist_recompressed_copy_loads_by_its_content(tmp_path, capsys):
    """Debian's dataset-fashion-mnist re-compresses the official .gz files: their md5s differ, their decompressed
    content is the official one, which is what is checked, and the user is told so."""
    if not SHARED_FASHION.is_dir():
        pytest.skip(f"the Fashion-MNIST copy {SHARED_FASHION} is absent (it is only on the development machine)")
    test = load("fashion-mnist", "test", tmp_path, data_dir=SHARED_FASHION)
    err = capsys.readouterr().err
    assert test.images.shape == (10000, 1, 28, 28) and np.bincount(test.labels.numpy()).tolist() == [1000] * 10
    assert "t10k-images-idx3-ubyte.gz by decompressed-content md5" in err
    assert md5sum(SHARED_FASHION / "t10k-images-idx3-ubyte.gz") != "bef4ecab320f06d8554ea6380940ec79"  # re-compressed


def test_a_recompressed_copy_is_accepted_only_with_the_official_content(tmp_path, monkeypatch, capsys):
    from tarflow.data import SOURCES
    from tarflow.data.download import RemoteFile

    official, copy = tmp_path / "official", tmp_path / "copy"
    make_idx_dataset(official)
    trust_files(monkeypatch, "mnist", official)
    contents = {f.name: gzip.decompress((official / f.name).read_bytes()) for f in SOURCES["mnist"]}
    monkeypatch.setitem(SOURCES, "mnist", [RemoteFile(f.name, f.md5, f.urls, hashlib.md5(contents[f.name]).hexdigest())
                                           for f in SOURCES["mnist"]])
    copy.mkdir()
    for name, content in contents.items():  # another compression level and timestamp: other .gz bytes
        (copy / name).write_bytes(gzip.compress(content, compresslevel=1, mtime=12345))
    assert md5sum(copy / "t10k-images-idx3-ubyte.gz") != md5sum(official / "t10k-images-idx3-ubyte.gz")
    from_copy = load("mnist", "test", tmp_path, data_dir=copy, cache_dir=tmp_path / "cache1")
    assert "t10k-images-idx3-ubyte.gz by decompressed-content md5" in capsys.readouterr().err
    from_official = load("mnist", "test", tmp_path, data_dir=official, cache_dir=tmp_path / "cache2")
    assert "t10k-images-idx3-ubyte.gz by file md5" in capsys.readouterr().err
    assert torch.equal(from_copy.images, from_official.images)
    damaged = bytearray(contents["t10k-images-idx3-ubyte.gz"])
    damaged[-1] ^= 1
    (copy / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(damaged)))
    with pytest.raises(DataError, match="decompressed content is not the official one"):
        load("mnist", "test", tmp_path, data_dir=copy, cache_dir=tmp_path / "cache3")


# ---------------------------------------------------------------- CIFAR-10, python archive

def test_cifar_python_archive(tmp_path, monkeypatch):
    raw = tmp_path / "raw"
    raw.mkdir()
    want = make_cifar_archive(raw / "cifar-10-python.tar.gz")
    trust_files(monkeypatch, "cifar10", raw)
    for data_dir in (raw, raw / "cifar-10-python.tar.gz"):
        for split in ("train", "test"):
            d = load("cifar10", split, tmp_path / str(data_dir.name), data_dir=data_dir)
            assert d.images.dtype == torch.uint8 and d.images.shape[1:] == (3, 32, 32)
            assert np.array_equal(d.images.numpy(), want[f"{split}_x"])  # official batch order kept
            assert np.array_equal(d.labels.numpy(), want[f"{split}_y"])
            assert d.classes == CIFAR_CLASSES and d.num_classes == 10


def test_cifar_extracted_batches(tmp_path):
    want = make_cifar_archive(tmp_path / "a.tar.gz")
    import tarfile
    with tarfile.open(tmp_path / "a.tar.gz") as tf:
        tf.extractall(tmp_path / "x", filter="data")
    for data_dir in (tmp_path / "x", tmp_path / "x" / "cifar-10-batches-py"):
        d = load("cifar10", "train", tmp_path, data_dir=data_dir)
        assert np.array_equal(d.images.numpy(), want["train_x"])


def test_cifar_archive_checksum_and_missing(tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    make_cifar_archive(raw / "cifar-10-python.tar.gz")  # the real md5 is expected: this one fails it
    with pytest.raises(DataError, match=r"cifar-10-python.tar.gz has md5 .* expected c58f30108f718f92721af3b95e74349a"):
        load("cifar10", "train", tmp_path, data_dir=raw)
    with pytest.raises(DataError) as e:
        load("cifar10", "train", tmp_path, data_dir=tmp_path / "empty")
    assert "cifar-10-python.tar.gz" in str(e.value) and "train/<class>" in str(e.value)
    assert "does not exist" in str(e.value)


def test_cifar_pickle_cannot_run_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    blob = pickle.dumps({b"data": Evil(), b"labels": []}, protocol=2)
    files = {f"cifar-10-batches-py/{b}": blob for b in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]}
    write_tar(tmp_path / "x.tar.gz", files)
    (tmp_path / "b").mkdir()
    for name, b in files.items():
        (tmp_path / "b" / name.split("/")[1]).write_bytes(b)
    with pytest.raises(DataError, match=r"refusing to load __builtin__\.print"):
        load("cifar10", "train", tmp_path, data_dir=tmp_path / "b")


# ---------------------------------------------------------------- image folders and archives

def test_cifar_png_folder_and_archive_agree(tmp_path):
    want = make_image_folder(tmp_path / "png")
    tar_folder(tmp_path / "png", tmp_path / "cifar_png.tar.gz", prefix="cifar10/")  # one top folder: stripped
    for data_dir in (tmp_path / "png", tmp_path / "cifar_png.tar.gz"):
        for split in ("train", "test"):
            d = load("cifar10", split, tmp_path, data_dir=data_dir)
            rels = sorted(want[split])
            assert np.array_equal(d.images.numpy(), np.stack([want[split][r] for r in rels]))  # pixel-exact
            assert d.labels.tolist() == [CIFAR_CLASSES.index(r.split("/")[1]) for r in rels]
            assert d.classes == CIFAR_CLASSES


def test_cifar_folder_with_other_classes_is_refused(tmp_path):
    make_image_folder(tmp_path / "png", classes=("cat", "dog"))
    with pytest.raises(DataError, match="has classes cat, dog; expected the folders airplane"):
        load("cifar10", "train", tmp_path, data_dir=tmp_path / "png")


def test_archive_decoding_same_with_and_without_worker_processes(tmp_path, monkeypatch):
    want = make_image_folder(tmp_path / "png", classes=("a", "b"), per_class=(3, 2), size=8)
    tar_folder(tmp_path / "png", tmp_path / "p.tar.gz")
    results = []
    for workers in (1, 2):
        monkeypatch.setattr(images_mod, "pool_size", lambda w=workers: w)
        d = load("folder", "train", tmp_path / f"c{workers}", data_dir=tmp_path / "p.tar.gz", image_size=8)
        results.append(d.images.numpy())
    assert np.array_equal(results[0], results[1])
    assert np.array_equal(results[0], np.stack([want["train"][r] for r in sorted(want["train"])]))


def solid(w, h, colours):
    """An RGB image of vertical stripes of equal width, one per colour."""
    a = np.zeros((h, w, 3), np.uint8)
    for i, c in enumerate(colours):
        a[:, i * w // len(colours):(i + 1) * w // len(colours)] = c
    return a


def test_folder_center_crop_resize_and_grey(tmp_path):
    (tmp_path / "f" / "x").mkdir(parents=True)
    red, green, blue = (255, 0, 0), (0, 200, 0), (0, 0, 255)
    # 60x20: the central 20x20 square is the green stripe; 20x60 (tall): the central square of horizontal stripes
    for i in range(30):
        (tmp_path / "f" / "x" / f"w{i:02d}.png").write_bytes(png_bytes(solid(60, 20, [red, green, blue])))
        (tmp_path / "f" / "x" / f"t{i:02d}.png").write_bytes(
            png_bytes(np.ascontiguousarray(solid(60, 20, [red, green, blue]).transpose(1, 0, 2))))
    d = load("folder", "train", tmp_path, data_dir=tmp_path / "f", image_size=10)
    assert d.images.shape[1:] == (3, 10, 10) and d.num_classes == 1
    assert (d.images[:, 0] == 0).all() and (d.images[:, 1] == 200).all() and (d.images[:, 2] == 0).all()
    g = load("folder", "train", tmp_path, data_dir=tmp_path / "f", image_size=10, channels=1)
    assert g.images.shape[1:] == (1, 10, 10)
    assert (g.images == round(0.587 * 200)).all()  # ITU-R 601-2 luma of (0, 200, 0)


def test_folder_held_out_split_is_disjoint_and_stable(tmp_path):
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        (tmp_path / "f" / c).mkdir(parents=True)
        for i in range(60):
            (tmp_path / "f" / c / f"{i}.png").write_bytes(png_bytes(rng.integers(0, 256, (4, 4), dtype=np.uint8)))
    train = load("folder", "train", tmp_path, data_dir=tmp_path / "f", image_size=4, channels=1)
    test = load("folder", "test", tmp_path, data_dir=tmp_path / "f", image_size=4, channels=1)
    assert len(train) + len(test) == 120 and 4 <= len(test) <= 24
    assert train.classes == ("a", "b") and set(test.labels.tolist()) <= {0, 1}
    rows = {bytes(x) for x in train.images.numpy()}
    assert not any(bytes(x) in rows for x in test.images.numpy())
    # adding files keeps every existing image in its split (the split is a hash of the path)
    (tmp_path / "f" / "a" / "new.png").write_bytes(png_bytes(np.full((4, 4), 7, np.uint8)))
    test2 = load("folder", "test", tmp_path, data_dir=tmp_path / "f", image_size=4, channels=1)
    assert {bytes(x) for x in test.images.numpy()} <= {bytes(x) for x in test2.images.numpy()}


def test_folder_layout_errors(tmp_path):
    (tmp_path / "f" / "cls").mkdir(parents=True)
    (tmp_path / "f" / "cls" / "a.png").write_bytes(png_bytes(np.zeros((4, 4), np.uint8)))
    (tmp_path / "f" / "loose.png").write_bytes(png_bytes(np.zeros((4, 4), np.uint8)))
    with pytest.raises(DataError, match="'loose.png' sit beside class folders"):
        load("folder", "train", tmp_path, data_dir=tmp_path / "f", image_size=4)
    (tmp_path / "t" / "train" / "cls").mkdir(parents=True)
    (tmp_path / "t" / "train" / "cls" / "a.png").write_bytes(png_bytes(np.zeros((4, 4), np.uint8)))
    with pytest.raises(DataError, match=r"t has a train/ folder but no test/ folder"):
        load("folder", "train", tmp_path, data_dir=tmp_path / "t", image_size=4)
    (tmp_path / "e").mkdir()
    (tmp_path / "e" / "notes.txt").write_text("no images")
    with pytest.raises(DataError, match=r"no image files in .*\.png"):
        load("folder", "train", tmp_path, data_dir=tmp_path / "e", image_size=4)
    with pytest.raises(ConfigError, match="needs data_dir"):
        load("folder", "train", tmp_path, image_size=4)
    with pytest.raises(ConfigError, match="needs image_size"):
        load("folder", "train", tmp_path, data_dir=tmp_path / "f")


def test_argument_errors(tmp_path):
    with pytest.raises(ConfigError, match="unknown dataset 'cifar'; available: digits, mnist, fashion-mnist"):
        load_dataset("cifar", "train")
    with pytest.raises(ConfigError, match="split must be"):
        load_dataset("digits", "val")
    with pytest.raises(ConfigError, match="on_bad_image must be 'error' or 'skip'"):
        load_dataset("digits", "train", on_bad_image="ignore")
    with pytest.raises(ConfigError, match="mnist images are 1x28x28, not 1x32x32"):
        load("mnist", "train", tmp_path, image_size=32)
    with pytest.raises(ConfigError, match="cifar10 images are 3x32x32, not 1x32x32"):
        load("cifar10", "train", tmp_path, channels=1)
    d = load_dataset("digits", "train", image_size=8, channels=1)  # matching values are fine
    assert d.images.shape[1:] == (1, 8, 8) and d.levels == 17


# ---------------------------------------------------------------- bad images and image modes (issue 7)

def bad_folder(root: Path) -> dict[str, Path]:
    """A class folder of 30 good 6x6 PNGs plus a truncated PNG and a file that is not an image."""
    (root / "train" / "c").mkdir(parents=True)
    (root / "test" / "c").mkdir(parents=True)
    for i in range(30):
        (root / "train" / "c" / f"{i:02d}.png").write_bytes(png_bytes(np.full((6, 6, 3), i, np.uint8)))
    (root / "test" / "c" / "t.png").write_bytes(png_bytes(np.zeros((6, 6, 3), np.uint8)))
    big = png_bytes(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    bad = {"truncated": root / "train" / "c" / "truncated.png", "garbage": root / "train" / "c" / "garbage.jpg"}
    bad["truncated"].write_bytes(big[:len(big) // 2])
    bad["garbage"].write_bytes(b"this is not a jpeg")
    return bad


def test_bad_images_are_fatal_by_default_with_their_paths(tmp_path):
    bad = bad_folder(tmp_path / "f")
    with pytest.raises(DataError) as e:
        load("folder", "train", tmp_path, data_dir=tmp_path / "f", image_size=6)
    msg = str(e.value)
    assert "2 of the 32 train images" in msg and str(bad["truncated"]) in msg and str(bad["garbage"]) in msg
    assert "truncated" in msg.lower() and "on_bad_image='skip'" in msg
    # the test split has no bad image: it loads
    assert len(load("folder", "test", tmp_path, data_dir=tmp_path / "f", image_size=6)) == 1


def test_bad_images_skipped_with_one_warning(tmp_path):
    bad = bad_folder(tmp_path / "f")
    for attempt in ("decoded", "cached"):
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            d = load("folder", "train", tmp_path, data_dir=tmp_path / "f", image_size=6, on_bad_image="skip")
        msgs = [str(x.message) for x in w if issubclass(x.category, BadImageWarning)]
        assert len(msgs) == 1, attempt
        assert "skipped 2 of the 32 train images" in msgs[0] and str(bad["garbage"]) in msgs[0]
        assert len(d) == 30 and sorted(d.images[:, 0, 0, 0].tolist()) == list(range(30))
    # an error-mode load of the same folder is still refused (the cache remembers what was skipped)
    with pytest.raises(DataError, match="2 of the 32"):
        load("folder", "train", tmp_path, data_dir=tmp_path / "f", image_size=6)
    # fixing the files changes the folder: it is decoded again and nothing is skipped
    bad["truncated"].unlink()
    bad["garbage"].unlink()
    assert len(load("folder", "train", tmp_path, data_dir=tmp_path / "f", image_size=6)) == 30


def test_bad_images_in_an_archive_are_named_by_member(tmp_path):
    bad_folder(tmp_path / "f")
    tar_folder(tmp_path / "f", tmp_path / "f.tar.gz")
    with pytest.raises(DataError, match=r"f\.tar\.gz:train/c/garbage\.jpg"):
        load("folder", "train", tmp_path, data_dir=tmp_path / "f.tar.gz", image_size=6)
    with pytest.warns(BadImageWarning, match="skipped 2"):
        assert len(load("folder", "train", tmp_path, data_dir=tmp_path / "f.tar.gz", image_size=6,
                        on_bad_image="skip")) == 30


def mode_case(tmp_path, name, make, fmt="PNG"):
    """Load a one-image-per-class folder holding ``make()`` (a PIL image) saved as ``fmt``; (data, error)."""
    root = tmp_path / name
    (root / "train" / "c").mkdir(parents=True)
    (root / "test" / "c").mkdir(parents=True)
    buf = root / "train" / "c" / f"img.{fmt.lower()}"
    make().save(buf, fmt)
    Image.new("RGB", (4, 4)).save(root / "test" / "c" / "ok.png")
    try:
        return load("folder", "train", tmp_path, data_dir=root, image_size=4), None
    except DataError as e:
        return None, str(e)


def test_image_modes_converted_by_the_rule(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (4, 4, 3), dtype=np.uint8)
    want = rgb.transpose(2, 0, 1)

    def palette():
        return Image.fromarray(rgb).quantize(colors=256, method=Image.Quantize.FASTOCTREE)
    d, _ = mode_case(tmp_path, "p", palette)
    assert np.array_equal(d.images[0].numpy(), np.asarray(palette().convert("RGB")).transpose(2, 0, 1))

    d, _ = mode_case(tmp_path, "rgba", lambda: Image.fromarray(np.dstack([rgb, np.full((4, 4), 255, np.uint8)])))
    assert np.array_equal(d.images[0].numpy(), want)  # opaque alpha: dropped, colours unchanged

    grey = rgb[..., 0]
    d, _ = mode_case(tmp_path, "la", lambda: Image.fromarray(np.dstack([grey, np.full((4, 4), 255, np.uint8)]), "LA"))
    assert np.array_equal(d.images[0].numpy(), np.stack([grey] * 3))  # grey repeated into R, G, B

    v16 = np.array([[0, 256, 257, 65535]] * 4, dtype=np.uint16)
    d, _ = mode_case(tmp_path, "i16", lambda: Image.fromarray(v16))
    with Image.open(tmp_path / "i16" / "train" / "c" / "img.png") as im:
        assert im.mode == "I;16"
    assert d.images[0, 0].tolist() == [[0, 1, 1, 255]] * 4  # round(v / 257)

    d, _ = mode_case(tmp_path, "i32", lambda: Image.fromarray(v16.astype(np.int32)), "TIFF")
    assert d.images[0, 1].tolist() == [[0, 1, 1, 255]] * 4

    d, _ = mode_case(tmp_path, "cmyk", lambda: Image.new("CMYK", (4, 4), (255, 0, 0, 0)), "TIFF")
    assert d.images[0, :, 0, 0].tolist() == [0, 255, 255]  # full cyan ink: no red

    d, _ = mode_case(tmp_path, "bilevel", lambda: Image.fromarray(grey > 127).convert("1"))
    assert set(d.images.unique().tolist()) <= {0, 255}


def test_unsafe_modes_rejected_clearly(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255
    rgba[0, 0, 3] = 0
    _, err = mode_case(tmp_path, "t", lambda: Image.fromarray(rgba))
    assert "img.png" in err and "transparent pixels" in err and "flatten" in err

    def palette_with_transparency():
        im = Image.fromarray(np.array([[0, 1], [1, 1]], np.uint8), "P")
        im.putpalette([0, 0, 0, 255, 255, 255])
        im.info["transparency"] = 0
        return im
    _, err = mode_case(tmp_path, "pt", palette_with_transparency)
    assert "transparent pixels" in err

    _, err = mode_case(tmp_path, "i32", lambda: Image.fromarray(np.full((4, 4), 70000, np.int32)), "TIFF")
    assert "outside the 16-bit range" in err

    _, err = mode_case(tmp_path, "f", lambda: Image.fromarray(np.full((4, 4), 0.5, np.float32)), "TIFF")
    assert "floating-point" in err


# ---------------------------------------------------------------- augmentation

def test_flip_batch_mirrors_about_half_reproducibly():
    x = torch.arange(64 * 2 * 3 * 5, dtype=torch.uint8).reshape(64, 2, 3, 5)
    a = flip_batch(x, torch.Generator().manual_seed(0))
    b = flip_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, b) and a.dtype == x.dtype and a.shape == x.shape
    flipped = torch.tensor([torch.equal(a[i], x[i].flip(-1)) for i in range(64)])
    kept = torch.tensor([torch.equal(a[i], x[i]) for i in range(64)])
    assert (flipped ^ kept).all() and 16 <= flipped.sum() <= 48


def test_reverse_time_batch_plays_about_half_backwards_reproducibly():
    x = torch.arange(64 * 4 * 1 * 3 * 3, dtype=torch.uint8).reshape(64, 4, 1, 3, 3)
    a = reverse_time_batch(x, torch.Generator().manual_seed(0))
    assert torch.equal(a, reverse_time_batch(x, torch.Generator().manual_seed(0))) and a.dtype == x.dtype
    reversed_ = torch.tensor([torch.equal(a[i], x[i].flip(0)) for i in range(64)])
    kept = torch.tensor([torch.equal(a[i], x[i]) for i in range(64)])
    assert (reversed_ ^ kept).all() and 16 <= reversed_.sum() <= 48
