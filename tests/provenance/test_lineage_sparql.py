"""Lineage questions (a)-(f) of docs/provenance-model.md and the negative, asked in SPARQL (rdflib)
over the PROV-O export of real runs: the MNIST-like example (fit, then test in the same process),
a fit preempted in one process and resumed from its checkpoint in another, and a classification
fit (integer class labels, distinct train/val/test sets, the responsible person and organisation
given by environment variables)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import rdflib

from prov4ml_lightning.provenance import load_document
from prov4ml_lightning.provenance.checks import check_file
from prov4ml_lightning.provenance.files import serialize_document
from prov4ml_lightning.provenance.queries import QUERIES
from prov4ml_lightning.provenance.vocab import undefined_terms, vocabulary_graph
from tests.provenance.prov_o import violations
from tests.provenance.test_prov_o import LINEAGE, answers_in_both

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


_CLASSIFY = """
import logging, warnings
from pathlib import Path
import lightning as L
import torch
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset
import prov4ml_lightning as prov4ml
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")
L.seed_everything(0, verbose=False)
out = Path({out!r})

def split(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long())  # 0-d int64 labels, 3 classes

class Classifier(L.LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))
    def step(self, batch, name):
        x, y = batch
        logits = self.net(x)
        loss = torch.nn.functional.cross_entropy(logits, y)
        self.log(f"{{name}}_loss", loss)
        self.log(f"{{name}}_acc", (logits.argmax(1) == y).float().mean())
        return loss
    def training_step(self, batch, i): return self.step(batch, "train")
    def validation_step(self, batch, i): self.step(batch, "val")
    def test_step(self, batch, i): self.step(batch, "test")
    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

callback = prov4ml.Prov4MLCallback(prov_user_namespace="www.example.org", experiment_name="classify",
                                   provenance_save_dir=out / "prov", mlflow_save_dir=out / "mlflow")
trainer = L.Trainer(max_epochs=3, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                    log_every_n_steps=4, enable_model_summary=False, default_root_dir=out, callbacks=[
                        callback, ModelCheckpoint(dirpath=out / "checkpoints", monitor="val_loss", save_top_k=1)])
model = Classifier()
trainer.fit(model, train_dataloaders=DataLoader(split(256, 1), batch_size=32, shuffle=True),
            val_dataloaders=DataLoader(split(64, 2), batch_size=32))
trainer.test(model, dataloaders=DataLoader(split(64, 3), batch_size=32), ckpt_path="best")
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


@pytest.fixture(scope="module")
def classification(tmp_path_factory: pytest.TempPathFactory) -> rdflib.Graph:
    out = tmp_path_factory.mktemp("classification")
    script = out / "classify.py"
    script.write_text(_CLASSIFY.format(out=str(out)))
    env = {**os.environ, "PROV4ML_PERSON_NAME": "Ada Lovelace", "PROV4ML_PERSON_EMAIL": "ada@example.org",
           "PROV4ML_PERSON_ORCID": "0000-0002-1825-0097", "PROV4ML_ORGANIZATION": "Example Lab"}
    subprocess.run([sys.executable, str(script)], check=True, capture_output=True, cwd=out, timeout=600, env=env)
    return _graph(out / "prov")[0]


def test_classification_fit_with_separate_train_val_test_sets(classification):
    g = classification
    datasets = {r["role"]: r["fingerprint"] for r in _rows(g, "a_datasets")}
    # the weights come from the training data only (the validation set chose the checkpoint, the
    # test set came after); 0-d int64 labels get a real fingerprint
    assert set(datasets) == {"train"} and all(fp and len(fp) == 64 for fp in datasets.values())
    (tested,) = _rows(g, "b_evaluated_checkpoint")  # test(ckpt_path="best"): the checkpoint chosen by val_loss
    assert tested["choice"] is not None and tested["monitor"] == "val_loss"
    params = {r["name"]: r["value"] for r in _rows(g, "a_hyperparameters")}
    assert params["lr"] == "0.05"
    (code,) = _rows(g, "a_code")
    assert code["script"] and len(code["script"]) == 64
    (best,) = _rows(g, "b_best_checkpoint")
    assert best["model"] is not None and len(best["sha"]) == 64  # the logged model has the best weights
    (who,) = _rows(g, "c_responsible")
    assert (who["person"], who["name"], who["mbox"], who["org_name"]) == (
        "https://orcid.org/0000-0002-1825-0097", "Ada Lovelace", "mailto:ada@example.org", "Example Lab")
    roles = {r["role"].rsplit("#", 1)[-1] for r in _rows(g, "c_agents")}
    assert roles == {"experimenter", "provenanceRecorder", "executionHost"}
    (session,) = {r["n"]: r for r in _rows(g, "d_sessions")}.values()  # fit + test: one session
    assert session["status"] == "FINISHED"
    points = _rows(g, "e_points")
    assert {r["name"] for r in points} >= {"train_loss", "val_loss", "val_acc", "test_loss", "test_acc"}
    (env,) = _rows(g, "f_environment")
    assert env["torch"] and env["host_id"]
    assert _rows(g, "negative") == []
    # the test set is read by the test loop only, after the fit
    readers = g.query(QUERIES["a_datasets"].split("SELECT")[0] + """
        SELECT ?reader WHERE { ?reader prov:used ?d . ?d p4l:role "test" }""")
    assert readers and all("test_" in str(r[0]) for r in readers)


@pytest.mark.parametrize("which", ["mnist", "resumed", "classification"])
def test_every_p4l_term_is_in_the_shipped_vocabulary(which, request):
    assert undefined_terms(request.getfixturevalue(which)) == set()


def test_a_datasets_code_and_hyperparameters_behind_the_final_model(mnist):
    roles = {r["role"] for r in _rows(mnist, "a_datasets")}
    assert roles == {"train"}  # the validation set is behind the choice of checkpoints, the test set after
    params = {r["name"]: r["value"] for r in _rows(mnist, "a_hyperparameters")}
    assert params["lr"] == "0.002" and params["batch_size"] == "64"
    assert params["optimizer/0/betas"] == "[0.9, 0.999]"  # JSON, not a Python repr
    (code,) = _rows(mnist, "a_code")
    assert code["script"] and len(code["script"]) == 64


def test_b_the_best_checkpoint_its_epoch_chain_and_model(mnist):
    (best,) = _rows(mnist, "b_best_checkpoint")
    assert best["epoch"] == "1" and best["model"] is not None and len(best["sha"]) == 64
    chain = _rows(mnist, "b_chain")
    assert chain and all(int(r["step"]) < int(best["step"]) for r in chain)
    (start,) = _rows(mnist, "b_initial")  # the chain reaches the weights the fit started from
    assert start["step"] == "0" and len(start["sha"]) == 64 and start["sha"] != best["sha"]


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
    # the code behind the model: the resumed session's, and the first session's (the fit it continues)
    codes = {r["code"].rsplit(".", 1)[-1] for r in _rows(resumed, "a_code")}
    assert codes == {"code", "session_2"}


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


@pytest.mark.parametrize("which", ["mnist", "resumed", "classification"])
def test_nothing_read_or_made_after_a_checkpoint_is_upstream_of_it(which, request):
    graph = request.getfixturevalue(which)
    assert _rows(graph, "negative") == []
    # and the shortcut triples are there: the test set is read by the test loop only
    used = graph.query(QUERIES["a_datasets"].split("SELECT")[0] + """
        SELECT ?reader WHERE { ?reader prov:used ?d . ?d p4l:role "test" }""")
    assert all("test_" in str(r[0]) for r in used)


@pytest.mark.parametrize("which", ["mnist", "resumed", "classification"])
def test_the_export_keeps_to_prov_o_and_oxigraph_answers_alike(which, request):
    graph = request.getfixturevalue(which)
    assert violations(graph, vocabulary_graph()) == []  # PROV-O's domains, ranges, disjointness
    answers = answers_in_both(graph, graph.serialize(format="nt"))  # a second SPARQL engine
    assert answers["a_code"] and answers["f_environment"] and answers["negative"] == []


@pytest.mark.parametrize("which", ["mnist", "resumed", "classification"])
def test_every_checkpoint_and_model_reaches_its_code_environment_and_hyperparameters(which, request):
    """Along PROV's own dependencies only: what a standard PROV consumer follows."""
    graph = request.getfixturevalue(which)
    prefixes = QUERIES["a_code"].split("SELECT")[0]
    things = {str(r[0]) for r in graph.query(prefixes + """SELECT ?t WHERE {
        { ?t a p4l:Checkpoint } UNION { ?t a mls:Model } }""")}
    assert len(things) >= 3
    for kind in ("prov:Plan", "p4l:Environment", "mls:HyperParameterSetting"):
        reached = {str(r[0]) for r in graph.query(prefixes + f"""SELECT DISTINCT ?t WHERE {{
            {{ ?t a p4l:Checkpoint }} UNION {{ ?t a mls:Model }}
            ?t {LINEAGE} ?u . ?u a {kind} }}""")}
        assert reached == things, (kind, things - reached)
