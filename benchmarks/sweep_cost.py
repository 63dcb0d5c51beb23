"""Per-trial fixed cost of a sweep: Prov4MLCallback against Lightning's MLFlowLogger (issue 18).

One process runs ``--trials`` short fits per config, one after another as an Optuna study does, on
an embedded SQLite store each: ``prov4ml`` (a parent run opened with ``start_run``, a nested
``Prov4MLCallback`` run per trial, as ``Prov4MLSweep`` does) and ``mlflowlogger`` (a new
``MLFlowLogger`` run per trial). Configs alternate by round, each round in a fresh subprocess. Per
trial: start (``trainer.fit`` called -> first batch) and end (last batch end -> ``fit`` returns),
with ``log_model`` off on both sides. Reports the first trial apart (imports, store creation) and the
median of the others.

Usage::

    python benchmarks/sweep_cost.py --trials 6 --rounds 3 --out benchmarks/results/sweep_cost.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CONFIGS = ("mlflowlogger", "prov4ml")


def child(config: str, trials: int, root: Path) -> None:
    import _workload as w

    store = root / "mlflow"
    out = []
    parent = None
    if config == "prov4ml":
        import prov4ml_lightning as prov4ml

        parent = prov4ml.start_run("www.example.org", "sweep", root / "prov", store)
    for trial in range(trials):
        probe = w.Probe()
        logger, callbacks = False, []
        if config == "mlflowlogger":
            from lightning.pytorch.loggers import MLFlowLogger

            logger = MLFlowLogger(experiment_name="sweep", tracking_uri=f"sqlite:///{store}/mlflow.db",
                                  log_model=False, run_name=f"trial-{trial}")
        else:
            callbacks = [prov4ml.Prov4MLCallback(prov_user_namespace="www.example.org", experiment_name="sweep",
                                                 provenance_save_dir=root / "prov", mlflow_save_dir=store,
                                                 nested=True, log_model=False, run_name=f"trial-{trial}")]
        train, val = w.loaders(seed=trial)
        trainer = w.make_trainer(1, probe, logger=logger, callbacks=callbacks, default_root_dir=str(root))
        t0 = time.perf_counter()
        trainer.fit(w.Regressor(), train, val)
        t_end = time.perf_counter()
        out.append({"start_s": probe.batch_starts[0][0] - t0, "end_s": t_end - probe.last_batch_end})
    if parent is not None:
        prov4ml.end_run()
    print(json.dumps(out), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "sweep_cost.json"))
    parser.add_argument("--child", nargs=3, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]), Path(args.child[2]))
        return
    results: dict[str, list[list[dict[str, float]]]] = {c: [] for c in CONFIGS}
    for r in range(args.rounds):
        for config in (CONFIGS if r % 2 == 0 else CONFIGS[::-1]):  # alternate the order by round
            with tempfile.TemporaryDirectory() as tmp:
                done = subprocess.run([sys.executable, __file__, "--child", config, str(args.trials), tmp],
                                      capture_output=True, text=True, check=True)
                results[config].append(json.loads(done.stdout.strip().splitlines()[-1]))
                print(config, r, results[config][-1], flush=True)
    summary = {}
    for config, rounds in results.items():
        first = [trials[0] for trials in rounds]
        rest = [t for trials in rounds for t in trials[1:]]
        summary[config] = {
            "first_start_s": statistics.median(t["start_s"] for t in first),
            "first_end_s": statistics.median(t["end_s"] for t in first),
            "start_s": statistics.median(t["start_s"] for t in rest),
            "end_s": statistics.median(t["end_s"] for t in rest),
        }
    Path(args.out).write_text(json.dumps({"trials": args.trials, "rounds": args.rounds, "summary": summary,
                                          "raw": results}, indent=1))
    print(json.dumps(summary, indent=1))


if __name__ == "__main__":
    main()
