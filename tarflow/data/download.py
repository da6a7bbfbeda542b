"""A dataset's raw files: a local copy (``data_dir``), the cache, or a download checked against its md5.

Downloads go to ``<cache>/<dataset>/<file>``: streamed into a temporary file beside it, checked (length and
md5), then renamed, so a file under its final name is always whole. The cache is ``$TARFLOW_CACHE``, else
``~/.cache/tarflow``. ``$TARFLOW_DATA_MIRROR=BASE_URL`` replaces the official locations by
``BASE_URL/<dataset>/<file>`` (a mirror, or a test server).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import http.client
import os
import sys
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError
from ..io import fsync_dir, umask_mode
from ..progress import progress_bar

CACHE_ENV = "TARFLOW_CACHE"
MIRROR_ENV = "TARFLOW_DATA_MIRROR"
TIMEOUT_S = 60.0  # per network read, seconds


@dataclass(frozen=True)
class RemoteFile:
    """One raw file of a dataset: its name, md5, and the URLs to try in order. ``content_md5``: for a .gz file,
    the md5 of its decompressed content, which also accepts a local copy re-compressed by a packager."""

    name: str
    md5: str
    urls: tuple[str, ...]
    content_md5: str | None = None


def default_cache_dir() -> Path:
    """``$TARFLOW_CACHE`` if set, else ``~/.cache/tarflow``."""
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "tarflow")


def md5sum(path: str | os.PathLike) -> str:
    """Hex md5 of a file, read in 1 MiB chunks."""
    h = hashlib.md5(usedforsecurity=False)
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def gunzipped_md5sum(path: str | os.PathLike) -> str | None:
    """Hex md5 of a gzip file's decompressed content, or None if it is not a readable gzip file."""
    h = hashlib.md5(usedforsecurity=False)
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                h.update(chunk)
    except (OSError, EOFError):
        return None
    return h.hexdigest()


def check_local_file(f: RemoteFile, path: Path) -> tuple[str | None, str | None]:
    """(which check passed, problem): the file's own md5, else the md5 of its decompressed content."""
    if not path.is_file():
        return None, f"{f.name} is missing"
    got = md5sum(path)
    if got == f.md5:
        return "file md5", None
    if f.content_md5 is not None and gunzipped_md5sum(path) == f.content_md5:
        return "decompressed-content md5 (a re-compressed copy)", None
    also = f" and its decompressed content is not the official one (md5 {f.content_md5})" if f.content_md5 else ""
    return None, f"{f.name} has md5 {got}, expected {f.md5}{also}"


def download(url: str, dest: str | os.PathLike, md5: str, progress: bool = True) -> Path:
    """Fetch ``url`` to ``dest`` with a progress bar; raise DataError (leaving nothing behind) on a short or
    wrong file. Only a complete file with the right md5 is ever renamed to ``dest``."""
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
                    length = r.headers.get("Content-Length")
                    total = int(length) if length and length.isdigit() else None
                    h, n = hashlib.md5(usedforsecurity=False), 0
                    with progress_bar(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=dest.name,
                                      enabled=progress, leave=False) as bar:
                        while chunk := r.read(1 << 20):
                            f.write(chunk)
                            h.update(chunk)
                            n += len(chunk)
                            bar.update(len(chunk))
            except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, IncompleteRead
                raise DataError(f"downloading {url} failed: {describe(e)}") from e
            if total is not None and n != total:
                raise DataError(f"downloading {url} failed: the connection closed after {n:,} of {total:,} bytes")
            if h.hexdigest() != md5:
                raise DataError(f"{url} has md5 {h.hexdigest()}, expected {md5} ({n:,} bytes): the server sent "
                                f"a different or damaged file")
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, umask_mode(0o666))
        os.replace(tmp, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_dir(dest.parent)
    return dest


def describe(e: BaseException) -> str:
    if isinstance(e, urllib.error.HTTPError):
        return f"HTTP {e.code} {e.reason}"
    if isinstance(e, urllib.error.URLError):
        return str(e.reason)
    if isinstance(e, http.client.IncompleteRead):
        return f"the connection closed early ({len(e.partial):,} bytes read, {e.expected:,} more expected)"
    return str(e) or type(e).__name__


def listing(files: list[RemoteFile]) -> str:
    return ", ".join(f"{f.name} (md5 {f.md5})" for f in files)


def fetch_files(dataset: str, files: list[RemoteFile], data_dir: str | os.PathLike | None = None,
                cache_dir: str | os.PathLike | None = None, download_missing: bool = True,
                progress: bool = True) -> dict[str, Path]:
    """The local path of each of ``files``, checked against its md5.

    With ``data_dir`` the files must be there (no network), each matching its md5 or, for a re-compressed .gz,
    the md5 of its decompressed content (which check passed is printed to standard error). Otherwise they are looked for in
    ``<cache_dir>/<dataset>/`` and, if missing or damaged there and ``download_missing``, downloaded.
    """
    if data_dir is not None:
        folder = Path(data_dir)
        checks = [check_local_file(f, folder / f.name) for f in files]
        problems = [problem for _, problem in checks if problem]
        if problems:
            raise DataError(f"{dataset}: {'; '.join(problems)} in {folder}. Expected there: {listing(files)}. "
                            f"Put the original files in that folder, or leave data_dir unset to download them "
                            f"into the cache.")
        passed = ", ".join(f"{f.name} by {check}" for f, (check, _) in zip(files, checks))
        print(f"{dataset}: local files in {folder} checked: {passed}", file=sys.stderr)
        return {f.name: folder / f.name for f in files}

    folder = Path(cache_dir or default_cache_dir()) / dataset
    paths, problems = {}, []
    for f in files:
        p = folder / f.name
        if p.is_file() and md5sum(p) == f.md5:
            paths[f.name] = p
            continue
        note = "damaged (wrong md5)" if p.is_file() else "missing"
        if not download_missing:
            problems.append(f"{f.name} is {note}")
            continue
        mirror = os.environ.get(MIRROR_ENV)
        urls = (f"{mirror.rstrip('/')}/{dataset}/{f.name}",) if mirror else f.urls
        errors = []
        for url in urls:
            try:
                paths[f.name] = download(url, p, f.md5, progress)
                break
            except DataError as e:
                errors.append(str(e))
        else:
            problems.append(f"{f.name} is {note} and could not be downloaded ({'; '.join(errors)})")
    if problems:
        how = "download the files yourself and pass data_dir=FOLDER (--data-dir FOLDER)"
        how = "Check the network, or " + how if download_missing else "Allow downloads (download=True), or " + how
        raise DataError(f"{dataset}: {'; '.join(problems)}. Expected in {folder}: {listing(files)}. {how}.")
    return paths
