"""Run the whole benchmark suite (peers, hot path, scaling) and write docs/performance.md's tables and plots.

Usage (about 14 minutes on 2 cores with the defaults)::

    python benchmarks/run_all.py            # --rounds 3 --quick for a shorter, noisier pass
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=4, help="peer rounds (each config once per round)")
    parser.add_argument("--epochs", type=int, default=4, help="epochs of the peer workload")
    parser.add_argument("--quick", action="store_true", help="smaller micro and scaling sizes")
    parser.add_argument("--results", default=str(HERE / "results"))
    args = parser.parse_args()
    res = Path(args.results)
    res.mkdir(parents=True, exist_ok=True)
    py = sys.executable
    steps = [
        [py, str(HERE / "peers.py"), "--rounds", str(args.rounds), "--epochs", str(args.epochs),
         "--out", str(res / "peers.json")],
        [py, str(HERE / "micro.py"), "--calls", "50000" if args.quick else "100000", "--out", str(res / "micro.json")],
        [py, str(HERE / "scaling.py"), "--out", str(res / "scaling.json")]
        + (["--points", "10000,100000", "--paced", "10000", "--epochs", "10,100"] if args.quick else []),
        [py, str(HERE / "report.py"), "--results", str(res)],
    ]
    for cmd in steps:
        t = time.perf_counter()
        print(f"$ {' '.join(Path(c).name if c.endswith('.py') else c for c in cmd[1:])}  (load {os.getloadavg()})",
              file=sys.stderr, flush=True)
        subprocess.run(cmd, check=True)
        print(f"  {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
