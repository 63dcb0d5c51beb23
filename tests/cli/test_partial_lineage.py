"""Partial loads across runs, and the weights tags of a run recorded offline, judged on real runs in
real stores, read back with MlflowClient, prov and ``prov4ml lineage``:

- A trains a net with a backbone (a LightningModule holding it as ``self.model``: keys
  ``model.backbone.*``) on dataset X and logs its model; B is another LightningModule with the same
  backbone class at ``backbone.*`` and a new head, its backbone loaded from A's checkpoint file
  (``torch.load``, the prefix cut, ``load_state_dict(strict=False)``), trained on Y; C has a fresh
  backbone and trains on Y.
- B's initial weights derive from A's model and checkpoint with a derivation that says it is
  partial, which prefixes on each side and how many tensors of how many; C links to nothing;
  ``lineage --downstream <X>`` lists B as a partial load from A, not C.
- A run recorded offline (its tracking server unreachable) and synced later has the weights tags
  an online run has (with its PROV run id), so a later run loading part of its weights finds it.
"""

from __future__ import annotations

import json
import uuid
import warnings
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import pytest
import torch
from mlflow.tracking import MlflowClient
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import prov4ml_lightning as prov4ml
from prov4ml_lightning.cli import main
from prov4ml_lightning.recovery.sync import LOCAL_RUN_TAG, sync
from tests.helpers import attr, by_type, read_prov, records_of
from tests.lightning_models import fast_trainer
from tests.mlflow_server import free_port

pytestmark = pytest.mark.slow  # Lightning fits, MLflow models, a tracking server


class Backbone(nn.Sequential):
    def __init__(self) -> None:
        super().__init__(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU())


class Net(nn.Module):
    def __init__(self, outputs: int = 1) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Linear(16, outputs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


class _Regression(pl.LightningModule):
    def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
        x, y = batch
        return nn.functional.mse_loss(self(x).mean(dim=1, keepdim=True), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.05)


class Pretrain(_Regression):
    """A's module: the net at ``self.model`` (keys ``model.backbone.*``, ``model.head.*``)."""

    def __init__(self) -> None:
        super().__init__()
        self.model = Net()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class Finetune(_Regression):
    """B's and C's module: the same backbone class at ``backbone.*``, a head of 3 outputs."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = Backbone()
        self.head = nn.Linear(16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.backbone(x))


def _loader(seed: int) -> DataLoader:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 4, generator=g)
    return DataLoader(TensorDataset(x, x.sum(dim=1, keepdim=True)), batch_size=8)


def _fit(root: Path, args: dict, model: pl.LightningModule, data: int) -> str:
    callback = prov4ml.Prov4MLCallback(**args)
    trainer = fast_trainer(root, [callback], limit_val_batches=0, max_epochs=1)
    trainer.fit(model, _loader(data))
    return callback.run_id


def _backbone_of(ckpt: Path) -> dict[str, torch.Tensor]:
    """A's backbone from its checkpoint file, under the names B's module gives it."""
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    return {k.removeprefix("model."): v for k, v in state.items() if k.startswith("model.backbone.")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("partial")
    store = tmp / "mlflow"
    args = {"prov_user_namespace": "www.example.org", "experiment_name": f"partial-{uuid.uuid4().hex[:6]}",
            "provenance_save_dir": str(tmp / "prov"), "mlflow_save_dir": str(store)}
    uri = f"sqlite:///{store}/mlflow.db"
    X, Y = 1, 2
    torch.manual_seed(0)
    ids = {"A": _fit(tmp / "a", args, Pretrain(), X)}
    prov4ml.wait_for_mlflow()
    (a_ckpt,) = sorted((tmp / "a" / "checkpoints").glob("*.ckpt"))
    b = Finetune()
    missing, unexpected = b.load_state_dict(_backbone_of(a_ckpt), strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and not unexpected
    ids["B"] = _fit(tmp / "b", args, b, Y)
    torch.manual_seed(1)
    ids["C"] = _fit(tmp / "c", args, Finetune(), Y)
    prov4ml.wait_for_mlflow()
    client = MlflowClient(uri)
    docs = {k: Path(client.download_artifacts(v, f"prov/provgraph_{v}.json", str(tmp / "dl" / k)))
            for k, v in ids.items()}
    return {"ids": ids, "uri": uri, "docs": docs, "client": client, "tmp": tmp}


def _derivations(doc_path: Path) -> dict[str, dict[str, Any]]:
    """{the other run's entity: attributes of the derivation from it} of one run's document"""
    doc = read_prov(doc_path)
    earlier = {str(e.identifier) for e in by_type(doc, "EarlierRunWeights")}
    out = {}
    for rel in records_of(doc, "wasDerivedFrom"):
        _, used = (str(v) for _, v in rel.formal_attributes[:2])
        if used in earlier:
            out[used] = {str(k.localpart): v for k, v in rel.extra_attributes}
    return out


def test_the_store_holds_the_backbone_of_a_as_a_group(runs):
    client, a = runs["client"], runs["ids"]["A"]
    tags = {k: json.loads(v) for k, v in client.get_run(a).data.tags.items() if k.startswith("prov4ml.weights.")}
    parts = [p for v in tags.values() for p in v.get("parts", [])]
    # [prefix, tensors, of, kind, name...]: the backbone's 4 tensors of the 6, in the model and the checkpoint
    backbone = [p for p in parts if p[0] == "model.backbone"]
    assert {tuple(p[:4]) for p in backbone} == {("model.backbone", 4, 6, "model"),
                                                ("model.backbone", 4, 6, "checkpoint")}
    assert all(v["run"] == a and v["ns"] == "http://www.example.org/" for v in tags.values())


def test_b_derives_partially_from_a_and_c_from_nothing(runs):
    a = runs["ids"]["A"]
    links = _derivations(runs["docs"]["B"])
    a_doc = read_prov(runs["docs"]["A"])
    (model,) = by_type(a_doc, "Model")
    (checkpoint,) = by_type(a_doc, "Checkpoint")
    # A's model and its checkpoint hold that backbone; named as A's own document names them
    assert set(links) == {str(model.identifier), str(checkpoint.identifier)}
    for derivation in links.values():
        assert derivation["partial"] is True
        assert derivation["source_prefixes"] == "model.backbone" and derivation["target_prefixes"] == "backbone"
        assert (derivation["tensors_matched"], derivation["source_tensors"], derivation["target_tensors"]) == (4, 6, 6)
    doc = read_prov(runs["docs"]["B"])
    for e in by_type(doc, "EarlierRunWeights"):
        assert attr(e, "run_id") == a
    assert _derivations(runs["docs"]["C"]) == {} and by_type(read_prov(runs["docs"]["C"]), "EarlierRunWeights") == []
    # A itself loaded nothing
    assert _derivations(runs["docs"]["A"]) == {}


def _fingerprint(doc_path: Path) -> str:
    (dataset,) = by_type(read_prov(doc_path), "Dataset")
    return attr(dataset, "fingerprint")


def test_lineage_lists_b_as_a_partial_load_and_not_c(runs, capsys):
    ids = runs["ids"]
    capsys.readouterr()
    assert main(["lineage", "--tracking-uri", runs["uri"], "--downstream", _fingerprint(runs["docs"]["A"]),
                 "--json"]) == 0
    answer = json.loads(capsys.readouterr().out)
    by_run = {r["run_id"]: r for r in answer["runs"]}
    assert set(by_run) == {ids["A"], ids["B"]}  # not C
    assert by_run[ids["B"]]["partial_load_from"] == [ids["A"]] and by_run[ids["A"]]["partial_load_into"] == [ids["B"]]
    assert {p["run_id"] for p in answer["partial_loads"]} == {ids["B"]}
    assert {m["run_id"] for m in answer["models"]} == {ids["A"], ids["B"]}
    # upstream of B's model: A's dataset X and Y, through the partial load
    (b_model,) = by_type(read_prov(runs["docs"]["B"]), "Model")
    assert main(["lineage", str(runs["tmp"] / "dl"), "--upstream", b_model.identifier.uri, "--json"]) == 0
    up = json.loads(capsys.readouterr().out)
    assert {d["fingerprint"] for d in up["datasets"]} == {_fingerprint(runs["docs"][k]) for k in "AB"}
    # the text answer says it
    assert main(["lineage", str(runs["tmp"] / "dl"), "--downstream", _fingerprint(runs["docs"]["A"])]) == 0
    text = capsys.readouterr().out
    assert f"partial load from {ids['A'][:8]}" in text and "partial: run" in text and "backbone" in text
    lines = [line for line in text.splitlines() if line.strip().startswith("partial: run")]
    assert len(lines) == 2 and len(set(lines)) == 2, lines  # one per source entity, each named
    assert any("ckpt" in line.split("<-")[1] for line in lines), lines
    assert "3 runs read" in text.splitlines()[0]  # A, B, C
    assert ids["C"] not in text


#: docs/lineage.md's query for the partial loads in one graph of all runs (``export --all``)
PARTIAL_LOADS = """
PREFIX prov: <http://www.w3.org/ns/prov#>
PREFIX p4l: <https://w3id.org/prov4ml-lightning/ns#>
SELECT ?weights ?source ?run ?from ?targets ?sources ?n WHERE {
  ?weights prov:qualifiedDerivation ?d .
  ?d prov:entity ?source ; p4l:partial true ; p4l:tensors_matched ?n ;
     p4l:target_prefixes ?targets ; p4l:source_prefixes ?sources .
  ?source p4l:run_id ?from .
  ?weights prov:wasGeneratedBy?/p4l:partOf*/p4l:run_id|^prov:used/p4l:partOf*/p4l:run_id ?run .
}"""


def test_export_all_holds_the_partial_derivation_a_sparql_query_finds(runs, tmp_path):
    import rdflib

    from prov4ml_lightning.provenance.vocab import undefined_terms

    ids = runs["ids"]
    out = tmp_path / "all.ttl"
    assert main(["export", "--all", str(runs["tmp"] / "dl"), "--format", "ttl", "-o", str(out)]) == 0
    graph = rdflib.Graph().parse(out)
    assert undefined_terms(graph) == set()
    rows = {(str(r.run), str(r["from"]), str(r.targets), str(r.sources), int(r.n)) for r in graph.query(PARTIAL_LOADS)}
    assert rows == {(ids["B"], ids["A"], "backbone", "model.backbone", 4)}
    docs_text = (Path(__file__).resolve().parents[2] / "docs" / "lineage.md").read_text(encoding="utf-8")
    assert PARTIAL_LOADS.strip() in docs_text


def test_a_run_recorded_offline_is_found_by_its_weights_once_synced(mlflow_server, tmp_path):
    args = {"prov_user_namespace": "www.example.org", "experiment_name": f"offline-{tmp_path.name}",
            "provenance_save_dir": str(tmp_path / "prov"), "mlflow_save_dir": str(tmp_path / "mlflow")}
    torch.manual_seed(0)
    net = Net()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the outage's one warning
        run = prov4ml.start_run(**args, tracking_uri=f"http://127.0.0.1:{free_port()}")
        assert run.sink.offline
        local = run.run_id
        prov4ml.log_model_memory_footprint(net, "net")  # the weights it starts from: its parts are indexed
        opt = torch.optim.SGD(net.parameters(), lr=0.1)
        for x, y in _loader(1):
            loss = nn.functional.mse_loss(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
        prov4ml.save_model_version(net, "net")
        prov4ml.end_run()
    (report,) = sync(tmp_path / "prov", tracking_uri=mlflow_server.uri)
    assert report.created and not report.problems and report.mlflow_run_id != local
    client = MlflowClient(mlflow_server.uri)
    synced = client.get_run(report.mlflow_run_id)
    assert synced.data.tags[LOCAL_RUN_TAG] == local
    tags = {k: json.loads(v) for k, v in synced.data.tags.items() if k.startswith("prov4ml.weights.")}
    (version,) = by_type(read_prov(tmp_path / "prov" / f"provgraph_{local}.json"), "Model_version")
    whole = tags[f"prov4ml.weights.{attr(version, 'state_dict_sha256')}"]
    assert whole["run"] == local and whole["ids"] == [["model_version", "net"]]
    assert any(p[0] == "backbone" for v in tags.values() for p in v.get("parts", []))

    # a later run, online, loads that backbone into a new head: linked to the offline run's entity
    b = Net(outputs=3)
    b.backbone.load_state_dict(net.backbone.state_dict())
    prov4ml.start_run(**{**args, "run_name": "b"}, tracking_uri=mlflow_server.uri)
    prov4ml.log_model_memory_footprint(b, "b")
    out = prov4ml.end_run()
    links = _derivations(out.prov_json)
    assert set(links) == {str(version.identifier)}  # A's entity, in A's namespace, under A's local id
    (derivation,) = links.values()
    assert derivation["partial"] is True and derivation["target_prefixes"] == "backbone"
    assert (derivation["tensors_matched"], derivation["source_tensors"], derivation["target_tensors"]) == (4, 6, 6)


class FrozenPretrain(Pretrain):
    """A pretraining that trains the head only: its backbone stays as the seed made it."""

    def __init__(self) -> None:
        super().__init__()
        self.model.backbone.requires_grad_(False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.model.head.parameters(), lr=0.05)


def test_a_part_left_as_it_started_is_not_offered_as_produced(tmp_path):
    """F freezes its seeded backbone; G makes the same backbone from the same seed and loads nothing:
    equal tensors by coincidence, so G derives from nothing (F's backbone is not F's product)."""
    store = tmp_path / "mlflow"
    args = {"prov_user_namespace": "www.example.org", "experiment_name": "frozen",
            "provenance_save_dir": str(tmp_path / "prov"), "mlflow_save_dir": str(store)}
    torch.manual_seed(5)
    f = FrozenPretrain()
    fresh = {k: v.clone() for k, v in f.model.backbone.state_dict().items()}
    f_id = _fit(tmp_path / "f", args, f, 1)
    assert all(torch.equal(fresh[k], v) for k, v in f.model.backbone.state_dict().items())  # left as it was
    prov4ml.wait_for_mlflow()
    torch.manual_seed(5)
    g = Finetune()
    assert all(torch.equal(fresh[k], v) for k, v in g.backbone.state_dict().items())  # the same by seed
    g_id = _fit(tmp_path / "g", args, g, 2)
    prov4ml.wait_for_mlflow()
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")
    tags = {k: json.loads(v) for k, v in client.get_run(f_id).data.tags.items() if k.startswith("prov4ml.weights.")}
    prefixes = {p[0] for v in tags.values() for p in v.get("parts", [])}
    assert "model.head" in prefixes and not any(p.startswith("model.backbone") for p in prefixes)
    doc = Path(client.download_artifacts(g_id, f"prov/provgraph_{g_id}.json", str(tmp_path / "dl")))
    assert _derivations(doc) == {} and by_type(read_prov(doc), "EarlierRunWeights") == []


def _frozen_loop(args: dict, record_start: bool) -> str:
    """A plain loop: seed 9, a random backbone kept frozen, the head trained, the model logged."""
    torch.manual_seed(9)
    net = Net()
    net.backbone.requires_grad_(False)
    prov4ml.start_run(**args)
    run_id = prov4ml.get_run_id()
    if record_start:
        prov4ml.log_model_memory_footprint(net, "net")
    opt = torch.optim.SGD(net.head.parameters(), lr=0.1)
    for x, y in _loader(1):
        loss = nn.functional.mse_loss(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    prov4ml.log_model(net, "net", register=False)
    prov4ml.end_run()
    return run_id


def test_a_plain_loop_without_its_start_recorded_offers_no_parts(tmp_path):
    """Without a record of the weights it started from, a plain loop's untouched frozen backbone is
    not offered as its product: a later run of the same seed that loads nothing links to nothing.
    With the start recorded (log_model_memory_footprint before training), its trained head is."""
    store = tmp_path / "mlflow"
    args = {"prov_user_namespace": "www.example.org", "experiment_name": "plain-frozen",
            "provenance_save_dir": str(tmp_path / "prov"), "mlflow_save_dir": str(store)}
    unrecorded = _frozen_loop(args, record_start=False)
    recorded = _frozen_loop(args, record_start=True)
    prov4ml.wait_for_mlflow()
    client = MlflowClient(f"sqlite:///{store}/mlflow.db")

    def parts(run_id: str) -> set[str]:
        tags = client.get_run(run_id).data.tags
        return {p[0] for k, v in tags.items() if k.startswith("prov4ml.weights.")
                for p in json.loads(v).get("parts", [])}

    assert parts(unrecorded) == set()
    assert "head" in parts(recorded) and not any(p.startswith("backbone") for p in parts(recorded))
    # the same seed again, nothing loaded: its initial weights derive from no earlier run
    torch.manual_seed(9)
    g = Finetune()
    g_id = _fit(tmp_path / "g", args, g, 2)
    prov4ml.wait_for_mlflow()
    doc = Path(client.download_artifacts(g_id, f"prov/provgraph_{g_id}.json", str(tmp_path / "dl")))
    assert _derivations(doc) == {} and by_type(read_prov(doc), "EarlierRunWeights") == []
