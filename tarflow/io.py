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
from typing import Callable, Iterator

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

    For directories only the library writes (a run's checkpoint, a cache entry): one that holds other
    entries than the new files is refused (`OutputError`) rather than deleted.

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
            check_only_own_entries(path, {f.name for f in tmp.iterdir()})
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


BACKUP_DIR = ".tarflow-previous"  # inside a model directory: the previous save, while a new one is committed
OWN_TEMP_PREFIX = ".tarflow."


def describe_entries(path: Path, limit: int = 5) -> str:
    """The first few names in directory ``path``, for error messages: 'a.txt, sub/, ... (7 entries)'."""
    names = sorted(p.name + ("/" if p.is_dir() else "") for p in path.iterdir())
    more = f", ... ({len(names)} entries)" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def check_output_dir(path: str | os.PathLike, names: tuple[str, ...], is_ours: Callable[[Path], bool]) -> None:
    """Refuse to write the files ``names`` into ``path`` where that would change something the user made.

    Allowed: a missing or empty directory, a directory `is_ours` recognises (its other entries are kept),
    or a directory that holds none of ``names`` (they are added; nothing else is touched). Refused, with an
    `OutputError` naming the directory and what it holds: ``path`` is a file, or it holds one of ``names``
    that the library did not write.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{path} is a file, not a directory: give a new or empty directory (or a saved model "
                          f"directory to replace); {path} was not changed")
    if not path.is_dir() or (path / BACKUP_DIR).is_dir() or is_ours(path):
        return
    clashes = [n for n in names if os.path.lexists(path / n)]
    if clashes:
        raise OutputError(f"{path} is not a tarflow model directory and holds {', '.join(clashes)}, which saving "
                          f"would replace (it holds {describe_entries(path)}): choose a new or empty directory; "
                          f"nothing was changed")


@contextlib.contextmanager
def atomic_files(path: str | os.PathLike, names: tuple[str, ...], is_ours: Callable[[Path], bool]) -> Iterator[Path]:
    """Yield a temporary directory; on success its files replace those of ``names`` in ``path``, nothing else.

    ``names`` are every file the library owns there, in commit order (the file that marks a directory as
    ours last); one of them the writer does not produce is removed, as belonging to the previous version.
    Other entries of ``path`` are never touched (see `check_output_dir` for what is refused).

    Commit: hard links to the current files go to ``path/.tarflow-previous`` (renamed into place once
    whole), each new file is renamed over its old one, then the backup is renamed away and deleted. A
    crash leaves ``path`` whole or the backup whole: `existing_dir` loads the backup while it exists, and
    the next save first moves it back. Temporary names start with ``.tarflow.`` and end with ``.tmp``.
    """
    path = Path(path)
    check_output_dir(path, names, is_ours)
    with reporting_write_errors(path):
        path.mkdir(parents=True, exist_ok=True)
        restore_backup(path, names)
        tmp = Path(tempfile.mkdtemp(dir=path, prefix=OWN_TEMP_PREFIX, suffix=".tmp"))
    try:
        with reporting_write_errors(path):
            yield tmp
            for f in tmp.iterdir():
                if f.name not in names:
                    raise ValueError(f"atomic_files: {f.name} is not among the owned names {names}")
                os.chmod(f, umask_mode(0o666))  # some writers (safetensors) create files 0600
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            backup = Path(tempfile.mkdtemp(dir=path, prefix=OWN_TEMP_PREFIX, suffix=".tmp"))
            for name in names:
                if (path / name).is_file():
                    link_or_copy(path / name, backup / name)
            fsync_dir(backup)
            os.replace(backup, path / BACKUP_DIR)
            fsync_dir(path)
            for name in names:
                if (tmp / name).exists():
                    os.replace(tmp / name, path / name)
                elif (path / name).is_file():
                    os.unlink(path / name)
            fsync_dir(path)
            discard_backup(path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def link_or_copy(src: Path, dst: Path) -> None:
    """A hard link (no bytes copied), or a copy where the file system has no hard links."""
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


def discard_backup(path: Path) -> None:
    """Rename ``path/.tarflow-previous`` away (atomic), then delete it: a partial backup is never seen."""
    trash = path / f"{OWN_TEMP_PREFIX}{os.getpid()}.old.tmp"
    os.replace(path / BACKUP_DIR, trash)
    fsync_dir(path)
    shutil.rmtree(trash)


def restore_backup(path: Path, names: tuple[str, ...]) -> None:
    """Undo a commit a crash interrupted (the backup is the last whole version) and delete our temporaries."""
    backup = path / BACKUP_DIR
    if backup.is_dir():
        for name in names:
            if (backup / name).is_file():
                os.replace(backup / name, path / name)
            elif (path / name).is_file():
                os.unlink(path / name)  # written by the interrupted save, absent from the previous version
        fsync_dir(path)
        shutil.rmtree(backup)
    for p in path.iterdir():
        if p.name.startswith(OWN_TEMP_PREFIX) and p.name.endswith(".tmp"):
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink()


def check_only_own_entries(path: Path, own: set[str]) -> None:
    """Refuse an `atomic_dir` swap that would delete entries of ``path`` other than the files it replaces."""
    if not path.is_dir():
        return
    foreign = sorted(p.name for p in path.iterdir() if p.name not in own)
    if foreign:
        raise OutputError(f"{path} holds {', '.join(foreign[:5])}, which tarflow did not write there; replacing "
                          f"{path} would delete them: move them elsewhere and run again ({path} was not changed)")


def existing_dir(path: str | os.PathLike) -> Path | None:
    """Where the last whole save of ``path`` is: the backup of an interrupted `atomic_files` commit inside it,
    ``path`` itself, the ``.old`` copy an interrupted `atomic_dir` swap left, or None."""
    path = Path(path)
    if (path / BACKUP_DIR).is_dir():
        return path / BACKUP_DIR
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
