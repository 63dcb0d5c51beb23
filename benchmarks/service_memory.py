"""Memory of the whole process tree of a run: the training process and its MLflow service process.

Each case runs in a new process (torch at its default threads, a new embedded store in a new
folder) while this script samples, every 0.1 s, the RSS of the training process and of every
process it started (the MLflow service) with psutil; it reports each one's peak and the peak of
their sum, and the service's CPU seconds (user + system, its last sample: up to 0.1 s of its end
may be missed). Cases:

- ``loop-50k``: a plain loop, ``log_metrics`` of 2 values per step for 50,000 steps (100,000 points),
  then ``end_run`` (which waits for MLflow);
- ``loop-50k-model``: the same and ``log_model`` of a small MLP before ``end_run`` (the service
  logs the file the training process saved, without torch);
- ``bare-loop-50k``: the same loop without prov4ml (the training process's own footprint).

Usage::

    python benchmarks/service_memory.py --out benchmarks/results/service_memory.json

Target (issue 26/27): the service within 250 MB RSS.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

_SERVICE_SCRIPT = "service_process.py"  # the MLflow service's script (sinks/mlflow/service_process.py)
CASES = ("bare-loop-50k", "loop-50k", "loop-50k-model")

_CHILD = """
import sys, time
import torch
steps, case = int(sys.argv[1]), sys.argv[2]
model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, 1))
opt = torch.optim.SGD(model.parameters(), lr=0.01)
x, y = torch.randn(64, 32), torch.randn(64, 1)
if case != "bare-loop-50k":
    import prov4ml_lightning as prov4ml
    prov4ml.start_run("www.example.org", "memory", "prov", mlflow_save_dir="mlflow")
for step in range(steps):
    loss = torch.nn.functional.mse_loss(model(x), y)
    opt.zero_grad(); loss.backward(); opt.step()
    if case != "bare-loop-50k":
        prov4ml.log_metrics({"loss": float(loss), "mae": float((model(x) - y).abs().mean())}, step=step)
if case == "loop-50k-model":
    prov4ml.log_model(model, "mlp")
if case != "bare-loop-50k":
    prov4ml.end_run()
"""


def run_case(case: str, steps: int) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="prov4ml-mem-") as folder:
        env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
        t0 = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(steps), case], cwd=folder, env=env,
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        me = psutil.Process(proc.pid)
        peak = {"training_mb": 0.0, "service_mb": 0.0, "tree_mb": 0.0, "service_cpu_s": 0.0}
        while proc.poll() is None:
            try:
                main = me.memory_info().rss
                children = me.children(recursive=True)
                kids = [c.memory_info().rss for c in children]
                # the service by its script: a short-lived child (a fork before its exec) shows the parent's RSS
                service = [c for c in children if any(a.endswith(_SERVICE_SCRIPT) for a in c.cmdline())]
                service_rss = [c.memory_info().rss for c in service]
                cpu = [sum(c.cpu_times()[:2]) for c in service]
            except psutil.Error:
                time.sleep(0.1)
                continue
            peak["training_mb"] = max(peak["training_mb"], main / 2**20)
            peak["service_mb"] = max(peak["service_mb"], max(service_rss, default=0) / 2**20)
            peak["tree_mb"] = max(peak["tree_mb"], (main + sum(kids)) / 2**20)
            peak["service_cpu_s"] = max(peak["service_cpu_s"], max(cpu, default=0.0))
            time.sleep(0.1)
        err = proc.stderr.read() if proc.stderr else ""
        if proc.returncode != 0:
            raise SystemExit(f"{case} failed:\n{err[-3000:]}")
        return {**peak, "wall_s": time.perf_counter() - t0}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50_000)
    parser.add_argument("--cases", default=",".join(CASES))
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "results" / "service_memory.json"))
    args = parser.parse_args(argv)
    results = {}
    for case in args.cases.split(","):
        results[case] = run_case(case, args.steps)
        r = results[case]
        print(f"{case:16s} training {r['training_mb']:6.0f} MB  service {r['service_mb']:6.0f} MB  "
              f"tree {r['tree_mb']:6.0f} MB  service CPU {r['service_cpu_s']:5.2f} s  wall {r['wall_s']:6.1f} s",
              file=sys.stderr)
    Path(args.out).write_text(json.dumps({"steps": args.steps, "cpu_count": os.cpu_count(),
                                          "results": results}, indent=1))


if __name__ == "__main__":
    main()
