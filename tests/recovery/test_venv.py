"""A virtual environment rebuilt from a lock (``prov4ml reproduce --venv``), for real and offline.

An environment A is made here (``venv --without-pip``) holding a package written by the test,
installed editable from its folder, ``six`` from the index pip is configured with (this machine's
local one; any index holding six 1.17.0 does) and a wheel file with its sha256. A's lock, as the
interpreter reads it (``probe``, the same code a run records its lock with), is rebuilt as B; B
must read back the same lock, the packages must import in B from their recorded sources, and a
second build must reuse B. Failures name the requirement and pip's exit status (a missing
release, a moved folder, an archive whose sha256 is not the recorded one).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from prov4ml_lightning.recovery.venv import MARKER, VenvError, build_venv, plan_venv, probe

pytestmark = pytest.mark.slow

VERSION = ".".join(str(n) for n in sys.version_info[:3])
#: The environments read without this session's PYTHONPATH (a source folder may hold an egg-info).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}


def _tiny_package(root: Path, version: str = "0.3") -> Path:
    folder = root / "tinypkg"
    (folder / "tinypkg").mkdir(parents=True)
    (folder / "pyproject.toml").write_text(
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "tinypkg"\nversion = "{version}"\n', encoding="utf-8")
    (folder / "tinypkg" / "__init__.py").write_text("SCALE = 3\n", encoding="utf-8")
    return folder


def _wheel(folder: Path, name: str = "tinywheel", version: str = "0.1") -> Path:
    """A pure-Python wheel written by hand (a zip with its dist-info and RECORD)."""
    files = {f"{name}/__init__.py": b"ANSWER = 42\n",
             f"{name}-{version}.dist-info/METADATA":
                 f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
             f"{name}-{version}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\n"
                                                  b"Tag: py3-none-any\n"}
    record = "".join(f"{path},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},"
                     f"{len(data)}\n" for path, data in files.items()) + f"{name}-{version}.dist-info/RECORD,,\n"
    files[f"{name}-{version}.dist-info/RECORD"] = record.encode()
    path = folder / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as zf:
        for member, data in files.items():
            zf.writestr(member, data)
    return path


@pytest.fixture(scope="module")
def lock(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Environment A and its lock file."""
    root = tmp_path_factory.mktemp("venv")
    package = _tiny_package(root)
    wheel = _wheel(root)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    a = root / "A"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(a)], check=True)
    done = subprocess.run([sys.executable, "-m", "pip", "--python", str(a / "bin" / "python"), "install", "-q",
                           "--no-deps", "-e", str(package), "six==1.17.0",
                           f"tinywheel @ {wheel.as_uri()}#sha256={digest}"], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr[-2000:]
    text = probe(a / "bin" / "python", [], ENV)["packages"]
    path = root / "packages_run.txt"
    path.write_text(text, encoding="utf-8")
    return {"root": root, "package": package, "path": path, "text": text, "wheel": wheel, "digest": digest}


def test_the_lock_is_rebuilt_from_its_recorded_sources(lock, tmp_path):
    lines = lock["text"].splitlines()
    assert f"tinypkg @ {lock['package'].as_uri()}  # version 0.3; editable; local" in lines
    archive = f"tinywheel @ {lock['wheel'].as_uri()}#sha256={lock['digest']}"
    assert f"{archive}  # version 0.1; archive" in lines  # the archive's hash, as pip recorded it
    b = tmp_path / "B"
    plan = plan_venv(b, lock["path"], VERSION)
    assert plan.state == "new" and plan.index == ["six==1.17.0"]
    assert plan.direct == [(f"tinypkg @ {lock['package'].as_uri()}", ["-e", str(lock["package"])]),
                           (archive, [archive])]
    build_venv(plan)
    # B holds the lock and nothing else (no pip: A had none), read as a run reads its own
    assert probe(plan.python, [], ENV)["packages"] == lock["text"]
    done = subprocess.run([str(plan.python), "-c", "import six, tinypkg, tinywheel; "
                           "print(tinypkg.__file__, tinypkg.SCALE, tinywheel.ANSWER)"],
                          capture_output=True, text=True, check=True)
    assert done.stdout.split() == [str(lock["package"] / "tinypkg" / "__init__.py"), "3", "42"]
    made = json.loads((b / MARKER).read_text(encoding="utf-8"))
    assert made["complete"] is True and made["python_version"] == VERSION
    # the same lock again: reused as it is, nothing to run
    again = plan_venv(b, lock["path"], VERSION)
    assert again.state == "reuse" and again.commands() == []


def test_a_failing_requirement_is_named_and_the_venv_resumes(lock, tmp_path):
    bad = tmp_path / "packages_bad.txt"
    bad.write_text(lock["text"].replace("six==1.17.0", "six==999.0"), encoding="utf-8")  # no such release
    b = tmp_path / "B"
    plan = plan_venv(b, bad, VERSION)
    with pytest.raises(VenvError) as err:
        build_venv(plan)
    assert err.value.requirement == "six==999.0" and err.value.returncode not in (None, 0)
    assert "incomplete" in str(err.value) and str(b) in str(err.value)
    assert json.loads((b / MARKER).read_text(encoding="utf-8"))["complete"] is False
    # the same lock finds it incomplete and runs the pip steps again (without creating it anew)
    resumed = plan_venv(b, bad, VERSION)
    assert resumed.state == "resume" and all("venv" not in argv[1:3] for _, argv in resumed.commands())
    # another lock is refused: the folder is not this lock's venv
    with pytest.raises(VenvError, match="another lock") as other:
        plan_venv(b, lock["path"], VERSION)
    assert other.value.kind == "usage"
    # an editable install whose recorded folder is gone: its own step fails, named
    gone = tmp_path / "packages_gone.txt"
    gone.write_text(f"tinypkg @ {(tmp_path / 'moved').as_uri()}  # version 0.3; editable; local\n", encoding="utf-8")
    with pytest.raises(VenvError) as err:
        build_venv(plan_venv(tmp_path / "C", gone, VERSION))
    assert err.value.requirement == f"tinypkg @ {(tmp_path / 'moved').as_uri()}"
    # an archive that is not the one recorded (its sha256 differs): pip refuses it, named
    changed = _wheel(tmp_path)
    with zipfile.ZipFile(changed, "a") as zf:
        zf.writestr("tinywheel/extra.py", b"X = 1\n")
    swapped = tmp_path / "packages_swapped.txt"
    swapped.write_text(lock["text"].replace(lock["wheel"].as_uri(), changed.as_uri()), encoding="utf-8")
    with pytest.raises(VenvError, match=r"(?i)hash") as err:
        build_venv(plan_venv(tmp_path / "D", swapped, VERSION))
    assert err.value.requirement == f"tinywheel @ {changed.as_uri()}#sha256={lock['digest']}"


def test_refusals_change_nothing(lock, tmp_path):
    other = "3.1.4" if not VERSION.startswith("3.1.") else "2.7.18"
    with pytest.raises(VenvError, match=r"--python PATH") as err:
        plan_venv(tmp_path / "B", lock["path"], other)
    assert err.value.kind == "build"
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine\n", encoding="utf-8")
    with pytest.raises(VenvError, match="not empty") as err:
        plan_venv(busy, lock["path"], VERSION)
    assert err.value.kind == "usage" and sorted(p.name for p in busy.iterdir()) == ["notes.txt"]
    with pytest.raises(VenvError, match=r"not a Python interpreter|cannot run it"):
        plan_venv(tmp_path / "B", lock["path"], VERSION, python=str(busy / "notes.txt"))
    redacted = tmp_path / "packages_redacted.txt"
    redacted.write_text("secretpkg @ git+https://***@example.org/r.git@" + "0" * 40 + "  # version 1; vcs\n",
                        encoding="utf-8")
    with pytest.raises(VenvError, match="redacted") as err:
        plan_venv(tmp_path / "B", redacted, VERSION)
    assert err.value.kind == "record"
    assert not (tmp_path / "B").exists()
