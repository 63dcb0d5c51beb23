"""How ``prov4ml lineage`` grows with the number of runs, and what finding a weights' producer costs.

One real run of the functional API (a dataset, 200 metric points, initial weights, a saved model
version) is recorded first; its PROV JSON is the template of N generated runs: each gets its own
run id, one of 50 datasets (fingerprints) and its own weights hash, and two of three start from
the model of an earlier run (a ``p4l:EarlierRunWeights`` entity and the ``wasDerivedFrom`` edge,
as ``trace_weights`` records them), so fine-tuning chains run through the whole set. Measured:

- ``prov4ml lineage FOLDER --downstream <dataset 0>`` and ``--upstream <the last run's model>``, as
  a user runs them (a new process: wall time, interpreter start included), for each N;
- the downstream answer drawn (``--format svg``: the layout by Graphviz ``dot`` included);
- the same through an embedded SQLite store holding the N runs (tag ``prov4ml.provenance_file``,
  the document as an artifact), read with ``sqlite3``; for comparison, listing the documents
  through ``MlflowClient`` instead (a new process: MLflow's import, the store's opening and schema
  check, the paged ``search_runs``); and the store lookup a starting run makes
  (``MlflowSink.find_weights``: one ``search_runs`` over the ``prov4ml.weights.<hash>`` tags).

    python benchmarks/lineage.py --runs 100 300 1000      # results/lineage.json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def template(folder: Path) -> dict:
    """One real run's PROV JSON and the values to substitute in it."""
    import torch
    from torch.utils.data import TensorDataset

    import prov4ml_lightning as prov4ml

    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(16, 32), torch.nn.ReLU(), torch.nn.Linear(32, 1))
    data = TensorDataset(torch.randn(256, 16), torch.randn(256, 1))
    prov4ml.start_run(prov_user_namespace="www.example.org", experiment_name="template",
                      provenance_save_dir=str(folder / "prov"), mlflow_save_dir=str(folder / "mlflow"))
    run_id = prov4ml.get_run_id()
    prov4ml.log_dataset("train", data)
    prov4ml.log_model_memory_footprint(net, "net")
    for step in range(200):
        prov4ml.log_metric("loss", 1.0 / (step + 1), step=step)
    with torch.no_grad():
        net[0].weight.add_(0.01)
    prov4ml.save_model_version(net, "net")
    out = prov4ml.end_run()
    text = out.prov_json.read_text(encoding="utf-8")
    doc = json.loads(text)
    ents = doc["entity"]
    fingerprint = next(str(v["p4l:fingerprint"]) for v in ents.values() if v.get("p4l:fingerprint"))
    version = next(k for k, v in ents.items() if "Model_version" in json.dumps(v.get("prov:type")))
    initial = next(k for k, v in ents.items() if "ModelState" in json.dumps(v.get("prov:type")))
    weights = {str(ents[version]["p4l:state_dict_sha256"]), str(ents[initial]["p4l:state_dict_sha256"])}
    return {"text": text, "run_id": run_id, "fingerprint": fingerprint, "weights": sorted(weights),
            "version": version.split(":", 1)[1].replace(f"run_{run_id}", ""), "initial": initial}


def generate(tpl: dict, n: int, folder: Path, seed: int = 0) -> dict:
    """N documents from the template in ``folder``; returns the run ids, datasets and model ids."""
    rng = random.Random(seed)
    folder.mkdir(parents=True, exist_ok=True)
    datasets = [f"{rng.getrandbits(256):064x}" for _ in range(50)]
    runs = []
    for i in range(n):
        run_id = f"{rng.getrandbits(128):032x}"
        text = tpl["text"].replace(tpl["run_id"], run_id).replace(tpl["fingerprint"], datasets[i % 50])
        text = text.replace(tpl["fingerprint"][:16], datasets[i % 50][:16])
        for w in tpl["weights"]:
            text = text.replace(w, f"{rng.getrandbits(256):064x}")
        doc = json.loads(text)
        if i and i % 3:  # starts from an earlier run's model
            parent = runs[rng.randrange(len(runs))]
            earlier = f"user:run_{parent}{tpl['version']}"
            doc["entity"][earlier] = {"prov:type": {"$": "p4l:EarlierRunWeights", "type": "xsd:QName"},
                                      "p4l:run_id": parent, "p4l:kind": "model_version"}
            initial = tpl["initial"].replace(tpl["run_id"], run_id)
            doc.setdefault("wasDerivedFrom", {})[f"_:lineage{i}"] = {"prov:generatedEntity": initial,
                                                                     "prov:usedEntity": earlier}
        (folder / f"provgraph_{run_id}.json").write_text(json.dumps(doc), encoding="utf-8")
        runs.append(run_id)
    return {"runs": runs, "datasets": datasets, "last_model": f"run_{runs[-1]}{tpl['version']}"}


def fill_store(folder: Path, store: Path) -> str:
    """An embedded store holding the documents of ``folder`` as runs (PROV file, weights tag)."""
    from mlflow.entities import RunTag
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{store}/mlflow.db"
    store.mkdir(parents=True, exist_ok=True)
    client = MlflowClient(uri)
    exp = client.create_experiment("lineage", artifact_location=(store / "artifacts").as_uri())
    for i, path in enumerate(sorted(folder.glob("provgraph_*.json"))):
        run = client.create_run(exp)
        digest = f"{i:064x}"
        target = Path(run.info.artifact_uri.removeprefix("file://")) / "prov" / path.name  # a local artifact store
        target.parent.mkdir(parents=True)
        target.write_bytes(path.read_bytes())
        client.log_batch(run.info.run_id, tags=[
            RunTag("prov4ml.provenance_file", f"prov/{path.name}"),
            RunTag(f"prov4ml.weights.{digest}", json.dumps({"ns": "http://www.example.org/",
                                                            "ids": [["model", "net", "v1"]]}))])
        client.set_terminated(run.info.run_id)
    return uri


def timed(argv: list[str], *, answer: bool = True) -> tuple[float, dict]:
    """Wall time of ``prov4ml lineage ARGV`` in a new process, and its ``--json`` answer (``answer``)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "prov4ml_lightning", "lineage", *argv, *(["--json"] * answer)],
                          capture_output=True, text=True, env=env, check=True)
    return time.perf_counter() - t0, json.loads(proc.stdout) if answer else {}


def timed_mlflow_listing(uri: str, scratch: Path) -> tuple[float, int]:
    """Wall time, in a new process, of listing the store's PROV documents through ``MlflowClient``
    (import, store opening, paged ``search_runs``): what ``lineage`` did before it read an embedded
    store with ``sqlite3``; and how many it found."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")])}
    code = ("import sys; from prov4ml_lightning.sinks.mlflow.fetch import _fetch_all_with_mlflow; "
            "print(len(_fetch_all_with_mlflow(sys.argv[1], sys.argv[2], 8)))")
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code, uri, str(scratch)], capture_output=True, text=True, env=env,
                          check=True)
    return time.perf_counter() - t0, int(proc.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, nargs="+", default=[100, 300, 1000])
    parser.add_argument("--store", action="store_true", default=True)
    parser.add_argument("--no-store", dest="store", action="store_false")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "lineage.json"))
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="prov4ml-lineage-") as tmp:
        tpl = template(Path(tmp) / "template")
        for n in args.runs:
            folder = Path(tmp) / f"docs{n}"
            gen = generate(tpl, n, folder)
            size = sum(p.stat().st_size for p in folder.iterdir())
            down_s, down = timed([str(folder), "--downstream", gen["datasets"][0]])
            up_s, up = timed([str(folder), "--upstream", gen["last_model"]])
            svg_s, _ = timed([str(folder), "--downstream", gen["datasets"][0], "--format", "svg",
                              "-o", str(Path(tmp) / f"down{n}.svg")], answer=False)
            row = {"runs": n, "documents_mb": round(size / 1e6, 1), "folder_downstream_s": round(down_s, 2),
                   "downstream_runs": len(down["runs"]), "downstream_models": len(down["models"]),
                   "folder_upstream_s": round(up_s, 2), "upstream_runs": len(up["runs"]),
                   "folder_downstream_svg_s": round(svg_s, 2)}
            if args.store:
                store = Path(tmp) / f"store{n}"
                t0 = time.perf_counter()
                uri = fill_store(folder, store)
                row["store_fill_s"] = round(time.perf_counter() - t0, 1)
                store_s, answer = timed(["--tracking-uri", uri, "--downstream", gen["datasets"][0]])
                assert len(answer["runs"]) == len(down["runs"])
                row["store_downstream_s"] = round(store_s, 2)
                listing_s, listed = timed_mlflow_listing(uri, Path(tmp) / f"dl{n}")
                assert listed == n
                row["store_listing_through_mlflow_s"] = round(listing_s, 2)
                sys.path.insert(0, str(ROOT / "src"))
                from prov4ml_lightning.sinks.mlflow.sink import MlflowSink

                sink = MlflowSink(uri, store)
                sink.find_weights(f"{0:064x}")  # warm: MLflow's imports and schema check
                t0 = time.perf_counter()
                found = sink.find_weights(f"{n // 2:064x}")
                row["find_weights_ms"] = round((time.perf_counter() - t0) * 1000, 1)
                assert len(found) == 1
            print(json.dumps(row), flush=True)
            results.append(row)
    Path(args.out).write_text(json.dumps({"lineage": results}, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
