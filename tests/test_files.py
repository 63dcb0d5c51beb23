"""Unit tests of files.py: content hashes of files and folders."""

from __future__ import annotations

import hashlib
from pathlib import Path

from prov4ml_lightning.files import sha256_path


def test_a_file_hashes_to_its_sha256_and_size(tmp_path: Path):
    f = tmp_path / "a.bin"
    data = bytes(range(256)) * 5000  # more than one read chunk
    f.write_bytes(data)
    assert sha256_path(f) == (hashlib.sha256(data).hexdigest(), len(data))
    assert sha256_path(str(f)) == sha256_path(f)


def _folder_digest(entries: list[tuple[str, bytes]]) -> str:
    digest = hashlib.sha256()
    for rel, data in sorted(entries):
        digest.update(rel.encode() + b"\0" + hashlib.sha256(data).hexdigest().encode() + b"\n")
    return digest.hexdigest()


def test_a_folder_hashes_its_sorted_relative_paths_and_file_hashes(tmp_path: Path):
    d = tmp_path / "cfg"
    (d / "sub").mkdir(parents=True)
    (d / "sub" / "z.txt").write_bytes(b"zz")
    (d / "b.txt").write_bytes(b"b")
    (d / "empty").mkdir()
    assert sha256_path(d) == (_folder_digest([("b.txt", b"b"), ("sub/z.txt", b"zz")]), 3)


def test_a_folder_hash_changes_with_a_name_or_a_byte_but_not_with_creation_order(tmp_path: Path):
    one, two = tmp_path / "one", tmp_path / "two"
    one.mkdir()
    two.mkdir()
    (one / "a").write_bytes(b"1")
    (one / "b").write_bytes(b"2")
    (two / "b").write_bytes(b"2")
    (two / "a").write_bytes(b"1")
    assert sha256_path(one) == sha256_path(two)
    (two / "b").rename(two / "c")
    assert sha256_path(one)[0] != sha256_path(two)[0]
    (two / "c").rename(two / "b")
    (two / "b").write_bytes(b"3")
    assert sha256_path(one)[0] != sha256_path(two)[0]


def test_an_empty_folder(tmp_path: Path):
    assert sha256_path(tmp_path) == (hashlib.sha256().hexdigest(), 0)
