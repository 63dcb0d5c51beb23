"""File helpers: content hashes and sizes of files and folders, the one atomic text write, and
where prov4ml keeps its caches (:func:`cache_dir`).

It imports nothing but the standard library: the MLflow service process loads it by path."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import TextIO

__all__ = ["CACHE_ENV", "atomic_write", "atomic_write_text", "cache_dir", "sha256_path"]

#: environment variable naming the cache folder (tests point it into their temporary folder)
CACHE_ENV = "PROV4ML_CACHE_DIR"

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


def cache_dir() -> Path:
    """Where prov4ml keeps its caches (the file-hash cache, the empty MLflow store per MLflow
    version): ``$PROV4ML_CACHE_DIR``, else ``$XDG_CACHE_HOME/prov4ml``, else ``~/.cache/prov4ml``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV])
    xdg = os.environ.get("XDG_CACHE_HOME")
    return Path(xdg) / "prov4ml" if xdg else Path.home() / ".cache" / "prov4ml"
