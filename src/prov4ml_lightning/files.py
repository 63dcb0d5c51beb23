"""File helpers: content hashes and sizes of files and folders, the one atomic text write, and
where prov4ml keeps its caches (:func:`cache_dir`).

It imports nothing but the standard library: the MLflow service process loads it by path."""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

__all__ = ["CACHE_ENV", "MAX_FOLDER_BYTES", "MAX_FOLDER_FILES", "RecordFile", "atomic_write", "atomic_write_text",
           "cache_dir", "copy_files", "folder_files", "listing_sha256", "sha256_path"]

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
    """Return ``(sha256, size_bytes)`` of a file, or of a folder's sorted ``relpath\\0filehash`` list
    (its files as :func:`folder_files` lists them)."""
    p = Path(path)
    if p.is_file():
        return _sha256_file(p), p.stat().st_size
    return listing_sha256(folder_files(p, call=f"hashing {str(p)!r}"))


def listing_sha256(files: list[tuple[str, Path, int]]) -> tuple[str, int]:
    """``(sha256, size_bytes)`` of a folder listed by :func:`folder_files`."""
    digest = hashlib.sha256()
    size = 0
    for rel, file, _ in files:
        digest.update(rel.encode("utf-8", "surrogateescape") + b"\0" + _sha256_file(file).encode() + b"\n")
        size += file.stat().st_size
    return digest.hexdigest(), size


#: the most files and bytes a folder logged as one artifact may hold (a symbolic link that pulls in a
#: whole disk is refused, not copied); ``PROV4ML_MAX_FOLDER_FILES`` / ``PROV4ML_MAX_FOLDER_BYTES`` raise them
MAX_FOLDER_FILES = 100_000
MAX_FOLDER_BYTES = 50 * 2**30


def _limit(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def folder_files(path: str | os.PathLike[str], *, call: str,
                 refuse: str | os.PathLike[str] | None = None) -> list[tuple[str, Path, int]]:
    """The files of a folder as ``(relative path, path, size)``, sorted, following symbolic links (a
    copy of the folder holds what they point at): the one walk both the hash and the upload of a
    folder use. Links that point nowhere, sockets and devices are left out.

    Raises:
        Prov4MLInputError: naming ``call``: a symbolic-link loop (a link to a folder it is inside),
            more than :data:`MAX_FOLDER_FILES` files or :data:`MAX_FOLDER_BYTES` bytes, a folder that
            holds ``refuse`` (the run's provenance folder), or a folder that cannot be read.
    """
    from prov4ml_lightning.errors import Prov4MLInputError

    root = Path(path)
    max_files, max_bytes = _limit("PROV4ML_MAX_FOLDER_FILES", MAX_FOLDER_FILES), \
        _limit("PROV4ML_MAX_FOLDER_BYTES", MAX_FOLDER_BYTES)
    refused = None
    if refuse is not None:
        with contextlib.suppress(OSError):
            st = os.stat(refuse)
            refused = (st.st_dev, st.st_ino)
    with contextlib.suppress(OSError):
        if refuse is not None and Path(refuse).resolve().is_relative_to(root.resolve()):
            where = os.path.relpath(Path(refuse).resolve(), root.resolve())
            raise Prov4MLInputError(_holds_provenance(call, refuse, where))
    out: list[tuple[str, Path, int]] = []
    total = 0
    # depth first, without recursion: (folder, its path relative to root, the (dev, inode) of it and its
    # parents, the last symbolic link on the way to it)
    todo: list[tuple[Path, str, frozenset[tuple[int, int]], str]] = [(root, "", frozenset(), "")]
    while todo:
        folder, rel, above, via = todo.pop()
        try:
            st = os.stat(folder)
            key = (st.st_dev, st.st_ino)
            if key == refused:
                raise Prov4MLInputError(_holds_provenance(call, refuse, rel))
            if key in above:
                raise Prov4MLInputError(
                    f"{call}: the folder has a symbolic-link loop: {via or repr(rel)} leads back to a folder it is "
                    f"inside (at {rel!r}); remove the link or log the files you mean")
            with os.scandir(folder) as entries:
                listed = sorted(entries, key=lambda e: e.name, reverse=True)
        except Prov4MLInputError:
            raise
        except OSError as err:
            raise Prov4MLInputError(f"{call}: cannot read the folder {folder} ({err.strerror or err})") from None
        inside = above | {key}
        for entry in listed:
            sub = f"{rel}/{entry.name}" if rel else entry.name
            try:
                if entry.is_dir():
                    link = f"{sub!r} -> {os.readlink(entry.path)!r}" if entry.is_symlink() else via
                    todo.append((Path(entry.path), sub, inside, link))
                    continue
                if not entry.is_file():
                    continue
                size = entry.stat().st_size
            except OSError:  # a link that points nowhere, a file gone meanwhile
                continue
            out.append((sub, Path(entry.path), size))
            total += size
            if len(out) > max_files or total > max_bytes:
                raise Prov4MLInputError(
                    f"{call}: the folder holds more than {max_files} files or {max_bytes / 2**30:g} GiB (at "
                    f"{sub!r}); a symbolic link may pull in more than you meant. Log a smaller folder, or raise "
                    "PROV4ML_MAX_FOLDER_FILES / PROV4ML_MAX_FOLDER_BYTES")
    out.sort(key=lambda f: f[0].split("/"))  # the order of sorted paths (a folder's digest stays what it was)
    return out


def _holds_provenance(call: str, provenance_dir: Any, where: str) -> str:
    return (f"{call}: the folder holds the run's provenance folder {provenance_dir} (at {where!r}), which the run "
            "writes while it records (and stages uploads in); log the files you mean, or give start_run a "
            "provenance_save_dir outside it")


def copy_files(files: list[tuple[str, Path, int]], target: Path) -> None:
    """Copy a :func:`folder_files` listing into the new folder ``target`` (links followed: plain files)."""
    target.mkdir(parents=True)
    for rel, file, _ in files:
        dest = target / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(file, dest)


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
