"""Concurrent first use of an embedded store: many scripts started at once on a fresh folder."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_SCRIPT = textwrap.dedent("""
    import sys
    import prov4ml_lightning as prov4ml

    index, prov_dir, mlflow_dir = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    prov4ml.start_run(prov_user_namespace="www.example.org", experiment_name="array",
                      run_name=f"task-{index}", provenance_save_dir=prov_dir, mlflow_save_dir=mlflow_dir)
    prov4ml.log_param("task", index)
    for step in range(50):
        prov4ml.log_metric("loss", 1.0 / (step + 1), step=step)
    sys.stdout.write(prov4ml.get_run_id() + "\\n")
    prov4ml.end_run()
""")


@pytest.mark.slow
def test_eight_processes_create_one_new_store_at_once(tmp_path: Path) -> None:
    """Eight scripts on a fresh ``mlflow_save_dir`` (a job array): MLflow's schema migration would
    race itself (``duplicate column name: step``); every run must end FINISHED with every point."""
    from mlflow.tracking import MlflowClient

    from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri

    script = tmp_path / "task.py"
    script.write_text(_SCRIPT)
    mlflow_dir = tmp_path / "mlflow"  # does not exist yet: every process finds a fresh folder
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("MLFLOW_TRACKING_URI", None)
    procs = [subprocess.Popen([sys.executable, str(script), str(i), str(tmp_path / f"prov{i}"), str(mlflow_dir)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for i in range(8)]
    results = [p.communicate(timeout=240) for p in procs]
    for proc, (_out, err) in zip(procs, results):
        assert proc.returncode == 0, err[-3000:]
        assert "Prov4MLWarning" not in err, err[-3000:]
    client = MlflowClient(default_tracking_uri(mlflow_dir))
    run_ids = [out.strip().splitlines()[-1] for out, _ in results]
    assert len(set(run_ids)) == 8
    for i, run_id in enumerate(run_ids):
        run = client.get_run(run_id)
        assert run.info.status == "FINISHED"
        assert run.data.params["task"] == str(i)
        history = client.get_metric_history(run_id, "loss")
        assert sorted(m.step for m in history) == list(range(50))
