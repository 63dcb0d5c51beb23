"""Load on the team stack: N training processes at once against PostgreSQL + S3 + ``mlflow server``.

Starts the stack of tests/team_stack.py (the commands of docs/distributed-and-servers.md), then, per
config, N copies of the peer workload (benchmarks/_workload.py: 250 steps/epoch, 2 metrics per step,
validation each epoch) at once, each sending to the server: ``prov4ml`` (``Prov4MLCallback``) and
``mlflowlogger`` (Lightning's ``MLFlowLogger``, its default synchronous logging), plus ``bare`` (no
logger) for the step-time baseline. Afterwards every run is read back through the server: its
status and the number of points of each key. Reports, per config: runs FINISHED, points lost,
points accepted per second (all points / wall time from launch to the last process's exit) and the
median per-step time of the N processes.

Usage::

    python benchmarks/team_load.py --procs 8 --epochs 2 --out benchmarks/results/team_load.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))

CONFIGS = ("bare", "mlflowlogger", "prov4ml")


def child(config: str, uri: str, experiment: str, epochs: int, root: Path) -> None:
    import _workload as w

    probe = w.Probe()
    logger, callbacks = False, []
    if config == "mlflowlogger":
        from lightning.pytorch.loggers import MLFlowLogger

        logger = MLFlowLogger(experiment_name=experiment, tracking_uri=uri, log_model=False)
    elif config == "prov4ml":
        import prov4ml_lightning as prov4ml

        callbacks = [prov4ml.Prov4MLCallback(prov_user_namespace="www.example.org", experiment_name=experiment,
                                             provenance_save_dir=root / "prov", mlflow_save_dir=root / "mlflow",
                                             tracking_uri=uri, log_model=False)]
    train, val = w.loaders()
    t0 = time.perf_counter()
    trainer = w.make_trainer(epochs, probe, logger=logger, callbacks=callbacks, default_root_dir=str(root))
    trainer.fit(w.Regressor(), train, val)
    t_end = time.perf_counter()
    steps = [b - a for starts in probe.batch_starts for a, b in itertools.pairwise(starts)]
    print(json.dumps({"step_s": statistics.median(steps), "start_s": probe.batch_starts[0][0] - t0,
                      "end_s": t_end - probe.last_batch_end}), flush=True)


def read_back(uri: str, experiment: str, epochs: int) -> dict:
    import _workload as w
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    exp = client.get_experiment_by_name(experiment)
    runs = client.search_runs([exp.experiment_id], max_results=1000) if exp else []
    expected = w.expected_points(epochs)
    lost = 0
    kept = 0
    for run in runs:
        for key, n in expected.items():
            names = [k for k in run.data.metrics if k == key or k.endswith("/" + key)]
            got = len(client.get_metric_history(run.info.run_id, names[0])) if names else 0
            kept += got
            lost += max(0, n - got)
    return {"runs": len(runs), "finished": sum(r.info.status == "FINISHED" for r in runs), "points_kept": kept,
            "points_lost": lost}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--workers", type=int, default=4, help="mlflow server --workers")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "team_load.json"))
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        config, uri, experiment, root = args.child
        child(config, uri, experiment, args.epochs, Path(root))
        return

    from tests.team_stack import TeamStack

    stack = TeamStack(Path(tempfile.mkdtemp(prefix="team-load-")), workers=args.workers).start()
    results: dict = {"procs": args.procs, "epochs": args.epochs, "workers": args.workers, "rounds": []}
    try:
        for rnd in range(args.rounds):
            order = CONFIGS[rnd % 3:] + CONFIGS[:rnd % 3]
            for config in order:
                experiment = f"load-{config}-{rnd}"
                env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
                root = Path(tempfile.mkdtemp(prefix=f"load-{config}-"))
                start = time.perf_counter()
                procs = [subprocess.Popen([sys.executable, __file__, "--epochs", str(args.epochs), "--child", config,
                                           stack.uri, experiment, str(root / str(i))], env=env,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                         for i in range(args.procs)]
                outs = [p.communicate() for p in procs]
                wall = time.perf_counter() - start
                per = [json.loads(o.strip().splitlines()[-1]) for o, _ in outs if o.strip()]
                row = {"config": config, "round": rnd, "wall_s": wall,
                       "exit_codes": [p.returncode for p in procs],
                       "step_ms_median": 1000 * statistics.median(x["step_s"] for x in per) if per else None,
                       "start_s_median": statistics.median(x["start_s"] for x in per) if per else None,
                       "end_s_median": statistics.median(x["end_s"] for x in per) if per else None}
                if config != "bare":
                    row.update(read_back(stack.uri, experiment, args.epochs))
                    row["points_per_s"] = row["points_kept"] / wall
                results["rounds"].append(row)
                print(json.dumps(row), flush=True)
                for p, (_, err) in zip(procs, outs):
                    if p.returncode:
                        print(err[-1500:], file=sys.stderr)
    finally:
        stack.stop()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
