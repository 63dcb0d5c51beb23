"""Scaling: end-of-run time and PROV size against metric points and epochs; memory of a long run.

- ``points``: one process per size logs N points (two series) with the functional API, either
  as fast as the loop goes (``burst``: the worst case, MLflow gets the whole backlog at the end)
  or paced at ``--rate`` points per second (a training loop's rhythm), then ``end_run``. RSS of
  the process and of its upload child is sampled every 50 ms.
- ``epochs``: one process per count trains a tiny Lightning model with ``Prov4MLCallback``
  (``log_model=False``: the model upload is a constant, measured in peers.py) for E epochs of
  4 batches; the end cost is from ``on_fit_end`` to ``fit`` returning.

Usage::

    python benchmarks/scaling.py --out benchmarks/results/scaling.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
NS = "www.example.org"


class RssSampler(threading.Thread):
    """RSS (MB) of this process and of its children every ``interval`` seconds."""

    def __init__(self, interval: float = 0.05) -> None:
        super().__init__(daemon=True)
        import psutil

        self.proc = psutil.Process()
        self.interval = interval
        self.samples: list[tuple[float, float, float]] = []
        self._halt = threading.Event()
        self._t0 = time.perf_counter()

    def run(self) -> None:
        while not self._halt.wait(self.interval):
            try:
                kids = sum(c.memory_info().rss for c in self.proc.children(recursive=True))
            except Exception:
                kids = 0
            self.samples.append((time.perf_counter() - self._t0, self.proc.memory_info().rss / 2**20, kids / 2**20))

    def stop(self) -> list[tuple[float, float, float]]:
        self._halt.set()
        self.join()
        return self.samples


def child_points(n: int, mode: str, rate: float, workdir: Path) -> dict[str, Any]:
    import prov4ml_lightning as prov4ml

    sampler = RssSampler()
    sampler.start()
    t0 = time.perf_counter()
    run = prov4ml.start_run(NS, "scaling", workdir / "prov", workdir / "mlflow")
    t_started = time.perf_counter()
    log = prov4ml.log_metric
    if mode == "burst":
        for i in range(n // 2):
            log("loss", 1.0 / (i + 1), step=i)
            log("acc", i / n, step=i)
    else:
        tick = 2.0 / rate
        for i in range(n // 2):
            log("loss", 1.0 / (i + 1), step=i)
            log("acc", i / n, step=i)
            due = t_started + (i + 1) * tick
            delay = due - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
    t_logged = time.perf_counter()
    outputs = prov4ml.end_run()
    t_end = time.perf_counter()
    samples = sampler.stop()
    assert outputs is not None
    return {
        "n": n, "mode": mode, "start_s": t_started - t0, "log_s": t_logged - t_started, "end_s": t_end - t_logged,
        "prov_bytes": outputs.prov_json.stat().st_size, "sidecar_bytes": outputs.metrics_file.stat().st_size,
        "points_sent": run.writer.points_sent,
        "peak_rss_mb": max(s[1] for s in samples), "peak_child_rss_mb": max(s[2] for s in samples),
        "rss": samples if n >= 1_000_000 else [],
        "run_id": run.run_id, "uri": f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}",
    }


def child_epochs(epochs: int, workdir: Path) -> dict[str, Any]:
    import lightning.pytorch as pl
    import torch

    sys.path.insert(0, str(HERE))
    from _workload import Probe, Regressor, loaders

    import prov4ml_lightning as prov4ml

    torch.set_num_threads(1)

    class EndProbe(Probe):
        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self.fit_end = time.perf_counter()

    probe = EndProbe()
    callback = prov4ml.Prov4MLCallback(NS, "scaling", workdir / "prov", workdir / "mlflow", log_model=False)
    trainer = pl.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False, callbacks=[probe, callback],
                         log_every_n_steps=1, limit_train_batches=4, limit_val_batches=1, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    train, val = loaders()
    t0 = time.perf_counter()
    trainer.fit(Regressor(), train, val)
    t_done = time.perf_counter()
    prov_json = callback.outputs.prov_json
    return {"epochs": epochs, "fit_s": t_done - t0, "end_s": t_done - probe.fit_end,
            "prov_bytes": prov_json.stat().st_size, "run_id": callback.run_id}


def _spawn(args: list[str], workdir: Path, template: Path) -> dict[str, Any]:
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "mlflow").mkdir(parents=True)
    shutil.copy(template, workdir / "mlflow" / "mlflow.db")
    out = workdir / "result.json"
    proc = subprocess.run([sys.executable, __file__, *args, "--workdir", str(workdir), "--out", str(out)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if proc.returncode != 0:
        return {"error": proc.stderr[-3000:], "args": args}
    return json.loads(out.read_text())


def make_template(root: Path) -> Path:
    """An empty SQLite store: creating one costs seconds of migrations, paid once here."""
    from mlflow.tracking import MlflowClient

    db = root / "template" / "mlflow.db"
    db.parent.mkdir(parents=True, exist_ok=True)
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", default="10000,100000,1000000")
    parser.add_argument("--paced", default="10000,100000", help="sizes also run paced at --rate")
    parser.add_argument("--rate", type=float, default=2_000.0, help="points per second when paced")
    parser.add_argument("--epochs", default="10,100,1000")
    parser.add_argument("--out", default=str(HERE / "results" / "scaling.json"))
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        kind, value, *rest = args.child.split(":")
        if kind == "points":
            result = child_points(int(value), rest[0], args.rate, Path(args.workdir))
        else:
            result = child_epochs(int(value), Path(args.workdir))
        Path(args.out).write_text(json.dumps(result))
        return
    root = Path(args.workdir or tempfile.mkdtemp(prefix="prov4ml-scaling-"))
    template = make_template(root)
    results: dict[str, list[dict[str, Any]]] = {"points": [], "epochs": []}
    jobs = [(int(n), "burst") for n in args.points.split(",") if n]
    jobs += [(int(n), "paced") for n in args.paced.split(",") if n]
    for n, mode in jobs:
        res = _spawn(["--child", f"points:{n}:{mode}", "--rate", str(args.rate)], root / f"points-{n}-{mode}",
                     template)
        results["points"].append(res)
        print(f"points {n:>8} {mode}: " + (f"log {res['log_s']:.2f} s end_run {res['end_s']:.2f} s "
              f"prov {res['prov_bytes']} B rss {res['peak_rss_mb']:.0f}+{res['peak_child_rss_mb']:.0f} MB"
              if "error" not in res else res["error"]), file=sys.stderr)
    for e in (int(x) for x in args.epochs.split(",") if x):
        res = _spawn(["--child", f"epochs:{e}"], root / f"epochs-{e}", template)
        results["epochs"].append(res)
        print(f"epochs {e:>6}: " + (f"fit {res['fit_s']:.1f} s end {res['end_s']:.2f} s prov {res['prov_bytes']} B"
              if "error" not in res else res["error"]), file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({**results, "rate": args.rate, "load_before": os.getloadavg()}, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
