"""File helpers: content hashes and sizes of files and folders, and the one atomic text write."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = ["atomic_write", "atomic_write_text", "sha256_path"]

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
