"""Model identity in real documents: every entity holding weights (logged model, saved version,
checkpoint, a fit's initial or restored weights) carries their ``state_dict_sha256``, a file its
``sha256``, and entities holding equal weights, and only those, are ``prov:alternateOf`` each other.
"""

from __future__ import annotations

import hashlib
import uuid
import warnings
from pathlib import Path

import prov
import pytest
import rdflib
import torch
from torch import nn

import prov4ml_lightning as prov4ml
from prov4ml_lightning.capture.model_info import file_state_dict_sha256, state_dict_sha256
from prov4ml_lightning.cli import main
from prov4ml_lightning.provenance.checks import check_file
from prov4ml_lightning.provenance.queries import PREFIXES, QUERIES
from tests.helpers import attr, by_type, read_prov, records_of


def _pairs(doc, kind: str) -> set[tuple[str, str]]:
    return {(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1])) for r in records_of(doc, kind)}


def _linked(doc) -> list[set[str]]:
    """The groups of entities ``alternateOf`` joins (it is symmetric and transitive)."""
    groups: list[set[str]] = []
    for a, b in _pairs(doc, "alternateOf"):
        touching = [g for g in groups if a in g or b in g]
        merged = {a, b}.union(*touching)
        groups = [g for g in groups if g not in touching] + [merged]
    return groups


def _sha256(path: str | Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.mark.slow  # MLflow logs two models (about a second each)
def test_log_model_and_its_saved_version_hold_one_set_of_weights(run_args, tmp_path, capsys):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1))
    prov4ml.start_run(**run_args)
    run_id = prov4ml.get_run_id()
    prov4ml.log_model(net, "mlp")  # also saves the state dict as model version "mlp"
    prov4ml.log_model(net, "bare", log_model_info=False, log_as_artifact=False)  # still identified by its weights
    prov4ml.save_model_version(nn.Linear(2, 2), "other", prov4ml.Context.TRAINING)  # other weights, a context
    out = prov4ml.end_run()

    doc = read_prov(out.prov_json)
    models = {attr(m, "name"): m for m in by_type(doc, "Model")}
    versions = {attr(v, "model_name"): v for v in by_type(doc, "Model_version")}
    path = out.provenance_dir / f"model_versions_{run_id}" / "mlp.pth"
    digest = state_dict_sha256(net.state_dict())
    assert attr(versions["mlp"], "sha256") == _sha256(path)
    assert attr(versions["mlp"], "size_bytes") == path.stat().st_size
    assert file_state_dict_sha256(path) == digest
    assert {attr(models["mlp"], "state_dict_sha256"), attr(models["bare"], "state_dict_sha256"),
            attr(versions["mlp"], "state_dict_sha256")} == {digest}
    assert attr(models["bare"], "total_params") is None  # no size statistics asked for
    other = attr(versions["other"], "state_dict_sha256")
    assert len(other) == 64 and other != digest
    # log_model gave no context: none is recorded; an explicit one is
    assert attr(versions["mlp"], "context") is None and attr(versions["other"], "context") == "training"

    ids = {"mlp": str(models["mlp"].identifier), "bare": str(models["bare"].identifier),
           "version": str(versions["mlp"].identifier), "other": str(versions["other"].identifier)}
    assert _linked(doc) == [{ids["mlp"], ids["bare"], ids["version"]}]  # the other weights: linked to nothing
    derived = _pairs(doc, "wasDerivedFrom")
    assert not derived & {(ids["mlp"], ids["version"]), (ids["version"], ids["mlp"])}  # neither made from the other
    assert check_file(out.prov_json) == []  # PROV-N, PROV-XML and PROV-O round trips included

    ttl = tmp_path / "run.ttl"
    assert main(["export", str(out.prov_json), "--format", "ttl", "-o", str(ttl)]) == 0
    capsys.readouterr()
    assert len(prov.read(str(ttl), format="rdf", rdf_format="turtle").get_records()) > 10
    rows = rdflib.Graph().parse(ttl).query(PREFIXES + """SELECT ?model ?file WHERE {
        ?model a mls:Model ; p4l:name "mlp" ; prov:alternateOf ?file . ?file p4l:sha256 ?sha }""")
    assert [(str(m), str(f)) for m, f in rows] == [(models["mlp"].identifier.uri, versions["mlp"].identifier.uri)]


@pytest.mark.slow
def test_a_fit_links_model_checkpoints_and_weights_by_their_hash(run_args, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

    ckpt_dir = tmp_path / "ckpt"
    torch.manual_seed(0)
    callback = prov4ml.Prov4MLCallback(**run_args)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast_trainer(tmp_path, [callback, ModelCheckpoint(dirpath=ckpt_dir, monitor="val_loss", save_last=True)]
                     ).fit(TinyModel(), TinyDataModule())
    last = ckpt_dir / "last.ckpt"
    saved = file_state_dict_sha256(last)
    doc = read_prov(callback.outputs.prov_json)

    (model,) = by_type(doc, "Model")
    states = {str(s.identifier).rsplit(".", 1)[-1]: s for s in by_type(doc, "ModelState")}
    initial, at_end = states.pop("initial"), states.pop("final")
    assert states == {}
    assert attr(model, "state_dict_sha256") == saved  # the model logged at the end holds the last weights
    assert attr(at_end, "state_dict_sha256") == saved  # as the fit's last epoch left them
    assert len(attr(initial, "state_dict_sha256")) == 64 and attr(initial, "state_dict_sha256") != saved
    current = {}  # path -> the entity of the file's present content
    for ckpt in by_type(doc, "Checkpoint"):
        if not attr(ckpt, "deleted") and attr(ckpt, "global_step") >= current.get(attr(ckpt, "path"), (-1,))[0]:
            current[attr(ckpt, "path")] = (attr(ckpt, "global_step"), ckpt)
    for path, (_, ckpt) in current.items():  # each checkpoint's hashes are those of its file
        assert attr(ckpt, "sha256") == _sha256(path)
        assert attr(ckpt, "state_dict_sha256") == file_state_dict_sha256(path)
    final = {str(c.identifier) for _, c in current.values() if attr(c, "state_dict_sha256") == saved}
    assert len(final) == 2  # the best (epoch=1) and last.ckpt, both saved at the last step

    # linked: the model and the checkpoints with its weights (and, apart, the two files saved at
    # step 8); only equal weights, and as the same weights, not as a derivation
    hashes = {str(e.identifier): attr(e, "state_dict_sha256") for e in doc.get_records() if e.is_element()}
    assert final | {str(model.identifier), str(at_end.identifier)} in _linked(doc)
    assert all(hashes[a] == hashes[b] for a, b in _pairs(doc, "alternateOf"))
    assert str(initial.identifier) not in set().union(*_linked(doc))
    assert not any(a == str(model.identifier) for a, _ in _pairs(doc, "wasDerivedFrom"))
    assert check_file(callback.outputs.prov_json, round_trip=False) == []

    # the PROV-O query for "the models with the best checkpoint's weights" finds it
    graph = rdflib.Graph().parse(data=prov.read(str(callback.outputs.prov_json), format="json").serialize(
        format="rdf", rdf_format="turtle"), format="turtle")
    (row,) = graph.query(PREFIXES + QUERIES["b_best_checkpoint"])
    assert str(row.model) == model.identifier.uri

    # a resumed fit: the checkpoint it loaded and the weights it restored carry that file's hash
    resumed = prov4ml.Prov4MLCallback(**run_args, log_model=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast_trainer(tmp_path, [resumed, ModelCheckpoint(dirpath=ckpt_dir, save_last=True)], max_epochs=3).fit(
            TinyModel(), TinyDataModule(), ckpt_path=str(last))
    doc = read_prov(resumed.outputs.prov_json)
    (restored,) = [s for s in by_type(doc, "ModelState") if attr(s, "restored_from")]
    assert attr(restored, "state_dict_sha256") == saved
    (loaded,) = [str(b) for a, b in _pairs(doc, "wasDerivedFrom") if a == str(restored.identifier)]
    assert {str(restored.identifier), loaded} <= next(g for g in _linked(doc) if loaded in g)


@pytest.mark.slow
def test_model_versioning_logger_versions_carry_the_checkpoint_weights(run_args, tmp_path):
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

    prov4ml.start_run(**run_args)
    logger = prov4ml.ModelVersioningLogger(tmp_path, name=f"m-{uuid.uuid4().hex[:6]}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast_trainer(tmp_path, [ModelCheckpoint(dirpath=tmp_path / "ckpt", save_top_k=-1)], logger=[logger]).fit(
            TinyModel(), TinyDataModule())
    out = prov4ml.end_run()
    versions = by_type(read_prov(out.prov_json), "Model_version")
    assert len(versions) == 2
    for version in versions:
        assert attr(version, "state_dict_sha256") == file_state_dict_sha256(attr(version, "path"))
        assert attr(version, "sha256") == _sha256(attr(version, "path"))
    assert len({attr(v, "state_dict_sha256") for v in versions}) == 2


def test_a_version_derives_from_the_previous_one_only_when_the_weights_changed(run_args):
    prov4ml.start_run(**run_args)
    net = nn.Linear(3, 2)
    prov4ml.save_model_version(net, "a")
    prov4ml.save_model_version(net, "b")  # the same weights again: another file of the same state
    with torch.no_grad():
        net.weight.add_(1.0)
    prov4ml.save_model_version(net, "c")  # trained on: derived from the last version
    out = prov4ml.end_run()
    doc = read_prov(out.prov_json)
    ids = {attr(e, "label"): str(e.identifier) for e in by_type(doc, "Model_version")}
    derived = {(str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1]))
               for r in records_of(doc, "wasDerivedFrom")}
    alternates = {frozenset((str(r.formal_attributes[0][1]), str(r.formal_attributes[1][1])))
                  for r in records_of(doc, "alternateOf")}
    assert (ids["b"], ids["a"]) not in derived and frozenset((ids["a"], ids["b"])) in alternates
    assert (ids["c"], ids["b"]) in derived
