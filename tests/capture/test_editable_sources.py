"""Editable installs and the code record (issue 28): a ``pip install -e .`` of the repository itself
hides no untracked helper module from the snapshot, and an editable install outside the repository
has its folder's git state recorded and checked again at reproduce time."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from prov4ml_lightning.cli._common import CliError
from prov4ml_lightning.cli._reproduction import EXIT_RECORD_INCOMPLETE, code_differences, editable_mismatches
from prov4ml_lightning.cli.reproduce import _untracked_check

SRC = Path(__file__).resolve().parents[2] / "src"

PYPROJECT = '''[build-system]
requires = ["setuptools"]
build-backend = "setuptools.build_meta"

[project]
name = "{name}"
version = "0.1"

[tool.setuptools]
packages = ["{name}"]
'''

TRAIN = '''import json
import sys
from pathlib import Path

import helper
import outpkg
import tinypkg
from prov4ml_lightning.capture.code import capture_code, imported_source_files

attrs, _ = capture_code(Path(sys.argv[1]), "r1")
attrs.pop("untracked_snapshot", None)
attrs["imported"] = [str(p) for p in imported_source_files()]
attrs["values"] = [helper.VALUE, tinypkg.VALUE, outpkg.VALUE]
print(json.dumps(attrs, default=str))
'''


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True).stdout


def _project(folder: Path, name: str, files: dict[str, str]) -> None:
    folder.mkdir()
    (folder / name).mkdir()
    (folder / name / "__init__.py").write_text("VALUE = 1\n", encoding="utf-8")
    (folder / "pyproject.toml").write_text(PYPROJECT.format(name=name), encoding="utf-8")
    for path, text in files.items():
        (folder / path).write_text(text, encoding="utf-8")
    _git(folder, "init", "-q")
    _git(folder, "config", "user.email", "test@example.org")
    _git(folder, "config", "user.name", "test")
    (folder / ".gitignore").write_text("*.egg-info/\nbuild/\nout/\n", encoding="utf-8")
    _git(folder, "add", ".")
    _git(folder, "commit", "-qm", "init")


@pytest.mark.slow
def test_editable_repository_and_outside_editable(tmp_path):
    repo, outside = tmp_path / "repo", tmp_path / "outside"
    _project(repo, "tinypkg", {"train.py": TRAIN})
    _project(outside, "outpkg", {})
    (repo / "helper.py").write_text("VALUE = 2  # untracked, imported by train.py\n", encoding="utf-8")
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    # this interpreter's pip and setuptools, seen through the system site-packages: nothing downloaded
    done = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                           "--no-index", "-e", str(repo), "-e", str(outside)], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-3000:]
    env = {**os.environ, "PYTHONPATH": str(SRC)}

    def record() -> dict:
        out = tmp_path / "out"
        out.mkdir(exist_ok=True)
        run = subprocess.run([str(python), "train.py", str(out)], cwd=repo, env=env, capture_output=True, text=True,
                             timeout=300)
        assert run.returncode == 0, run.stderr[-3000:]
        return json.loads(run.stdout.strip().splitlines()[-1])

    attrs = record()
    assert attrs["values"] == [2, 1, 1]
    # the repository's own distribution (tinypkg) is installed; the untracked helper beside it is local source
    imported = {Path(p).relative_to(repo.resolve()).as_posix() for p in attrs["imported"]}
    assert imported == {"train.py", "helper.py"}
    assert [e["path"] for e in attrs["untracked_files"]] == ["helper.py"]
    assert attrs["untracked_imported_count"] == 1
    # each editable install the run imported from: the repository's own, and the outside one's git state
    sources = {e["name"]: e for e in attrs["editable_sources"]}
    # (this package is among them too where it is itself installed editable from a git checkout, as
    # `.ci/install` does: the run imported it from there; the test's own installs are these two)
    assert {n for n, e in sources.items() if Path(e["path"]).is_relative_to(tmp_path)} == {"tinypkg", "outpkg"}
    assert sources["tinypkg"]["in_repository"] is True
    out = sources["outpkg"]
    assert out["git_root"] == str(outside.resolve()) and out["git_commit"] == _git(outside, "rev-parse", "HEAD").strip()
    assert out["git_untracked_count"] == 0
    assert editable_mismatches(attrs) == []
    # the outside source changes after the run (not committed): reproduce lists it, and a new record differs
    (outside / "outpkg" / "__init__.py").write_text("VALUE = 3\n", encoding="utf-8")
    (mismatch,) = editable_mismatches(attrs)
    assert "outpkg" in mismatch and "git_diff_sha256" in mismatch and str(outside.resolve()) in mismatch
    changed = record()
    again = {e["name"]: e for e in changed["editable_sources"]}
    assert again["outpkg"]["git_diff_sha256"] != out["git_diff_sha256"]
    # the reproduction report's code is not identical: only the outside install's state differs
    key = f"editable outpkg ({outside.resolve()})"
    assert set(code_differences(attrs, changed)) == {key}
    assert code_differences(attrs, changed)[key][0]["git_diff_sha256"] == out["git_diff_sha256"]
    # the repository's own editable install is checked against the run's commit and diff
    attrs.update(git_commit=_git(repo, "rev-parse", "HEAD").strip())
    (outside / "outpkg" / "__init__.py").write_text("VALUE = 1\n", encoding="utf-8")
    assert editable_mismatches(attrs) == []
    (repo / "tinypkg" / "__init__.py").write_text("VALUE = 4\n", encoding="utf-8")
    (mismatch,) = editable_mismatches(attrs)
    assert "tinypkg" in mismatch and "git_diff_sha256" in mismatch


def test_untracked_source_the_record_lacks_is_refused():
    # imported untracked files the record does not list: the documented refusal
    with pytest.raises(CliError) as err:
        _untracked_check({"git_untracked_count": 2, "untracked_imported_count": 1})
    assert err.value.code == EXIT_RECORD_INCOMPLETE and "lacks" in str(err.value)
    with pytest.raises(CliError) as err:
        _untracked_check({"git_untracked_count": 1, "untracked_error": "git ls-files failed"})
    assert err.value.code == EXIT_RECORD_INCOMPLETE
    # every imported one listed, or none imported: nothing to say
    listed = json.dumps([{"path": "helper.py", "sha256": "0" * 64}])
    assert _untracked_check({"git_untracked_count": 3, "untracked_imported_count": 1, "untracked_files": listed}) == []
    assert _untracked_check({"git_untracked_count": 3, "untracked_imported_count": 0}) == []
    # an older record cannot tell: a warning before the run
    (note,) = _untracked_check({"git_untracked_count": 3})
    assert note.startswith("WARNING") and "3 untracked" in note
