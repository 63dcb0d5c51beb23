"""File helpers: content hashes and sizes of files and folders."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

__all__ = ["sha256_path"]

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
