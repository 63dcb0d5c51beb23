"""Re-run a recorded run from its provenance and say whether the result came back.

Steps: the recorded commit is checked out into a new git worktree (``--workdir DIR``, else a new
temporary folder, kept: the new run's outputs are there); the recorded uncommitted diff is
applied (its sha256 checked first); the snapshotted untracked source files the run imported are
restored (each sha256 checked); the current environment is compared with the recorded one
(interpreter, its flags, every package of the lock with version and source, torch's determinism
flags: every mismatch is listed, none stops the run); then the recorded command line runs in the
worktree (the recorded working folder, mapped into it) with the current interpreter, the
recorded interpreter flags, the recorded seed (``PL_GLOBAL_SEED``) and an allow-list of the
recorded environment variables (never one whose name looks secret or whose value was redacted),
plus ``PROV4ML_REPRODUCES``/``PROV4ML_REPRODUCES_DOCUMENT``, so the new run records that it
reproduces the old one (PROV: ``wasInformedBy`` to the old run, the ``reproduces`` attribute;
MLflow: the ``prov4ml.reproduces`` tag).

At the end a report, printed and saved beside the new run's PROV document
(``reproduction_<new run id>.json`` and ``.md``) and logged as an artifact of the new run
(``reproduction/``): inputs identical or not (code, data fingerprints, params, environment),
the divergence of each metric (max absolute and relative difference over the steps both runs
logged), final weights identical or not (state-dict sha256 of each logged model).
``--dry-run`` prints the plan and the environment mismatches and runs nothing.

Not done: ``--venv`` (building an environment from the lock); reproduce in an environment that
matches, or read the mismatches. Outside the repository the snapshotted files are listed, not
restored. A distributed (multi-process) run is re-run as its recorded command line only.

Exit status: 0 reproduced (inputs identical, final weights identical; metrics identical where no
weights were logged); 1 the run ran but inputs or results differ (the report says which); 2 usage
error or unreadable input; 3 the record lacks what reproduction needs (no commit, no command
line, a truncated or missing diff, a redacted command line); 4 the recorded commit is not in the
repository; 5 the recorded diff or a snapshotted file does not match its sha256, or the diff
does not apply; 6 the command failed or left no PROV document of the new run.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prov4ml_lightning.cli._common import EXIT_DIFFERENT, EXIT_OK, CliError, Scratch, add_run_argument, echo, warn

__all__ = [
    "EXIT_COMMAND_FAILED", "EXIT_DIFF_REJECTED", "EXIT_NO_COMMIT", "EXIT_RECORD_INCOMPLETE", "HELP", "NAME", "Plan",
    "add_arguments", "compare_environment", "make_plan", "metric_divergence", "run",
]

NAME = "reproduce"
HELP = ("re-run a recorded run (its commit, diff and untracked files, in a new git worktree) and report whether "
        "inputs, metrics and final weights came back")

EXIT_RECORD_INCOMPLETE = 3
EXIT_NO_COMMIT = 4
EXIT_DIFF_REJECTED = 5
EXIT_COMMAND_FAILED = 6

#: Recorded environment variables passed on to the re-run (exact names, then prefixes); the
#: rest (launcher ranks, addresses, virtualenv paths) belong to the old process.
ALLOWED_ENV = ("CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "OMP_NUM_THREADS", "MKL_NUM_THREADS",
               "CUDA_VISIBLE_DEVICES", "PYTHONOPTIMIZE", "PYTHONDONTWRITEBYTECODE", "PYTHONUTF8", "PYTHONWARNINGS",
               "PYTHONNOUSERSITE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME")
ALLOWED_ENV_PREFIXES = ("PL_", "TORCH_", "CUDA_")
#: Environment attributes compared (besides the package lock); hardware is shown, not compared.
_ENV_KEYS = ("python_version", "python_implementation", "python_flags", "python_xoptions", "torch_version",
             "lightning_version", "torch_cuda_version", "torch_deterministic_algorithms",
             "torch_deterministic_warn_only",
             "torch_cudnn_benchmark", "torch_cudnn_deterministic", "torch_cudnn_allow_tf32", "torch_matmul_allow_tf32",
             "torch_float32_matmul_precision")
#: Environment attributes that the script sets, so only the new run's record can say (not this process).
_SET_BY_SCRIPT = {"torch_deterministic_algorithms", "torch_deterministic_warn_only", "torch_cudnn_benchmark",
                  "torch_cudnn_deterministic", "torch_cudnn_allow_tf32", "torch_matmul_allow_tf32",
                  "torch_float32_matmul_precision", "lightning_version", "torch_version", "torch_cuda_version"}
#: Params that record when or where, not how.
_NOT_INPUT_PARAMS = ("execution_start_time", "execution_end_time")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--workdir", metavar="DIR", default=None,
                        help="the new git worktree (must not exist yet); default: a new temporary folder, kept")
    parser.add_argument("--repo", metavar="DIR", default=None,
                        help="the git repository holding the recorded commit; default: the recorded git_root, "
                             "else the current folder's repository")
    parser.add_argument("--dry-run", action="store_true", help="print the plan and the mismatches; run nothing")
    parser.add_argument("--timeout", type=float, default=None, metavar="S",
                        help="stop the re-run after S seconds (exit status 6)")


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
    mismatches: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

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
        out.append(f"environment mismatches ({len(self.mismatches)}):" if self.mismatches
                   else "environment mismatches: none")
        out += [f"  - {m}" for m in self.mismatches]
        return out


def _git(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}, check=False)
    if check and done.returncode != 0:
        raise CliError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done


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
            done = _git(["rev-parse", "--show-toplevel"], place, check=False)
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
    if _git(["cat-file", "-e", f"{commit}^{{commit}}"], repo, check=False).returncode != 0:
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
    snapshot, restore, notes = None, [], []
    for entry in _untracked_entries(code):
        if "skipped" in entry:
            notes.append(f"untracked file {entry['path']} was not snapshotted ({entry['skipped']}): not restored")
        elif Path(entry["path"]).is_absolute():
            notes.append(f"untracked file {entry['path']} lies outside the repository: not restored")
        else:
            restore.append(entry)
    if restore:
        snapshot = _side_file(view, code.get("untracked_file"), "the untracked-source snapshot")
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
        _check_diff_applies(repo, commit, diff)
    plan.mismatches = compare_environment(env, view.packages)
    return plan


def _untracked_entries(code: dict[str, Any]) -> list[dict[str, Any]]:
    raw = code.get("untracked_files")
    if not raw:
        return []
    try:
        entries = json.loads(raw) if isinstance(raw, str) else raw
    except ValueError as err:
        raise CliError(f"the record's untracked_files is not JSON ({err})", EXIT_RECORD_INCOMPLETE) from err
    return [e for e in entries if isinstance(e, dict) and e.get("path")]


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


def _check_diff_applies(repo: Path, commit: str, diff: Path) -> None:
    with tempfile.TemporaryDirectory(prefix="prov4ml-index-") as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        env = {**os.environ, **index, "LC_ALL": "C"}
        for args in (["read-tree", commit], ["apply", "--check", "--cached", "--binary", str(diff)]):
            done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise CliError(f"the recorded diff {diff.name} does not apply to commit {commit}: "
                               f"{done.stderr.strip()}", EXIT_DIFF_REJECTED)


def compare_environment(recorded: dict[str, Any], recorded_packages: dict[str, str] | None) -> list[str]:
    """Every difference between the recorded environment and this process's: interpreter and its
    flags, every package of the lock (missing, extra, other version or source). The torch flags
    and library versions a script sets or imports are compared only when this process has them."""
    import platform

    from prov4ml_lightning.capture.environment import interpreter_state, locked_packages, read_lock, torch_flags

    now: dict[str, Any] = {"python_version": platform.python_version(),
                           "python_implementation": platform.python_implementation(),
                           **interpreter_state(), **torch_flags()}
    out = []
    for key in _ENV_KEYS:
        if key not in recorded or key in _SET_BY_SCRIPT:  # the new run's record says (the report compares)
            continue
        value = now.get(key)
        if isinstance(value, list):
            value = json.dumps(value)
        if str(recorded[key]) != str(value):
            out.append(f"{key}: recorded {recorded[key]!r}, here {value!r}")
    if recorded_packages is None:
        out.append("packages: the record has no package list")
        return out
    here_lock = read_lock("".join(f"{p.requirement()}\n" for p in locked_packages()))
    here = {k: p["version"] if p["source"] == "index" else f"{p['version']} ({p['requirement']})"
            for k, p in here_lock.items()}
    for key in sorted(set(recorded_packages) | set(here)):
        a, b = recorded_packages.get(key), here.get(key)
        if a == b:
            continue
        if a is None:
            out.append(f"package {key}: not in the record, here {b}")
        elif b is None:
            out.append(f"package {key}: recorded {a}, not installed here")
        else:
            out.append(f"package {key}: recorded {a}, here {b}")
    return out


# -- doing it ---------------------------------------------------------------------------------

def _prepare(plan: Plan) -> None:
    """The worktree at the commit, with the diff applied and the untracked files restored."""

    plan.workdir.parent.mkdir(parents=True, exist_ok=True)
    _git(["worktree", "add", "--detach", str(plan.workdir), plan.commit], plan.repo)
    try:
        _fill(plan)
    except CliError:  # nothing ran in it: the half-made worktree is not left registered
        _git(["worktree", "remove", "--force", str(plan.workdir)], plan.repo, check=False)
        raise


def _fill(plan: Plan) -> None:
    import hashlib

    if plan.diff is not None:
        done = _git(["apply", "--binary", "--whitespace=nowarn", str(plan.diff)], plan.workdir, check=False)
        if done.returncode != 0:
            raise CliError(f"the recorded diff does not apply in {plan.workdir}: {done.stderr.strip()}",
                           EXIT_DIFF_REJECTED)
    if plan.restore:
        assert plan.snapshot is not None
        with zipfile.ZipFile(plan.snapshot) as zf:
            for entry in plan.restore:
                data = zf.read(entry["path"])
                if hashlib.sha256(data).hexdigest() != entry.get("stored_sha256"):
                    raise CliError(f"{plan.snapshot.name}: {entry['path']} does not match its recorded sha256",
                                   EXIT_DIFF_REJECTED)
                target = plan.workdir / entry["path"]
                if target.exists():
                    raise CliError(f"{entry['path']} was untracked when the run ran, but the commit holds it",
                                   EXIT_DIFF_REJECTED)
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(data)
                if entry.get("redacted"):
                    plan.notes.append(f"{entry['path']} was restored with its secrets redacted (***)")


def _execute(plan: Plan, timeout: float | None) -> int:
    plan.cwd.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, **plan.env}
    try:
        done = subprocess.run(plan.argv, cwd=plan.cwd, env=env, timeout=timeout, check=False)
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


# -- the report ------------------------------------------------------------------------------

def _points(view: Any) -> dict[tuple[str, str], dict[int, float]]:
    from prov4ml_lightning.tracking.writer import read_sidecar

    path = view.sibling(view.run_attr("metrics_file"))
    out: dict[tuple[str, str], dict[int, float]] = {}
    if path is None:
        return out
    for key, ctx, _mkey, step, value, _ts in read_sidecar(path):
        out.setdefault((ctx, key), {})[step] = value
    return out


def metric_divergence(a: dict[int, float], b: dict[int, float]) -> dict[str, Any]:
    """Max absolute and relative (to the larger magnitude) difference over the steps both series
    hold; ``identical`` when every common value is equal (NaN equals NaN)."""
    common = sorted(set(a) & set(b))
    max_abs = max_rel = 0.0
    identical = True
    for step in common:
        x, y = a[step], b[step]
        if (math.isnan(x) and math.isnan(y)) or x == y:
            continue
        identical = False
        diff = abs(x - y)
        scale = max(abs(x), abs(y))
        max_abs = max(max_abs, diff if not math.isnan(diff) else math.inf)
        max_rel = max(max_rel, diff / scale if scale and not math.isnan(diff) else math.inf)
    return {"common_steps": len(common), "steps_only_original": len(set(a) - set(b)),
            "steps_only_reproduction": len(set(b) - set(a)), "max_abs_diff": max_abs, "max_rel_diff": max_rel,
            "identical": identical and len(common) == len(a) == len(b)}


def _untracked_digests(code: dict[str, Any]) -> dict[str, Any]:
    return {e["path"]: e.get("sha256") for e in _untracked_entries(code)}


def build_report(old: Any, new: Any, plan: Plan, returncode: int) -> dict[str, Any]:
    """The comparison of the original run (``old``) and its reproduction (``new``)."""
    from prov4ml_lightning.cli._view import datasets_by_name, final_weights

    inputs: dict[str, dict[str, Any]] = {}
    oc, nc = old.code, new.code
    code_diffs = {k: (oc.get(k), nc.get(k)) for k in ("git_commit", "git_diff_sha256", "script_sha256")
                  if oc.get(k) != nc.get(k)}
    if _untracked_digests(oc) != _untracked_digests(nc):
        code_diffs["untracked_files"] = (_untracked_digests(oc), _untracked_digests(nc))
    inputs["code"] = code_diffs
    od, nd = datasets_by_name(old), datasets_by_name(new)
    data_diffs = {}
    for key in sorted(set(od) | set(nd)):
        fa, fb = (od.get(key) or {}).get("fingerprint"), (nd.get(key) or {}).get("fingerprint")
        if fa != fb or fa is None:
            data_diffs[key] = (fa, fb)
    inputs["data"] = data_diffs
    op = {k: v for k, v in old.params.items() if not k.startswith(_NOT_INPUT_PARAMS)}
    np_ = {k: v for k, v in new.params.items() if not k.startswith(_NOT_INPUT_PARAMS)}
    inputs["params"] = {k: (op.get(k), np_.get(k)) for k in sorted(set(op) | set(np_)) if op.get(k) != np_.get(k)}
    oe, ne = old.environment, new.environment
    env_diffs = {k: (oe.get(k), ne.get(k)) for k in _ENV_KEYS if oe.get(k) != ne.get(k)}
    opk, npk = old.packages or {}, new.packages or {}
    env_diffs.update({f"package {k}": (opk.get(k), npk.get(k)) for k in sorted(set(opk) | set(npk))
                      if opk.get(k) != npk.get(k)})
    inputs["environment"] = env_diffs
    ops, nps = _points(old), _points(new)
    metrics = {f"{ctx}/{key}": metric_divergence(ops[(ctx, key)], nps[(ctx, key)])
               for ctx, key in sorted(set(ops) & set(nps))}
    missing = sorted(f"{c}/{k}" for c, k in set(ops) ^ set(nps))
    ow, nw = final_weights(old), final_weights(new)
    weights = {name: {"original": ow.get(name), "reproduction": nw.get(name),
                      "identical": ow.get(name) is not None and ow.get(name) == nw.get(name)}
               for name in sorted(set(ow) | set(nw))}
    inputs_identical = not any(inputs.values())
    weights_identical = bool(weights) and all(w["identical"] for w in weights.values())
    metrics_identical = not missing and all(m["identical"] for m in metrics.values())
    return {
        "original": {"run_id": plan.run_id, "prov": str(old.path)},
        "reproduction": {"run_id": new.run_attr("run_id"), "prov": str(new.path), "workdir": str(plan.workdir),
                         "command": shlex.join(plan.argv), "returncode": returncode},
        "inputs_identical": inputs_identical, "inputs": {k: _jsonable(v) for k, v in inputs.items()},
        "environment_mismatches_before_run": plan.mismatches,
        "metrics_identical": metrics_identical, "metrics": metrics, "metrics_in_one_run_only": missing,
        "final_weights_identical": weights_identical, "final_weights": weights,
        "reproduced": inputs_identical and (weights_identical if weights else metrics_identical),
        "notes": plan.notes,
    }


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value if isinstance(value, (bool, int, float, str)) or value is None else str(value)


def report_lines(report: dict[str, Any]) -> list[str]:
    """The report as text (also its Markdown file: a fenced-free plain list reads as Markdown)."""
    yes = {True: "identical", False: "DIFFERENT"}
    out = [f"# Reproduction of run {report['original']['run_id']}", "",
           f"- reproduction run: {report['reproduction']['run_id']} ({report['reproduction']['prov']})",
           f"- command: `{report['reproduction']['command']}` (exit status {report['reproduction']['returncode']})",
           f"- inputs: {yes[report['inputs_identical']]}"]
    for section, diffs in report["inputs"].items():
        out.append(f"  - {section}: {'identical' if not diffs else f'{len(diffs)} difference(s)'}")
        out += [f"    - {k}: {v[0]!r} -> {v[1]!r}" for k, v in list(diffs.items())[:20]]
    out.append(f"- metrics: {yes[report['metrics_identical']]}")
    for key, m in report["metrics"].items():
        out.append(f"  - {key}: {m['common_steps']} common steps, max abs diff {m['max_abs_diff']:.3g}, "
                   f"max rel diff {m['max_rel_diff']:.3g}" + ("" if m["identical"] else " (differs)"))
    out += [f"  - {k}: logged by one run only" for k in report["metrics_in_one_run_only"]]
    weights = report["final_weights"]
    out.append(f"- final weights: {yes[report['final_weights_identical']] if weights else 'no model logged'}")
    out += [f"  - {name}: {w['original']} -> {w['reproduction']}" for name, w in weights.items()]
    if report["environment_mismatches_before_run"]:
        out.append(f"- environment mismatches seen before the run: {len(report['environment_mismatches_before_run'])}")
        out += [f"  - {m}" for m in report["environment_mismatches_before_run"]]
    out += [f"- note: {n}" for n in report["notes"]]
    out.append(f"- verdict: {'REPRODUCED' if report['reproduced'] else 'NOT REPRODUCED'}")
    return out


def _save_report(report: dict[str, Any], new: Any) -> list[Path]:
    """Write the report beside the new run's PROV document and log it to its MLflow run."""
    new_id = report["reproduction"]["run_id"]
    folder = new.path.parent
    paths = [folder / f"reproduction_{new_id}.json", folder / f"reproduction_{new_id}.md"]
    paths[0].write_text(json.dumps(report, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    paths[1].write_text("\n".join(report_lines(report)) + "\n", encoding="utf-8")
    uri = new.run_attr("tracking_uri")
    if uri and "***" not in str(uri):
        try:
            from prov4ml_lightning.sinks.mlflow.attach import attach_artifacts

            attach_artifacts(str(uri), str(new_id), paths, "reproduction")
        except Exception as err:  # the report stays on disk beside the document
            warn(f"note: the report could not be logged to MLflow run {new_id} ({err}); it is at {paths[0]}")
    return paths


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
    _prepare(plan)
    returncode = _execute(plan, args.timeout)
    if returncode != 0:
        raise CliError(f"the command exited with status {returncode} (worktree kept: {plan.workdir})",
                       EXIT_COMMAND_FAILED)
    new = RunView.load(_new_document(plan))
    report = build_report(old, new, plan, returncode)
    paths = _save_report(report, new)
    echo()
    for line in report_lines(report):
        echo(line)
    echo(f"report: {paths[0]} and {paths[1]}; worktree: {plan.workdir} (git worktree remove --force to drop it)")
    return EXIT_OK if report["reproduced"] else EXIT_DIFFERENT
