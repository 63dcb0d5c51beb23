"""The code a run executed: entry script, git commit, branch, remote, dirty flag and diff.

Git is asked through plain ``git`` subprocesses, each with a timeout, ``GIT_OPTIONAL_LOCKS=0``
(``git status`` must not take the index lock from under a concurrent ``git commit``) and no
terminal prompt. Outside a repository, without ``git``, or on a timeout, the git attributes are
simply absent (a ``git_error`` attribute says why, where there is something to say).

The uncommitted diff is ``git diff HEAD --binary`` (staged and unstaged changes to tracked
files; untracked files are counted, not included). Its sha256 covers the whole diff; the file
written next to the PROV document keeps at most :data:`MAX_DIFF_BYTES` of it, and
``git_diff_truncated`` says when it was cut.

Source files the process imported that git does not track (the script itself, helper modules
beside it or on ``PYTHONPATH``: files outside the interpreter's installation and this library, and
not the own modules of an editable or local install, which the package lock records; a helper
module beside a ``pip install -e .`` project is local source) are snapshotted into
``untracked_<run_id>.zip`` (secrets redacted with :func:`~prov4ml_lightning.redact.redact_source`;
at most :data:`MAX_SNAPSHOT_FILE_BYTES` a file and :data:`MAX_SNAPSHOT_BYTES` in all), each with
its path (relative to the repository root, or absolute outside it), sha256 and size in the
``untracked_files`` attribute.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

from prov4ml_lightning.files import sha256_path
from prov4ml_lightning.installs import Installs, local_installs, own_modules
from prov4ml_lightning.redact import redact_url

__all__ = [
    "GIT_TIMEOUT", "MAX_DIFF_BYTES", "MAX_SNAPSHOT_BYTES", "MAX_SNAPSHOT_FILE_BYTES", "capture_code",
    "editable_source_state", "entry_script", "imported_source_files",
]

#: At most this many bytes of the uncommitted diff are kept as an artifact (1 MiB).
MAX_DIFF_BYTES = 1 << 20
#: At most this many bytes of untracked imported source are snapshotted in all (2 MiB) ...
MAX_SNAPSHOT_BYTES = 2 << 20
#: ... and at most this many of one file (a larger one is listed, not kept).
MAX_SNAPSHOT_FILE_BYTES = 512 << 10
#: Seconds one ``git`` call may take before it is abandoned.
GIT_TIMEOUT = 5.0
_GIT_ENV = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}


def entry_script() -> Path | None:
    """The file ``python`` was asked to run (``__main__.__file__``, else ``sys.argv[0]``), if any."""
    main = sys.modules.get("__main__")
    candidates = [getattr(main, "__file__", None), sys.argv[0] if sys.argv else None]
    for candidate in candidates:
        if candidate and candidate not in ("-c", "-m", "-") and Path(candidate).is_file():
            return Path(candidate).resolve()
    return None


def _git(args: list[str], cwd: Path, timeout: float = GIT_TIMEOUT) -> str | None:
    """stdout of ``git args`` in ``cwd``, or ``None`` when git fails, is missing or times out."""
    try:
        done = subprocess.run(
            ["git", "-c", "core.quotepath=off", *args], cwd=cwd, capture_output=True, timeout=timeout,
            env={**os.environ, **_GIT_ENV}, check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.decode("utf-8", "replace").strip() if done.returncode == 0 else None


def _diff(root: Path, has_commit: bool, keep: int) -> tuple[str, int, bytes] | None:
    """(sha256, total size, first ``keep`` bytes) of the uncommitted diff, streamed so a huge diff
    costs no memory; ``None`` when git fails or runs past :data:`GIT_TIMEOUT`."""
    args = ["git", "diff", "--binary", "--no-color", "--no-ext-diff", "--no-textconv"]
    args += ["HEAD"] if has_commit else ["--cached"]
    try:
        proc = subprocess.Popen(args, cwd=root, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                                env={**os.environ, **_GIT_ENV})
    except OSError:
        return None
    timer = threading.Timer(GIT_TIMEOUT, proc.kill)
    timer.start()
    digest, total, head = hashlib.sha256(), 0, bytearray()
    try:
        assert proc.stdout is not None
        for chunk in iter(lambda: proc.stdout.read(1 << 16), b""):  # type: ignore[union-attr]
            digest.update(chunk)
            total += len(chunk)
            if len(head) < keep:
                head += chunk[: keep - len(head)]
    finally:
        timer.cancel()
        rc = proc.wait()
        proc.stdout.close()  # type: ignore[union-attr]
    return (digest.hexdigest(), total, bytes(head)) if rc == 0 else None


def _installed(script: Path) -> bool:
    """``script`` belongs to the interpreter's installation (a virtualenv, site-packages)."""
    prefixes = {Path(p).resolve() for p in (sys.prefix, sys.base_prefix, sys.exec_prefix)}
    return any(script.is_relative_to(p) for p in prefixes)


def _repo_root(start: Path) -> Path | None:
    top = _git(["rev-parse", "--show-toplevel"], start)
    return Path(top) if top else None


def _snapshot(attrs: dict[str, Any], out_dir: Path, run_id: str, root: Path | None,
              installs: Installs) -> None:
    """Snapshot the untracked imported source files into ``attrs`` (see the module docstring)."""
    root = root.resolve() if root is not None else None
    files = _untracked(imported_source_files(installs), root)
    if files is None:
        attrs["untracked_error"] = "git ls-files failed or timed out; untracked imported files are not snapshotted"
        return
    attrs["untracked_imported_count"] = len(files)
    if not files:
        return
    path = out_dir / f"untracked_{run_id}.zip"
    entries = snapshot_untracked(files, root, path)
    attrs.update(untracked_files=entries, untracked_file=path.name, untracked_snapshot=path)


def imported_source_files(installs: Installs | None = None) -> list[Path]:
    """The ``.py`` files of the modules this process imported (``__main__`` included) that are the
    user's own (:func:`prov4ml_lightning.installs.own_modules`). ``installs``:
    :func:`~prov4ml_lightning.installs.local_installs`, when the caller has it."""
    return sorted(set(own_modules(installs).values()))


def editable_source_state(root: Path | None, installs: Installs | None = None,
                          ) -> list[dict[str, Any]]:
    """The state of each editable install this process imported a module from: ``name``,
    ``path``; when its folder is the recorded repository ``root`` (or inside it),
    ``in_repository`` (its state is the run's own commit and diff); else, when the folder lies in
    a git repository, that repository's ``git_root``, ``git_commit``, the sha256 of its
    ``git diff HEAD`` and its untracked file count (three ``git`` calls a repository); else
    ``git: false``. Cheap: usually no editable install, or one or two."""
    editable = {k: v for k, v in (local_installs() if installs is None else installs).items() if v[2]}
    if not editable:
        return []
    by_name: dict[str, list[Path]] = {}
    for folder, (_, names, _) in editable.items():
        for top in names:
            by_name.setdefault(top, []).append(folder)
    used: set[Path] = set()
    for top in by_name.keys() & sys.modules.keys():  # a package's top-level module is imported before its parts
        file = getattr(sys.modules[top], "__file__", None)
        paths = [file] if isinstance(file, str) else list(getattr(sys.modules[top], "__path__", None) or ())
        used.update(folder for folder in by_name[top] for p in paths if str(p).startswith(str(folder) + os.sep))
    out: list[dict[str, Any]] = []
    tops: dict[Path, Path | None] = {}
    for folder in sorted(used):
        entry: dict[str, Any] = {"name": editable[folder][0], "path": str(folder)}
        if root is not None and folder.is_relative_to(root):
            entry["in_repository"] = True
        else:
            entry.update(source_folder_state(folder, tops))
        out.append(entry)
    return out


def source_folder_state(folder: Path, cache: dict[Path, Path | None] | None = None) -> dict[str, Any]:
    """``git_root``, ``git_commit``, ``git_diff_sha256`` and ``git_untracked_count`` of the git
    repository holding ``folder`` (``git: false`` when none; ``git_error`` when git failed)."""
    repo = _enclosing_repo(folder, {} if cache is None else cache)
    if repo is None:
        return {"git": False}
    commit = _git(["rev-parse", "--verify", "-q", "HEAD"], repo)
    diff = _diff(repo, commit is not None, 0)
    status = _git(["status", "--porcelain=v1", "--untracked-files=normal"], repo)
    if diff is None or status is None:
        return {"git_root": str(repo), "git_error": "git diff or status failed or timed out"}
    return {"git_root": str(repo), "git_commit": commit, "git_diff_sha256": diff[0],
            "git_untracked_count": sum(1 for line in status.splitlines() if line.startswith("??"))}


def _untracked(files: list[Path], root: Path | None) -> list[Path] | None:
    """Those of ``files`` git does not track: in ``root``, or in the repository holding a file
    outside it (found by its ``.git``, one ``git ls-files`` per repository); a file in no
    repository is untracked. ``None`` when git cannot tell for ``root``."""
    by_repo: dict[Path | None, list[Path]] = {}
    tops: dict[Path, Path | None] = {}
    for file in files:
        repo = root if root is not None and file.is_relative_to(root) else _enclosing_repo(file.parent, tops)
        by_repo.setdefault(repo, []).append(file)
    untracked = list(by_repo.pop(None, []))
    for repo, inside in by_repo.items():
        assert repo is not None
        out = _git(["ls-files", "-z", "--full-name", "--", *(str(f.relative_to(repo)) for f in inside)], repo)
        if out is None:
            if repo == root:
                return None
            continue  # another repository git cannot read: its files are left out
        tracked = {(repo / name).resolve() for name in out.split("\0") if name}
        untracked += [f for f in inside if f not in tracked]
    return sorted(untracked)


def _enclosing_repo(folder: Path, cache: dict[Path, Path | None]) -> Path | None:
    """The nearest folder above ``folder`` holding ``.git`` (a file or folder), or ``None``."""
    seen = []
    found: Path | None = None
    for place in (folder, *folder.parents):
        if place in cache:
            found = cache[place]
            break
        seen.append(place)
        if (place / ".git").exists():
            found = place
            break
    for place in seen:
        cache[place] = found
    return found


def snapshot_untracked(files: list[Path], root: Path | None, path: Path) -> list[dict[str, Any]]:
    """Write ``files`` (redacted, within the size bounds) into the zip ``path``; return one entry
    per file: ``path`` (relative to ``root`` when inside it), ``sha256``, ``size_bytes``, and
    either ``stored_sha256`` (+ ``redacted``) or ``skipped`` (why it was left out)."""
    import zipfile

    from prov4ml_lightning.redact import redact_source

    entries: list[dict[str, Any]] = []
    total = 0
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for file in files:
            name = file.relative_to(root).as_posix() if root is not None and file.is_relative_to(root) else str(file)
            try:
                data = file.read_bytes()
            except OSError as err:
                entries.append({"path": name, "skipped": f"unreadable: {err.strerror}"})
                continue
            entry: dict[str, Any] = {"path": name, "sha256": hashlib.sha256(data).hexdigest(), "size_bytes": len(data)}
            if len(data) > MAX_SNAPSHOT_FILE_BYTES or total + len(data) > MAX_SNAPSHOT_BYTES:
                entry["skipped"] = "too large"
            else:
                text = data.decode("utf-8", "surrogateescape")
                stored = redact_source(text).encode("utf-8", "surrogateescape")
                entry["stored_sha256"] = hashlib.sha256(stored).hexdigest()
                entry["redacted"] = stored != data
                zf.writestr(name.lstrip("/"), stored)
                total += len(stored)
            entries.append(entry)
    return entries


def capture_code(out_dir: Path, run_id: str, script: Path | None = None) -> tuple[dict[str, Any], Path | None]:
    """Attributes of the ``code`` entity, and the diff file written (``None`` when clean or no git).
    The snapshot of untracked imported source, when there is one, is ``attrs["untracked_snapshot"]``
    (a path; the caller attaches and removes the key).

    Args:
        out_dir: where ``code_diff_<run_id>.patch`` is written.
        run_id: the run, for the file name.
        script: the entry script; found with :func:`entry_script` when ``None``.
    """
    script = script or entry_script()
    attrs: dict[str, Any] = {}
    if script is not None:
        attrs["script_path"] = str(script)
        try:
            attrs["script_sha256"], attrs["script_size_bytes"] = sha256_path(script)
        except OSError as err:
            attrs["script_error"] = f"cannot read the script: {err.strerror}"
    attrs["working_directory"] = os.getcwd()
    # The script's repository first, unless the script is an installed tool (pytest, a console
    # script): then the working directory's repository is the project being run, and the
    # interpreter's own folder may well be a git checkout of something else (pyenv is one).
    places = [] if script is None or _installed(script) else [script.parent]
    places.append(Path.cwd())
    root = next((r for r in (_repo_root(p) for p in places) if r is not None), None)
    installs = local_installs()  # one scan of the distributions' metadata, for both
    _snapshot(attrs, out_dir, run_id, root, installs)
    sources = editable_source_state(root.resolve() if root is not None else None, installs)
    if sources:
        attrs["editable_sources"] = sources
    if root is None:
        return attrs, None
    attrs["git_root"] = str(root)
    commit = _git(["rev-parse", "--verify", "-q", "HEAD"], root)
    if commit:
        attrs["git_commit"] = commit
    attrs["git_branch"] = _git(["symbolic-ref", "-q", "--short", "HEAD"], root) or ("(detached)" if commit else None)
    remotes = _git(["config", "--get-regexp", r"^remote\..*\.url$"], root)
    if remotes:
        urls = dict(line.split(" ", 1) for line in remotes.splitlines() if " " in line)
        url = urls.get("remote.origin.url") or next(iter(urls.values()))
        attrs["git_remote"] = redact_url(url)
    status = _git(["status", "--porcelain=v1", "--untracked-files=normal"], root)
    if status is None:
        attrs["git_error"] = "git status failed or timed out; dirty state unknown"
        return attrs, None
    lines = status.splitlines()
    untracked = sum(1 for line in lines if line.startswith("??"))
    attrs["git_dirty"] = bool(lines)
    attrs["git_untracked_count"] = untracked
    if len(lines) == untracked:
        return attrs, None
    diff = _diff(root, commit is not None, MAX_DIFF_BYTES)
    if diff is None:
        attrs["git_error"] = "git diff failed or timed out; the diff is not recorded"
        return attrs, None
    digest, total, head = diff
    path = out_dir / f"code_diff_{run_id}.patch"
    path.write_bytes(head)
    attrs.update(git_diff_sha256=digest, git_diff_size_bytes=total, git_diff_truncated=total > len(head),
                 git_diff_file=path.name)
    return attrs, path
