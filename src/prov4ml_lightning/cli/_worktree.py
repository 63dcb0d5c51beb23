"""The recorded code in a new git worktree (``prov4ml reproduce``): the recorded commit checked
out, the recorded diff applied (checked first against the commit in a throwaway index), the
snapshotted untracked files restored (each sha256 checked); a worktree that cannot be completed
is removed again."""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import zipfile
from pathlib import Path
from typing import Any

from prov4ml_lightning.cli._common import CliError
from prov4ml_lightning.cli._reproduction import EXIT_DIFF_REJECTED

__all__ = ["check_diff_applies", "git", "prepare_worktree"]


def git(args: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    """``git ARGS`` in ``cwd`` (never prompting); with ``check``, a failure is a :class:`CliError`."""
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True,
                          env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}, check=False)
    if check and done.returncode != 0:
        raise CliError(f"git {' '.join(args)} failed in {cwd}: {done.stderr.strip()}")
    return done


def check_diff_applies(repo: Path, commit: str, diff: Path) -> None:
    """Refuse (exit status 5) a diff that does not apply to ``commit``; nothing is checked out."""
    with tempfile.TemporaryDirectory(prefix="prov4ml-index-") as tmp:
        index = {"GIT_INDEX_FILE": str(Path(tmp) / "index")}
        env = {**os.environ, **index, "LC_ALL": "C"}
        for args in (["read-tree", commit], ["apply", "--check", "--cached", "--binary", str(diff)]):
            done = subprocess.run(["git", *args], cwd=repo, env=env, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                raise CliError(f"the recorded diff {diff.name} does not apply to commit {commit}: "
                               f"{done.stderr.strip()}", EXIT_DIFF_REJECTED)


def prepare_worktree(plan: Any) -> None:
    """The worktree at ``plan.commit`` (a :class:`~prov4ml_lightning.cli.reproduce.Plan`), with the
    diff applied and the untracked files restored.

    Raises:
        CliError: git failed (2), the diff does not apply or a file fails its sha256 (5).
    """

    plan.workdir.parent.mkdir(parents=True, exist_ok=True)
    git(["worktree", "add", "--detach", str(plan.workdir), plan.commit], plan.repo)
    try:
        _fill(plan)
    except CliError:  # nothing ran in it: the half-made worktree is not left registered
        git(["worktree", "remove", "--force", str(plan.workdir)], plan.repo, check=False)
        raise


def _fill(plan: Any) -> None:
    if plan.diff is not None:
        done = git(["apply", "--binary", "--whitespace=nowarn", str(plan.diff)], plan.workdir, check=False)
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
