"""A virtual environment built from a run's lock file (``prov4ml reproduce --venv DIR``).

The lock (``packages_<run>.txt``, :mod:`prov4ml_lightning.capture.environment`) lists every
distribution the run's interpreter had, with its source. :func:`plan_venv` turns it into the
commands that rebuild it; :func:`build_venv` runs them:

1. ``python -m venv --without-pip DIR`` (the standard library's ``venv``) with this interpreter,
   or the one given; its major.minor must be the recorded interpreter's, else nothing is made;
2. that interpreter's pip installs into the venv (``python -m pip --python DIR/bin/python``, pip
   22.3 or later; so the venv holds the lock and nothing else, pip only where the lock has it):
   one ``pip install --no-deps -r DIR/prov4ml-index-requirements.txt`` with every
   ``name==version`` of the lock (from the index pip is configured with: ``PIP_INDEX_URL``,
   ``PIP_EXTRA_INDEX_URL``, ``PIP_FIND_LINKS`` or pip's config files);
3. one ``pip install --no-deps`` per distribution installed from elsewhere: ``-e PATH`` for an
   editable local folder (the recorded path), ``-e vcs+URL@COMMIT#egg=NAME`` for an editable VCS
   checkout, ``NAME @ URL`` otherwise (a VCS URL carries its commit, an archive URL its recorded
   hash, which pip checks).

``--no-deps``: the lock is the whole environment, so pip resolves nothing and adds nothing.
``DIR/prov4ml-venv.json`` marks the folder as made here, for which lock (its sha256) and whether
every step passed: an existing folder is reused when it is such a venv for the same lock (a
complete one as it is; an incomplete one by running the pip steps again), and refused otherwise.

:func:`probe` reads an interpreter (this venv's python) as
:func:`~prov4ml_lightning.capture.environment.interpreter_snapshot` sees it, so a reproduction
compares the recorded environment with the one the command will run in.
"""

from __future__ import annotations

import hashlib
import json
import re
import shlex
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from prov4ml_lightning.errors import Prov4MLError

__all__ = ["MARKER", "VenvError", "VenvPlan", "build_venv", "plan_venv", "probe"]

#: The file that marks a folder as a virtual environment built here from a lock.
MARKER = "prov4ml-venv.json"
#: The requirements file of step 2, written into the venv.
INDEX_REQUIREMENTS = "prov4ml-index-requirements.txt"
_PIP = ("install", "--no-deps", "--no-input", "--disable-pip-version-check", "-q")
_VERSION = "import sys; print('%d.%d.%d' % sys.version_info[:3])"


class VenvError(Prov4MLError):
    """The virtual environment could not be planned or built.

    Attributes:
        kind: ``"usage"`` (a folder or ``--python`` that cannot serve as asked), ``"record"`` (the
            record lacks what is needed: no Python version, a lock line with redacted credentials)
            or ``"build"`` (the interpreter is not the recorded major.minor, a command failed).
        requirement: the lock line that failed, when one did.
        returncode: pip's (or venv's) exit status, when a command failed.
    """

    def __init__(self, message: str, kind: str = "build", requirement: str | None = None,
                 returncode: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.requirement = requirement
        self.returncode = returncode


@dataclass
class VenvPlan:
    """What building one virtual environment from one lock does."""

    path: Path
    creator: str
    creator_version: str
    lock: Path
    lock_sha256: str
    index: list[str]
    direct: list[tuple[str, list[str]]]
    state: str = "new"  # "new", "reuse" (complete, same lock) or "resume" (same lock, a step failed)
    notes: list[str] = field(default_factory=list)

    @property
    def python(self) -> Path:
        """The venv's interpreter."""
        return self.path / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")

    def commands(self) -> list[tuple[str | None, list[str]]]:
        """``(lock line or None, argv)`` of each step still to run, in order."""
        if self.state == "reuse":
            return []
        out: list[tuple[str | None, list[str]]] = []
        if self.state == "new":
            out.append((None, [self.creator, "-m", "venv", "--without-pip", str(self.path)]))
        pip = [self.creator, "-m", "pip", "--python", str(self.python), *_PIP]
        if self.index:
            out.append((None, [*pip, "-r", str(self.path / INDEX_REQUIREMENTS)]))
        out += [(line, [*pip, *args]) for line, args in self.direct]
        return out

    def lines(self) -> list[str]:
        state = {"new": "to be created", "reuse": "exists, built from this lock: reused as it is",
                 "resume": "exists, built from this lock but not to the end: the pip steps run again"}[self.state]
        out = [f"  venv:        {self.path} ({state})",
               f"  lock:        {self.lock.name} (sha256 {self.lock_sha256[:12]}): {len(self.index)} from the index, "
               f"{len(self.direct)} from a path, URL or VCS",
               f"  interpreter: {self.creator} (Python {self.creator_version})"]
        for _, argv in self.commands():
            out.append(f"    $ {shlex.join(argv)}")
        out += [f"  note: {n}" for n in self.notes]
        return out


def plan_venv(path: Path, lock: Path, recorded_python: str | None, python: str | None = None) -> VenvPlan:
    """Check the lock, the interpreter and the folder; nothing is changed.

    Args:
        path: the venv folder (must not exist, be empty, or be a venv made here for this lock).
        lock: the run's lock file.
        recorded_python: the recorded ``python_version`` (``3.11.7``); its major.minor must match.
        python: the interpreter that creates the venv; default this one.

    Raises:
        VenvError: the interpreter's version differs, a lock line cannot be installed (a redacted
            URL), or the folder is in the way (kind ``usage``).
    """
    from prov4ml_lightning.capture.environment import read_lock

    creator = python or sys.executable
    version = _interpreter_version(creator)
    if not recorded_python:
        raise VenvError("the record does not say which Python ran it (no python_version): cannot check the "
                        "interpreter for --venv", "record")
    if version.split(".")[:2] != str(recorded_python).split(".")[:2]:
        raise VenvError(f"the run ran on Python {recorded_python}, but {creator} is Python {version}: its packages "
                        f"may not install or behave the same (pass --python PATH of a Python "
                        f"{'.'.join(str(recorded_python).split('.')[:2])} interpreter)")
    data = lock.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    index, direct = [], []
    for entry in read_lock(data.decode("utf-8", errors="replace")).values():
        requirement = entry["requirement"]
        if entry["source"] == "index":
            index.append(requirement)
        else:
            direct.append((requirement, _direct_args(entry)))
    plan = VenvPlan(path.resolve(), creator, version, lock, digest, sorted(index, key=str.lower), direct)
    plan.state = _folder_state(plan)
    if version != str(recorded_python):
        plan.notes.append(f"the run ran on Python {recorded_python}, the venv's is {version} (same major.minor; "
                          "listed as a mismatch)")
    return plan


def _interpreter_version(python: str) -> str:
    if python == sys.executable:
        return ".".join(str(n) for n in sys.version_info[:3])
    try:
        done = subprocess.run([python, "-c", _VERSION], capture_output=True, text=True, timeout=60, check=False)
    except OSError as err:
        raise VenvError(f"--python {python}: cannot run it ({err})", "usage") from err
    if done.returncode != 0 or not re.fullmatch(r"\d+\.\d+\.\d+", done.stdout.strip()):
        raise VenvError(f"--python {python}: not a Python interpreter ({done.stderr.strip()[-300:]})", "usage")
    return done.stdout.strip()


def _direct_args(entry: dict[str, Any]) -> list[str]:
    """pip's arguments for one lock line installed from a path, URL or VCS."""
    requirement = entry["requirement"]
    name, _, url = requirement.partition(" @ ")
    if "***" in url:
        raise VenvError(f"the lock's {requirement!r} had credentials in its URL, redacted when recorded: install it "
                        "by hand into the venv", "record", requirement)
    if not entry["editable"]:
        return [requirement]
    if url.startswith("file:"):
        return ["-e", unquote(urlsplit(url).path)]
    return ["-e", f"{url}#egg={name.strip()}"]


def _folder_state(plan: VenvPlan) -> str:
    if not plan.path.exists():
        return "new"
    if not plan.path.is_dir():
        raise VenvError(f"--venv {plan.path}: exists and is not a folder", "usage")
    if not any(plan.path.iterdir()):
        return "new"
    marker = plan.path / MARKER
    try:
        made = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        raise VenvError(f"--venv {plan.path}: exists and is not empty, and is no virtual environment built by "
                        "prov4ml reproduce (name a new folder)", "usage") from None
    if made.get("lock_sha256") != plan.lock_sha256:
        raise VenvError(f"--venv {plan.path}: a virtual environment built from another lock (sha256 "
                        f"{str(made.get('lock_sha256'))[:12]}, this run's is {plan.lock_sha256[:12]}): name a new "
                        "folder, or remove this one", "usage")
    if not plan.python.exists():
        raise VenvError(f"--venv {plan.path}: its interpreter {plan.python} is gone: remove the folder", "usage")
    return "reuse" if made.get("complete") else "resume"


def _mark(plan: VenvPlan, complete: bool) -> None:
    record = {"made_by": "prov4ml reproduce --venv", "lock": plan.lock.name, "lock_sha256": plan.lock_sha256,
              "python_version": plan.creator_version, "creator": plan.creator, "complete": complete}
    (plan.path / MARKER).write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")


def build_venv(plan: VenvPlan, timeout: float | None = None) -> None:
    """Run the plan's steps; the marker says ``complete`` only once every step passed.

    Raises:
        VenvError: a step failed (its lock line where there is one, the command's exit status and the
            end of its output); the folder stays, marked incomplete, to be resumed.
    """
    if plan.state == "reuse":
        return
    plan.path.parent.mkdir(parents=True, exist_ok=True)
    existed = plan.path.exists()
    for requirement, argv in plan.commands():
        creating = "venv" in argv[1:3]
        if not creating and requirement is None:  # the index step reads its requirements from the venv
            (plan.path / INDEX_REQUIREMENTS).write_text("".join(f"{r}\n" for r in plan.index), encoding="utf-8")
        try:
            _run(argv, requirement, timeout, plan)
        except VenvError:
            if creating and not existed:  # a half-made folder that no later call could reuse
                shutil.rmtree(plan.path, ignore_errors=True)
            raise
        if creating:
            _mark(plan, complete=False)
    _mark(plan, complete=True)


def _run(argv: list[str], requirement: str | None, timeout: float | None, plan: VenvPlan) -> None:
    creating = "venv" in argv[1:3]
    step = "python -m venv" if creating else "pip install"
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise VenvError(f"{step} ran past {timeout} s; the venv {plan.path} is incomplete",
                        requirement=requirement) from err
    except OSError as err:
        raise VenvError(f"{step}: cannot run {argv[0]} ({err})", requirement=requirement) from err
    if done.returncode == 0:
        return
    said = [line for line in (done.stderr + done.stdout).splitlines()
            if line.strip() and not line.startswith("WARNING: Location")]
    if requirement is None and not creating:
        requirement = _named(said, plan.index)
    what = (f"{step} of {requirement}" if requirement else
            f"{step} -r {plan.path / INDEX_REQUIREMENTS} ({len(plan.index)} requirements)" if not creating else step)
    where = (f"the venv {plan.path} is incomplete (the same --venv resumes it)" if (plan.path / MARKER).exists()
             else f"no venv was made at {plan.path}")
    raise VenvError(f"{what} failed with exit status {done.returncode}; {where}. Its output ends: "
                    + " | ".join(said[-6:]), requirement=requirement, returncode=done.returncode)


def _named(said: list[str], index: list[str]) -> str | None:
    """The lock line pip's error names (it says ``requirement foo==1.0`` or ``for foo==1.0``)."""
    for line in reversed(said):
        for requirement in index:
            if re.search(rf"(?<![\w.-]){re.escape(requirement)}(?![\w.+-])", line, re.IGNORECASE):
                return requirement
    return None


# -- reading an interpreter ------------------------------------------------------------------

_PROBE = """\
import importlib.util, json, sys
sys.path.append({src!r})
import prov4ml_lightning.redact
spec = importlib.util.spec_from_file_location("_prov4ml_environment_probe", {file!r})
module = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = module
spec.loader.exec_module(module)
del sys.path[-1]
print(json.dumps(module.interpreter_snapshot()))
"""


def probe(python: Path | str, options: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """What :func:`~prov4ml_lightning.capture.environment.interpreter_snapshot` says in ``python``
    started with ``options`` (its flags) and ``env``: version, options and installed packages.

    The snapshot's module is loaded from this package's files (it needs the standard library
    only), so the interpreter need not have prov4ml-lightning installed; this package's folder is
    off ``sys.path`` again before the packages are listed.

    Raises:
        VenvError: the interpreter could not be run or said nothing readable.
    """
    from prov4ml_lightning.capture import environment

    file = Path(environment.__file__).resolve()
    src = file.parents[2]
    code = _PROBE.format(src=str(src), file=str(file))
    try:
        done = subprocess.run([str(python), *options, "-c", code], capture_output=True, text=True, env=env,
                              timeout=120, check=False)
    except (OSError, subprocess.TimeoutExpired) as err:
        raise VenvError(f"could not read the environment of {python}: {err}") from err
    try:
        return dict(json.loads(done.stdout.strip().splitlines()[-1]))
    except (ValueError, IndexError):
        raise VenvError(f"could not read the environment of {python} (exit status {done.returncode}): "
                        f"{done.stderr.strip()[-500:]}", returncode=done.returncode) from None
