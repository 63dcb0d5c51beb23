"""Lineage questions (a)-(f) of docs/provenance-model.md and the negative, asked in SPARQL (rdflib)
over the PROV-O export of real runs: the MNIST-like example (fit, then test in the same process)
and a fit preempted in one process and resumed from its checkpoint in another."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import rdflib

from prov4ml_lightning.provenance import load_document
from prov4ml_lightning.provenance.checks import check_file
from prov4ml_lightning.provenance.files import serialize_document
from prov4ml_lightning.provenance.queries import QUERIES

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"

_RESUME = """
import sys, warnings, logging
sys.path.insert(0, {examples!r})
from pathlib import Path
import lightning as L
from lightning_resume import Preempted, PreemptAt, make_callback, make_trainer
from lightning_mnist_like import DigitsData, SmallCNN
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
L.seed_everything(0, verbose=False)
out = Path({out!r})
part = sys.argv[1]
if part == "1":
    try:
        make_trainer(out, make_callback(out), 3, PreemptAt(epoch=1)).fit(
            SmallCNN(), datamodule=DigitsData(n_train=512, n_val=64, n_test=64))
    except Preempted:
        pass
else:  # a new process: a new session; a changed learning rate
    make_trainer(out, make_callback(out), 3).fit(
        SmallCNN(lr=1e-3), datamodule=DigitsData(n_train=512, n_val=64, n_test=64), ckpt_path="last")
"""


def _graph(prov_dir: Path) -> tuple[rdflib.Graph, Path]:
    (path,) = prov_dir.glob("provgraph_*.json")
    assert check_file(path) == []  # what `prov4ml validate` checks
    graph = rdflib.Graph().parse(data=serialize_document(load_document(path), "ttl"), format="turtle")
    return graph, path


def _rows(graph: rdflib.Graph, name: str) -> list[dict[str, str]]:
    return [{k: (str(v) if v is not None else None) for k, v in row.asdict().items()}
            for row in graph.query(QUERIES[name])]


@pytest.fixture(scope="module")
def mnist(tmp_path_factory: pytest.TempPathFactory) -> rdflib.Graph:
    out = tmp_path_factory.mktemp("mnist")
    subprocess.run([sys.executable, str(EXAMPLES / "lightning_mnist_like.py"), "--out", str(out), "--epochs", "2"],
                   check=True, capture_output=True, cwd=out, timeout=600)
    return _graph(out / "prov")[0]


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> rdflib.Graph:
    out = tmp_path_factory.mktemp("resumed")
    script = out / "resume.py"
    script.write_text(_RESUME.format(examples=str(EXAMPLES), out=str(out)))
    for part in ("1", "2"):
        subprocess.run([sys.executable, str(script), part], check=True, capture_output=True, cwd=out, timeout=600)
    return _graph(out / "prov")[0]


def test_a_datasets_code_and_hyperparameters_behind_the_final_model(mnist):
    roles = {r["role"] for r in _rows(mnist, "a_datasets")}
    assert roles == {"train", "val"}  # the test set came after the model: not behind it
    params = {r["name"]: r["value"] for r in _rows(mnist, "a_hyperparameters")}
    assert params["lr"] == "0.002" and params["datamodule/batch_size"] == "64"
    assert params["optimizer/0/betas"] == "[0.9, 0.999]"  # JSON, not a Python repr
    (code,) = _rows(mnist, "a_code")
    assert code["script"] and len(code["script"]) == 64


def test_b_the_best_checkpoint_its_epoch_chain_and_model(mnist):
    (best,) = _rows(mnist, "b_best_checkpoint")
    assert best["epoch"] == "1" and best["model"] is not None and len(best["sha"]) == 64
    chain = _rows(mnist, "b_chain")
    assert chain and all(int(r["step"]) < int(best["step"]) for r in chain)


def test_c_responsible_agents(mnist):
    roles = {r["role"].rsplit("#", 1)[-1]: r["agent"] for r in _rows(mnist, "c_agents")}
    assert set(roles) == {"experimenter", "provenanceRecorder", "executionHost"}
    assert ".host." not in roles["experimenter"] and "host." in roles["executionHost"]


def test_d_both_sessions_of_a_resumed_run_and_its_checkpoint(resumed):
    rows = _rows(resumed, "d_sessions")
    sessions = {r["n"]: r for r in rows}
    assert set(sessions) == {"1", "2"}
    assert sessions["1"]["status"] == "FAILED" and sessions["2"]["status"] == "FINISHED"
    assert sessions["1"]["end"] <= sessions["2"]["start"]
    resumed_from = [r["checkpoint"] for r in rows if r["n"] == "2" and r["checkpoint"]]
    assert resumed_from and resumed_from[0].endswith("last.ckpt")
    params = {r["name"]: r["value"] for r in _rows(resumed, "a_hyperparameters")}
    assert params["lr"] == "0.001"  # the resumed fit's value, not session 1's


def test_e_where_the_per_step_values_are(mnist):
    rows = _rows(mnist, "e_points")
    assert rows and {r["location"] for r in rows} == {rows[0]["location"]}
    location = Path(rows[0]["location"].removeprefix("file://"))
    import hashlib

    assert hashlib.sha256(location.read_bytes()).hexdigest() == rows[0]["sha"]


def test_f_training_environment(mnist):
    (env,) = _rows(mnist, "f_environment")
    assert env["python"] == ".".join(map(str, sys.version_info[:3])) and env["torch"]
    assert env["packages_sha"] and env["host_id"]


@pytest.mark.parametrize("which", ["mnist", "resumed"])
def test_nothing_read_or_made_after_a_checkpoint_is_upstream_of_it(which, request):
    graph = request.getfixturevalue(which)
    assert _rows(graph, "negative") == []
    # and the shortcut triples are there: the test set is read by the test loop only
    used = graph.query(QUERIES["a_datasets"].split("SELECT")[0] + """
        SELECT ?reader WHERE { ?reader prov:used ?d . ?d p4l:role "test" }""")
    assert all("test_" in str(r[0]) for r in used)
