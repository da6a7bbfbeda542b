"""The download path against an HTTP server on 127.0.0.1 that the tests start: a good file, a wrong checksum, a
connection dropped mid-file, a missing file; downloads happen once, and nothing half-written is ever left."""

from __future__ import annotations

import hashlib
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest

import tarflow.data.download as download_mod
from data_helpers import make_idx_dataset, trust_files
from tarflow.data import load_dataset
from tarflow.data.download import download
from tarflow.errors import DataError

PAYLOAD = bytes(range(256)) * 4096  # 1 MiB
PAYLOAD_MD5 = hashlib.md5(PAYLOAD).hexdigest()


class Server:
    """Serves ``files[path] = (bytes, how)``; how: "ok", "short" (sends a Content-Length, then half the bytes and
    closes) or "corrupt" (flips a byte). Unknown paths get 404. ``requests`` lists every path asked for."""

    def __init__(self):
        self.files: dict[str, tuple[bytes, str]] = {}
        self.requests: list[str] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                outer.requests.append(self.path)
                if self.path not in outer.files:
                    self.send_error(404, "Not Found")
                    return
                data, how = outer.files[self.path]
                if how == "corrupt":
                    data = bytes([data[0] ^ 1]) + data[1:]
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[:len(data) // 2] if how == "short" else data)
                self.wfile.flush()
                self.close_connection = True

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.02,), daemon=True)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server(monkeypatch):
    monkeypatch.setattr(download_mod, "TIMEOUT_S", 5.0)
    with Server() as s:
        yield s


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_good_file(server, tmp_path, capsys):
    server.files["/f.bin"] = (PAYLOAD, "ok")
    dest = download(f"{server.url}/f.bin", tmp_path / "d" / "f.bin", PAYLOAD_MD5, progress=True)
    assert dest.read_bytes() == PAYLOAD and leftovers(tmp_path / "d") == ["f.bin"]
    assert "f.bin" in capsys.readouterr().err  # the progress bar


def test_wrong_checksum_leaves_nothing(server, tmp_path):
    server.files["/f.bin"] = (PAYLOAD, "corrupt")
    with pytest.raises(DataError) as e:
        download(f"{server.url}/f.bin", tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert f"{server.url}/f.bin has md5" in str(e.value) and f"expected {PAYLOAD_MD5}" in str(e.value)
    assert leftovers(tmp_path) == []


def test_dropped_connection_leaves_nothing(server, tmp_path):
    server.files["/f.bin"] = (PAYLOAD, "short")
    with pytest.raises(DataError) as e:
        download(f"{server.url}/f.bin", tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert f"downloading {server.url}/f.bin failed" in str(e.value)
    assert "closed" in str(e.value) and "524,288" in str(e.value)  # bytes received before the drop
    assert leftovers(tmp_path) == []


def test_missing_file_and_no_server(server, tmp_path):
    with pytest.raises(DataError, match="HTTP 404"):
        download(f"{server.url}/nope.bin", tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    with pytest.raises(DataError, match=r"downloading http://127\.0\.0\.1:1/f\.bin failed"):
        download("http://127.0.0.1:1/f.bin", tmp_path / "f.bin", PAYLOAD_MD5, progress=False)
    assert leftovers(tmp_path) == []


def serve_mnist(server, tmp_path, monkeypatch, how="ok"):
    """Tiny MNIST files on the server under /mnist/, trusted by their md5s, with the mirror pointing there."""
    arrays = make_idx_dataset(tmp_path / "src")
    trust_files(monkeypatch, "mnist", tmp_path / "src")
    for p in (tmp_path / "src").iterdir():
        server.files[f"/mnist/{p.name}"] = (p.read_bytes(), how)
    monkeypatch.setenv("TARFLOW_DATA_MIRROR", server.url + "/")
    return arrays


def test_load_dataset_downloads_once(server, tmp_path, monkeypatch):
    arrays = serve_mnist(server, tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    d = load_dataset("mnist", "train", cache_dir=cache, progress=False)
    assert np.array_equal(d.images[:, 0].numpy(), arrays["train_x"])
    assert sorted(server.requests) == ["/mnist/train-images-idx3-ubyte.gz", "/mnist/train-labels-idx1-ubyte.gz"]
    assert leftovers(cache / "mnist") == ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"]
    load_dataset("mnist", "train", cache_dir=cache, progress=False)  # the decoded cache: no request
    for folder in (cache / "decoded").iterdir():
        for f in folder.iterdir():
            f.unlink()
        folder.rmdir()
    again = load_dataset("mnist", "train", cache_dir=cache, progress=False)  # raw files from the cache
    assert len(server.requests) == 2 and np.array_equal(again.labels.numpy(), arrays["train_y"])


def test_damaged_cached_download_is_replaced(server, tmp_path, monkeypatch):
    serve_mnist(server, tmp_path, monkeypatch)
    cache = tmp_path / "cache"
    (cache / "mnist").mkdir(parents=True)
    (cache / "mnist" / "t10k-images-idx3-ubyte.gz").write_bytes(b"damaged")
    assert len(load_dataset("mnist", "test", cache_dir=cache, progress=False)) == 5
    assert "/mnist/t10k-images-idx3-ubyte.gz" in server.requests


@pytest.mark.parametrize("how", ["corrupt", "short"])
def test_load_dataset_failed_download_is_clear(server, tmp_path, monkeypatch, how):
    serve_mnist(server, tmp_path, monkeypatch, how)
    cache = tmp_path / "cache"
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "train", cache_dir=cache, progress=False)
    msg = str(e.value)
    assert "train-images-idx3-ubyte.gz is missing and could not be downloaded" in msg
    assert f"Expected in {cache / 'mnist'}: train-images-idx3-ubyte.gz (md5 " in msg
    assert ("has md5" if how == "corrupt" else "connection closed") in msg and "--data-dir" in msg
    assert leftovers(cache / "mnist") == [] and leftovers(cache) in ([], ["mnist"])


def test_no_download_when_not_allowed(server, tmp_path, monkeypatch):
    serve_mnist(server, tmp_path, monkeypatch)
    with pytest.raises(DataError) as e:
        load_dataset("mnist", "test", cache_dir=tmp_path / "cache", download=False, progress=False)
    assert "t10k-images-idx3-ubyte.gz is missing" in str(e.value) and "download=True" in str(e.value)
    assert str(tmp_path / "cache" / "mnist") in str(e.value) and server.requests == []


def test_data_dir_never_uses_the_network(server, tmp_path, monkeypatch):
    serve_mnist(server, tmp_path, monkeypatch)
    with pytest.raises(DataError, match="is missing"):
        load_dataset("mnist", "train", data_dir=tmp_path / "empty", cache_dir=tmp_path / "cache", progress=False)
    assert server.requests == []


def test_default_cache_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("TARFLOW_CACHE", str(tmp_path / "c"))
    assert download_mod.default_cache_dir() == tmp_path / "c"
    monkeypatch.delenv("TARFLOW_CACHE")
    assert download_mod.default_cache_dir() == Path.home() / ".cache" / "tarflow"


def test_cifar10_archive_downloaded_then_both_splits_cached(server, tmp_path, monkeypatch):
    from data_helpers import make_cifar_archive
    (tmp_path / "src").mkdir()
    want = make_cifar_archive(tmp_path / "src" / "cifar-10-python.tar.gz")
    trust_files(monkeypatch, "cifar10", tmp_path / "src")
    server.files["/cifar10/cifar-10-python.tar.gz"] = ((tmp_path / "src" / "cifar-10-python.tar.gz").read_bytes(), "ok")
    monkeypatch.setenv("TARFLOW_DATA_MIRROR", server.url)
    cache = tmp_path / "cache"
    train = load_dataset("cifar10", "train", cache_dir=cache, progress=False)
    (cache / "cifar10" / "cifar-10-python.tar.gz").unlink()  # the test split was cached in the same pass
    test = load_dataset("cifar10", "test", cache_dir=cache, download=False, progress=False)
    assert np.array_equal(train.images.numpy(), want["train_x"]) and np.array_equal(test.labels.numpy(), want["test_y"])
    assert server.requests == ["/cifar10/cifar-10-python.tar.gz"]
