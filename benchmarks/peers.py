"""Peer benchmark: the same Lightning workload under each tracking tool, one process per run.

Configurations run in separate processes, in a rotated order each round, and the report gives
medians over rounds. For every run: steady-state seconds per training step, the fixed cost at
start (setup to first batch) and end (last batch to everything written), import time, peak
RSS, the child's whole wall time, and the metric points that were actually persisted, read
back from the store after the child exited (so nobody wins by dropping data).

Usage::

    python benchmarks/peers.py --rounds 5 --epochs 4 --out benchmarks/results/peers.json

yProv4ML runs in its own interpreter (``--yprov-python``, default ``benchmarks/.venv/bin/python``;
see benchmarks/README.md); without it that config is reported as skipped.
"""

from __future__ import annotations

import time

_T_PROC = time.perf_counter()

import argparse  # noqa: E402
import csv  # noqa: E402
import itertools  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import resource  # noqa: E402
import shutil  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any  # noqa: E402

HERE = Path(__file__).resolve().parent
CONFIGS = ("bare", "csv", "mlflow", "mlflow_async", "autolog", "yprov4ml", "prov4ml_api", "prov4ml",
           "prov4ml_sysmetrics", "prov4ml_nomodel", "prov4ml_api_model", "prov4ml_nohold", "prov4ml_mlflow")
LABELS = {
    "bare": "bare Lightning (logger=False)",
    "csv": "CSVLogger",
    "mlflow": "MLFlowLogger, SQLite, synchronous",
    "mlflow_async": "MLFlowLogger, SQLite, synchronous=False",
    "autolog": "mlflow.pytorch.autolog(log_every_n_step=1)",
    "yprov4ml": "yProv4ML ProvMLLogger",
    "prov4ml_api": "prov4ml functional API (4-line callback)",
    "prov4ml": "Prov4MLCallback (defaults)",
    "prov4ml_sysmetrics": "Prov4MLCallback, system metrics every 1 s",
    "prov4ml_nomodel": "Prov4MLCallback(log_model=False)",
    "prov4ml_api_model": "prov4ml functional API + log_model at the end",
    "prov4ml_nohold": "Prov4MLCallback (defaults), service never holds its work (PROV4ML_SERVICE_DEFER_S=0)",
    "prov4ml_mlflow": "Prov4MLCallback (defaults), the store written by MLflow (no migrated empty store cached: "
                      "a first run with this MLflow)",
}
NS = "www.example.org"


# -- child: one run of one config --------------------------------------------------------------
def child(cfg: str, epochs: int, workdir: Path) -> dict[str, Any]:
    t_imp = time.perf_counter()
    sys.path.insert(0, str(HERE))
    import torch

    # torch at its default thread count, as users run it (issue 27): a background process then
    # competes with training for the cores. --threads N pins it for comparison with older results.
    if os.environ.get("PROV4ML_BENCH_THREADS"):
        torch.set_num_threads(int(os.environ["PROV4ML_BENCH_THREADS"]))
    import lightning.pytorch as pl
    from _workload import Probe, loaders, make_trainer

    uri = f"sqlite:///{workdir / 'mlflow' / 'mlflow.db'}"
    if cfg in ("mlflow", "mlflow_async", "autolog"):
        import mlflow
        from lightning.pytorch.loggers import MLFlowLogger
        if cfg == "autolog":
            import mlflow.pytorch
    elif cfg == "csv":
        from lightning.pytorch.loggers import CSVLogger
    elif cfg == "yprov4ml":
        import yprov4ml
        from yprov4ml.loggers.prov4ml_logger import ProvMLLogger
    elif cfg.startswith("prov4ml"):
        import prov4ml_lightning as prov4ml
        if cfg == "prov4ml_mlflow":  # no cached empty store: the service opens the store with MLflow, as before
            os.environ["PROV4ML_CACHE_DIR"] = str(workdir / "empty-cache")  # direct.py (issue 27) and a first run
        if cfg == "prov4ml_nohold":  # the service as before issue 27: it works while the training runs
            os.environ["PROV4ML_SERVICE_DEFER_S"] = "0"
    t_setup = time.perf_counter()
    cpu0 = time.process_time()
    kids = _ChildRss()

    pl.seed_everything(0, verbose=False)
    from _workload import Regressor

    model = Regressor()
    train, val = loaders()
    probe = Probe()
    logger: Any = False
    callbacks: list[Any] = []
    info: dict[str, Any] = {"uri": uri}
    if cfg == "csv":
        logger = CSVLogger(str(workdir / "csv"), name="bench")
    elif cfg in ("mlflow", "mlflow_async"):
        logger = MLFlowLogger("bench", tracking_uri=uri, synchronous=cfg == "mlflow")
    elif cfg == "autolog":
        mlflow.set_tracking_uri(uri)
        mlflow.set_experiment("bench")
        mlflow.pytorch.autolog(log_every_n_step=1, silent=True)
    elif cfg == "yprov4ml":
        yprov4ml.start_run(experiment_name="bench", prov_user_namespace=NS,
                           provenance_save_dir=str(workdir / "yprov"))
        logger = ProvMLLogger()
    elif cfg.startswith("prov4ml_api"):
        callbacks.append(_api_callback(prov4ml, workdir, log_model=cfg == "prov4ml_api_model"))
    elif cfg.startswith("prov4ml"):
        sysm = cfg == "prov4ml_sysmetrics"
        callbacks.append(prov4ml.Prov4MLCallback(
            NS, "bench", workdir / "prov", workdir / "mlflow", log_system_metrics=sysm,
            log_model=cfg != "prov4ml_nomodel", **({"system_metrics_interval": 1.0} if sysm else {})))
    trainer = make_trainer(epochs, probe, logger=logger, callbacks=callbacks, default_root_dir=str(workdir))
    trainer.fit(model, train, val)
    if cfg == "yprov4ml":
        yprov4ml.end_run()
    t_done = time.perf_counter()

    if cfg in ("mlflow", "mlflow_async"):
        info["run_id"] = logger.run_id
    elif cfg == "autolog":
        info["run_id"] = mlflow.last_active_run().info.run_id
    elif cfg.startswith("prov4ml"):
        info["run_id"] = callbacks[0].run_id
        info.update(getattr(callbacks[0], "timings", {}))
    starts = probe.batch_starts
    per_step = [(s[-1] - s[0]) / (len(s) - 1) for s in starts[1:] if len(s) > 1]
    # The median single step shrugs off other processes' bursts, and also hides periodic costs
    # (a writer's drain every 2 s): reported beside the epoch mean, not instead of it.
    steps = [b - a for s in starts[1:] for a, b in itertools.pairwise(s)]
    epoch_gaps = [nxt[0] - cur[-1] for cur, nxt in itertools.pairwise(starts[1:])]
    return {
        "cfg": cfg, "epochs": epochs, "import_s": t_setup - t_imp, "boot_s": t_imp - _T_PROC,
        "start_s": starts[0][0] - t_setup, "step_s": statistics.median(per_step),
        "step_median_s": statistics.median(steps),
        # every epoch's mean step, the first included (without its first step: the start is measured apart)
        "epoch_step_s": [(s[-1] - s[1]) / (len(s) - 2) if i == 0 else (s[-1] - s[0]) / (len(s) - 1)
                         for i, s in enumerate(starts) if len(s) > 2],
        "mlflow_imported": "mlflow" in sys.modules,
        "epoch_gap_s": statistics.median(epoch_gaps) if epoch_gaps else None,
        "end_s": t_done - probe.last_batch_end, "fit_s": t_done - t_setup,
        "cpu_s": time.process_time() - cpu0,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "peak_child_rss_mb": kids.stop(), "torch_threads": torch.get_num_threads(), **info,
    }


class _ChildRss:
    """Peak summed RSS (MB) of this process's live children (an upload process, say), sampled
    twice a second. ru_maxrss of children is useless here: a forked child counts its parent's
    pages from before exec."""

    def __init__(self) -> None:
        import threading

        import psutil

        self.peak = 0.0
        self._proc = psutil.Process()
        self._halt = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._halt.wait(0.5):
            try:
                rss = sum(c.memory_info().rss for c in self._proc.children(recursive=True))
            except Exception:  # a child that exits between listing and reading
                continue
            self.peak = max(self.peak, rss / 2**20)

    def stop(self) -> float:
        self._halt.set()
        self._thread.join()
        return self.peak


def _api_callback(prov4ml: Any, workdir: Path, log_model: bool = False) -> Any:
    import lightning.pytorch as pl

    class ApiCallback(pl.Callback):
        """The functional API driven from four hooks: the core's cost without the callback's extras."""

        def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
            self.run = prov4ml.start_run(NS, "bench", workdir / "prov", workdir / "mlflow")
            self.run_id = self.run.run_id

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int) -> None:
            m = trainer.callback_metrics
            prov4ml.log_metrics({"train_loss": m["train_loss"], "train_mae": m["train_mae"]},
                                step=trainer.global_step)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            prov4ml.log_metric("val_loss", trainer.callback_metrics["val_loss"], prov4ml.Context.VALIDATION,
                               step=trainer.current_epoch)

        def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
            self.timings: dict[str, float] = {}
            if log_model:
                t = time.perf_counter()
                prov4ml.log_model(pl_module, "model")
                self.timings["log_model_s"] = time.perf_counter() - t
            t = time.perf_counter()
            prov4ml.end_run()
            self.timings["end_run_s"] = time.perf_counter() - t

    return ApiCallback()


# -- reading back what each config persisted ---------------------------------------------------
def persisted(result: dict[str, Any], workdir: Path) -> dict[str, int]:
    """Points per workload key (``train_loss``, ``train_mae``, ``val_loss``) and in total, read back."""
    cfg = result["cfg"]
    keys = ("train_loss", "train_mae", "val_loss")
    counts = dict.fromkeys(keys, 0)
    total = 0
    if cfg == "csv":
        for path in workdir.glob("csv/**/metrics.csv"):
            with open(path, newline="") as fh:
                for row in csv.DictReader(fh):
                    for k, val in row.items():
                        if val not in ("", None) and k not in ("epoch", "step"):
                            total += 1
                            if k in counts:
                                counts[k] += 1
    elif "run_id" in result:
        from mlflow.tracking import MlflowClient

        if cfg.startswith("prov4ml"):
            # its MLflow service finishes after the training process exited: wait for it (store lock:
            # it may still be creating the store) and say how long it took
            from prov4ml_lightning.sinks.mlflow.store import open_client

            t0 = time.perf_counter()
            client = open_client(result["uri"])
            while time.perf_counter() - t0 < 300:
                try:
                    if client.get_run(result["run_id"]).info.status == "FINISHED":
                        break
                except Exception:  # not created yet
                    pass
                time.sleep(0.05)
            result["mlflow_done_after_exit_s"] = time.perf_counter() - t0
        else:
            client = MlflowClient(result["uri"])
        run = client.get_run(result["run_id"])
        for key in run.data.metrics:
            n = len(client.get_metric_history(result["run_id"], key))
            total += n
            for k in keys:
                if key == k or key.endswith("/" + k):
                    counts[k] += n
    elif cfg == "yprov4ml":
        for path in workdir.glob("yprov/**/*.csv"):
            name = path.stem
            with open(path, newline="") as fh:
                n = max(0, sum(1 for _ in fh) - 1)
            total += n
            for k in keys:
                if name.startswith(k + "_") or name == k:
                    counts[k] += n
    return {**counts, "total": total}


def make_template(root: Path) -> Path:
    """An empty SQLite store, copied into each run's folder: creating one costs seconds of schema
    migrations, which a user pays once per store, not once per run."""
    from mlflow.tracking import MlflowClient

    db = root / "template" / "mlflow.db"
    if db.parent.exists():
        shutil.rmtree(db.parent)
    db.parent.mkdir(parents=True)
    MlflowClient(f"sqlite:///{db}").search_experiments()
    return db


def _become_subreaper() -> bool:
    """Make this process adopt its orphaned descendants (Linux ``PR_SET_CHILD_SUBREAPER``), so a
    process a run leaves behind (an MLflow service finishing its work) is waited for here and
    its CPU time counted."""
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0) == 0  # PR_SET_CHILD_SUBREAPER
    except (OSError, AttributeError):
        return False


def _cpu(usage: resource.struct_rusage) -> float:
    return usage.ru_utime + usage.ru_stime


def run_child(cfg: str, epochs: int, workdir: Path, yprov_python: str | None, template: Path) -> dict[str, Any]:
    """One run in its own process; timed until that process exits (what a user waits for) and
    until the last process it started exits (the whole tree's CPU is summed from ``wait4``)."""
    if workdir.exists():
        shutil.rmtree(workdir)
    (workdir / "mlflow").mkdir(parents=True)
    if os.environ.get("PROV4ML_BENCH_TEMPLATE_STORE"):
        shutil.copy(template, workdir / "mlflow" / "mlflow.db")
    python = yprov_python if cfg == "yprov4ml" else sys.executable
    out, err = workdir / "result.json", workdir / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.update(PYTHONWARNINGS="ignore")
    with open(err, "w") as stderr:
        t0 = time.perf_counter()
        proc = subprocess.Popen([python, __file__, "--child", cfg, "--epochs", str(epochs), "--workdir",
                                 str(workdir), "--out", str(out)], stdout=subprocess.DEVNULL, stderr=stderr,
                                cwd=workdir, env=env)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        cpu = _cpu(usage)
        while True:  # the descendants it left behind, adopted by this subreaper
            try:
                _, _, usage = os.wait4(-1, 0)
            except ChildProcessError:
                break
            cpu += _cpu(usage)
        tree_wall = time.perf_counter() - t0
    if proc.returncode != 0:
        return {"cfg": cfg, "error": err.read_text()[-3000:]}
    result = json.loads(out.read_text())
    result.update(wall_s=wall, tree_wall_s=tree_wall, tree_cpu_s=cpu)
    result["persisted"] = persisted(result, workdir)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--yprov-python", default=str(HERE / ".venv" / "bin" / "python"))
    parser.add_argument("--workdir", default="/tmp/prov4ml-bench/peers")
    parser.add_argument("--out", default=str(HERE / "results" / "peers.json"))
    parser.add_argument("--steps", type=int, default=250, help="training steps per epoch (issue 17: 256)")
    parser.add_argument("--template-store", action="store_true",
                        help="copy a created SQLite store into each run's folder (older results); by default "
                             "every run starts in a new folder and its tool creates the store, as a user's first run")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch threads in the runs (default 0: torch's default, as users run it)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if not args.child:  # the children read it (benchmarks/_workload.py); a child's own default must not win
        os.environ["PROV4ML_BENCH_STEPS"] = str(args.steps)
    if args.template_store:
        os.environ["PROV4ML_BENCH_TEMPLATE_STORE"] = "1"
    if args.threads:
        os.environ["PROV4ML_BENCH_THREADS"] = str(args.threads)
    if args.child:
        result = child(args.child, args.epochs, Path(args.workdir))
        Path(args.out).write_text(json.dumps(result))
        return
    configs = [c for c in args.configs.split(",") if c]
    unknown = set(configs) - set(CONFIGS)
    if unknown:
        parser.error(f"unknown configs {sorted(unknown)}; choose among {', '.join(CONFIGS)}")
    yprov = args.yprov_python if Path(args.yprov_python).exists() else None
    if not _become_subreaper():
        print("not Linux: the CPU of processes a run leaves behind is not counted", file=sys.stderr)
    template = make_template(Path(args.workdir))
    runs: list[dict[str, Any]] = []
    skipped: dict[str, str] = {}
    if "yprov4ml" in configs and yprov is None:
        skipped["yprov4ml"] = f"no interpreter at {args.yprov_python} (see benchmarks/README.md)"
        configs.remove("yprov4ml")
    for r in range(args.rounds):
        order = configs[r % len(configs):] + configs[: r % len(configs)]
        for cfg in order:
            if cfg in skipped:
                continue
            # A folder per run: MLflow caches one store per URI in this process, which would read a
            # replaced database file through its old connection.
            res = run_child(cfg, args.epochs, Path(args.workdir) / f"{cfg}-{r}", yprov, template)
            res["round"] = r
            runs.append(res)
            if "error" in res:
                print(f"round {r} {cfg}: FAILED\n{res['error']}", file=sys.stderr)
                if cfg == "yprov4ml":
                    skipped[cfg] = "failed: " + res["error"].strip().splitlines()[-1]
            else:
                print(f"round {r} {cfg:20s} step {res['step_s'] * 1e3:7.3f} ms  start {res['start_s']:6.2f} s  "
                      f"end {res['end_s']:6.2f} s  wall {res['wall_s']:6.2f} s  tree cpu {res['tree_cpu_s']:6.2f} s  "
                      f"rss {res['peak_rss_mb']:6.0f} MB  kids {res['peak_child_rss_mb']:5.0f} MB  "
                      f"kept {res['persisted']}", file=sys.stderr)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"epochs": args.epochs, "steps": args.steps, "template_store": args.template_store,
                               "threads": args.threads or "default", "cpu_count": os.cpu_count(),
                               "rounds": args.rounds, "runs": runs, "skipped": skipped,
                               "load_before": os.getloadavg()}, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
