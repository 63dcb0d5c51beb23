"""A disk that fills up during a run, for real: a small tmpfs holding both folders (where this machine
lets the test mount one), and a file-size limit (``RLIMIT_FSIZE``: the kernel's ``EFBIG``) elsewhere."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from prov4ml_lightning.tracking.writer import SIDECAR_HEADER, read_sidecar
from tests.helpers import attr, by_type, read_prov

pytestmark = [pytest.mark.slow, pytest.mark.timeout(300)]

POINTS = 100_000


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "prov4ml_lightning", *args], capture_output=True, text=True,
                          timeout=240)


@pytest.fixture
def small_disk(tmp_path):
    """``(folder, grow)``: a 4 MiB tmpfs at ``tmp_path/small``; ``grow()`` makes it 64 MiB (space freed)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if done.returncode != 0:
        pytest.skip(f"this machine does not let the test mount a tmpfs ({done.stderr.strip()})")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=64m", str(mount)], check=True)

    try:
        yield mount, grow
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


TRAIN = f"""
import sys
import prov4ml_lightning as prov4ml

folder = sys.argv[1]
run = prov4ml.start_run(prov_user_namespace="www.example.org", experiment_name="full-disk",
                        provenance_save_dir=folder + "/prov", mlflow_save_dir=folder + "/mlflow")
prov4ml.log_param("notes", "x" * 7000)  # MLflow keeps it truncated: a long_params file at the end
prov4ml.log_metric("loss", 1.0, step=0)
run.flush(wait_for_mlflow=True)  # the store exists before the disk fills
if len(sys.argv) > 2:  # the file-size limit: from now on no file of this process grows past it
    import resource, signal
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # write() then fails with EFBIG instead of killing us
    resource.setrlimit(resource.RLIMIT_FSIZE, (int(sys.argv[2]), resource.RLIM_INFINITY))
total = 0.0
for i in range(1, {POINTS}):
    value = (i % 97) / 97
    total += value  # the user's own result
    prov4ml.log_metric("loss", value, step=i)
print("RESULT", repr(total), flush=True)
try:
    prov4ml.end_run()
    print("ENDED", flush=True)
except prov4ml.Prov4MLError as err:
    print("ERROR", type(err).__name__, str(err).replace("\\n", " "), flush=True)
"""


def _expected_result() -> float:
    total = 0.0
    for i in range(1, POINTS):
        total += (i % 97) / 97
    return total


def _sidecar_rows_are_whole(sidecar) -> int:
    data = sidecar.read_bytes()
    assert data.endswith(b"\r\n")  # cut at a record boundary
    lines = data.decode().split("\r\n")[:-1]
    assert lines[0] == ",".join(SIDECAR_HEADER)
    for line in lines[1:]:
        assert re.fullmatch(r"loss,training,loss,\d+,[0-9.e-]+,\d{13}", line), line
    assert len(read_sidecar(sidecar)) == len(lines) - 1
    return len(lines) - 1


def test_a_full_tmpfs_cuts_at_a_record_names_what_is_lost_and_recover_completes_the_run(small_disk, script):
    from mlflow.tracking import MlflowClient

    small_disk, grow = small_disk
    train = script(TRAIN)
    done = train.run(str(small_disk), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"RESULT {_expected_result()!r}" in done.stdout  # training itself unchanged
    (error,) = [line for line in done.stdout.splitlines() if line.startswith("ERROR")]
    assert error.startswith("ERROR Prov4MLError end_run: could not write the PROV files")
    assert "No space left on device" in error and "free about" in error
    assert f"prov4ml recover {small_disk / 'prov'}" in error
    prov = small_disk / "prov"
    (sidecar,) = prov.glob("metrics_*.csv")
    rows = _sidecar_rows_are_whole(sidecar)
    held = re.search(r"holds (\d+) of the run's (\d+) points; (\d+) never reached it", error)
    assert held, error
    assert int(held[1]) == rows and int(held[2]) == POINTS and int(held[1]) + int(held[3]) == POINTS  # all named
    assert f"loss (training) steps {rows}-{POINTS - 1}" in error
    assert not list(prov.glob("provgraph_*.json"))
    assert all(p.stat().st_size > 0 for p in prov.glob("long_params_*.json"))  # never an empty file
    assert not (prov / ".prov4ml_staging").exists()

    grow()  # space freed
    recovered = _cli("recover", str(prov))
    assert recovered.returncode == 0, recovered.stdout + recovered.stderr[-3000:]
    assert "Traceback" not in recovered.stderr
    run_id = sidecar.stem.removeprefix("metrics_")
    assert f"{run_id}: recovered as FINISHED, {rows} metric points" in recovered.stdout
    doc = read_prov(prov / f"provgraph_{run_id}.json")
    assert {attr(s, "name"): attr(s, "count") for s in by_type(doc, "MetricSeries")} == {"loss": rows}
    assert (prov / f"long_params_{run_id}.json").read_text().count("x") == 7000
    client = MlflowClient(f"sqlite:///{small_disk / 'mlflow' / 'mlflow.db'}")
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(run_id, "loss")]
    assert sorted(steps) == list(range(rows))  # every point of the sidecar in MLflow, once
    assert not [p.name for p in prov.iterdir() if p.name.startswith(".")]  # no reserve, no staging, no temp file
    again = _cli("recover", str(prov))
    assert again.returncode == 0 and again.stdout.strip() == f"{run_id}: skipped (ended cleanly)"  # nothing redone


def test_a_file_size_limit_cuts_the_sidecar_at_a_row_and_names_the_points_it_lost(tmp_path, script):
    """The kernel refuses to grow any file of the process past 1 MB (EFBIG): the sidecar stops at a
    whole row, the PROV document (small) is written and counts every point, one warning names the lost ones."""
    from mlflow.tracking import MlflowClient

    done = script(TRAIN).run(str(tmp_path), str(1_000_000), timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Traceback" not in done.stderr
    assert f"RESULT {_expected_result()!r}" in done.stdout and "ENDED" in done.stdout
    (sidecar,) = (tmp_path / "prov").glob("metrics_*.csv")
    rows = _sidecar_rows_are_whole(sidecar)
    assert 1000 < rows < POINTS and sidecar.stat().st_size <= 1_000_000
    lost = re.search(r"(\d+) metric points never reached the metric sidecar .*?: loss \(training\) steps (\d+)-(\d+)",
                     done.stderr)
    assert lost, done.stderr[-3000:]
    assert int(lost[1]) == POINTS - rows and (int(lost[2]), int(lost[3])) == (rows, POINTS - 1)
    run_id = sidecar.stem.removeprefix("metrics_")
    doc = read_prov(tmp_path / "prov" / f"provgraph_{run_id}.json")
    assert {attr(s, "name"): attr(s, "count") for s in by_type(doc, "MetricSeries")} == {"loss": POINTS}
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")  # its own process: no limit
    assert len(client.get_metric_history(run_id, "loss")) == POINTS
    assert client.get_run(run_id).info.status == "FINISHED"
