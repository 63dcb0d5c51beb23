"""`prov4ml export --format rocrate`: real runs packed as RO-Crates, read back with the rocrate library
and validated with roc-validator (Process Run Crate 0.5, offline: tests/cli/crate_validation.py).

Every file the crate holds is opened and hashed against its ``sha256``; the described checkpoints
against the files the run wrote; the metadata (profile, license, dates, agents, the actions: one per
fit and per test, so the test set is upstream of no model) is read through ``rocrate.rocrate.ROCrate``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
import uuid
import zipfile
from pathlib import Path

import pytest
import torch
from rocrate import rocrate  # the rocrate extra: in the test extra, so never skipped
from torch import nn

import prov4ml_lightning as prov4ml
from prov4ml_lightning.cli import main
from tests.cli.crate_validation import validate_crate

pytestmark = pytest.mark.slow


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _ids(value) -> list[str]:
    return [v.id for v in (value if isinstance(value, list) else [value])]


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, prov4ml.RunOutputs, list[Path]]:
    """A tiny run with a data set, two checkpoints (the first overwritten later) and a logged model."""
    root = tmp_path_factory.mktemp("rocrate-run")
    torch.manual_seed(0)
    x = torch.randn(32, 3)
    y = x.sum(dim=1, keepdim=True)
    net = nn.Linear(3, 1)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    run = prov4ml.start_run("www.example.org", f"rocrate-{uuid.uuid4().hex[:8]}", root / "prov", root / "mlflow")
    paths = []
    try:
        prov4ml.log_params({"lr": 0.1, "layers": 1, "name": "<b>linear</b>"})
        run.add_entity("dataset", "Dataset", "train0.abcdef", {"role": "train", "length": 32, "fingerprint": "ab" * 32},
                       label="train data 0")
        for epoch in range(2):
            run.start_activity(f"epoch_{epoch}", "TrainingEpoch", f"epoch {epoch}")
            opt.zero_grad()
            loss = nn.functional.mse_loss(net(x), y)
            loss.backward()
            opt.step()
            prov4ml.log_metric("loss", loss.detach(), prov4ml.Context.TRAINING, step=epoch)
            run.end_activity(f"epoch_{epoch}")
            path = root / "ckpt" / f"epoch={epoch}.ckpt"
            path.parent.mkdir(exist_ok=True)
            torch.save(net.state_dict(), path)
            paths.append(path)
            run.log_artifact(path, kind="checkpoint", activity=f"epoch_{epoch}", upload=False,
                             attributes={"monitor": "loss", "score": loss.item(), "best": epoch == 1})
        prov4ml.log_model(net, "linear")
    finally:
        outputs = prov4ml.end_run()
    return root, outputs, paths


def _export(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    code = main(["export", "--format", "rocrate", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_crate_round_trip_every_file_and_hash(recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, outputs, ckpts = recorded
    out = tmp_path / "crate"
    code, stdout, _ = _export([str(outputs.prov_json), "-o", str(out), "--license", "CC-BY-4.0"], capsys)
    assert code == 0 and stdout.strip() == str(out)
    assert validate_crate(out, tmp_path) == []  # roc-validator, Process Run Crate 0.5, required level

    crate = rocrate.ROCrate(out)
    run_id = outputs.run_id
    # every file in the crate exists, and its bytes match the sha256 and size the metadata claims
    # (data entities with a local identifier, "#...", are described, not included)
    files = [e for e in crate.data_entities if "File" in e.type and not e.id.startswith("#")]
    assert files
    for entity in files:
        path = out / entity.id
        assert path.is_file(), entity.id
        assert _sha256(path) == entity["sha256"], entity.id
        assert int(entity["contentSize"]) == path.stat().st_size
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert on_disk == {e.id for e in files} | {"ro-crate-metadata.json"}
    # the PROV files, the metrics file and the package list the run wrote, byte for byte
    prov_dir = outputs.prov_json.parent
    for name in (f"prov/provgraph_{run_id}.json", f"prov/provgraph_{run_id}.svg", f"prov/provgraph_{run_id}.html",
                 f"metrics_{run_id}.csv", f"packages_{run_id}.txt"):
        assert name in on_disk, name
        assert _sha256(out / name) == _sha256(prov_dir / Path(name).name)

    # metadata: RO-Crate 1.1, Process Run Crate, license, dates
    raw = json.loads((out / "ro-crate-metadata.json").read_text())
    graph = {e["@id"]: e for e in raw["@graph"]}
    assert graph["ro-crate-metadata.json"]["conformsTo"] == {"@id": "https://w3id.org/ro/crate/1.1"}
    root_ds = crate.root_dataset
    assert root_ds["conformsTo"].id == "https://w3id.org/ro/wfrun/process/0.5"
    assert root_ds["license"].id == "https://spdx.org/licenses/CC-BY-4.0"
    assert root_ds["datePublished"] and root_ds["name"] and root_ds["description"]

    # the run (no fit or test of its own: one CreateAction), its agent, instrument, times, inputs and outputs
    action = crate.get(f"#run-{run_id}")
    assert [a.id for a in root_ds["mentions"]] == [action.id, f"#record-{run_id}"]
    assert action.type == "CreateAction" and action["identifier"] == run_id
    assert action["actionStatus"] == "http://schema.org/CompletedActionStatus"  # not an entity: a plain id
    assert action["startTime"] < action["endTime"]
    person = action["agent"]
    assert person.type == "Person" and root_ds["author"].id == person.id
    assert "SoftwareSourceCode" in action["instrument"].type
    requirements = {r["name"]: r["softwareVersion"] for r in action["instrument"]["softwareRequirements"]}
    assert requirements["PyTorch"] == torch.__version__ and requirements["prov4ml-lightning"] == prov4ml.__version__
    inputs = {e.get("name"): e for e in action["object"]}
    assert inputs["lr"]["value"] == 0.1 and inputs["name"]["value"] == "<b>linear</b>"
    assert inputs["train data 0"].type == "Dataset" and inputs["train data 0"]["identifier"] == "ab" * 32
    assert f"packages_{run_id}.txt" in _ids(action["object"])
    results = action["result"]
    assert f"metrics_{run_id}.csv" in _ids(results)
    # checkpoints described (not copied by default) with the hashes of the files the run wrote: data
    # entities with local identifiers, in the root's hasPart, and no file: URL of the recording machine
    refs = [e for e in results if "checkpoint" in e.id]
    assert len(refs) == 2
    by_name = {e["name"]: e for e in refs}
    for path in ckpts:
        ref = by_name[path.name]
        assert ref.id.startswith("#checkpoint-") and "url" not in ref.properties()
        assert ref["sha256"] == _sha256(path) and int(ref["contentSize"]) == path.stat().st_size
    parts = set(_ids(root_ds["hasPart"]))
    model = next(e for e in results if e.id.startswith("#model-"))
    assert {r.id for r in refs} | {model.id} <= parts
    assert "file://" not in (out / "ro-crate-metadata.json").read_text()
    assert model["url"].startswith("models:/") and model["identifier"] == model["url"].split("/")[-1]
    # the model file log_model kept beside the PROV files travels in the crate
    assert any(name.startswith(f"model_versions_{run_id}/") and name.endswith(".pth") for name in _ids(results))
    last_loss = next(e for e in results if e.id.startswith("#metric-"))
    assert isinstance(last_loss["value"], float)
    # prov4ml-lightning recorded the PROV files
    record = crate.get(f"#record-{run_id}")
    assert record["instrument"]["name"] == "prov4ml-lightning"
    assert f"prov/provgraph_{run_id}.json" in _ids(record["result"])


def test_crate_with_checkpoints_zip_and_mlflow_run(recorded, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    _, outputs, ckpts = recorded
    out = tmp_path / "run.zip"
    # MLflow keeps log_model's file outside the run's prov/ folder: the crate says it leaves it out
    with pytest.warns(prov4ml.Prov4MLWarning, match=r"model_versions_.*linear\.pth.*leaves it out"):
        code, _, _ = _export([outputs.run_id, "--tracking-uri", outputs.tracking_uri, "-o", str(out),
                              "--include-checkpoints", "--license", "MIT"], capsys)
    assert code == 0
    unzipped = tmp_path / "unzipped"
    with zipfile.ZipFile(out) as archive:
        archive.extractall(unzipped)
    assert validate_crate(unzipped, tmp_path) == []
    crate = rocrate.ROCrate(out)
    copied = {e.id: e for e in crate.data_entities if e.id.startswith("checkpoints/")}
    assert set(copied) == {f"checkpoints/{p.name}".replace("=", "%3D") for p in ckpts}
    for entity in copied.values():
        assert _sha256(Path(crate.source) / entity.id.replace("%3D", "=")) == entity["sha256"]
    assert {_sha256(p) for p in ckpts} == {e["sha256"] for e in copied.values()}


def test_changed_file_is_refused_and_nothing_is_lost(recorded, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    _, outputs, _ = recorded
    copy = tmp_path / "prov"
    shutil.copytree(outputs.prov_json.parent, copy)
    metrics = next(copy.glob("metrics_*.csv"))
    metrics.write_text(metrics.read_text() + "tampered\n")
    code, _, err = _export([str(copy / outputs.prov_json.name), "-o", str(tmp_path / "c")], capsys)
    assert code == 2 and "sha256" in err and metrics.name in err
    # an existing non-empty folder is never written into
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    code, _, err = _export([str(outputs.prov_json), "-o", str(tmp_path / "full")], capsys)
    assert code == 2 and "not an empty folder" in err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine"


def test_missing_output_and_license_warning(recorded, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _, outputs, _ = recorded
    code, _, err = _export([str(outputs.prov_json)], capsys)
    assert code == 2 and "-o DIR" in err
    with pytest.warns(prov4ml.Prov4MLWarning, match="no license"):
        code, _, _ = _export([str(outputs.prov_json), "-o", str(tmp_path / "c")], capsys)
    graph = json.loads((tmp_path / "c" / "ro-crate-metadata.json").read_text())["@graph"]
    assert code == 0 and "license" not in next(e for e in graph if e["@id"] == "./")


@pytest.fixture(scope="module")
def lightning_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The MNIST-like example: a 2-epoch fit with train and validation sets, then a test on its own set."""
    out = tmp_path_factory.mktemp("rocrate-lightning")
    example = Path(__file__).resolve().parents[2] / "examples" / "lightning_mnist_like.py"
    subprocess.run([sys.executable, str(example), "--out", str(out), "--epochs", "2"], check=True,
                   capture_output=True, cwd=out, timeout=600)
    (prov_json,) = (out / "prov").glob("provgraph_*.json")
    return prov_json


def test_a_fit_and_a_test_are_two_actions_and_the_test_set_is_upstream_of_no_model(
        lightning_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "crate"
    code, _, _ = _export([str(lightning_run), "-o", str(out), "--license", "MIT"], capsys)
    assert code == 0
    assert validate_crate(out, tmp_path) == []  # roc-validator, Process Run Crate 0.5, required level
    crate = rocrate.ROCrate(out)
    record = next(e for e in crate.get_entities() if e.id.startswith("#record-"))
    actions = {e["identifier"]: e for e in crate.get_entities() if e.type == "CreateAction" and e is not record}
    (fit,) = [a for k, a in actions.items() if k.startswith("fit_")]
    (test,) = [a for k, a in actions.items() if k.startswith("test_")]
    assert set(actions) == {fit["identifier"], test["identifier"]}  # the session ran nothing else
    assert set(_ids(crate.root_dataset["mentions"])) == {fit.id, test.id, record.id}

    def roles(action) -> set[str]:
        return {o["description"].split(" ")[0] for o in action["object"] if o.id.startswith("#dataset-")}

    assert roles(fit) == {"train", "val"} and roles(test) == {"test"}
    fit_results, test_results = set(_ids(fit["result"])), set(_ids(test["result"]))
    models = {e.id for e in crate.get_entities() if e.id.startswith("#model-") and e.type == "Dataset"}
    checkpoints = {e.id for e in crate.get_entities() if e.id.startswith("#checkpoint-")}
    assert models and checkpoints and models | checkpoints <= fit_results
    # the test read the best checkpoint and made the test metrics; the model is no result of it
    assert {"#metric-testing.test_loss", "#metric-testing.test_acc"} <= test_results
    assert not test_results & (models | checkpoints | {"#metric-training.epoch"})
    assert "#metric-training.epoch" in fit_results  # the fit's epoch counter, whichever loop logged it
    assert set(_ids(test["object"])) & checkpoints
    for action in (fit, test):  # no action whose result is the model has the test set as an object
        if set(_ids(action["result"])) & models:
            assert "test" not in roles(action)
    # checkpoints and the model: data entities (in hasPart) with local ids; no path of the recording machine
    assert models | checkpoints <= set(_ids(crate.root_dataset["hasPart"]))
    assert "file://" not in (out / "ro-crate-metadata.json").read_text()
    assert all(a["actionStatus"] == "http://schema.org/CompletedActionStatus" and a["startTime"] < a["endTime"]
               for a in (fit, test))


def test_a_resumed_run_exports_with_its_sidecar_as_it_is_now(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """A fit preempted and resumed in a second process: its metric sidecar is recorded once per
    session (the second appended to the first); the crate holds the file's bytes as they are, under
    the second session's sha256 (user test: the export refused every resumed run)."""
    from tests.provenance.test_lineage_sparql import _RESUME, EXAMPLES

    script = tmp_path / "resume.py"
    script.write_text(_RESUME.format(examples=str(EXAMPLES), out=str(tmp_path)))
    for part in ("1", "2"):
        subprocess.run([sys.executable, str(script), part], check=True, capture_output=True, cwd=tmp_path,
                       timeout=600)
    (prov_file,) = (tmp_path / "prov").glob("provgraph_*.json")
    out = tmp_path / "crate"
    code, _, err = _export([str(prov_file), "-o", str(out), "--license", "MIT"], capsys)
    assert code == 0, err
    assert validate_crate(out, tmp_path) == []
    (sidecar,) = (tmp_path / "prov").glob("metrics_*.csv")
    crate = rocrate.ROCrate(out)
    (entry,) = [e for e in crate.get_entities() if e.id == sidecar.name]
    assert entry["sha256"] == _sha256(sidecar) == _sha256(out / sidecar.name)
