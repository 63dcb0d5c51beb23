"""What a run records so it can be reproduced: the package lock with sources, torch's
determinism flags, the interpreter's state, and the redacted snapshot of untracked source."""

from __future__ import annotations

import hashlib
import json
import zipfile
from importlib import metadata
from pathlib import Path

import torch

from prov4ml_lightning.capture import reproduction
from prov4ml_lightning.capture.code import snapshot_untracked
from prov4ml_lightning.capture.environment import (
    capture_environment,
    interpreter_state,
    locked_packages,
    read_lock,
    torch_flags,
)
from prov4ml_lightning.redact import redact_source


def test_the_lock_names_every_installed_distribution_with_its_source(tmp_path):
    attrs, path = capture_environment(tmp_path, "r")
    lock = read_lock(path.read_text(encoding="utf-8"))
    assert attrs["packages_count"] == len(lock) == len(locked_packages())
    assert lock["torch"]["version"] == metadata.version("torch")
    direct = 0
    for dist in metadata.distributions():
        text = dist.read_text("direct_url.json")
        name = dist.metadata["Name"]
        entry = lock.get(name.lower().replace("_", "-").replace(".", "-"))
        if not text or entry is None or entry["version"] != dist.version:
            continue  # a shadowed copy of a name: the first on sys.path is the one locked
        direct += 1
        info = json.loads(text)
        assert info["url"].split("://", 1)[1] in entry["requirement"], entry
        assert entry["editable"] is bool(info.get("dir_info", {}).get("editable"))
        if "vcs_info" in info:
            assert entry["requirement"].endswith("@" + info["vcs_info"]["commit_id"])
    assert attrs["packages_direct_count"] == direct
    # an index distribution is a plain pin, ready for pip install -r
    if lock["torch"]["source"] == "index":
        assert lock["torch"]["requirement"] == f"torch=={metadata.version('torch')}"


def test_an_older_name_version_list_still_reads():
    lock = read_lock("# comment\nTorch==2.1.0\nmy_pkg @ file:///src/pkg  # version 0.3; editable; local\n")
    assert lock["torch"] == {"name": "Torch", "version": "2.1.0", "requirement": "Torch==2.1.0", "source": "index",
                             "editable": False}
    assert lock["my-pkg"]["version"] == "0.3" and lock["my-pkg"]["editable"] and lock["my-pkg"]["source"] == "local"


def test_torch_flags_are_read_as_they_are_now():
    before = torch.are_deterministic_algorithms_enabled(), torch.is_deterministic_algorithms_warn_only_enabled()
    try:
        torch.use_deterministic_algorithms(True, warn_only=True)
        flags = torch_flags()
        assert flags["torch_deterministic_algorithms"] is True and flags["torch_deterministic_warn_only"] is True
        torch.use_deterministic_algorithms(False)
        assert torch_flags()["torch_deterministic_algorithms"] is False
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
    assert torch_flags()["torch_cudnn_benchmark"] is torch.backends.cudnn.benchmark


def test_interpreter_state_lists_the_added_path(monkeypatch, tmp_path):
    monkeypatch.syspath_prepend(str(tmp_path))
    state = interpreter_state()
    assert str(tmp_path) in state["python_path_added"]
    assert isinstance(state["python_flags"], str) and isinstance(state["python_xoptions"], list)


def test_secrets_in_source_are_redacted():
    text = ('API_KEY = "abc"\nconf = {"token": \'zz\', "name": "ok"}\nDB_PASSWORD: str = "pw"\n'
            'url = "https://u:p@h/x"\nn_keys = 3\n')
    out = redact_source(text)
    assert "abc" not in out and "zz" not in out and '"pw"' not in out and "u:p@" not in out
    assert '"name": "ok"' in out and "n_keys = 3" in out


def test_snapshot_keeps_redacted_copies_within_the_bounds(tmp_path):
    root = tmp_path / "repo"
    (root / "pkg").mkdir(parents=True)
    small = root / "pkg" / "util.py"
    small.write_text('SECRET_TOKEN = "hunter2"\nx = 1\n', encoding="utf-8")
    big = root / "big.py"
    big.write_bytes(b"#" * (600 << 10))
    outside = tmp_path / "elsewhere.py"
    outside.write_text("y = 2\n", encoding="utf-8")
    entries = snapshot_untracked([small, big, outside], root, tmp_path / "snap.zip")
    by_path = {e["path"]: e for e in entries}
    assert by_path["pkg/util.py"]["sha256"] == hashlib.sha256(small.read_bytes()).hexdigest()
    assert by_path["pkg/util.py"]["redacted"] is True
    assert by_path["big.py"]["skipped"] == "too large"
    assert str(outside) in by_path and by_path[str(outside)]["redacted"] is False
    with zipfile.ZipFile(tmp_path / "snap.zip") as zf:
        stored = zf.read("pkg/util.py")
        assert b"hunter2" not in stored
        assert hashlib.sha256(stored).hexdigest() == by_path["pkg/util.py"]["stored_sha256"]
        assert "big.py" not in zf.namelist()


def test_the_reproduction_mark_comes_from_the_environment(tmp_path):
    doc = tmp_path / "provgraph_x.json"
    doc.write_text("{}", encoding="utf-8")
    env = {reproduction.REPRODUCES_ENV: "abc123", reproduction.REPRODUCES_DOCUMENT_ENV: str(doc)}
    mark = reproduction.reproduction_marker(env)
    assert mark == {"run_id": "abc123", "document": str(doc.resolve()),
                    "document_sha256": hashlib.sha256(b"{}").hexdigest()}
    assert reproduction.reproduction_marker({}) == {}
    assert reproduction.reproduction_marker({reproduction.REPRODUCES_ENV: "../x y"}) == {}
    assert Path(mark["document"]).is_file()
