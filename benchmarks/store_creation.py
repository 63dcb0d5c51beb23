"""CPU seconds of creating a new embedded MLflow store (issue 27: a new store without re-running
MLflow's migrations each time), measured in a fresh process per sample, rounds alternating:

- ``mlflow_in_place``: ``MlflowClient("sqlite:///<new>/mlflow.db")`` and a first query, as MLflow
  alone does it (and prov4ml did before): its tables created and every migration run in place;
- ``prov4ml_first``: :func:`prov4ml_lightning.sinks.mlflow.store.open_client` with an empty cache:
  the first store of an MLflow version is migrated in a temporary file, kept as the template and
  linked into place;
- ``prov4ml_cached``: the same with the template cached: a copy, MLflow's schema check, a link;
- ``open_existing``: ``open_client`` of a store that exists (what every later run pays), for scale.

Each sample reports the CPU (user + system) of the opening alone, after ``import mlflow`` and the
store module, and the whole process's CPU. By hand, not part of ``run_all.py``.

Usage::

    python benchmarks/store_creation.py --rounds 5 --out benchmarks/results/store_creation.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent

_CHILD = textwrap.dedent("""
    import json, os, resource, sys, time
    mode, folder = sys.argv[1], sys.argv[2]
    import mlflow  # noqa: F401
    from mlflow.tracking import MlflowClient
    from prov4ml_lightning.sinks.mlflow.store import open_client

    def cpu():
        usage = resource.getrusage(resource.RUSAGE_SELF)
        return usage.ru_utime + usage.ru_stime

    uri = f"sqlite:///{folder}/mlflow.db"
    os.makedirs(folder, exist_ok=True)
    before = cpu()
    if mode == "mlflow_in_place":
        MlflowClient(uri).search_experiments(max_results=1)
    else:
        open_client(uri)
    print(json.dumps({"open_cpu_s": cpu() - before, "process_cpu_s": cpu()}))
""")

MODES = ("mlflow_in_place", "prov4ml_first", "prov4ml_cached", "open_existing")


def _sample(mode: str, root: Path, cache: Path, n: int) -> dict[str, float]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO / "src"), str(REPO)])}
    env.pop("MLFLOW_TRACKING_URI", None)
    folder = root / f"{mode}-{n}"
    if mode == "prov4ml_first":
        env["PROV4ML_CACHE_DIR"] = str(root / f"empty-cache-{n}")
    else:
        env["PROV4ML_CACHE_DIR"] = str(cache)
    if mode == "open_existing":
        folder = root / "existing"
    out = subprocess.run([sys.executable, "-c", _CHILD, mode, str(folder)], env=env, capture_output=True, text=True,
                         timeout=600, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "store_creation.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="prov4ml-store-bench-") as tmp:
        root = Path(tmp)
        cache = root / "cache"
        _sample("prov4ml_first", root, cache, -1)  # warm the OS file cache; then fill the shared template cache
        _sample("prov4ml_cached", root, cache, -1)
        _sample("open_existing", root, cache, -1)  # creates the store the later samples open
        samples: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
        for n in range(args.rounds):
            order = MODES[n % len(MODES):] + MODES[: n % len(MODES)]  # rotated each round
            for mode in order:
                samples[mode].append(_sample(mode, root, cache, n))
    result = {
        "machine": {"cores": os.cpu_count(), "python": platform.python_version(),
                    "load_avg_1m": os.getloadavg()[0]},
        "rounds": args.rounds,
        "modes": {m: {"open_cpu_s_median": statistics.median(s["open_cpu_s"] for s in v),
                      "process_cpu_s_median": statistics.median(s["process_cpu_s"] for s in v),
                      "open_cpu_s": [round(s["open_cpu_s"], 3) for s in v]} for m, v in samples.items()},
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'mode':<18} {'opening CPU s':>14} {'process CPU s':>14}")
    for mode, row in result["modes"].items():
        print(f"{mode:<18} {row['open_cpu_s_median']:>14.2f} {row['process_cpu_s_median']:>14.2f}")


if __name__ == "__main__":
    main()
