"""Re-run a recorded run from its provenance and say whether the result came back.

Steps: the recorded commit is checked out into a new git worktree (``--workdir DIR``, else a new
temporary folder, kept: the new run's outputs are there); the recorded uncommitted diff is
applied (its sha256 checked first); the snapshotted untracked source files the run imported are
restored (each sha256 checked); the environment the command will run in is compared with the
recorded one (interpreter, its flags, every package of the lock with version and source, torch's
determinism flags: every mismatch is listed, none stops the run); then the recorded command line
runs in the worktree (the recorded working folder, mapped into it) with the current interpreter,
the recorded interpreter flags, the recorded seed (``PL_GLOBAL_SEED``) and an allow-list of the
recorded environment variables (never one whose name looks secret or whose value was redacted),
plus ``PROV4ML_REPRODUCES``/``PROV4ML_REPRODUCES_DOCUMENT``, so the new run records that it
reproduces the old one (PROV: ``wasInformedBy`` to the old run, the ``reproduces`` attribute;
MLflow: the ``prov4ml.reproduces`` tag).

``--venv DIR`` runs it in a virtual environment built from the run's lock instead of the current
interpreter: ``python -m venv DIR`` with this interpreter (or ``--python PATH``; its major.minor
must be the recorded one), then pip installs every locked distribution with ``--no-deps`` (each
``name==version`` from the index pip is configured with; editable and local installs from their
recorded path, VCS ones from their URL at the recorded commit, archives with their recorded hash).
The environment compared is then the venv's. A folder built so for the same lock is reused (or
completed, after a failed pip step); any other non-empty DIR is refused. A failed pip step names
the requirement and pip's exit status, leaves the venv (marked incomplete; the same ``--venv``
resumes it) and removes the worktree (nothing ran in it).

At the end a report, printed and saved beside the new run's PROV document
(``reproduction_<new run id>.json`` and ``.md``) and logged as an artifact of the new run
(``reproduction/``): inputs identical or not (code, data fingerprints, params, environment),
the divergence of each metric (max absolute and relative difference over the steps both runs
logged), final weights identical or not (state-dict sha256 of each logged model).
``--dry-run`` prints the plan (with ``--venv``, the pip commands) and the environment mismatches
and creates and runs nothing.

Each editable install the run imported from (the code entity's ``editable_sources``) is
compared with its folder now (its git commit, the sha256 of its ``git diff HEAD``, its untracked
count; the repository's own with the run's commit and diff): every change is listed among the
mismatches before the run, and the report's code is not identical when one changed.

Not done: outside the repository the snapshotted files are listed, not restored; an editable
install is imported from its live folder (the repository's working tree for the repository's
own), not from the new worktree: a change there is reported, not undone. A distributed
(multi-process) run is re-run as its recorded command line only.

Exit status: 0 reproduced (inputs identical, final weights identical; metrics identical where no
weights were logged); 1 the run ran but inputs or results differ (the report says which); 2 usage
error or unreadable input (also a ``--venv`` folder in the way); 3 the record lacks what
reproduction needs (no commit, no command line, a truncated or missing diff, a redacted command
line; with ``--venv``, no lock or a lock line with redacted credentials; untracked source the run
imported that the record does not hold); 4 the recorded commit is
not in the repository; 5 the recorded diff, a snapshotted file or the package lock does not match
its sha256 (``git_diff_sha256``, the snapshot's, ``packages_sha256``), or the diff does not apply;
6 the command failed or left no PROV document of the new run; 7 ``--venv``: the virtual
environment could not be built (the interpreter is not the recorded major.minor, or pip failed on
a requirement).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prov4ml_lightning.cli._common import EXIT_DIFFERENT, EXIT_OK, EXIT_USAGE, CliError, Scratch, add_run_argument, echo
from prov4ml_lightning.cli._reproduction import (
    EXIT_COMMAND_FAILED,
    EXIT_DIFF_REJECTED,
    EXIT_NO_COMMIT,
    EXIT_RECORD_INCOMPLETE,
    EXIT_VENV_FAILED,
    build_report,
    compare_environment,
    editable_mismatches,
    metric_divergence,
    report_lines,
    save_report,
    untracked_entries,
)
from prov4ml_lightning.cli._worktree import check_diff_applies, git, prepare_worktree

__all__ = [
    "EXIT_COMMAND_FAILED", "EXIT_DIFF_REJECTED", "EXIT_NO_COMMIT", "EXIT_RECORD_INCOMPLETE", "EXIT_VENV_FAILED", "HELP",
    "NAME", "Plan", "add_arguments", "compare_environment", "make_plan", "metric_divergence", "run",
]

NAME = "reproduce"
HELP = ("re-run a recorded run (its commit, diff and untracked files, in a new git worktree) and report whether "
        "inputs, metrics and final weights came back")

#: Recorded environment variables passed on to the re-run (exact names, then prefixes); the
#: rest (launcher ranks, addresses, virtualenv paths) belong to the old process.
ALLOWED_ENV = ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "CUDA_VISIBLE_DEVICES", "PYTHONOPTIMIZE", "PYTHONDONTWRITEBYTECODE", "PYTHONUTF8", "PYTHONWARNINGS",
               "PYTHONNOUSERSITE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
ALLOWED_ENV_PREFIXES = ("PL_", "TORCH_", "CUDA_")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--workdir", metavar="DIR", default=None,
                        help="the new git worktree (must not exist yet); default: a new temporary folder, kept")
    parser.add_argument("--repo", metavar="DIR", default=None,
                        help="the git repository holding the recorded commit; default: the recorded git_root, "
                             "else the current folder's repository")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (with --venv, its pip commands) and the mismatches; make and run nothing")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="stop the re-run after S seconds (exit status 6)")
    parser.add_argument("--venv", metavar="DIR", default=None,
                        help="build a virtual environment at DIR from the run's lock (pip, --no-deps) and run the "
                             "command with its python; a venv built so for the same lock is reused (exit status 7 "
                             "when it cannot be built)")
    parser.add_argument("--python", metavar="PATH", default=None,
                        help="with --venv: the interpreter that creates it (default: this one); its major.minor "
                             "must be the recorded one")


# -- the plan ---------------------------------------------------------------------------------

@dataclass
class Plan:
    """What reproducing one run does."""

    prov_file: Path
    run_id: str
    repo: Path
    commit: str
    workdir: Path
    diff: Path | None
    snapshot: Path | None
    restore: list[dict[str, Any]]
    cwd: Path
    argv: list[str]
    env: dict[str, str]
    mismatches: list[str] | None = field(default_factory=list)  # None: not known until the venv is built
    notes: list[str] = field(default_factory=list)
    venv: Any = None  # a recovery.venv.VenvPlan with --venv

    def run_env(self) -> dict[str, str]:
        """The re-run's environment: this one, the recorded allow-list, the venv activated."""
        env = {**os.environ, **self.env}
        if self.venv is not None:
            env.pop("PYTHONHOME", None)
            env["VIRTUAL_ENV"] = str(self.venv.path)
            env["PATH"] = os.pathsep.join([str(self.venv.python.parent), env.get("PATH", "")]).rstrip(os.pathsep)
        return env

    def lines(self) -> list[str]:
        out = [f"reproduce run {self.run_id} ({self.prov_file})",
               f"  repository:  {self.repo}",
               f"  commit:      {self.commit}",
               f"  worktree:    {self.workdir}",
               f"  diff:        {self.diff.name + ' (sha256 verified)' if self.diff else 'none (the run was clean)'}",
               f"  untracked:   {len(self.restore)} snapshotted file(s) to restore",
               f"  folder:      {self.cwd}",
               f"  command:     {shlex.join(self.argv)}",
               "  environment: " + (" ".join(f"{k}={v}" for k, v in sorted(self.env.items())) or "(none recorded)")]
        out += [f"  note: {n}" for n in self.notes]
        if self.venv is not None:
            out += self.venv.lines()
        return out + self.mismatch_lines()

    def mismatch_lines(self) -> list[str]:
        if self.mismatches is None:
            return ["environment mismatches: compared with the virtual environment once it is built"]
        return ([f"environment mismatches ({len(self.mismatches)}):" if self.mismatches
                 else "environment mismatches: none"] + [f"  - {m}" for m in self.mismatches])


def _side_file(view: Any, name: Any, what: str) -> Path:
    path = view.sibling(name)
    if path is None or not path.is_file():
        raise CliError(f"the record names {what} {name!r}, but {path} does not exist (copy it beside the PROV "
                       "document)", EXIT_RECORD_INCOMPLETE)
    return path.resolve()  # used from inside the new worktree: a path relative to here would not hold there


def _repo(args: argparse.Namespace, code: dict[str, Any]) -> Path:
    candidates = [Path(args.repo)] if args.repo else [Path(str(code["git_root"]))] if code.get("git_root") else []
    candidates.append(Path.cwd())
    for place in candidates:
        if place.is_dir():
            done = git(["rev-parse", "--show-toplevel"], place, check=False)
            if done.returncode == 0:
                return Path(done.stdout.strip()).resolve()
        if args.repo:
            raise CliError(f"--repo {args.repo}: not a git repository")
    raise CliError(f"no git repository at the recorded git_root {code.get('git_root')!r} nor here; pass --repo DIR")


def make_plan(view: Any, args: argparse.Namespace) -> Plan:
    """Check the record and the repository and work out what to run; nothing is changed yet.

    Raises:
        CliError: the record lacks what is needed (3), the commit is missing (4), the diff or a
            snapshotted file does not match its sha256 or the diff does not apply (5).
    """
    from prov4ml_lightning.files import sha256_path

    code, env = view.code, view.environment
    run_id = str(view.run_attr("run_id") or "")
    if not code or not code.get("git_commit"):
        raise CliError("the record has no git commit (the run was not in a git repository, or git failed): "
                       "nothing to check out", EXIT_RECORD_INCOMPLETE)
    command = env.get("command_line")
    if not command:
        raise CliError("the record has no command line", EXIT_RECORD_INCOMPLETE)
    argv = shlex.split(str(command))
    if any("***" in a for a in argv):
        raise CliError("the recorded command line has redacted values (***): a secret was passed on it and was "
                       "not recorded; run it by hand", EXIT_RECORD_INCOMPLETE)
    if not run_id:
        raise CliError("the record names no run id", EXIT_RECORD_INCOMPLETE)
    repo = _repo(args, code)
    commit = str(code["git_commit"])
    if git(["cat-file", "-e", f"{commit}^{{commit}}"], repo, check=False).returncode != 0:
        raise CliError(f"the recorded commit {commit} is not in the repository {repo} (fetch it, or pass --repo)",
                       EXIT_NO_COMMIT)
    diff = None
    if code.get("git_diff_sha256"):
        if code.get("git_diff_truncated"):
            raise CliError(f"the recorded diff was cut at its size limit ({code.get('git_diff_size_bytes')} bytes in "
                           "all): the record lacks the whole uncommitted change", EXIT_RECORD_INCOMPLETE)
        diff = _side_file(view, code.get("git_diff_file"), "the diff")
        digest, _ = sha256_path(diff)
        if digest != code["git_diff_sha256"]:
            raise CliError(f"{diff}: sha256 {digest} is not the recorded {code['git_diff_sha256']}: the diff file was "
                           "changed after the run", EXIT_DIFF_REJECTED)
    _checked_lock(view)
    snapshot, restore, notes = None, [], []
    for entry in untracked_entries(code):
        if "skipped" in entry:
            notes.append(f"untracked file {entry['path']} was not snapshotted ({entry['skipped']}): not restored")
        elif Path(entry["path"]).is_absolute():
            notes.append(f"untracked file {entry['path']} lies outside the repository: not restored")
        else:
            restore.append(entry)
    if restore:
        snapshot = _side_file(view, code.get("untracked_file"), "the untracked-source snapshot")
    notes += _untracked_check(code)
    root = Path(str(code.get("git_root") or repo))
    workdir = (Path(args.workdir).resolve() if args.workdir else Path(tempfile.gettempdir()) / "prov4ml-reproduce-?"
               if args.dry_run else Path(tempfile.mkdtemp(prefix="prov4ml-reproduce-")) / "w")
    if args.workdir and workdir.exists() and any(workdir.iterdir()):
        raise CliError(f"--workdir {workdir}: exists and is not empty")
    cwd = _moved(Path(str(code.get("working_directory") or root)), root, workdir)
    argv = [_moved_arg(a, root, workdir) for a in argv]
    plan = Plan(view.path, run_id, repo, commit, workdir, diff, snapshot, restore, cwd,
                [sys.executable, *_interpreter_options(env), *argv], _environment(view, root, workdir),
                notes=notes)
    if diff is not None:  # a dry run checks too: against the commit, in a throwaway index
        check_diff_applies(repo, commit, diff)
    if args.venv:
        plan.venv = _venv_plan(view, args)
        plan.argv[0] = str(plan.venv.python)
        plan.mismatches = _venv_mismatches(plan, view) if plan.venv.state == "reuse" else None
    elif args.python:
        raise CliError("--python names the interpreter that creates the --venv: pass --venv DIR too")
    else:
        plan.mismatches = compare_environment(env, view.packages) + editable_mismatches(code)
    if plan.mismatches is None:  # the venv's comparison comes once it is built: the editable sources now
        plan.notes += editable_mismatches(code)
    return plan


def _untracked_check(code: dict[str, Any]) -> list[str]:
    """Refuse a record whose run imported untracked source it does not hold; a warning (as a note,
    printed before the run) where an older record cannot tell."""
    untracked = code.get("git_untracked_count")
    listed = untracked_entries(code)
    if code.get("untracked_error") and untracked:
        raise CliError(f"the run's repository had {untracked} untracked file(s) and the record could not tell which "
                       f"the run imported ({code['untracked_error']}): the record lacks them", EXIT_RECORD_INCOMPLETE)
    try:
        imported = int(code["untracked_imported_count"])
    except (KeyError, TypeError, ValueError):
        imported = None
    if imported is not None and imported > len(listed):
        raise CliError(f"the run imported {imported} untracked source file(s), the record lists {len(listed)}: "
                       "the record lacks them", EXIT_RECORD_INCOMPLETE)
    if imported is None and untracked and not listed:
        return [f"WARNING: the run's repository had {untracked} untracked file(s) and none was snapshotted; this "
                "record does not say how many the run imported (recorded before untracked_imported_count): if it "
                "imported one, the re-run cannot import it from the worktree, or gets another copy"]
    return []


def _checked_lock(view: Any) -> Path | None:
    """The run's package lock, its sha256 checked against the recorded ``packages_sha256``;
    ``None`` when the record names none or it is not beside the document (a missing lock is a
    mismatch of the comparison, and refused by ``--venv``)."""
    from prov4ml_lightning.files import sha256_path

    env = view.environment
    path = view.sibling(env.get("packages_file"))
    if path is None or not path.is_file():
        return None
    recorded = env.get("packages_sha256")
    if recorded:
        digest, _ = sha256_path(path)
        if digest != recorded:
            raise CliError(f"{path}: sha256 {digest} is not the recorded {recorded}: the package lock was changed "
                           "after the run", EXIT_DIFF_REJECTED)
    return path.resolve()


_VENV_EXIT = {"usage": EXIT_USAGE, "record": EXIT_RECORD_INCOMPLETE, "build": EXIT_VENV_FAILED}


def _venv_plan(view: Any, args: argparse.Namespace) -> Any:
    from prov4ml_lightning.recovery.venv import VenvError, plan_venv

    env = view.environment
    if not env.get("packages_file"):
        raise CliError("--venv: the record has no package lock (packages_file) to build from", EXIT_RECORD_INCOMPLETE)
    lock = _checked_lock(view) or _side_file(view, env["packages_file"], "the package lock")
    try:
        return plan_venv(Path(args.venv), lock, env.get("python_version"), args.python)
    except VenvError as err:
        raise CliError(f"--venv: {err}", _VENV_EXIT[err.kind]) from err


def _venv_mismatches(plan: Plan, view: Any) -> list[str]:
    """The recorded environment against the venv's interpreter, started as the re-run starts it."""
    from prov4ml_lightning.recovery.venv import VenvError, probe

    try:
        here = probe(plan.venv.python, _interpreter_options(view.environment), plan.run_env())
    except VenvError as err:
        raise CliError(f"--venv: {err}", EXIT_VENV_FAILED) from err
    return compare_environment(view.environment, view.packages, here) + editable_mismatches(view.code)


def _build_venv(plan: Plan, view: Any) -> None:
    """Build (or complete) the venv, then compare the recorded environment with it."""
    from prov4ml_lightning.recovery.venv import VenvError, build_venv

    venv = plan.venv
    if venv.state != "reuse":
        echo(f"building the virtual environment {venv.path} ({len(venv.index) + len(venv.direct)} packages) ...")
        try:
            build_venv(venv)
        except VenvError as err:
            raise CliError(f"--venv: {err}", _VENV_EXIT[err.kind]) from err
        echo(f"built {venv.path}")
        plan.mismatches = _venv_mismatches(plan, view)
        for line in plan.mismatch_lines():
            echo(line)


def _moved(path: Path, root: Path, workdir: Path) -> Path:
    return workdir / path.relative_to(root) if path.is_relative_to(root) else path


def _moved_arg(arg: str, root: Path, workdir: Path) -> str:
    """An argument naming a path inside the recorded repository names the same path in the worktree."""
    prefix, eq, value = arg.partition("=") if arg.startswith("-") else ("", "", arg)
    if value.startswith(str(root)) and Path(value).is_relative_to(root):
        return f"{prefix}{eq}{_moved(Path(value), root, workdir)}"
    return arg


def _interpreter_options(env: dict[str, Any]) -> list[str]:
    """``-O``, ``-B``, ``-s``, ``-X ...`` from the recorded interpreter flags."""
    flags = dict(f.split("=", 1) for f in str(env.get("python_flags") or "").split() if "=" in f)
    out = []
    if flags.get("optimize") in ("1", "2"):
        out.append("-O" if flags["optimize"] == "1" else "-OO")
    if flags.get("dont_write_bytecode") == "1":
        out.append("-B")
    if flags.get("no_user_site") == "1":
        out.append("-s")
    raw = env.get("python_xoptions")
    try:
        xoptions = json.loads(raw) if isinstance(raw, str) else (raw or [])
    except ValueError:
        xoptions = []
    for option in xoptions:
        out += ["-X", str(option)]
    return out


def _environment(view: Any, root: Path, workdir: Path) -> dict[str, str]:
    """The recorded variables the re-run gets (allow-list, no secrets), the seed and the mark."""
    from prov4ml_lightning.capture.reproduction import REPRODUCES_DOCUMENT_ENV, REPRODUCES_ENV
    from prov4ml_lightning.redact import REDACTED, is_secret_name

    out: dict[str, str] = {}
    for name, value in view.environment_variables.items():
        allowed = name in ALLOWED_ENV or name.startswith(ALLOWED_ENV_PREFIXES)
        if allowed and not is_secret_name(name) and value is not None and REDACTED not in str(value):
            out[name] = str(value)
    pythonpath = view.environment_variables.get("PYTHONPATH")
    if pythonpath and REDACTED not in str(pythonpath):
        out["PYTHONPATH"] = os.pathsep.join(str(_moved(Path(p), root, workdir)) if p else p
                                            for p in str(pythonpath).split(os.pathsep))
    seed = view.seed if view.seed is not None else view.params.get("trainer/seed")
    if seed is not None and str(seed).lstrip("-").isdigit():
        out["PL_GLOBAL_SEED"] = str(seed)
    out[REPRODUCES_ENV] = str(view.run_attr("run_id"))
    out[REPRODUCES_DOCUMENT_ENV] = str(view.path.resolve())
    return out


# -- doing it ---------------------------------------------------------------------------------

def _execute(plan: Plan, timeout: float | None) -> int:
    plan.cwd.mkdir(parents=True, exist_ok=True)
    try:
        done = subprocess.run(plan.argv, cwd=plan.cwd, env=plan.run_env(), timeout=timeout, check=False)
    except subprocess.TimeoutExpired as err:
        raise CliError(f"the re-run ran past --timeout {timeout} s and was stopped", EXIT_COMMAND_FAILED) from err
    return done.returncode


def _new_document(plan: Plan) -> Path:
    """The PROV document of the run that reproduces ``plan.run_id``, the newest under the worktree."""
    from prov4ml_lightning.cli._view import RunView

    found = []
    for path in plan.workdir.rglob("provgraph_*.json"):
        view = RunView.load(path)
        if view.run_attr("reproduces") == plan.run_id:
            found.append(path)
    if not found:
        raise CliError(f"the command ran, but no PROV document under {plan.workdir} says it reproduces run "
                       f"{plan.run_id} (did the script write its provenance elsewhere?)", EXIT_COMMAND_FAILED)
    # the provenance folder's document, not the copy uploaded into a file-based MLflow artifact store
    return max(found, key=lambda p: ("artifacts" not in p.relative_to(plan.workdir).parts, p.stat().st_mtime_ns))



def run(args: argparse.Namespace, scratch: Scratch) -> int:
    from prov4ml_lightning.cli._common import resolve_prov_file
    from prov4ml_lightning.cli._view import RunView

    prov_file = resolve_prov_file(args.run, args.tracking_uri, scratch)
    old = RunView.load(prov_file)
    plan = make_plan(old, args)
    for line in plan.lines():
        echo(line)
    if args.dry_run:
        return EXIT_OK
    if plan.venv is not None:  # first: a failed pip step leaves no worktree behind
        _build_venv(plan, old)
    prepare_worktree(plan)
    returncode = _execute(plan, args.timeout)
    if returncode != 0:
        raise CliError(f"the command exited with status {returncode} (worktree kept: {plan.workdir})",
                       EXIT_COMMAND_FAILED)
    new = RunView.load(_new_document(plan))
    report = build_report(old, new, plan, returncode)
    paths = save_report(report, new)
    echo()
    for line in report_lines(report):
        echo(line)
    echo(f"report: {paths[0]} and {paths[1]}; worktree: {plan.workdir} (git worktree remove --force to drop it)"
         + (f"; virtual environment: {plan.venv.path}" if plan.venv is not None else ""))
    return EXIT_OK if report["reproduced"] else EXIT_DIFFERENT
