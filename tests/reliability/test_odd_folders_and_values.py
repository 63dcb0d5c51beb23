"""Folders with symbolic-link loops and the provenance folder inside, params that cannot be written
out, keys with control characters, and sidecar points MLflow refuses at ``prov4ml sync``."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import xml.dom.minidom

import pytest
import rdflib

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLInputError
from tests.helpers import attr, by_type, read_prov, user_params

pytestmark = pytest.mark.timeout(120)


def _artifacts(prov_json) -> list[tuple[str, int]]:
    return [(attr(a, "sha256"), attr(a, "size_bytes")) for a in by_type(read_prov(prov_json), "Artifact")]


# -- log_artifact of a folder -------------------------------------------------------------------------
def test_a_symlink_loop_is_refused_at_once_and_stages_nothing(run_args, tmp_path, prov_dir, client):
    loop = tmp_path / "loop"
    (loop / "sub").mkdir(parents=True)
    (loop / "sub" / "data.txt").write_text("hello")
    os.symlink("../..", loop / "sub" / "back")
    with prov4ml.start_run(**run_args) as run:
        with pytest.raises(Prov4MLInputError, match=r"log_artifact\('.*loop'\): the folder has a symbolic-link "
                                                     r"loop: 'sub/back' -> '\.\./\.\.' leads back"):
            prov4ml.log_artifact(str(loop))
        prov4ml.log_metric("loss", 1.0, step=0)
    assert not (prov_dir / ".prov4ml_staging").exists()
    assert _artifacts(run.outputs.prov_json) == []  # no record of an artifact that was not logged
    assert client.list_artifacts(run.run_id, "") == [] or all(
        not a.path.startswith("loop") for a in client.list_artifacts(run.run_id))
    assert client.get_run(run.run_id).info.status == "FINISHED"


def test_a_folder_holding_the_provenance_folder_is_refused(run_args, tmp_path, prov_dir, monkeypatch):
    (tmp_path / "data.txt").write_text("x")
    monkeypatch.chdir(tmp_path)  # prov_dir is tmp_path/prov
    with prov4ml.start_run(**run_args) as run:
        for folder in (".", str(tmp_path)):
            with pytest.raises(Prov4MLInputError, match=r"the folder holds the run's provenance folder .*prov.* "
                                                         r"\(at 'prov'\).*provenance_save_dir outside it"):
                prov4ml.log_artifact(folder)
    assert not (prov_dir / ".prov4ml_staging").exists()
    assert _artifacts(run.outputs.prov_json) == []


def test_a_folder_over_the_file_bound_is_refused_naming_the_bound(run_args, tmp_path, prov_dir, monkeypatch):
    many = tmp_path / "many"
    many.mkdir()
    for i in range(6):
        (many / f"f{i}.txt").write_text(str(i))
    monkeypatch.setenv("PROV4ML_MAX_FOLDER_FILES", "5")
    with prov4ml.start_run(**run_args) as run, \
            pytest.raises(Prov4MLInputError, match=r"more than 5 files .*PROV4ML_MAX_FOLDER_FILES"):
        prov4ml.log_artifact(str(many))
    assert not (prov_dir / ".prov4ml_staging").exists() and _artifacts(run.outputs.prov_json) == []


def test_a_folder_with_a_linked_subfolder_is_hashed_as_it_is_uploaded(run_args, tmp_path, prov_dir, client):
    folder = tmp_path / "ok"
    (folder / "inner").mkdir(parents=True)
    (folder / "inner" / "a.txt").write_text("aaa")
    os.symlink("inner", folder / "link")  # no loop: its files count twice, as a copy holds them twice
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_artifact(str(folder))
    listing = hashlib.sha256()
    for rel in ("inner/a.txt", "link/a.txt"):
        listing.update(rel.encode() + b"\0" + hashlib.sha256(b"aaa").hexdigest().encode() + b"\n")
    assert _artifacts(run.outputs.prov_json) == [(listing.hexdigest(), 6)]
    uploaded = {a.path for a in client.list_artifacts(run.run_id, "inner")} | {
        a.path for a in client.list_artifacts(run.run_id, "link")}
    assert uploaded == {"inner/a.txt", "link/a.txt"}
    assert not (prov_dir / ".prov4ml_staging").exists()


# -- params that cannot be written out ------------------------------------------------------------------
class _Hostile:
    def __str__(self) -> str:
        raise ZeroDivisionError("the user's own bug")

    __repr__ = __str__


def _self_list():
    items: list = [1]
    items.append(items)
    return items


def _self_dict():
    d: dict = {"a": 1}
    d["me"] = d
    return d


@pytest.mark.parametrize(("params", "message"), [
    ({"bad": _Hostile()}, r"log_params: param 'bad': str\(\) of the _Hostile value failed \(ZeroDivisionError\)"),
    ({"loop": _self_list()}, r"log_params: param 'loop' contains itself \(a list holding itself\)"),
    ({"deep": {"x": [_self_dict()]}}, r"log_params: param 'deep/x' contains itself"),
    ({"cfg": _self_dict()}, r"log_params: param 'cfg/me' contains itself \(a dict holding itself\)"),
    ({"ok": 1, "bad": [1, _Hostile()]}, r"log_params: param 'bad': str\(\) of the list value failed"),
])
def test_a_param_that_cannot_be_written_out_is_refused_before_anything_is_recorded(run_args, client, params,
                                                                                  message):
    with prov4ml.start_run(**run_args) as run:
        prov4ml.log_param("before", 1)
        with pytest.raises(Prov4MLInputError, match=message) as caught:
            prov4ml.log_params(params)
        assert caught.value.__cause__ is None  # not the user's exception, nor a RecursionError, chained
    assert user_params(client.get_run(run.run_id).data.params) == {"before": "1"}
    assert {attr(p, "name") for p in by_type(read_prov(run.outputs.prov_json), "Parameter")} == {"before"}


def test_a_hostile_value_in_log_param_names_the_call(run_args):
    with prov4ml.start_run(**run_args), \
            pytest.raises(Prov4MLInputError, match=r"^log_param: param 'h': str\(\) of the _Hostile value failed"):
        prov4ml.log_param("h", _Hostile())


# -- keys with control characters -------------------------------------------------------------------------
CONTROL_KEYS = ["nul\x00key", "line\nbreak", "esc\x1b[31mred"]


def test_keys_with_control_characters_are_escaped_in_every_output(run_args, tmp_path, client):
    formats = ("json", "provn", "ttl", "xml")
    with prov4ml.start_run(**run_args, provenance_formats=formats) as run:
        for i, key in enumerate(CONTROL_KEYS):
            with pytest.warns(prov4ml.Prov4MLWarning, match="is stored in MLflow as"):
                prov4ml.log_metric(key, float(i), step=0)
            with pytest.warns(prov4ml.Prov4MLWarning, match="log_param: param key .* is stored in MLflow as"):
                prov4ml.log_param(key, f"value {i}\x07")
    out = run.outputs
    escaped = {"nul\\x00key", "line\\nbreak", "esc\\x1b[31mred"}
    doc = read_prov(out.prov_json)
    assert {attr(s, "name") for s in by_type(doc, "MetricSeries")} == escaped
    assert {attr(p, "name") for p in by_type(doc, "Parameter")} == escaped
    control = {chr(c) for c in [*range(0, 9), 11, 12, *range(14, 32), 127]}
    files = [out.prov_json, out.prov_dot, out.prov_svg, out.extra["html"], *(out.extra[f] for f in formats[1:])]
    for path in files:
        text = path.read_text(encoding="utf-8")
        assert not control & set(text), path.name
    xml.dom.minidom.parse(str(out.prov_svg))  # well-formed XML
    xml.dom.minidom.parse(str(out.extra["xml"]))
    graph = rdflib.Graph().parse(str(out.extra["ttl"]), format="turtle")
    labels = {str(o) for o in graph.objects(None, rdflib.RDFS.label)}
    assert {"nul\\x00key (training)", "line\\nbreak (training)"} <= labels
    svg = tmp_path / "again.svg"
    assert subprocess.run(["dot", "-Tsvg", str(out.prov_dot), "-o", str(svg)], timeout=60).returncode == 0
    assert "esc\\x1b[31mred" in svg.read_text()
    for key in client.get_run(run.run_id).data.metrics:  # MLflow's names: no control character either
        assert not control & set(key) and "\n" not in key
    for exported in ("ttl", "xml"):
        done = subprocess.run([sys.executable, "-m", "prov4ml_lightning", "export", "--format", exported,
                               str(out.prov_json), "-o", str(tmp_path / f"x.{exported}")],
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr


# -- sync and points MLflow refuses ---------------------------------------------------------------------
@pytest.mark.slow
def test_sync_skips_and_names_sidecar_points_mlflow_refuses(tmp_path, script):
    from mlflow.tracking import MlflowClient

    from prov4ml_lightning.recovery.sync import sync

    train = script("""
        import sys
        import prov4ml_lightning as prov4ml
        with prov4ml.start_run(prov_user_namespace="www.example.org", experiment_name="refused",
                               provenance_save_dir="prov", mlflow_save_dir="mlflow") as run:
            for step in range(10):
                prov4ml.log_metric("loss", float(step), step=step)
        print("RUN", run.run_id)
    """)
    done = train.run()
    assert done.returncode == 0, done.stderr[-3000:]
    run_id = done.stdout.split("RUN ")[1].strip()
    prov_dir = tmp_path / "prov"
    # rows an older version let through (a step beyond MLflow's 64-bit range) and a new valid one
    with open(prov_dir / f"metrics_{run_id}.csv", "a", encoding="utf-8", newline="") as fh:
        fh.write(f"loss,training,loss,{2**63},1.0,1700000000000\r\nloss,training,loss,{2**70},2.0,1700000000000\r\n"
                 "loss,training,loss,10,3.0,1700000000000\r\n")
    cli = subprocess.run([sys.executable, "-m", "prov4ml_lightning", "sync", str(prov_dir)], capture_output=True,
                         text=True, timeout=120)
    assert "Traceback" not in cli.stderr
    assert f"MLflow cannot store 2 metric points of the sidecar, skipped: 'loss' step {2**63}" in cli.stdout
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow' / 'mlflow.db'}")
    assert sorted(m.step for m in client.get_metric_history(run_id, "loss")) == list(range(11))
    assert client.get_run(run_id).info.status == "FINISHED"
    (report,) = sync(prov_dir)  # again: nothing new to send, the two refused named again
    assert report.metric_points == 0 and len(report.problems) == 1 and "skipped" in report.problems[0]
