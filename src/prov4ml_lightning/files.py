"""File helpers: content hashes and sizes of files and folders, and the one atomic text write."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = ["RecordFile", "atomic_write", "atomic_write_text", "sha256_path"]

_CHUNK = 1 << 20


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def sha256_path(path: str | os.PathLike[str]) -> tuple[str, int]:
    """Return ``(sha256, size_bytes)`` of a file, or of a folder's sorted ``relpath\\0filehash`` list."""
    p = Path(path)
    if p.is_file():
        return _sha256_file(p), p.stat().st_size
    digest = hashlib.sha256()
    size = 0
    for file in sorted(f for f in p.rglob("*") if f.is_file()):
        digest.update(file.relative_to(p).as_posix().encode() + b"\0" + _sha256_file(file).encode() + b"\n")
        size += file.stat().st_size
    return digest.hexdigest(), size


def _default_file_mode() -> int:
    # Read once at import: os.umask can only be read by setting it, which is not thread-safe later.
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _default_file_mode()


def atomic_write(path: str | os.PathLike[str], write: Callable[[TextIO], object]) -> Path:
    """Write a UTF-8 text file through ``write(fh)`` into a temp file and a rename: never a
    half-written file (a failure leaves the old file, if any, untouched).

    The folder is created when missing; the file gets the mode any other file of the user gets.
    """
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{p.name}.", dir=p.parent)
    try:
        os.chmod(tmp, _FILE_MODE)  # mkstemp creates 0600
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            write(fh)
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """:func:`atomic_write` of ``text``."""
    return atomic_write(path, lambda fh: fh.write(text))


class RecordFile:
    """An append-only file of whole records (a journal, a CSV): :meth:`append` writes one block of
    records with ``os.write`` (no buffer of ours) and, when the disk fills part-way through, cuts the
    file back to where the block began, so the file ends on a record boundary whatever fails.

    Args:
        path: opened for appending (created with the user's file mode when missing).
        reserve: bytes of a spare file (``.<name>.reserve`` beside it) held while the file is open
            and given up the first time a write fails for lack of space: room for the last records
            (a run's end) on a full disk. ``0`` for none.
    """

    def __init__(self, path: str | os.PathLike[str], reserve: int = 0) -> None:
        self.path = Path(path)
        self._fd = os.open(self.path, os.O_RDWR | os.O_APPEND | os.O_CREAT, _FILE_MODE)
        self.size = os.fstat(self._fd).st_size
        self._reserve = self.path.with_name(f".{self.path.name}.reserve") if reserve else None
        if self._reserve is not None:
            try:
                with open(self._reserve, "wb") as fh:
                    fh.write(b"\0" * reserve)
            except OSError:  # no room even for that: nothing held
                self._reserve.unlink(missing_ok=True)
                self._reserve = None

    @property
    def closed(self) -> bool:
        return self._fd < 0

    def ends_mid_record(self, end: bytes = b"\n") -> bool:
        """Whether the file is not empty and does not end with ``end`` (a killed writer's half record)."""
        if self.size == 0:
            return False
        return os.pread(self._fd, 1, self.size - 1) != end[-1:]

    def append(self, data: bytes) -> None:
        """Append ``data`` whole, or raise ``OSError`` with the file as it was (a full disk first gives
        up the reserve and tries once more)."""
        try:
            self._append(data)
        except OSError as err:
            if not self.release_reserve() or err.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
                raise
            self._append(data)

    def _append(self, data: bytes) -> None:
        view, done = memoryview(data), 0
        try:
            while done < len(data):
                done += os.write(self._fd, view[done:])
        except OSError:
            if done:
                with contextlib.suppress(OSError):  # freeing space cannot fail for lack of it
                    os.ftruncate(self._fd, self.size)
            raise
        self.size += len(data)

    def release_reserve(self) -> bool:
        """Give up the reserve; whether there was one."""
        if self._reserve is None:
            return False
        self._reserve.unlink(missing_ok=True)
        self._reserve = None
        return True

    def sync(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        """``fsync`` and close (idempotent); the reserve is given up. Raises the ``fsync``'s ``OSError``
        after closing."""
        if self._fd < 0:
            return
        self.release_reserve()
        fd, self._fd = self._fd, -1
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
