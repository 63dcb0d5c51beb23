"""The MLflow service process killed (``SIGKILL``) while it creates the store, mid-run and at the end.

Each case runs a plain-loop training script for real, kills the script's own MLflow service
process (its pid is in the run's journal), and checks what the user is told and what survives:
one warning when the service dies (naming the run and ``prov4ml sync``), the training's result
unchanged, every point in the metric sidecar and the PROV document, the points MLflow did not take
in ``mlflow_unsent_<run id>.csv``, a warning at ``end_run`` that MLflow's copy is incomplete, and
after ``prov4ml sync`` the MLflow run ``FINISHED`` with every point (``MlflowClient``). No
``prov4ml`` command prints a traceback.
"""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from prov4ml_lightning.provenance.checks import check_file
from prov4ml_lightning.sinks.mlflow.rules import default_tracking_uri
from prov4ml_lightning.sinks.mlflow.store import forget_engine, open_client
from tests.helpers import attr, by_type, half_migrated_store, read_prov, user_params

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

_TRAIN = """
import os, signal, sys, threading, time, warnings
from pathlib import Path

import prov4ml_lightning as prov4ml
from prov4ml_lightning.tracking.journal import read_journal

mode, prov_dir, mlflow_dir, n = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4])
killed_at = None
shown = warnings.showwarning

said = threading.Lock()

def show(message, category, filename, lineno, file=None, line=None):
    # when each warning came, on stdout; each whole, in warnings.txt (two threads writing sys.stderr at once
    # can lose one's text: io.TextIOWrapper is not thread-safe); stderr gets it as usual
    since = "" if killed_at is None else f"{time.monotonic() - killed_at:.3f}"
    with said:
        print("warned", since, str(message).splitlines()[0][:120], flush=True)
        with open(prov_dir.parent / "warnings.txt", "a") as fh:
            fh.write(f"{category.__name__}: {message}\\n\\x00")
    shown(message, category, filename, lineno, file, line)

warnings.showwarning = show

def journal(run_id):
    return read_journal(prov_dir / f"journal_{run_id}.jsonl")

def kill_service(run_id):
    global killed_at
    (start,) = [e for e in journal(run_id) if e["event"] == "start"]
    os.kill(start["mlflow_service_pid"], signal.SIGKILL)
    killed_at = time.monotonic()
    print("killed", flush=True)

user_file = prov_dir.parent / "notes.txt"
user_file.write_text("the user's own file")
run = prov4ml.start_run("www.example.org", "service-death", str(prov_dir), str(mlflow_dir))
print("run", run.run_id, flush=True)
if mode == "start":  # while the service migrates the new store (into a temporary file)
    deadline = time.monotonic() + 120
    while not list(mlflow_dir.glob("mlflow.db.prov4ml-new-*")):
        assert time.monotonic() < deadline, "the service never started creating the store"
        time.sleep(0.002)
    kill_service(run.run_id)
    time.sleep(2)  # the death is noticed within seconds, while the training goes on
prov4ml.log_param("lr", 0.1)
if mode in ("end", "plain"):
    prov4ml.log_artifact(user_file)
if mode == "end":
    assert prov4ml.wait_for_mlflow(120)  # the run exists in MLflow before its points come
    # the store's write lock held until the kill: the service is surely still writing when it dies
    import sqlite3
    blocker = sqlite3.connect(mlflow_dir / "mlflow.db", isolation_level=None, check_same_thread=False)
    blocker.execute("BEGIN IMMEDIATE")
total = 0.0
for step in range(n):
    value = 1.0 / (step + 1)
    prov4ml.log_metric("loss", value, step=step)
    total += value
    if mode == "mid" and step == n // 2:
        run.flush()
        prov4ml.log_artifact(user_file)
        assert prov4ml.wait_for_mlflow(120)  # MLflow holds the first half: the kill cuts a run it was writing
        kill_service(run.run_id)
        time.sleep(3)  # the death is noticed within seconds, while the training goes on
if mode == "start":
    prov4ml.log_artifact(user_file)
if mode == "end":  # killed once end_run has begun (its journal says so), the service still writing
    def killer():
        deadline = time.monotonic() + 120
        while not any(e["event"] == "end" for e in journal(run.run_id)):
            assert time.monotonic() < deadline
            time.sleep(0.002)
        kill_service(run.run_id)
        blocker.execute("ROLLBACK")
    threading.Thread(target=killer, daemon=True).start()
print("ending", flush=True)
prov4ml.end_run()
print("result", repr(total), flush=True)
"""


def _expected_total(n: int) -> float:
    total = 0.0
    for step in range(n):
        total += 1.0 / (step + 1)
    return total


def _train(tmp_path: Path, mode: str, n: int, env: dict[str, str] | None = None) -> tuple[str, str, str]:
    """Run the training script; return ``(run id, stdout, stderr)`` after checking its exit and result."""
    script = tmp_path / "train.py"
    script.write_text(_TRAIN)
    full_env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    full_env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    full_env.update(env or {})
    done = subprocess.run([sys.executable, str(script), mode, str(tmp_path / "prov"), str(tmp_path / "mlflow"),
                           str(n)], cwd=tmp_path, env=full_env, capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-4000:]
    assert "Traceback" not in done.stderr, done.stderr[-4000:]
    # the training's result is what it is without any fault
    assert done.stdout.splitlines()[-1] == f"result {_expected_total(n)!r}"
    run_id = re.search(r"^run (\w+)$", done.stdout, re.M).group(1)  # type: ignore[union-attr]
    return run_id, done.stdout, done.stderr


def _check_told(run_id: str, prov_dir: Path, stdout: str, stderr: str, *, before_end_run: bool = True) -> None:
    """One warning when the service died (within seconds; before end_run when it died before), one
    at end_run; both say that MLflow's copy is incomplete and name the run and `prov4ml sync <folder>`."""
    died = [line for line in stdout.splitlines() if line.startswith("warned") and "MLflow service process" in line
            and "was killed (SIGKILL)" in line and "end_run" not in line]
    assert len(died) == 1, stdout
    since_kill = float(died[0].split()[1])
    assert since_kill < 5.0, died
    lines = stdout.splitlines()
    if before_end_run:
        assert lines.index(died[0]) < lines.index("ending"), stdout
    told = (prov_dir.parent / "warnings.txt").read_text().split("\x00")
    death_warning = [w.split("Prov4MLWarning: ", 1)[1] for w in told if "was killed (SIGKILL)" in w]
    assert len(death_warning) == 2, stderr  # the death, then end_run's
    for text in death_warning:
        assert run_id in text and f"prov4ml sync {prov_dir}" in text and "incomplete" in text
    assert f"end_run: MLflow's copy of run {run_id} is incomplete" in death_warning[1]


def _sync(prov_dir: Path) -> str:
    done = subprocess.run([sys.executable, "-m", "prov4ml_lightning", "sync", str(prov_dir)], capture_output=True,
                          text=True, timeout=240, env={**os.environ,
                                                      "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)})
    out = done.stdout + done.stderr
    assert "Traceback" not in out, out
    assert done.returncode == 0, out
    return out


def _sidecar_steps(prov_dir: Path, run_id: str) -> list[int]:
    with open(prov_dir / f"metrics_{run_id}.csv", newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def _unsent_steps(prov_dir: Path, run_id: str) -> list[int]:
    with open(prov_dir / f"mlflow_unsent_{run_id}.csv", newline="") as fh:
        return [int(row["step"]) for row in csv.DictReader(fh)]


def _check_complete(tmp_path: Path, run_id: str, n: int) -> None:
    """After `prov4ml sync`: MLflow has the run FINISHED with every point, the param and the user's
    file; the PROV document and the sidecar have every point; no staged copy is left."""
    prov_dir, mlflow_dir = tmp_path / "prov", tmp_path / "mlflow"
    client = open_client(default_tracking_uri(mlflow_dir))
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert user_params(run.data.params) == {"lr": "0.1"}
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(n))
    assert "notes.txt" in {a.path for a in client.list_artifacts(run_id)}
    # every file a run that was never interrupted has in MLflow (README "Where things go"): the PROV
    # files and, where start_run and end_run upload them, the package list
    in_prov = {Path(a.path).name for a in client.list_artifacts(run_id, "prov")}
    assert {f"provgraph_{run_id}.json", f"provgraph_{run_id}.html", f"packages_{run_id}.txt",
            f"metrics_{run_id}.csv"} <= in_prov, in_prov
    assert f"packages_{run_id}.txt" in {Path(a.path).name for a in client.list_artifacts(run_id, "environment")}
    doc_path = prov_dir / f"provgraph_{run_id}.json"
    assert check_file(doc_path, round_trip=False) == []
    doc = read_prov(doc_path)
    (prov_run,) = by_type(doc, "Run")
    assert attr(prov_run, "status") == "FINISHED"
    (series,) = [s for s in by_type(doc, "MetricSeries") if attr(s, "name") == "loss"]
    assert attr(series, "count") == n
    assert sorted(_sidecar_steps(prov_dir, run_id)) == list(range(n))
    assert not (prov_dir / ".prov4ml_staging").exists()
    assert not (prov_dir / f"mlflow_unsent_{run_id}.csv").exists()  # sync removes it once MLflow has everything


def test_killed_while_it_creates_the_store_leaves_no_half_made_store_and_sync_completes_the_run(tmp_path):
    n = 300
    prov_dir, mlflow_dir = tmp_path / "prov", tmp_path / "mlflow"
    # an empty cache: the service migrates the new store itself, in a temporary file, and is killed there
    run_id, out, err = _train(tmp_path, "start", n, env={"PROV4ML_CACHE_DIR": str(tmp_path / "empty-cache")})
    _check_told(run_id, prov_dir, out, err)
    assert not (mlflow_dir / "mlflow.db").exists()  # nothing half-migrated where MLflow looks
    assert list(mlflow_dir.glob("mlflow.db.prov4ml-new-*"))  # the killed service's unfinished copy
    assert sorted(_unsent_steps(prov_dir, run_id)) == list(range(n))  # MLflow took nothing

    out = _sync(prov_dir)
    assert f"MLflow run {run_id} created" in out and "status FINISHED" in out
    _check_complete(tmp_path, run_id, n)
    assert not list(mlflow_dir.glob("mlflow.db.prov4ml-new-*"))  # the next creation removed it

    # later runs into that folder are online again: MLflow has them when the script returns
    later, out, err = _train(tmp_path, "plain", 50)
    assert "Prov4MLWarning" not in err, err
    client = open_client(default_tracking_uri(mlflow_dir))
    assert client.get_run(later).info.status == "FINISHED"
    assert len(client.get_metric_history(later, "loss")) == 50


def test_killed_mid_run_is_announced_and_sync_completes_the_run(tmp_path):
    n = 400
    prov_dir = tmp_path / "prov"
    run_id, out, err = _train(tmp_path, "mid", n)
    _check_told(run_id, prov_dir, out, err)
    client = open_client(default_tracking_uri(tmp_path / "mlflow"))
    before = client.get_run(run_id)
    assert before.info.status == "RUNNING"  # nobody ended it in MLflow
    had = {m.step for m in client.get_metric_history(run_id, "loss")}
    assert set(range(n // 2 + 1)) <= had and len(had) < n
    # what MLflow did not take is in the spill file for sync: at least every point after the kill
    assert set(range(n // 2 + 1, n)) <= set(_unsent_steps(prov_dir, run_id))

    out = _sync(prov_dir)
    assert f"MLflow run {run_id} updated" in out and "status FINISHED" in out
    _check_complete(tmp_path, run_id, n)


def test_killed_during_end_run_is_announced_and_sync_completes_the_run(tmp_path):
    n = 20_000  # a backlog the service is still writing when end_run starts
    prov_dir = tmp_path / "prov"
    run_id, out, err = _train(tmp_path, "end", n)
    assert "killed" in out.splitlines()
    _check_told(run_id, prov_dir, out, err, before_end_run=False)
    client = open_client(default_tracking_uri(tmp_path / "mlflow"))
    assert client.get_run(run_id).info.status == "RUNNING"
    assert len(client.get_metric_history(run_id, "loss")) < n

    out = _sync(prov_dir)
    assert f"MLflow run {run_id} updated" in out and "status FINISHED" in out
    _check_complete(tmp_path, run_id, n)


_KILLED_WRITER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN")
conn.execute("CREATE TABLE half_done (x TEXT)")
conn.execute("INSERT INTO half_done VALUES (?)", ("x" * 100_000,))
print("writing", flush=True)
time.sleep(600)
"""


def _break_store(db: Path, tmp_path: Path) -> None:
    """Replace ``db`` by the store a process killed while migrating it in place leaves: a schema
    migrated half-way and a leftover ``-journal`` of the transaction it was in."""
    forget_engine(default_tracking_uri(db.parent))  # this process's MLflow would keep reading the file it opened
    for old in db.parent.glob(db.name + "*"):
        if old.name != db.name + ".prov4ml-lock":
            old.unlink()
    half_migrated_store(db)
    writer = subprocess.Popen([sys.executable, "-c", _KILLED_WRITER, str(db)], stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout is not None and writer.stdout.readline().strip() == "writing"
    finally:
        writer.kill()
        writer.wait(timeout=30)
    assert Path(f"{db}-journal").is_file()


def test_sync_replaces_a_half_migrated_store_and_later_runs_into_the_folder_are_online(tmp_path):
    n = 120
    prov_dir, db = tmp_path / "prov", tmp_path / "mlflow" / "mlflow.db"
    run_id, _, _ = _train(tmp_path, "plain", n)
    _break_store(db, tmp_path)

    out = _sync(prov_dir)
    (aside,) = db.parent.glob("mlflow.db.broken-*[0-9]")
    assert f"the MLflow store {db} was left half-created" in out and f"moved aside to {aside}" in out, out
    assert Path(f"{aside}-journal").is_file()  # moved with its database, as it was
    assert f"MLflow run {run_id} created" in out and "status FINISHED" in out
    _check_complete(tmp_path, run_id, n)

    # a training started into such a folder repairs it too (its MLflow service says so) and is online
    _break_store(db, tmp_path)
    later, _, err = _train(tmp_path, "plain", 50)
    assert "was left half-created" in err and "moved aside to" in err, err
    client = open_client(default_tracking_uri(db.parent))
    assert client.get_run(later).info.status == "FINISHED"
    assert len(client.get_metric_history(later, "loss")) == 50
