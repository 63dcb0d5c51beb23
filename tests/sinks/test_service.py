"""The MLflow service process: the training process hands MLflow its work and does not wait for it
during training; ``end_run`` waits for what is left (the default), or not (``PROV4ML_WAIT_FOR_MLFLOW=0``).

Real processes, real SQLite stores, read back with MlflowClient. Most tests here are of the opt-out
(``PROV4ML_WAIT_FOR_MLFLOW=0``: MLflow is read after the fact); the default has its own below.
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import time
import uuid
import warnings
from pathlib import Path

import pytest
import torch

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLWarning
from prov4ml_lightning.sinks.mlflow.service import get_service
from prov4ml_lightning.sinks.mlflow.sink import default_tracking_uri
from prov4ml_lightning.tracking.config import WAIT_ENV
from tests.helpers import attr, by_type, load_model, read_prov, user_params, wait_until

_SCRIPT = textwrap.dedent("""
    import json, os, sys, time
    import torch
    import prov4ml_lightning as prov4ml

    prov_dir, mlflow_dir, user_file, with_model = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4] == "1"
    t0 = time.perf_counter()
    prov4ml.start_run("www.example.org", "service", prov_dir, mlflow_dir)
    started = time.perf_counter() - t0
    for step in range(300):
        prov4ml.log_metric("loss", 1.0 / (step + 1), step=step)
    prov4ml.log_param("lr", 0.01)
    prov4ml.log_artifact(user_file)
    os.remove(user_file)  # the user's file is gone once log_artifact returned: MLflow must still get it
    mlflow_before_model = "mlflow" in sys.modules
    if with_model:
        class Net(torch.nn.Module):  # defined in __main__: it travels by value to the service
            def __init__(self):
                super().__init__()
                self.fc = torch.nn.Linear(3, 2)

            def forward(self, x):
                return self.fc(x)

        torch.manual_seed(0)
        prov4ml.log_model(Net(), "net")
    t1 = time.perf_counter()
    outputs = prov4ml.end_run()
    print(json.dumps({"run_id": outputs.run_id, "prov": str(outputs.prov_json), "start_s": started,
                      "end_s": time.perf_counter() - t1, "mlflow_before_model": mlflow_before_model,
                      "mlflow_at_end": "mlflow" in sys.modules}))
""")


def _run_script(tmp_path: Path, with_model: bool) -> tuple[dict, Path, Path]:
    script = tmp_path / "train.py"
    script.write_text(_SCRIPT)
    user_file = tmp_path / "notes.txt"
    user_file.write_text("the user's notes\n")
    mlflow_dir = tmp_path / "mlflow"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env[WAIT_ENV] = "0"
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "prov"), str(mlflow_dir), str(user_file),
                           "1" if with_model else "0"], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1]), mlflow_dir, tmp_path / "prov"


def _finished_run(mlflow_dir: Path, run_id: str):
    from prov4ml_lightning.sinks.mlflow.store import open_client

    # the store lock: the service may still be creating the store (two migrations at once would clash)
    client = open_client(default_tracking_uri(mlflow_dir))

    def finished():
        try:
            run = client.get_run(run_id)
        except Exception:
            return None
        return run if run.info.status == "FINISHED" else None

    # the service finishes after the training process exited: it is not waited for
    run = wait_until(finished, timeout=120, interval=0.2)
    return client, run


@pytest.mark.slow
def test_the_training_process_does_not_wait_and_mlflow_gets_everything_after_it_exits(tmp_path: Path) -> None:
    out, mlflow_dir, prov_dir = _run_script(tmp_path, with_model=True)
    assert out["mlflow_before_model"] is False  # no MLflow import in the training process
    assert out["start_s"] < 1.0, out  # no store creation, migration or run creation (seconds) in start_run
    client, run = _finished_run(mlflow_dir, out["run_id"])
    history = client.get_metric_history(out["run_id"], "loss")
    assert sorted(m.step for m in history) == list(range(300))
    assert user_params(run.data.params) == {"lr": "0.01"}
    notes = Path(client.download_artifacts(out["run_id"], "notes.txt", str(tmp_path / "down")))
    assert notes.read_text() == "the user's notes\n"  # the copy handed over, although the user deleted the file
    assert not (prov_dir / ".prov4ml_staging").exists() or not any((prov_dir / ".prov4ml_staging").iterdir())
    prov_files = {a.path for a in client.list_artifacts(out["run_id"], "prov")}
    assert f"prov/provgraph_{out['run_id']}.json" in prov_files
    # the model: logged by the service under the id the PROV document already names
    doc = read_prov(Path(out["prov"]))
    (model,) = [m for m in by_type(doc, "Model")]
    uri = str(attr(model, "model_uri"))
    assert uri.startswith("models:/m-"), uri
    wait_until(lambda: str(client.get_logged_model(uri.split("/", 1)[1]).status) == "READY", timeout=60,
               interval=0.2)
    loaded = load_model(default_tracking_uri(mlflow_dir), uri)
    torch.manual_seed(0)
    expected = torch.nn.Linear(3, 2)
    assert torch.equal(loaded.fc.weight, expected.weight)  # the weights the training process had


def test_start_run_returns_before_mlflow_and_get_run_id_waits_for_the_run(run_args: dict, mlflow_dir: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv(WAIT_ENV, "0")
    run = prov4ml.start_run(**run_args)
    assert run.info.experiment_id == "" or run.info.experiment_id  # known only once the service answered
    run_id = prov4ml.get_run_id()  # waits until the run exists
    client = MlflowClient(default_tracking_uri(mlflow_dir))
    assert client.get_run(run_id).info.status == "RUNNING"
    assert run.info.experiment_id == client.get_run(run_id).info.experiment_id
    prov4ml.log_metric("loss", 0.5, step=0)
    prov4ml.end_run()
    assert prov4ml.wait_for_mlflow(60)
    assert client.get_run(run_id).info.status == "FINISHED"
    assert [m.value for m in client.get_metric_history(run_id, "loss")] == [0.5]


def test_runs_of_one_process_share_one_service(run_args: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WAIT_ENV, "0")
    first = prov4ml.start_run(**run_args)
    pid = first.sink.service.pid
    prov4ml.end_run()
    second = prov4ml.start_run(**{**run_args, "run_name": "second"})
    assert second.sink.service.pid == pid
    prov4ml.end_run()
    assert prov4ml.wait_for_mlflow(60)


def test_the_service_runs_below_the_training(run_args: dict) -> None:
    run = prov4ml.start_run(**run_args)
    service = run.sink.service
    prov4ml.log_metric("loss", 0.5, step=0)
    prov4ml.end_run()
    # every thread of the service, the MLflow work included, runs at a lower priority (a higher nice value)
    mine = os.getpriority(os.PRIO_PROCESS, 0)
    threads = [int(t) for t in os.listdir(f"/proc/{service.pid}/task")]
    assert threads and all(os.getpriority(os.PRIO_PROCESS, t) > mine for t in threads)


@pytest.mark.slow
def test_an_unusable_store_warns_as_soon_as_known_and_loses_nothing(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WAIT_ENV, "0")
    mlflow_dir = tmp_path / "broken"
    mlflow_dir.mkdir()
    (mlflow_dir / "mlflow.db").write_bytes(b"this is not an SQLite database" * 100)
    prov_dir = tmp_path / "prov"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        run = prov4ml.start_run("www.example.org", f"broken-{uuid.uuid4().hex[:6]}", prov_dir, mlflow_dir)
        for step in range(20):
            prov4ml.log_metric("loss", float(step), step=step)
        assert prov4ml.wait_for_mlflow(120)
        assert run.sink.offline  # known now, and said
        messages = [str(w.message) for w in caught if issubclass(w.category, Prov4MLWarning)]
        assert any(m.startswith("start_run: the MLflow store") and "prov4ml sync" in m for m in messages), messages
        prov4ml.log_param("lr", 0.1)  # later calls fail fast, quietly: the outage was announced
        outputs = prov4ml.end_run()
    doc = read_prov(outputs.prov_json)
    assert doc.get_records()  # the PROV document is written
    rows = outputs.metrics_file.read_text().splitlines()
    assert len(rows) == 21  # header + every point in the sidecar, for `prov4ml sync`


@pytest.mark.slow
def test_a_killed_service_fails_calls_fast_and_the_next_run_gets_a_new_one(run_args: dict,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(WAIT_ENV, "0")
    run = prov4ml.start_run(**run_args)
    service = run.sink.service
    assert prov4ml.wait_for_mlflow(120)
    with pytest.warns(Prov4MLWarning, match=rf"service process {service.pid} was killed \(SIGKILL\).*{run.run_id}"):
        os.kill(service.pid, 9)
        wait_until(lambda: service.dead is not None, timeout=20)  # its pipe closed: known at once, and said
    t = time.perf_counter()
    prov4ml.log_param("lr", 0.1)
    prov4ml.log_metric("loss", 1.0, step=0)
    with pytest.warns(Prov4MLWarning, match=f"end_run: MLflow's copy of run {run.run_id} is incomplete"):
        outputs = prov4ml.end_run()
    assert time.perf_counter() - t < 10
    assert outputs.prov_json.exists() and "loss" in outputs.metrics_file.read_text()
    again = prov4ml.start_run(**{**run_args, "run_name": "after"})
    assert again.sink.service is get_service() and again.sink.service.pid != service.pid
    prov4ml.end_run()
    assert prov4ml.wait_for_mlflow(120)


_KILLED = textwrap.dedent("""
    import sys, time
    import prov4ml_lightning as prov4ml

    run = prov4ml.start_run("www.example.org", "killed", sys.argv[1], sys.argv[2])
    prov4ml.log_param("lr", 0.1)
    for step in range(200):
        prov4ml.log_metric("loss", 1.0 / (step + 1), step=step)
    run.flush()  # in the sidecar now; MLflow's service is probably still importing MLflow
    print("ready", run.run_id, flush=True)
    time.sleep(600)
""")


@pytest.mark.slow
def test_a_training_killed_before_mlflow_caught_up_is_recovered_completely(tmp_path: Path, capsys) -> None:
    """SIGKILL right after start: the service still has the run's creation and points to write.
    It finishes them after the training died, and `prov4ml recover` waits for it before ending the
    MLflow run FAILED: nothing is lost and nothing is sent twice."""
    from prov4ml_lightning.cli import main

    script = tmp_path / "killed.py"
    script.write_text(_KILLED)
    prov_dir, mlflow_dir = tmp_path / "prov", tmp_path / "mlflow"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env[WAIT_ENV] = "0"
    env.pop("MLFLOW_TRACKING_URI", None)
    proc = subprocess.Popen([sys.executable, str(script), str(prov_dir), str(mlflow_dir)], stdout=subprocess.PIPE,
                            text=True, env=env)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.startswith("ready"), line
    run_id = line.split()[1]
    proc.kill()
    proc.wait()
    assert main(["recover", str(prov_dir)]) == 0
    assert f"{run_id}: recovered as CRASHED, 200 metric points" in capsys.readouterr().out
    from prov4ml_lightning.sinks.mlflow.store import open_client

    client = open_client(default_tracking_uri(mlflow_dir))
    run = client.get_run(run_id)
    assert run.info.status == "FAILED" and run.data.tags["prov4ml.crashed"] == "true"
    assert user_params(run.data.params) == {"lr": "0.1"}
    history = client.get_metric_history(run_id, "loss")
    assert sorted(m.step for m in history) == list(range(200))  # every point, once


_BROKEN_STORE = textwrap.dedent("""
    import sys, torch
    import prov4ml_lightning as prov4ml

    prov4ml.start_run("www.example.org", "broken", sys.argv[1], sys.argv[2])
    prov4ml.log_param("lr", 0.1)
    for step in range(30):
        prov4ml.log_metric("loss", 1.0 / (step + 1), step=step)
    torch.manual_seed(0)
    prov4ml.log_model(torch.nn.Linear(3, 2), "net")
    print("run", prov4ml.end_run().run_id, flush=True)  # exits at once: no wait_for_mlflow
""")


@pytest.mark.slow
def test_a_broken_store_is_reported_at_exit_and_sync_writes_everything_once_it_is_fixed(tmp_path: Path,
                                                                                         capsys) -> None:
    from prov4ml_lightning.cli import main
    from prov4ml_lightning.sinks.mlflow.store import open_client

    script = tmp_path / "short.py"
    script.write_text(_BROKEN_STORE)
    prov_dir, mlflow_dir = tmp_path / "prov", tmp_path / "mlflow"
    mlflow_dir.mkdir()
    (mlflow_dir / "mlflow.db").write_bytes(b"junk, not a database" * 1000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env[WAIT_ENV] = "0"
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, str(script), str(prov_dir), str(mlflow_dir)], capture_output=True,
                          text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.split()[-1]
    # the exit let the service try: the failure is said before the script returns, on one line
    assert f"start_run: the MLflow store sqlite:///{mlflow_dir}/mlflow.db could not take run {run_id}" in done.stderr
    assert "[SQL:" not in done.stderr
    (mlflow_dir / "mlflow.db").unlink()  # the user repairs the store

    assert main(["sync", str(prov_dir)]) == 0, capsys.readouterr()
    client = open_client(default_tracking_uri(mlflow_dir))
    (run,) = client.search_runs([client.get_experiment_by_name("broken").experiment_id])
    assert run.data.tags["prov4ml.local_run_id"] == run_id and run.info.status == "FINISHED"
    assert user_params(run.data.params) == {"lr": "0.1"}
    assert sorted(m.step for m in client.get_metric_history(run.info.run_id, "loss")) == list(range(30))
    # the model the service could not log is logged by sync, under the id PROV already names
    (model,) = by_type(read_prov(prov_dir / f"provgraph_{run_id}.json"), "Model")
    uri = str(attr(model, "model_uri"))
    loaded = load_model(default_tracking_uri(mlflow_dir), uri)
    torch.manual_seed(0)
    assert torch.equal(loaded.weight, torch.nn.Linear(3, 2).weight)
    assert not (prov_dir / ".prov4ml_staging").exists()


_DEFAULT_SCRIPT = textwrap.dedent("""
    import json, sys, time, warnings
    import torch
    import prov4ml_lightning as prov4ml
    from mlflow.tracking import MlflowClient  # the user's own reading of MLflow, right after end_run

    prov_dir, mlflow_dir = sys.argv[1], sys.argv[2]
    prov4ml.start_run("www.example.org", "contract", prov_dir, mlflow_dir)
    for step in range(500):
        prov4ml.log_metric("loss", 1.0 / (step + 1), step=step)
    prov4ml.log_params({"lr": 0.01, "batch_size": 32})
    torch.manual_seed(0)
    prov4ml.log_model(torch.nn.Linear(3, 2), "net")
    run_id = prov4ml.get_run_id()
    t0 = time.perf_counter()
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        prov4ml.end_run()
    end_s = time.perf_counter() - t0
    client = MlflowClient(f"sqlite:///{mlflow_dir}/mlflow.db")
    run = client.get_run(run_id)
    models = client.search_logged_models(experiment_ids=[run.info.experiment_id])
    print(json.dumps({
        "status": run.info.status, "end_s": end_s,
        "steps": sorted(m.step for m in client.get_metric_history(run_id, "loss")),
        "params": run.data.params, "tags": sorted(run.data.tags),
        "models": [(m.name, str(m.status), m.source_run_id) for m in models],
        "prov": sorted(a.path for a in client.list_artifacts(run_id, "prov")),
        "warnings": [str(w.message) for w in said], "run_id": run_id,
    }))
""")


def _contract_script(tmp_path: Path, env_update: dict[str, str]) -> dict:
    script = tmp_path / "contract.py"
    script.write_text(_DEFAULT_SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop(WAIT_ENV, None)
    env.pop("MLFLOW_TRACKING_URI", None)
    env.update(env_update)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "prov"), str(tmp_path / "mlflow")],
                          capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_by_default_end_run_returns_with_the_finished_run_in_mlflow(tmp_path: Path) -> None:
    """As ``mlflow.end_run`` and ``wandb.finish``: the script reads MLflow in the same process, right after."""
    out = _contract_script(tmp_path, {})
    assert out["status"] == "FINISHED"
    assert out["steps"] == list(range(500))
    assert user_params(out["params"]) == {"lr": "0.01", "batch_size": "32"}
    assert [(name, status.rsplit(".", 1)[-1], rid) for name, status, rid in out["models"]] == [
        ("net", "READY", out["run_id"])]
    assert f"prov/provgraph_{out['run_id']}.json" in out["prov"] and "prov4ml.provenance_file" in out["tags"]
    assert not [w for w in out["warnings"] if "MLflow" in w], out["warnings"]


@pytest.mark.slow
def test_a_wait_that_runs_out_warns_once_with_what_is_pending_and_mlflow_completes_after(tmp_path: Path) -> None:
    from prov4ml_lightning.tracking.config import WAIT_TIMEOUT_ENV

    out = _contract_script(tmp_path, {WAIT_TIMEOUT_ENV: "0"})
    said = [w for w in out["warnings"] if "MLflow has not taken all of run" in w]
    assert len(said) == 1, out["warnings"]
    assert "pending: " in said[0] and "end_run" in said[0] and f"prov4ml sync {tmp_path / 'prov'}" in said[0]
    # not an error: the service finished at the process's exit, and MLflow has the whole run
    client, _ = _finished_run(tmp_path / "mlflow", out["run_id"])
    assert sorted(m.step for m in client.get_metric_history(out["run_id"], "loss")) == list(range(500))


_MODEL_SCRIPT = textwrap.dedent("""
    import json, sys
    import torch
    import prov4ml_lightning as prov4ml
    from prov4ml_lightning.sinks.mlflow.service import get_service

    def torch_in_service():  # the service's own memory map: libtorch is there once it imported torch
        with open(f"/proc/{get_service().pid}/maps") as maps:
            return any("libtorch" in line for line in maps)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(3, 2)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    net = Net()
    run = prov4ml.start_run("www.example.org", "models", sys.argv[1], sys.argv[2])
    prov4ml.log_model(net, "net")
    prov4ml.end_run()  # waits for MLflow: the model is logged
    after_plain = torch_in_service()
    asked = prov4ml.start_run("www.example.org", "models", sys.argv[1], sys.argv[2])
    # an option that needs the module (code to add): MLflow's own log_model saves it (torch in the service)
    prov4ml.log_model(net, "asked", code_paths=[])
    prov4ml.end_run()
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    print(json.dumps({"run_id": run.run_id, "asked_run_id": asked.run_id, "after_plain": after_plain,
                      "after_asked": torch_in_service(), "y": net(x).tolist()}))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads the service's memory map in /proc")
def test_log_model_writes_mlflow_s_pytorch_model_without_torch_in_the_service(tmp_path: Path) -> None:
    script = tmp_path / "train.py"
    script.write_text(_MODEL_SCRIPT)
    mlflow_dir = tmp_path / "mlflow"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    env.pop("MLFLOW_TRACKING_URI", None)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "prov"), str(mlflow_dir)],
                          capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out["after_plain"] is False  # the service logged the model without importing torch
    assert out["after_asked"] is True  # and the check sees torch once it is there

    import mlflow
    import mlflow.pyfunc
    import mlflow.pytorch
    from mlflow import MlflowClient

    uri = default_tracking_uri(mlflow_dir)
    client = MlflowClient(uri)
    # the run's output: the LoggedModel created under the id the training process drew
    (model_id,) = [o.model_id for o in client.get_run(out["run_id"]).outputs.model_outputs]
    logged = client.get_logged_model(model_id)
    assert str(logged.status) == "READY" and logged.source_run_id == out["run_id"] and logged.name == "net"
    (asked_id,) = [o.model_id for o in client.get_run(out["asked_run_id"]).outputs.model_outputs]
    assert str(client.get_logged_model(asked_id).status) == "READY"
    out["plain"], out["asked"] = f"models:/{model_id}", f"models:/{asked_id}"
    x = torch.arange(6, dtype=torch.float32).reshape(2, 3)
    mlflow.set_tracking_uri(uri)
    try:
        for model_uri in (out["plain"], f"runs:/{out['run_id']}/net", "models:/net/1"):  # id, run, registry
            loaded = mlflow.pytorch.load_model(model_uri)
            assert loaded(x).tolist() == out["y"], model_uri
        y = mlflow.pyfunc.load_model(out["plain"]).predict(x.numpy())
        assert torch.allclose(torch.as_tensor(y), torch.tensor(out["y"]))
        plain = mlflow.models.get_model_info(out["plain"])
        assert mlflow.pytorch.load_model(out["asked"])(x).tolist() == out["y"]
    finally:
        mlflow.set_tracking_uri(None)
    # the MLmodel flavours mlflow.pytorch.save_model writes for the same module
    pickled = {"serialization_format": "pickle"}
    mlflow.pytorch.save_model(torch.nn.Linear(3, 2), tmp_path / "reference", pip_requirements=[],
                              **(pickled if "serialization_format" in inspect.signature(
                                  mlflow.pytorch.save_model).parameters else {}))
    assert plain.flavors == mlflow.models.Model.load(tmp_path / "reference").flavors
    assert client.get_registered_model("net").latest_versions[0].source == out["plain"]


_BUSY_SCRIPT = textwrap.dedent("""
    import json, os, subprocess, sys, time
    import prov4ml_lightning as prov4ml
    from prov4ml_lightning.sinks.mlflow.service import get_service

    busy_s = float(sys.argv[3])
    spin = "import time\\nend = time.time() + %s\\nwhile time.time() < end: pass" % (3 * busy_s)  # ended below
    # every core taken, also while start_run waits for git (a core it leaves is free, and taken): one
    # spinner per core, and this process's "training"
    spinners = [subprocess.Popen([sys.executable, "-c", spin]) for _ in range(os.cpu_count() or 1)]
    prov4ml.start_run("www.example.org", "held", sys.argv[1], sys.argv[2])
    prov4ml.log_metric("loss", 0.5, step=0)
    pid = get_service().pid
    end = time.time() + busy_s - 0.5
    while time.time() < end:
        pass
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu_s = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    with open(f"/proc/{pid}/maps") as f:
        maps = f.read()
    held = {"service_cpu_s": cpu_s, "mlflow_loaded": "sqlalchemy" in maps or "numpy" in maps}
    for s in spinners:
        s.kill()
        s.wait()
    t = time.perf_counter()
    outputs = prov4ml.end_run()
    held.update(run_id=outputs.run_id, end_s=time.perf_counter() - t)
    print(json.dumps(held))
""")


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/stat").exists(), reason="the service looks at /proc to yield (Linux)")
def test_the_service_holds_its_work_while_the_training_uses_every_core(tmp_path: Path) -> None:
    """Issue 27: work done "in the background" on a machine whose cores the training uses is taken
    from the training; the service waits (at most PROV4ML_SERVICE_DEFER_S) for a free core or an
    idle training process, and end_run, which waits for it, still returns with the run complete."""
    script = tmp_path / "held.py"
    script.write_text(_BUSY_SCRIPT, encoding="utf-8")
    mlflow_dir = tmp_path / "mlflow"
    env = {**os.environ, "PROV4ML_SERVICE_DEFER_S": "30"}
    env.pop(WAIT_ENV, None)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "prov"), str(mlflow_dir), "5"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr[-3000:]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    # while every core was busy the service did not even import MLflow (~1.5 s of CPU)
    assert out["mlflow_loaded"] is False and out["service_cpu_s"] < 0.5, out
    run = _finished_run(mlflow_dir, out["run_id"])
    _client, run = run
    assert run.data.metrics["loss"] == 0.5


_SIGNATURE_SCRIPT = textwrap.dedent("""
    import json, sys, warnings
    import torch
    from mlflow.models import infer_signature
    import prov4ml_lightning as prov4ml

    warnings.simplefilter("error", prov4ml.Prov4MLWarning)
    torch.manual_seed(0)
    net = torch.nn.Linear(3, 2)
    x = torch.zeros(4, 3)
    signature = infer_signature(x.numpy(), net(x).detach().numpy())
    run = prov4ml.start_run("www.example.org", "signature", sys.argv[1], sys.argv[2])
    # at once: the request reaches the service while it imports MLflow
    prov4ml.log_model(net, "net", signature=signature)
    prov4ml.end_run()
    print(json.dumps({"run_id": run.run_id}))
""")


@pytest.mark.slow
def test_a_model_logged_with_mlflow_objects_among_its_options_reaches_mlflow(tmp_path: Path) -> None:
    """A ``signature`` (an MLflow object) used to reach the service's reader thread while its main
    thread imported MLflow: one saw a half-imported module, and the whole run went offline."""
    script = tmp_path / "train.py"
    script.write_text(_SIGNATURE_SCRIPT)
    env = {**os.environ}
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop(WAIT_ENV, None)
    for attempt in range(2):  # a race: two new services
        mlflow_dir = tmp_path / f"mlflow{attempt}"
        done = subprocess.run([sys.executable, str(script), str(tmp_path / "prov"), str(mlflow_dir)],
                              capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
        assert done.returncode == 0, done.stderr[-3000:]
        run_id = json.loads(done.stdout.strip().splitlines()[-1])["run_id"]
        client, run = _finished_run(mlflow_dir, run_id)
        (model_id,) = [o.model_id for o in run.outputs.model_outputs]
        logged = client.get_logged_model(model_id)
        assert str(logged.status) == "READY"
        import mlflow.models

        mlflow.set_tracking_uri(default_tracking_uri(mlflow_dir))
        try:
            signature = mlflow.models.get_model_info(f"models:/{model_id}").signature
        finally:
            mlflow.set_tracking_uri(None)
        assert signature is not None and signature.inputs is not None and signature.outputs is not None


@pytest.mark.parametrize("text", ["abc", "-1", "nan", "inf", "-inf"])
def test_a_hold_time_that_is_not_seconds_is_warned_about_and_the_default_used(text, monkeypatch) -> None:
    """NaN or infinity would leave the MLflow view's lag unbounded (comparisons with NaN are false)."""
    from prov4ml_lightning.sinks.mlflow.service import DEFER_DEFAULT_S, DEFER_ENV, _defer_seconds

    monkeypatch.setenv(DEFER_ENV, text)
    with pytest.warns(Prov4MLWarning, match=f"{DEFER_ENV}='{text}' is not a number of seconds >= 0"):
        assert _defer_seconds() == DEFER_DEFAULT_S
    for good, value in (("0", 0.0), ("2.5", 2.5), ("", DEFER_DEFAULT_S)):
        monkeypatch.setenv(DEFER_ENV, good)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert _defer_seconds() == value
