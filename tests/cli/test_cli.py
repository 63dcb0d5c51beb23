"""The `prov4ml` command line on documents written by real runs.

Runs are recorded with the functional API (plus the recorder's ``add_entity``/``start_activity``
for a dataset and epochs, the calls the Lightning callback makes); ``main([...])`` is called
in-process, and the console script and ``python -m prov4ml_lightning`` once each as real
processes. Pictures are drawn by the real Graphviz ``dot`` and parsed as XML.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import uuid
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import prov
import pytest
import torch
from torch import nn

import prov4ml_lightning as prov4ml
from prov4ml_lightning.capture.model_info import state_dict_sha256
from prov4ml_lightning.cli import COMMANDS, main
from prov4ml_lightning.cli._view import RunView, datasets_by_name
from prov4ml_lightning.cli.diff import fingerprint_kind
from tests.helpers import diff_rows

_SVG = "{http://www.w3.org/2000/svg}"


# -- real runs --------------------------------------------------------------------------------
def _train(root: Path, mlflow_dir: Path, *, lr: float = 0.1, data_seed: int = 0, epochs: int = 2,
           checkpoints: int = 0, log_model: bool = False, experiment: str | None = None) -> prov4ml.RunOutputs:
    """A tiny regression trained for ``epochs`` epochs, recorded with the functional API."""
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(data_seed)
    x = torch.randn(64, 4, generator=gen)
    y = x.sum(dim=1, keepdim=True)
    net = nn.Linear(4, 1)
    opt = torch.optim.SGD(net.parameters(), lr=lr)
    run = prov4ml.start_run("www.example.org", experiment or f"cli-{uuid.uuid4().hex[:8]}", root / "prov", mlflow_dir)
    try:
        prov4ml.log_params({"lr": lr, "seed": 0, "epochs": epochs, "optimizer": {"name": "sgd"}})
        # What the callback records for a fit, its initial weights and a dataloader; the fingerprint
        # is a hash of the whole data.
        run.start_activity("fit_1", "Fit", "fit 1")
        run.add_entity("model_state", "ModelState", "fit_1.initial", {"state_dict_sha256": state_dict_sha256(
            net.state_dict())}, label="initial weights (fit_1)", relation="used", activity="fit_1")
        fingerprint = hashlib.sha256(x.numpy().tobytes() + y.numpy().tobytes()).hexdigest()
        run.add_entity("dataset", "Dataset", f"train0.{fingerprint[:16]}",
                       {"role": "train", "dataloader_index": 0, "dataset_class": "torch.utils.data.TensorDataset",
                        "length": len(x), "batch_size": 16, "fingerprint": fingerprint,
                        "fingerprint_status": "complete", "fingerprint_method": "sha256 of every tensor's bytes"},
                       label=f"train data 0: TensorDataset ({len(x)})")
        ckpt_dir = root / "ckpt"
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        previous = None
        for epoch in range(epochs):
            ident = f"epoch_{epoch}"
            run.start_activity(ident, "TrainingEpoch", f"epoch {epoch}", informed_by=previous, part_of="fit_1")
            for i in range(0, len(x), 16):
                opt.zero_grad()
                loss = nn.functional.mse_loss(net(x[i:i + 16]), y[i:i + 16])
                loss.backward()
                opt.step()
                prov4ml.log_metric("loss", loss.detach(), prov4ml.Context.TRAINING)
            with torch.no_grad():
                val = nn.functional.mse_loss(net(x), y).item()
            prov4ml.log_metric("val_loss", val, prov4ml.Context.VALIDATION, step=epoch)
            run.end_activity(ident)
            if epoch < checkpoints:
                path = ckpt_dir / f"epoch={epoch}.ckpt"
                torch.save(net.state_dict(), path)
                run.log_artifact(path, kind="checkpoint", activity=ident, upload=False,
                                 attributes={"monitor": "val_loss", "score": val, "best": epoch == checkpoints // 2})
            previous = ident
        run.end_activity("fit_1")
        if log_model:
            prov4ml.log_model(net, "linear")
    finally:
        outputs = prov4ml.end_run()
    return outputs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory, mlflow_dir: Path) -> dict[str, prov4ml.RunOutputs]:
    """Three real runs: ``base``, ``lr`` (another learning rate), ``data`` (other data)."""
    root = tmp_path_factory.mktemp("cli-runs")
    experiment = f"cli-{uuid.uuid4().hex[:8]}"
    return {
        "base": _train(root / "base", mlflow_dir, checkpoints=2, log_model=True, experiment=experiment),
        "lr": _train(root / "lr", mlflow_dir, lr=0.01, experiment=experiment),
        "data": _train(root / "data", mlflow_dir, data_seed=1, experiment=experiment),
    }


def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _svg_node_texts(path: Path) -> list[str]:
    """The text of each node Graphviz drew, read from the SVG (which must parse as XML)."""
    root = ET.parse(path).getroot()
    assert root.tag == f"{_SVG}svg"
    nodes = [g for g in root.iter(f"{_SVG}g") if g.get("class") == "node"]
    return [" ".join(t.text or "" for t in g.iter(f"{_SVG}text")) for g in nodes]


# -- help, entry points ------------------------------------------------------------------------------
def test_every_subcommand_has_help(capsys):
    code, out, _ = _cli(capsys, "--help")
    assert code == 0
    for name in COMMANDS:
        assert name in out
        code, out_sub, _ = _cli(capsys, name, "--help")
        assert code == 0, name
        assert out_sub.startswith(f"usage: prov4ml {name}"), out_sub[:80]


def test_subcommand_modules_follow_the_registration_contract():
    """What a new subcommand module needs (see prov4ml_lightning.cli's docstring)."""
    import importlib

    for name in COMMANDS:
        module = importlib.import_module(f"prov4ml_lightning.cli.{name}")
        assert name == module.NAME
        assert module.HELP and module.__doc__
        assert callable(module.add_arguments) and callable(module.run)


def test_usage_error_exits_2(capsys):
    code, _, err = _cli(capsys, "render")
    assert code == 2 and "RUN_OR_FILE" in err
    code, _, err = _cli(capsys, "frobnicate")
    assert code == 2 and "invalid choice" in err


@pytest.mark.slow
def test_console_script_renders_svg_with_real_dot(runs, tmp_path):
    exe = shutil.which("prov4ml")
    assert exe is not None, "console script missing: pip install -e ."
    out = tmp_path / "graph.svg"
    proc = subprocess.run([exe, "render", str(runs["base"].provenance_dir), "-o", str(out)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(out)
    assert "Generated by graphviz" in out.read_text()  # drawn by the dot program, not by us
    texts = _svg_node_texts(out)
    doc = prov.read(str(runs["base"].prov_json), format="json")
    label = next(str(next(iter(r.get_attribute("prov:label")))) for r in doc.get_records()
                 if r.is_element() and "p4l:Run" in {str(t) for t in r.get_attribute("prov:type")})
    assert any(t.startswith(label) for t in texts), (label, texts)
    assert any("lr = 0.1" in t for t in texts)  # a parameter with its value (level 1 lists them)
    assert any("Entity" in t for t in texts) and any("Agent" in t for t in texts)  # the legend
    assert (tmp_path / "graph.dot").read_text().startswith("digraph")


@pytest.mark.slow
def test_python_m_runs_the_cli(runs):
    proc = subprocess.run([sys.executable, "-m", "prov4ml_lightning", "show", str(runs["base"].prov_json)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert runs["base"].run_id in proc.stdout


# -- render ----------------------------------------------------------------------------------------
def test_render_levels(runs, tmp_path, capsys):
    src = runs["base"].prov_json
    assert _cli(capsys, "render", src, "-o", tmp_path / "l2.svg", "--level", "2")[0] == 0
    assert _cli(capsys, "render", src, "-o", tmp_path / "l1.svg", "--level", "1")[0] == 0
    level2, level1 = _svg_node_texts(tmp_path / "l2.svg"), _svg_node_texts(tmp_path / "l1.svg")
    for texts in (level1, level2):
        assert any("train data 0" in t for t in texts)  # data is in the overview
        assert any(t.startswith("linear v1") for t in texts)  # the model
        assert any(t.startswith("epoch 0") for t in texts)
        assert any("epoch=0.ckpt" in t for t in texts)  # checkpoints
    assert any(t.startswith("lr = ") for t in level2)  # one node per hyperparameter
    assert not any(t.startswith("lr = ") for t in level1)
    assert any(t.startswith("hyperparameters") is False and "hyperparameters" in t and "lr = " in t for t in level1)
    assert any(t.startswith("loss (training)") for t in level2)
    assert any("metric series" in t and "loss (training): last" in t for t in level1)


@pytest.mark.parametrize("fmt", ["png", "pdf"])
def test_render_other_formats(runs, tmp_path, capsys, fmt):
    out = tmp_path / f"g.{fmt}"
    assert _cli(capsys, "render", runs["base"].prov_json, "-o", out)[0] == 0  # format from the suffix
    magic = {"png": b"\x89PNG", "pdf": b"%PDF"}[fmt]
    assert out.read_bytes().startswith(magic)


@pytest.mark.slow
def test_render_collapses_hundreds_of_epochs(tmp_path, mlflow_dir, capsys):
    outputs = _train(tmp_path / "long", mlflow_dir, epochs=300, checkpoints=300)
    out = tmp_path / "long.svg"
    assert _cli(capsys, "render", outputs.prov_json, "-o", out)[0] == 0
    texts = _svg_node_texts(out)
    assert len(texts) < 60, len(texts)  # 300 epochs + 300 checkpoints drawn as a few dozen nodes
    assert any(t.startswith("\u2026 294 more epochs") for t in texts), texts
    assert any(t.startswith("\u2026 293 more checkpoints") for t in texts), texts
    for shown in ("epoch 0", "epoch 2", "epoch 297", "epoch 299"):
        assert any(t.startswith(shown + " ") or t == shown for t in texts), shown
    assert any("epoch=150.ckpt" in t and "best" in t for t in texts)  # the best one stays visible
    # The chain survives the collapse: epoch 297 was informed by the hidden epoch 296.
    dot_text = (tmp_path / "long.dot").read_text()
    hidden = re.search(r"^\t+(n\d+) \[label=\"\u2026 294 more epochs", dot_text, re.M).group(1)
    drawn = re.findall(r"^\t(n\d+) -> (n\d+) \[color=", dot_text, re.M)  # PROV edges, not layout ones
    assert any(a == hidden for a, _ in drawn) and any(b == hidden for _, b in drawn)
    # --collapse 0 keeps every record (only the DOT source: dot needs minutes to lay out 600 nodes).
    full = tmp_path / "full.dot"
    assert _cli(capsys, "render", outputs.prov_json, "-o", full, "--collapse", "0", "--level", "1")[0] == 0
    assert len(re.findall(r"^\t+n\d+ \[label=", full.read_text(), re.M)) > 600  # 300 epochs, 300 checkpoints


@pytest.mark.slow
def test_render_without_dot_writes_dot_and_says_how_to_install(runs, tmp_path, capsys, monkeypatch):
    empty = tmp_path / "empty-path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, _, err = _cli(capsys, "render", runs["base"].prov_json, "-o", tmp_path / "g.svg")
    assert code == 1
    assert not (tmp_path / "g.svg").exists()
    assert "apt-get install graphviz" in err and "brew install graphviz" in err
    assert f"dot -Tsvg {tmp_path / 'g.dot'} -o {tmp_path / 'g.svg'}" in err
    monkeypatch.undo()
    # The DOT file left behind is complete: the real dot draws it.
    subprocess.run(["dot", "-Tsvg", str(tmp_path / "g.dot"), "-o", str(tmp_path / "later.svg")], check=True)
    assert _svg_node_texts(tmp_path / "later.svg")


# -- show ------------------------------------------------------------------------------------------
def test_show_summarises_the_run(runs, capsys):
    base = runs["base"]
    code, out, _ = _cli(capsys, "show", base.provenance_dir)
    assert code == 0
    assert base.run_id in out and "FINISHED" in out
    assert "Hyperparameters (4)" in out and "optimizer/name" in out
    doc = prov.read(str(base.prov_json), format="json")
    series = {str(next(iter(r.get_attribute("p4l:mlflow_key")))): r for r in doc.get_records()
              if r.is_element() and r.get_attribute("p4l:mlflow_key")}
    last = next(iter(series["val_loss"].get_attribute("p4l:last_value")))
    low = next(iter(series["val_loss"].get_attribute("p4l:min_value")))
    line = next(ln for ln in out.splitlines() if "val_loss" in ln and "validation" in ln)
    assert f"{last:.6g}" in line and f"{low:.6g} (min)" in line  # final and best (a loss: min)
    assert "train[0]" in out and "64 samples" in out  # data
    assert "Checkpoints (2)" in out and "best" in out
    assert "linear v1" in out  # model
    assert str(base.metrics_file) in out  # files


def test_show_lists_every_model_version_and_gives_best_only_where_a_direction_is_known(run_args, capsys):
    prov4ml.start_run(**run_args)
    model = nn.Linear(3, 2)
    for step in range(3):
        prov4ml.log_metric("loss", 1.0 / (step + 1), prov4ml.Context.TRAINING, step=step)
        prov4ml.log_metric("acc", 0.5 + step / 10, prov4ml.Context.VALIDATION, step=step)
        prov4ml.log_metric("lr", 0.1 * (step + 1), prov4ml.Context.TRAINING, step=step)
        prov4ml.log_system_metrics(prov4ml.Context.TRAINING, step=step)
        with torch.no_grad():
            model.weight.add_(1.0)
        prov4ml.save_model_version(model, f"net_v{step}", prov4ml.Context.TRAINING, step=step)
    out_paths = prov4ml.end_run()
    code, out, _ = _cli(capsys, "show", out_paths.prov_json)
    assert code == 0
    assert "Model versions (3)" in out
    rows = [ln for ln in out.splitlines() if "net_v" in ln and "step " in ln]
    assert [re.search(r"net_v\d", ln).group(0) for ln in rows] == ["net_v0", "net_v1", "net_v2"]
    by_name = {ln.split()[1]: ln for ln in out.splitlines() if ln.startswith("  training") or
               ln.startswith("  validation")}
    assert "1 (max)" not in by_name["loss"] and "0.333333 (min)" in by_name["loss"]
    assert "0.7 (max)" in by_name["acc"]
    for key in ("lr", "cpu_usage", "memory_usage"):  # no direction is better: no "best"
        assert "(max)" not in by_name[key] and "(min)" not in by_name[key], by_name[key]


# -- validate --------------------------------------------------------------------------------------
def test_validate_reports_problems_with_record_ids(runs, tmp_path, capsys):
    good = runs["base"].prov_json
    code, out, _ = _cli(capsys, "validate", good, "--quick")
    assert code == 0 and out.strip() == f"{good}: OK"

    data = json.loads(good.read_text())
    rid, usage = next(iter(data["used"].items()))
    usage["prov:entity"] = "user:never_declared"
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(data))
    code, out, _ = _cli(capsys, "validate", good, broken, "--quick")
    assert code == 1
    lines = out.splitlines()
    assert f"{good}: OK" in lines
    assert any(ln.startswith(f"{broken}: [reference] {rid}") and "user:never_declared" in ln for ln in lines), out
    assert lines[-1] == "1 of 2 documents valid"


def test_validate_malformed_json_fails_the_check(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"entity": ')
    code, out, _ = _cli(capsys, "validate", bad)
    assert code == 1 and out.startswith(f"{bad}: [json]")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b"\x89PNG\r\n\x1a\n\xff\xfe")
    code, out, _ = _cli(capsys, "validate", binary)
    assert code == 1 and out.startswith(f"{binary}: [json]: not JSON: not UTF-8")


# -- diff ------------------------------------------------------------------------------------------
_diff_rows = diff_rows


def test_diff_finds_a_changed_hyperparameter(runs, capsys):
    code, out, _ = _cli(capsys, "diff", runs["base"].prov_json, runs["lr"].prov_json)
    assert code == 1
    assert _diff_rows(out, "hyperparameters") == {"lr": ("0.1", "0.01")}
    assert "data: same" in out and "seed: same" in out
    # Final metrics side by side: different learning rates end on different losses.
    line = next(ln for ln in out.splitlines() if ln.split()[:2] == ["validation", "val_loss"])
    assert len(line.split()) == 5


def test_diff_finds_a_changed_data_fingerprint(runs, capsys):
    code, out, _ = _cli(capsys, "diff", runs["base"].provenance_dir, runs["data"].provenance_dir)
    assert code == 1
    rows = _diff_rows(out, "data")
    assert list(rows) == ["train[0] fingerprint"]  # matched by role: changed, not one removed + one added
    a, b = rows["train[0] fingerprint"]
    assert a != b and len(a) == len(b) == 50 and a.endswith("\u2026")
    assert "hyperparameters: same" in out


def test_diff_finds_a_changed_package_version(runs, tmp_path, capsys):
    """No second environment is at hand, so the change is made by hand: a copy of the run's
    folder whose packages file (the list the document names) says another torch version."""
    copy = tmp_path / "copy"
    shutil.copytree(runs["base"].provenance_dir, copy)
    doc = json.loads(runs["base"].prov_json.read_text())
    env = next(e for e in doc["entity"].values() if "p4l:packages_file" in e)
    packages = copy / env["p4l:packages_file"]
    lines = packages.read_text().splitlines()
    torch_line = next(ln for ln in lines if ln.lower().startswith("torch=="))
    packages.write_text("\n".join("torch==0.0.1" if ln == torch_line else ln for ln in lines) + "\n")
    code, out, _ = _cli(capsys, "diff", runs["base"].provenance_dir, copy)
    assert code == 1
    assert _diff_rows(out, "environment") == {"package torch": (torch_line.split("==")[1], "0.0.1")}
    assert "hyperparameters: same" in out and "data: same" in out


def test_diff_of_a_run_with_itself_exits_0(runs, capsys):
    code, out, _ = _cli(capsys, "diff", runs["base"].prov_json, runs["base"].provenance_dir)
    assert code == 0
    assert out.rstrip().endswith("no input differences")


# -- export ----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("fmt", "read"), [
    ("xml", {"format": "xml"}),
    ("ttl", {"format": "rdf", "rdf_format": "turtle"}),
    ("jsonld", {"format": "rdf", "rdf_format": "json-ld"}),
])
def test_export_reads_back_with_prov(runs, tmp_path, capsys, fmt, read):
    out = tmp_path / f"doc.{fmt}"
    assert _cli(capsys, "export", runs["base"].prov_json, "--format", fmt, "-o", out)[0] == 0
    original = prov.read(str(runs["base"].prov_json), format="json")
    back = prov.read(str(out), **read)
    # Full URIs: JSON-LD keeps no prefixes, so read back they get generated ones (ns1:, ...).
    uris = {r.identifier.uri for r in original.get_records() if r.is_element()}
    assert len(uris) > 10
    assert uris == {r.identifier.uri for r in back.get_records() if r.is_element()}


def test_export_provn_to_stdout(runs, capsys):
    code, out, _ = _cli(capsys, "export", runs["base"].prov_json, "--format", "provn")
    assert code == 0
    assert out.startswith("document") and out.rstrip().endswith("endDocument")
    assert f"activity(user:run_{runs['base'].run_id}" in out


# -- MLflow run ids ----------------------------------------------------------------------------------
def test_run_id_with_tracking_uri(runs, capsys, tmp_path):
    base = runs["base"]
    code, out, _ = _cli(capsys, "show", base.run_id, "--tracking-uri", base.tracking_uri)
    assert code == 0
    assert base.run_id in out and "Hyperparameters (4)" in out
    # The sidecar came along with the document: the file list shows it present.
    metrics_line = next(ln for ln in out.splitlines() if ln.startswith("  metrics "))
    assert "(missing)" not in metrics_line and Path(metrics_line.split()[1]).name == base.metrics_file.name
    code, _, _ = _cli(capsys, "render", base.run_id, "--tracking-uri", base.tracking_uri, "-o", tmp_path / "m.svg")
    assert code == 0 and _svg_node_texts(tmp_path / "m.svg")
    code, out, _ = _cli(capsys, "diff", base.run_id, runs["lr"].run_id, "--tracking-uri", base.tracking_uri)
    assert code == 1 and _diff_rows(out, "hyperparameters") == {"lr": ("0.1", "0.01")}


def test_run_id_errors_are_one_line(runs, capsys, monkeypatch, tmp_path):
    uri = runs["base"].tracking_uri
    code, _, err = _cli(capsys, "show", "0" * 32, "--tracking-uri", uri)
    assert code == 2 and err.count("\n") == 1 and "not found" in err
    code, _, err = _cli(capsys, "show", runs["base"].run_id)  # no tracking URI
    assert code == 2 and err.count("\n") == 1 and "--tracking-uri" in err
    missing_store = f"sqlite:///{tmp_path / 'nope.db'}"
    code, _, err = _cli(capsys, "show", runs["base"].run_id, "--tracking-uri", missing_store)
    assert code == 2 and "no such SQLite file" in err
    assert not (tmp_path / "nope.db").exists()  # reading never creates a store
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert _cli(capsys, "show", runs["base"].run_id)[0] == 0


# -- bad input -------------------------------------------------------------------------------------
_COMMAND_ARGS = {
    "render": ["render", "{f}"], "show": ["show", "{f}"], "validate": ["validate", "{f}"],
    "diff": ["diff", "{f}", "{f}"], "export": ["export", "{f}", "--format", "provn"],
}


@pytest.mark.parametrize("command", sorted(_COMMAND_ARGS))
def test_missing_file_is_a_one_line_error(command, tmp_path, capsys):
    missing = tmp_path / "no_such.json"
    code, out, err = _cli(capsys, *(a.format(f=missing) for a in _COMMAND_ARGS[command]))
    assert code == 2
    assert err == f"prov4ml {command}: {missing}: no such file or folder\n"
    assert out == ""


@pytest.mark.parametrize("command", ["render", "show", "diff", "export"])
@pytest.mark.parametrize(("content", "expected"), [
    ('{"entity": ', "malformed JSON at line 1 column 12"),
    ("[1, 2]", "not a PROV-JSON document"),
    ('{"entity": {"x": 5}}', "not a valid PROV-JSON document"),
])
def test_malformed_file_is_a_one_line_error(command, content, expected, tmp_path, capsys, monkeypatch):
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    monkeypatch.chdir(tmp_path)  # render's default output goes to the current folder
    code, _, err = _cli(capsys, *(a.format(f=bad) for a in _COMMAND_ARGS[command]))
    assert code == 2
    assert err.count("\n") == 1 and expected in err and "Traceback" not in err
    assert not list(tmp_path.glob("*.svg"))


def test_a_folder_of_several_runs_gives_the_newest_with_a_note_and_validate_checks_all(runs, tmp_path, capsys):
    for age, name in ((200, "base"), (100, "lr")):  # lr is the newer
        copied = Path(shutil.copy(runs[name].prov_json, tmp_path))
        stamp = copied.stat().st_mtime - age
        os.utime(copied, (stamp, stamp))
    newest, older = runs["lr"].prov_json.name, runs["base"].prov_json.name
    code, out, err = _cli(capsys, "show", tmp_path)
    assert code == 0 and runs["lr"].run_id in out and runs["base"].run_id not in out
    assert err.count("\n") == 1 and "holds 2 runs" in err and newest in err and older in err
    code, out, err = _cli(capsys, "export", tmp_path, "--format", "provn")
    assert code == 0 and runs["lr"].run_id in out and newest in err
    code, out, _ = _cli(capsys, "diff", runs["base"].prov_json, tmp_path)  # base against the newest (lr)
    assert code == 1 and _diff_rows(out, "hyperparameters") == {"lr": ("0.1", "0.01")}
    code, out, err = _cli(capsys, "validate", "--quick", tmp_path)
    assert code == 0 and err == ""
    assert f"{tmp_path / newest}: OK" in out and f"{tmp_path / older}: OK" in out and "2 of 2 documents valid" in out


def test_help_has_no_rest_markup(capsys):
    for argv in (["--help"], *([name, "--help"] for name in COMMANDS)):
        code, out, _ = _cli(capsys, *argv)
        assert code == 0
        assert "``" not in out and not re.search(r":[a-z]+:`", out), (argv, out)


# -- the Lightning front door -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def lightning_runs(tmp_path_factory: pytest.TempPathFactory, mlflow_dir: Path) -> dict[str, Path]:
    """Two real ``Trainer.fit`` runs with the callback; ``fewer`` trains on 48 samples, not 64."""
    import warnings

    from lightning.pytorch.callbacks import ModelCheckpoint

    from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

    root = tmp_path_factory.mktemp("cli-lightning")
    experiment = f"cli-lightning-{uuid.uuid4().hex[:8]}"
    docs = {}
    for name, n_train in (("base", 64), ("fewer", 48)):
        torch.manual_seed(0)
        callback = prov4ml.Prov4MLCallback("www.example.org", experiment, root / name / "prov", mlflow_dir,
                                           log_model=False)
        trainer = fast_trainer(root / name, [callback, ModelCheckpoint(monitor="val_loss", save_top_k=1)])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # Lightning's advice on num_workers etc.
            trainer.fit(TinyModel(), TinyDataModule(n_train=n_train))
        docs[name] = root / name / "prov"
    return docs


@pytest.mark.slow
def test_lightning_run_show_render_validate_export(lightning_runs, tmp_path, capsys):
    folder = lightning_runs["base"]
    code, out, _ = _cli(capsys, "show", folder)
    assert code == 0
    assert "train[0]" in out and "val[0]" in out and "64 samples" in out
    assert "Epochs: 2 training, 2 validation loops" in out
    assert "Checkpoints (" in out and "best" in out
    assert "Software:" in out and "lightning " in out  # the environment entity
    val_line = next(ln for ln in out.splitlines() if ln.split()[:2] == ["validation", "val_loss"])
    assert "(min)" in val_line

    out_svg = tmp_path / "overview.svg"
    assert _cli(capsys, "render", folder, "--level", "1", "-o", out_svg)[0] == 0
    texts = _svg_node_texts(out_svg)
    for expected in ("epoch 0", "epoch 1", "fit", "train data 0", "val data 0", "environment of", ".ckpt", "git "):
        assert any(expected in t for t in texts), (expected, texts)
    assert not any(t.startswith("lr = ") for t in texts)

    code, out, _ = _cli(capsys, "validate", folder)  # every check, round trips included
    assert code == 0 and out.strip().endswith(": OK"), out
    ttl = tmp_path / "run.ttl"
    assert _cli(capsys, "export", folder, "--format", "ttl", "-o", ttl)[0] == 0
    assert prov.read(str(ttl), format="rdf", rdf_format="turtle").get_records()


@pytest.mark.slow
def test_lightning_diff_finds_changed_data(lightning_runs, capsys):
    code, out, _ = _cli(capsys, "diff", lightning_runs["base"], lightning_runs["fewer"])
    assert code == 1
    data = _diff_rows(out, "data")
    # The validation set is the same data: "same" only when its fingerprint hashes all of it.
    val = datasets_by_name(RunView.load(next(lightning_runs["base"].glob("provgraph_*.json"))))["val[0]"]
    kind = fingerprint_kind(val)
    assert set(data) == {"train[0] fingerprint", "train[0] length", *(["val[0] fingerprint"] if kind else [])}
    if kind:
        assert data["val[0] fingerprint"][2] == f"{kind}: cannot tell"
    assert data["train[0] length"] == ("64", "48")
    a, b = data["train[0] fingerprint"]
    assert a != b
    assert _diff_rows(out, "hyperparameters") == {"n_train": ("64", "48")}
    assert "code: same" in out and "hardware: same" in out


@pytest.mark.slow
def test_show_orders_checkpoints_by_step_keeps_path_ends_and_says_why_training_stopped(tmp_path, mlflow_dir, capsys):
    from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint

    from tests.lightning_models import TinyDataModule, TinyModel, fast_trainer

    deep = tmp_path / ("a-long-folder-name-for-checkpoints-" * 3) / "ckpt"
    callback = prov4ml.Prov4MLCallback("www.example.org", f"cli-{uuid.uuid4().hex[:8]}", tmp_path / "prov",
                                       mlflow_dir, log_model=False)
    saver = ModelCheckpoint(dirpath=deep, filename="{step}", every_n_train_steps=1, save_top_k=-1)
    stopper = EarlyStopping(monitor="val_loss", stopping_threshold=10.0)  # stops after the first epoch
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fast_trainer(tmp_path, [callback, saver, stopper], max_epochs=5).fit(TinyModel(), TinyDataModule(batch_size=4))
    code, out, _ = _cli(capsys, "show", tmp_path / "prov")
    assert code == 0
    assert "Early stopping (fit 1): STOPPING_THRESHOLD, after epoch 0, monitoring val_loss" in out
    assert out.count("Early stopping") == 1 and "Stopping threshold reached" in out
    code_line = next(line for line in out.splitlines() if line.startswith("Code:"))
    assert "__main__.py" in code_line and not code_line.endswith("\u2026")  # the script's name, the commit after it
    section = out.split("Checkpoints (16, best and last 8 shown)")[1].split("\n\n")[0]
    steps = [int(m) for m in re.findall(r"^\s+step(\d+)_", section, re.M)]
    assert steps == list(range(9, 17))  # by step, not by name (step10 after step9)
    for step in steps:
        assert "\u2026" in section and f"/ckpt/step={step}.ckpt" in section
