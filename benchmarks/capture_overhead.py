"""Cost of the once-per-run context capture (code, environment, seed) that ``start_run`` makes.

Target: under 200 ms in total. Prints the median of each part and of the whole
``capture_context`` call over ``--repeat`` calls, in the working directory's git repository.

Usage::

    python benchmarks/capture_overhead.py --repeat 20
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from prov4ml_lightning.capture import capture_context, code, environment, seeds

TARGET_S = 0.2


def _median_ms(fn: Callable[[], Any], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        parts = {
            "package list (importlib.metadata)": environment.installed_packages,
            "GPU query (NVML)": environment._gpus,
            "whole environment": lambda: environment.capture_environment(out, "bench"),
            "code (script + git + diff)": lambda: code.capture_code(out, "bench"),
            "seed": seeds.detect_seed,
            "capture_context (all)": lambda: capture_context(out, "bench"),
        }
        results = {name: _median_ms(fn, args.repeat) for name, fn in parts.items()}
    for name, ms in results.items():
        print(f"{name:<36} {ms:8.1f} ms (median of {args.repeat})")
    total = results["capture_context (all)"] / 1000
    verdict = "within" if total < TARGET_S else "OVER"
    print(f"target {TARGET_S * 1000:.0f} ms: {verdict}")


if __name__ == "__main__":
    main()
