"""``prov4ml.log_dataset``: the Dataset entity (read back with prov and, over the PROV-O export, with
rdflib's SPARQL), the MLflow dataset input (MlflowClient), and bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import rdflib
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, TensorDataset

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context, NoActiveRunError, Prov4MLInputError, Prov4MLWarning
from prov4ml_lightning.capture import file_hashes
from prov4ml_lightning.cli import main
from tests.helpers import attr, by_type, read_prov, records_of

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"

#: the datasets behind a model, as a user would ask: the activity that generated the model (or the
#: model it was derived from) used them
BEHIND_THE_MODEL = """PREFIX prov: <http://www.w3.org/ns/prov#>
PREFIX p4l: <https://w3id.org/prov4ml-lightning/ns#>
PREFIX mls: <http://www.w3.org/ns/mls#>
SELECT DISTINCT ?model ?name ?context ?fingerprint ?status WHERE {
  ?model a mls:Model ; prov:wasDerivedFrom*/prov:wasGeneratedBy/prov:used ?dataset .
  ?dataset a mls:Dataset ; p4l:name ?name ; p4l:context ?context ; p4l:fingerprint_status ?status .
  OPTIONAL { ?dataset p4l:fingerprint ?fingerprint }
}"""


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(file_hashes.CACHE_ENV, str(tmp_path / "cache"))


def _data(n: int = 64, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 4, generator=gen)
    return TensorDataset(x, (x.sum(dim=1) > 0).long())


def _sparql(prov_json: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> list[dict[str, str]]:
    """``prov4ml export --format ttl``, then the query over it with rdflib."""
    ttl = tmp_path / "run.ttl"
    assert main(["export", str(prov_json), "--format", "ttl", "-o", str(ttl)]) == 0
    capsys.readouterr()
    graph = rdflib.Graph().parse(str(ttl), format="turtle")
    return [{k: (str(v) if v is not None else None) for k, v in row.asdict().items()}
            for row in graph.query(BEHIND_THE_MODEL)]


def test_log_dataset_records_the_entity_and_the_mlflow_input(run_args, client):
    loader = DataLoader(_data(), batch_size=16, shuffle=True, drop_last=True)
    run = prov4ml.start_run(**run_args)
    prov4ml.log_dataset("train", loader)
    prov4ml.log_dataset("train", loader)  # the same again: nothing new
    prov4ml.log_dataset("val", _data(32, seed=1), Context.VALIDATION)
    out = prov4ml.end_run()

    doc = read_prov(out.prov_json)
    datasets = {attr(d, "name"): d for d in by_type(doc, "Dataset")}
    assert set(datasets) == {"train", "val"}
    train = datasets["train"]
    assert {k: attr(train, k) for k in ("context", "length", "batch_size", "shuffle", "drop_last", "num_workers",
                                        "fingerprint_status", "fingerprint_method")} == {
        "context": "training", "length": 64, "batch_size": 16, "shuffle": True, "drop_last": True,
        "num_workers": 0, "fingerprint_status": "complete", "fingerprint_method": "buffers"}
    assert attr(train, "sampler") == "torch.utils.data.sampler.RandomSampler"
    assert attr(datasets["val"], "batch_size") is None and attr(datasets["val"], "context") == "validation"
    (session,) = by_type(doc, "Session")
    used = {(u.formal_attributes[0][1], u.formal_attributes[1][1]) for u in records_of(doc, "used")}
    assert {(session.identifier, d.identifier) for d in datasets.values()} <= used  # used by the run's session

    inputs = {d.dataset.name: d for d in client.get_run(run.run_id).inputs.dataset_inputs}
    assert set(inputs) == {"train", "val"}
    for name, d in inputs.items():
        fingerprint = attr(datasets[name], "fingerprint")
        assert d.dataset.digest == fingerprint[:36] and json.loads(d.dataset.profile)["fingerprint"] == fingerprint
    assert {t.key: t.value for t in inputs["val"].tags}["mlflow.data.context"] == "validation"


@pytest.mark.slow
def test_the_same_data_gets_the_same_fingerprint_in_another_run_and_other_data_another(run_args):
    fingerprints = []
    for seed in (0, 0, 1):
        prov4ml.start_run(**run_args)
        prov4ml.log_dataset("train", _data(seed=seed))
        (entity,) = by_type(read_prov(prov4ml.end_run().prov_json), "Dataset")
        fingerprints.append(attr(entity, "fingerprint"))
    assert fingerprints[0] == fingerprints[1] != fingerprints[2]


def test_bad_input_names_the_call(run_args):
    with pytest.raises(NoActiveRunError, match="log_dataset"):
        prov4ml.log_dataset("train", _data())
    prov4ml.start_run(**run_args)
    try:
        for name, data, context, expected in [
            ("", _data(), Context.TRAINING, r"log_dataset\(''\): name must be a non-empty string"),
            (3, _data(), Context.TRAINING, r"log_dataset\(3\): name must be a non-empty string"),
            ("x" * 300, _data(), Context.TRAINING, "at most 250 characters"),
            ("t", _data(), "train", r"log_dataset\('t'\): context must be a Context"),
            ("t", None, Context.TRAINING, r"log_dataset\('t'\): expected a dataset .* got NoneType"),
            ("t", 42, Context.TRAINING, "got int"),
            ("t", "data.csv", Context.TRAINING, "got str"),
            ("t", {"x": [1, 2]}, Context.TRAINING, "got dict"),
        ]:
            with pytest.raises(Prov4MLInputError, match=expected):
                prov4ml.log_dataset(name, data, context)
        prov4ml.log_dataset("train", _data())
        with pytest.raises(Prov4MLInputError, match=r"log_dataset\('train'\): another dataset was logged as 'train'"):
            prov4ml.log_dataset("train", _data(seed=3))
    finally:
        prov4ml.end_run()


def test_sampled_unknown_and_referenced_datasets_say_so(run_args, monkeypatch):
    class Slow(Dataset):  # items are read when the run ends; past the budget a fixed sample
        def __len__(self):
            return 5000

        def __getitem__(self, i):
            return np.float32(i), i % 3

    class Opaque(Slow):
        def __getitem__(self, i):
            return object()

    class Shards(IterableDataset):
        files = ["shard-0.tar", "shard-1.tar"]

        def __iter__(self):
            yield from ()

    monkeypatch.setenv("PROV4ML_FINGERPRINT_BUDGET", "0")
    prov4ml.start_run(**run_args)
    prov4ml.log_dataset("sampled", Slow())
    prov4ml.log_dataset("opaque", Opaque())
    prov4ml.log_dataset("stream", Shards())
    with pytest.warns(Prov4MLWarning, match=r"dataset opaque .* no content fingerprint.*builtins.object"):
        out = prov4ml.end_run()
    datasets = {attr(d, "name"): d for d in by_type(read_prov(out.prov_json), "Dataset")}
    sampled = datasets["sampled"]
    assert (attr(sampled, "fingerprint_status"), attr(sampled, "fingerprint_sample_size"), attr(sampled, "length")) \
        == ("sample", 256, 5000)
    assert attr(sampled, "fingerprint_method") == "items-sample" and len(attr(sampled, "fingerprint")) == 64
    assert attr(datasets["opaque"], "fingerprint_status") == "unknown"
    assert attr(datasets["opaque"], "fingerprint_unhashable") == "builtins.object"
    assert attr(datasets["opaque"], "fingerprint") is None
    assert (attr(datasets["stream"], "fingerprint_status"), attr(datasets["stream"], "length")) == ("reference", None)


@pytest.mark.slow
def test_sparql_over_the_prov_o_export_finds_the_datasets_behind_the_model(run_args, tmp_path, capsys):
    """A plain PyTorch loop, as in the README."""
    train, val = _data(), _data(32, seed=1)
    model = nn.Linear(4, 2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    prov4ml.start_run(**run_args)
    prov4ml.log_dataset("train", DataLoader(train, batch_size=16), Context.TRAINING)
    prov4ml.log_dataset("val", val, Context.VALIDATION)
    for xb, yb in DataLoader(train, batch_size=16):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(xb), yb)
        loss.backward()
        optimizer.step()
        prov4ml.log_metric("loss", loss.detach(), Context.TRAINING)
    prov4ml.log_model(model, "linear", log_as_artifact=False)
    out = prov4ml.end_run()

    expected = {attr(d, "name"): attr(d, "fingerprint") for d in by_type(read_prov(out.prov_json), "Dataset")}
    rows = _sparql(out.prov_json, tmp_path, capsys)
    assert {(r["name"], r["context"], r["fingerprint"], r["status"]) for r in rows} == {
        ("train", "training", expected["train"], "complete"), ("val", "validation", expected["val"], "complete")}
    assert len({r["model"] for r in rows}) == 1


@pytest.mark.slow
def test_the_plain_torch_example_records_its_datasets(tmp_path, capsys):
    out = tmp_path / "example"
    subprocess.run([sys.executable, str(EXAMPLES / "plain_torch.py"), "--out", str(out), "--epochs", "1"],
                   check=True, capture_output=True, cwd=tmp_path, timeout=600)
    (prov_json,) = (out / "prov").glob("provgraph_*.json")
    rows = _sparql(prov_json, tmp_path, capsys)
    assert {(r["name"], r["context"], r["status"]) for r in rows} == {
        ("train", "training", "complete"), ("val", "validation", "complete")}
    assert all(r["fingerprint"] and len(r["fingerprint"]) == 64 for r in rows)
