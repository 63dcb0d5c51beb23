"""The decisions that shaped a model, and a resume across processes that keeps every fact, read back
with rdflib SPARQL over ``prov4ml export --format ttl`` of a real run: a fit preempted in one process,
resumed in another (EarlyStopping stops it), then ``test(ckpt_path="best")``. The data behind the
model's weights is the train set only, the data behind its selection the validation set, and only the
test loop and its values depend on the test set; checkpoints deleted or overwritten in the second
session are invalidated once, and ``prov4ml recover`` rebuilds the same from the journal."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import rdflib

from prov4ml_lightning.provenance.checks import check_file
from prov4ml_lightning.provenance.queries import PREFIXES, QUERIES
from prov4ml_lightning.recovery.recover import recover

pytestmark = pytest.mark.slow

_SCRIPT = """
import sys, logging, warnings
from pathlib import Path
import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset
import prov4ml_lightning as prov4ml
logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
warnings.filterwarnings("ignore")
L.seed_everything(0, verbose=False)
out, part = Path(sys.argv[1]), sys.argv[2]

def split(n, seed):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    return TensorDataset(x, (x[:, 0] + x[:, 1] > 0).long())

class Net(L.LightningModule):
    def __init__(self, lr=0.05):
        super().__init__()
        self.save_hyperparameters()
        self.net = torch.nn.Linear(8, 2)
    def step(self, batch, name):
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log(f"{name}_loss", loss)
        return loss
    def training_step(self, b, i): return self.step(b, "train")
    def validation_step(self, b, i): self.step(b, "val")
    def test_step(self, b, i): self.step(b, "test")
    def configure_optimizers(self): return torch.optim.SGD(self.parameters(), lr=self.hparams.lr)

class Preempted(RuntimeError):
    pass

class PreemptAt(Callback):
    def on_train_epoch_start(self, trainer, module):
        if trainer.current_epoch == 2:
            raise Preempted()

def trainer(*extra):
    return L.Trainer(max_epochs=8, accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                     enable_model_summary=False, default_root_dir=out, num_sanity_val_steps=1, callbacks=[
        prov4ml.Prov4MLCallback(prov_user_namespace="www.example.org", experiment_name="decisions",
                                provenance_save_dir=out / "prov", mlflow_save_dir=out / "mlflow"),
        ModelCheckpoint(dirpath=out / "checkpoints", monitor="val_loss", save_top_k=1, save_last=True), *extra])

train = lambda: DataLoader(split(128, 1), batch_size=32)
val = lambda: DataLoader(split(64, 2), batch_size=32)
if part == "1":  # preempted at the start of epoch 2
    try:
        trainer(PreemptAt()).fit(Net(), train_dataloaders=train(), val_dataloaders=val())
    except Preempted:
        pass
else:  # a new process resumes; no value improves by 1.0, so EarlyStopping stops after its patience
    t = trainer(EarlyStopping(monitor="val_loss", patience=2, min_delta=1.0))
    t.fit(Net(), train_dataloaders=train(), val_dataloaders=val(), ckpt_path="last")
    t.test(dataloaders=DataLoader(split(64, 3), batch_size=32), ckpt_path="best")
"""


def _export(prov_dir: Path) -> rdflib.Graph:
    (path,) = prov_dir.glob("provgraph_*.json")
    assert check_file(path) == []
    ttl = subprocess.run([sys.executable, "-m", "prov4ml_lightning", "export", str(path), "--format", "ttl"],
                         check=True, capture_output=True, text=True, timeout=300).stdout
    return rdflib.Graph().parse(data=ttl, format="turtle")


@pytest.fixture(scope="module")
def resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[rdflib.Graph, Path]:
    out = tmp_path_factory.mktemp("decisions")
    script = out / "fit.py"
    script.write_text(_SCRIPT)
    for part in ("1", "2"):
        subprocess.run([sys.executable, str(script), str(out), part], check=True, capture_output=True, cwd=out,
                       timeout=600)
    return _export(out / "prov"), out


def _ask(graph: rdflib.Graph, query: str) -> list[dict[str, str | None]]:
    text = query if query.startswith("PREFIX") else PREFIXES + query
    return [{k: (str(v) if v is not None else None) for k, v in row.asdict().items()} for row in graph.query(text)]


def _types(graph: rdflib.Graph, node: str) -> set[str]:
    return {r["t"].rsplit("#", 1)[-1] for r in _ask(graph, f"SELECT ?t WHERE {{ <{node}> a ?t }}")}


def test_the_data_behind_the_weights_is_the_train_set_and_behind_the_selection_the_validation_set(resumed):
    g, _ = resumed
    assert {r["role"] for r in _ask(g, QUERIES["a_datasets"])} == {"train"}
    selection = _ask(g, QUERIES["a_selection_datasets"])
    assert {r["role"] for r in selection} == {"val"}
    # the model's fit was ended by EarlyStopping's decision
    assert any(r["decision"].endswith(".fit_2.stop") for r in selection)


def test_only_the_test_loop_and_its_values_depend_on_the_test_set(resumed):
    g, _ = resumed
    downstream = {r["downstream"] for r in _ask(g, QUERIES["test_downstream"])}
    loops = {d for d in downstream if "TestLoop" in _types(g, d)}
    assert len(loops) == 1
    (loop,) = loops
    assert downstream - loops  # its values
    for node in downstream - loops:
        assert g.query(PREFIXES + f"ASK {{ <{node}> a p4l:MetricSegment ; prov:wasGeneratedBy <{loop}> }}").askAnswer


def test_early_stopping_ended_the_fit_from_the_validation_values_it_monitored(resumed):
    g, _ = resumed
    rows = _ask(g, QUERIES["b_early_stopping"])
    assert {(r["fit"].rsplit(".", 1)[-1], r["monitor"], r["reason"], r["patience"]) for r in rows} == {
        ("fit_2", "val_loss", "PATIENCE_EXHAUSTED", "2")}
    values = {r["value"] for r in rows}
    assert values  # each a segment of val_loss that one of fit_2's validation loops generated
    for value in values:
        assert g.query(PREFIXES + f"""ASK {{ <{value}> a p4l:MetricSegment ; p4l:name "val_loss" ;
            prov:wasGeneratedBy ?loop . ?loop a p4l:ValidationLoop ; prov:used ?d . ?d p4l:role "val" }}""").askAnswer
        assert ".fit_2." in value
    # the fit ran the epochs it says, not the trainer's epoch counter
    (fit,) = _ask(g, 'SELECT ?done WHERE { ?fit a p4l:Fit ; rdfs:label "fit 2" ; p4l:epochs_completed ?done }'
                     .replace("SELECT", "PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#> SELECT"))
    epochs = _ask(g, 'SELECT ?e ?n WHERE { ?e a p4l:TrainingEpoch ; p4l:epoch ?n ; p4l:status "FINISHED" . '
                     'FILTER (CONTAINS(STR(?e), ".fit_2.")) }')
    assert int(fit["done"]) == len(epochs) and min(int(e["n"]) for e in epochs) == 2
    # ... and so does the preempted fit: the epochs it finished before the exception (user test)
    (first,) = _ask(g, 'SELECT ?done WHERE { ?fit a p4l:Fit ; rdfs:label "fit 1" ; p4l:epochs_completed ?done }'
                       .replace("SELECT", "PREFIX rdfs: <http://www.w3.org/2000/01/rdf-schema#> SELECT"))
    finished = _ask(g, 'SELECT ?e WHERE { ?e a p4l:TrainingEpoch ; p4l:status "FINISHED" . '
                       'FILTER (CONTAINS(STR(?e), ".fit_1.")) }')
    assert int(first["done"]) == len(finished) == 2


def test_the_test_used_the_checkpoint_the_selection_chose_as_best(resumed):
    g, out = resumed
    (row,) = _ask(g, QUERIES["b_evaluated_checkpoint"])
    assert row.get("choice") is not None and row.get("monitor") == "val_loss"
    (path,) = _ask(g, f"SELECT ?p WHERE {{ <{row['checkpoint']}> p4l:path ?p }}")
    assert Path(path["p"]).parent == (out / "checkpoints").resolve() and Path(path["p"]).name != "last.ckpt"
    # the choice was made from validation values: its selection used val_loss segments only
    used = _ask(g, f"""SELECT ?role WHERE {{ <{row['choice']}> prov:wasGeneratedBy ?sel . ?sel prov:used ?v .
        ?v prov:wasGeneratedBy ?loop . ?loop prov:used ?d . ?d p4l:role ?role }}""")
    assert used and {r["role"] for r in used} == {"val"}


def test_the_sanity_checks_used_the_validation_data(resumed):
    g, _ = resumed
    rows = _ask(g, "SELECT ?check ?role WHERE { ?check a p4l:SanityCheck . "
                   "OPTIONAL { ?check prov:used ?d . ?d p4l:role ?role } }")
    assert len(rows) == 2 and {r["role"] for r in rows} == {"val"}


def _invalidations(g: rdflib.Graph) -> dict[str, list[str]]:
    rows = _ask(g, "SELECT ?c ?by WHERE { ?c a p4l:Checkpoint . "
                   "OPTIONAL { ?c prov:qualifiedInvalidation ?i . ?i prov:activity ?by } }")
    out: dict[str, list[str]] = {}
    for r in rows:
        out.setdefault(r["c"], [])
        if r.get("by") is not None:
            out[r["c"]].append(r["by"])
    return out


def test_a_checkpoint_is_invalidated_once_exactly_when_its_file_no_longer_holds_it(resumed):
    g, _ = resumed
    invalidated = _invalidations(g)
    seen_current = seen_gone = 0
    for checkpoint, by in invalidated.items():
        (row,) = _ask(g, f"SELECT ?p ?sha WHERE {{ <{checkpoint}> p4l:path ?p ; p4l:sha256 ?sha }}")
        path = Path(row["p"])
        current = path.exists() and hashlib.sha256(path.read_bytes()).hexdigest() == row["sha"]
        assert len(by) == (0 if current else 1), (checkpoint, by)
        seen_current += current
        seen_gone += not current
    assert seen_current == 2 and seen_gone >= 4  # last.ckpt and the best remain
    # the last.ckpt the resume read was overwritten by the resumed fit's first epoch
    (resumed_from,) = _ask(g, 'SELECT ?c WHERE { ?fit a p4l:Fit ; rdfs:label "fit 2" ; prov:used ?c . '
                              '?c a p4l:Checkpoint }'.replace("SELECT", "PREFIX rdfs: "
                                                              "<http://www.w3.org/2000/01/rdf-schema#> SELECT"))
    assert [b.rsplit(".", 1)[-1] for b in invalidated[resumed_from["c"]]] == ["epoch_2"]


def test_recover_rebuilds_the_decisions_and_invalidations_from_the_journal(resumed, tmp_path):
    g, out = resumed
    copy = tmp_path / "prov"
    shutil.copytree(out / "prov", copy)
    for written in copy.glob("provgraph_*"):
        written.unlink()  # nothing but the journal and the sidecar
    (result,) = recover(copy, force=True)
    assert result.prov_json is not None
    rebuilt = _export(copy)
    assert _invalidations(rebuilt) == _invalidations(g)
    for name in ("b_early_stopping", "b_evaluated_checkpoint", "a_selection_datasets", "a_datasets"):
        assert sorted(map(repr, _ask(rebuilt, QUERIES[name]))) == sorted(map(repr, _ask(g, QUERIES[name]))), name
