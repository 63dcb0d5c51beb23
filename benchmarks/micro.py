"""Micro-benchmarks of the functional hot path, next to appending to a list in the same process.

Each case opens a fresh run, calls the API ``--calls`` times in chunks of 1000 and reports the
per-call time of each chunk (median, 95th percentile over chunks), then the ``end_run`` time
that follows (the backlog a tight loop leaves for MLflow). The background writer runs as in
any run: the numbers include what it costs the calling thread.

Usage::

    python benchmarks/micro.py --calls 200000 --out benchmarks/results/micro.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

import prov4ml_lightning as prov4ml

HERE = Path(__file__).resolve().parent
CHUNK = 1000


def _chunks(fn: Any, calls: int) -> list[float]:
    """Per-call seconds of each chunk of ``CHUNK`` calls of ``fn(i)``."""
    out = []
    for start in range(0, calls, CHUNK):
        t = time.perf_counter()
        for i in range(start, start + CHUNK):
            fn(i)
        out.append((time.perf_counter() - t) / CHUNK)
    return out


def _summary(per_call: list[float]) -> dict[str, float]:
    q = statistics.quantiles(per_call, n=20)
    return {"median_us": statistics.median(per_call) * 1e6, "p95_us": q[-1] * 1e6, "min_us": min(per_call) * 1e6}


def case(name: str, calls: int, root: Path) -> dict[str, Any]:
    tensors = [torch.tensor(i / 3) for i in range(calls)] if name == "log_metric_tensor" else None
    ten = {f"m{k}": 0.5 for k in range(10)}
    cases = {
        "list_append": lambda i: sink.append(("loss", 0.5, i)),
        "log_metric_float": lambda i: prov4ml.log_metric("loss", 0.5, step=i),
        "log_metric_float_autostep": lambda i: prov4ml.log_metric("loss", 0.5),
        "log_metric_tensor": lambda i: prov4ml.log_metric("loss", tensors[i], step=i),  # type: ignore[index]
        "log_metrics_10_keys": lambda i: prov4ml.log_metrics(ten, step=i),
    }
    sink: list[Any] = []
    run = None
    if name != "list_append":
        run = prov4ml.start_run("www.example.org", "micro", root / name / "prov", root / "mlflow")
    t0 = time.perf_counter()
    per_call = _chunks(cases[name], calls)
    loop_s = time.perf_counter() - t0
    result: dict[str, Any] = {"case": name, "calls": calls, "loop_s": loop_s, **_summary(per_call)}
    if run is not None:
        t = time.perf_counter()
        prov4ml.end_run()
        result["end_run_s"] = time.perf_counter() - t
        result["points"] = run.writer.points_written
        result["points_sent"] = run.writer.points_sent
    print(f"{name:28s} median {result['median_us']:6.2f} us  p95 {result['p95_us']:6.2f} us"
          + (f"  end_run {result['end_run_s']:6.2f} s  sent {result['points_sent']}" if run else ""), file=sys.stderr)
    return result


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=200_000)
    parser.add_argument("--out", default=str(HERE / "results" / "micro.json"))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    root = Path(tempfile.mkdtemp(prefix="prov4ml-micro-"))
    # Create the store (schema migrations take seconds) before anything is timed.
    prov4ml.start_run("www.example.org", "micro", root / "warm" / "prov", root / "mlflow")
    prov4ml.end_run()
    names = ["list_append", "log_metric_float", "log_metric_float_autostep", "log_metric_tensor",
             "log_metrics_10_keys"]
    results = [case(n, args.calls if n != "log_metrics_10_keys" else args.calls // 10, root) for n in names]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"results": results, "load_before": os.getloadavg()}, indent=1))
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
