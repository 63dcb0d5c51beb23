"""File contents hashed once: a SHA-256 per file, cached by (path, size, mtime_ns, inode) as DVC does.

The cache is an SQLite file, ``file-hashes.sqlite3``, in prov4ml's cache folder
(:func:`prov4ml_lightning.files.cache_dir`). A file whose size, modification
time (nanoseconds) and inode are those recorded is not read again, so fingerprinting the same
10,000 files a second time costs their ``stat`` calls. A file rewritten with the same size
within one tick of the file system's clock keeps its old entry (DVC has the same limit); touching
a file only makes it be read again. A cache that cannot be opened or written (read-only home, a
locked database) is skipped with one log line: files are then read every time.

A :class:`FileHashes` belongs to the thread that made it (SQLite connections do).
"""

from __future__ import annotations

import hashlib
import logging
import os
import sqlite3
from pathlib import Path

from prov4ml_lightning.files import CACHE_ENV, cache_dir

__all__ = ["CACHE_ENV", "FileHashes", "cache_dir", "read_file_digest"]

log = logging.getLogger(__name__)

_READ = 1 << 20


def read_file_digest(path: str) -> bytes:
    """The SHA-256 of a file's content (read in 1 MiB blocks; ``hashlib`` releases the GIL on them)."""
    h = hashlib.sha256()
    buf = bytearray(_READ)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
        while True:
            n = fh.readinto(buf)
            if not n:
                break
            h.update(view[:n])
    return h.digest()


class FileHashes:
    """SHA-256 of files, through the cache.

    Args:
        folder: the cache folder (default :func:`cache_dir`); ``None`` entries are never cached.

    Attributes:
        read: files read (not found in the cache, or changed since).
        cached: files whose hash came from the cache.
    """

    def __init__(self, folder: Path | None = None) -> None:
        self.folder = folder if folder is not None else cache_dir()
        self.read = 0
        self.cached = 0
        self._db: sqlite3.Connection | None = None
        self._opened = False
        self._new: list[tuple[str, int, int, int, bytes]] = []
        self._known: dict[str, tuple[int, int, int, bytes]] = {}  # prefetched entries

    def _connect(self) -> sqlite3.Connection | None:
        if not self._opened:
            self._opened = True
            try:
                self.folder.mkdir(parents=True, exist_ok=True)
                db = sqlite3.connect(str(self.folder / "file-hashes.sqlite3"), timeout=10)
                db.execute("CREATE TABLE IF NOT EXISTS files (path TEXT PRIMARY KEY, size INTEGER, "
                           "mtime_ns INTEGER, inode INTEGER, sha256 BLOB)")
                self._db = db
            except (OSError, sqlite3.Error) as err:
                log.info("prov4ml: no file-hash cache in %s (%s); files are read every time", self.folder, err)
        return self._db

    def prefetch(self, paths: list[str]) -> None:
        """Look the cache entries of ``paths`` (absolute) up in a few queries instead of one per file."""
        db = self._connect()
        if db is None:
            return
        for start in range(0, len(paths), 500):
            part = paths[start:start + 500]
            try:
                rows = db.execute(f"SELECT path, size, mtime_ns, inode, sha256 FROM files WHERE path IN "
                                  f"({','.join('?' * len(part))})", part).fetchall()
            except sqlite3.Error:
                return
            self._known.update((row[0], tuple(row[1:])) for row in rows)

    def digest(self, path: str) -> bytes:
        """The SHA-256 of the file at ``path`` (32 bytes).

        Raises:
            OSError: it cannot be read.
        """
        full = path if os.path.isabs(path) else os.path.abspath(path)
        st = os.stat(full)
        row = self._known.get(full)
        db = self._connect()
        if row is None and db is not None:
            try:
                found = db.execute("SELECT size, mtime_ns, inode, sha256 FROM files WHERE path = ?", (full,)).fetchone()
            except sqlite3.Error:
                found = None
            row = tuple(found) if found is not None else None
        if row is not None and row[:3] == (st.st_size, st.st_mtime_ns, st.st_ino):
            self.cached += 1
            return bytes(row[3])
        digest = read_file_digest(full)
        self.read += 1
        if db is not None:
            self._new.append((full, st.st_size, st.st_mtime_ns, st.st_ino, digest))
            if len(self._new) >= 5000:
                self.save()
        return digest

    def save(self) -> None:
        """Write the hashes computed since the last save into the cache."""
        rows, self._new = self._new, []
        if rows and self._db is not None:
            try:
                with self._db:
                    self._db.executemany("INSERT OR REPLACE INTO files VALUES (?, ?, ?, ?, ?)", rows)
            except sqlite3.Error as err:
                log.info("prov4ml: could not update the file-hash cache in %s (%s)", self.folder, err)

    def close(self) -> None:
        """Save and close; idempotent."""
        self.save()
        if self._db is not None:
            self._db.close()
            self._db = None
