"""Safe writes: atomic files and directories, clear errors when a disk is full or read-only, run locks.

A crash (even SIGKILL) at any moment leaves either the old version of a file or directory or the new one,
never a mix; a write that fails (disk full, read-only or forbidden directory) raises an `OutputError`
that names the path and the cause, after removing its temporary files.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterator

from .errors import TarflowError

HINTS = {
    errno.ENOSPC: "the disk is full: free some space",
    errno.EDQUOT: "the disk quota is used up: free some space",
    errno.EFBIG: "the file is larger than the file size limit (ulimit -f)",
    errno.EROFS: "the file system is read-only: choose a writable directory",
    errno.EACCES: "permission denied: choose a directory you can write to",
    errno.EPERM: "operation not permitted: choose a directory you can write to",
}


class OutputError(TarflowError):
    """A file or directory could not be written: disk full, read-only or forbidden. ``errno`` is the cause."""

    def __init__(self, message: str, errno_: int | None = None):
        super().__init__(message)
        self.errno = errno_


def output_error(path: str | os.PathLike, e: OSError) -> OutputError:
    """An `OutputError` for the OSError ``e`` raised while writing ``path``."""
    name = errno.errorcode.get(e.errno, "") if e.errno else ""
    cause = f"{e.strerror or e} ({name})" if name else str(e.strerror or e)
    hint = HINTS.get(e.errno, "check the directory")
    return OutputError(f"cannot write {path}: {cause}; {hint}", e.errno)


@contextlib.contextmanager
def reporting_write_errors(path: str | os.PathLike, only_inside: bool = False) -> Iterator[None]:
    """Turn an OSError raised inside the block into an `OutputError` that names the file (or ``path``).

    ``only_inside``: only errors about files inside ``path`` (or about no file: a failed write() has
    none) and of a cause in HINTS; others (reading a dataset elsewhere, say) pass through unchanged.
    """
    try:
        yield
    except OSError as e:
        if only_inside and (e.errno not in HINTS or e.filename and not is_inside(e.filename, path)):
            raise
        raise output_error(e.filename or path, e) from None


def is_inside(file: str | os.PathLike, directory: str | os.PathLike) -> bool:
    file, directory = Path(os.path.abspath(file)), Path(os.path.abspath(directory))
    return file == directory or directory in file.parents


def umask_mode(mode: int) -> int:
    """``mode`` less the process umask: what open() or mkdir() would have given (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return mode & ~mask


def fsync_dir(path: Path) -> None:
    """Make a directory's entries (renames, new files) durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` and fsync it (not atomic: for files inside an `atomic_dir`)."""
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    """Write to a temporary file beside ``path``, fsync, then rename over it."""
    path = Path(path)
    with reporting_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.chmod(tmp, umask_mode(0o666))
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode())


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory; on success it replaces ``path`` (the old one is kept until then).

    The swap is: delete a stale ``path.old``, rename ``path`` -> ``path.old``, rename the temporary
    directory -> ``path``, delete ``path.old``. A crash at any point leaves ``path`` whole, or (between
    the two renames) ``path.old`` whole; `existing_dir` finds whichever is there, and the next
    `atomic_dir` on ``path`` first moves such a ``path.old`` back. An OSError (disk full, read-only
    directory) removes the temporary directory and raises an `OutputError`; ``path`` is untouched.
    """
    path = Path(path)
    old = path.with_name(path.name + ".old")
    with reporting_write_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        if old.exists() and not path.exists():
            os.replace(old, path)  # a swap that a crash interrupted: the old copy is the only whole one
        tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        with reporting_write_errors(path):
            os.chmod(tmp, umask_mode(0o777))
            yield tmp
            for f in tmp.iterdir():
                os.chmod(f, umask_mode(0o666))  # some writers (safetensors) create files 0600
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            fsync_dir(tmp)
            if old.exists():
                shutil.rmtree(old)  # ``path`` is whole here, so the stale copy is not needed
            if path.exists():
                os.replace(path, old)
            os.replace(tmp, path)
            fsync_dir(path.parent)
            if old.exists():
                shutil.rmtree(old)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def existing_dir(path: str | os.PathLike) -> Path | None:
    """``path`` if it exists, else the ``.old`` copy an interrupted `atomic_dir` swap left, else None."""
    path = Path(path)
    if path.is_dir():
        return path
    old = path.with_name(path.name + ".old")
    return old if old.is_dir() else None


def remove_temporaries(directory: str | os.PathLike) -> list[Path]:
    """Delete the temporary files and directories (``.NAME.*.tmp``) that killed writers left in ``directory``.

    Only safe while no other process writes there (hold `dir_lock`). Returns what was removed.
    """
    directory = Path(directory)
    if not directory.is_dir():
        return []
    removed = []
    for p in directory.iterdir():
        if p.name.startswith(".") and p.name.endswith(".tmp"):
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
            removed.append(p)
    return removed


LOCK_FILE = ".lock"


@contextlib.contextmanager
def dir_lock(directory: str | os.PathLike, what: str = "process") -> Iterator[Path]:
    """Hold an exclusive lock on ``directory`` (a ``.lock`` file in it, created if needed) for the block.

    A second holder, in this process or another, gets a `TarflowError` naming the holder's pid. The lock
    is an flock: the kernel releases it when its holder exits, even by SIGKILL, so it is never stale.
    Where flock does not exist (Windows) the block runs unlocked.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        yield Path(directory) / LOCK_FILE
        return
    directory = Path(directory)
    file = directory / LOCK_FILE
    with reporting_write_errors(directory):
        directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(file, os.O_RDWR | os.O_CREAT, umask_mode(0o666))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "unknown"
            raise TarflowError(f"{directory} is in use by another {what} (pid {holder}); wait for it to finish or "
                               f"stop it, or choose another directory") from None
        except OSError as e:  # a file system without flock (some network mounts): run, but say so
            warnings.warn(f"cannot lock {file} ({e.strerror}); nothing stops a second {what} from using {directory}")
            yield file
            return
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield file
    finally:
        os.close(fd)  # releases the lock
