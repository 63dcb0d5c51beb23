"""Dataset fingerprints: throughput per kind, the file-hash cache, and what the background hash costs a training loop.

Three measures, each in a fresh temporary folder:

1. a ``TensorDataset`` of ``--gib`` GiB of float32 (rows of 250 values) plus int64 labels, hashed
   on this thread (``fingerprint()``): seconds, MB/s, the method it got;
2. a folder of ``--files`` small PNG files (an ImageFolder-like ``samples`` listing), hashed twice
   through the file-hash cache (``PROV4ML_CACHE_DIR`` in the temporary folder): the first run reads
   every file (from the page cache: the files were just written), the second only stats them;
3. a small training loop (an MLP, torch at its default thread count): ``prov4ml.log_dataset`` on the
   TensorDataset (how long the call takes: what the first batch waits; when its background hash is
   done while the loop runs), then the loop's step time in alternating windows without and with a
   thread hashing the TensorDataset, at the library's scheduling (SCHED_IDLE) and at normal
   priority; adjacent windows are compared, so other processes' load cancels out as far as it can.
   The same again with torch on one thread (a core left free, as a GPU training's CPU side).

Usage::

    python benchmarks/fingerprint.py --out benchmarks/results/fingerprint.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import nn
from torch.utils.data import Dataset, TensorDataset

HERE = Path(__file__).resolve().parent


class Folder(Dataset):
    """ImageFolder-like: ``root`` and ``samples`` of ``(path, class index)``."""

    def __init__(self, root: Path) -> None:
        self.root = str(root)
        self.samples = [(str(p), i % 10) for i, p in enumerate(sorted(root.rglob("*.png")))]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int) -> Any:
        return Image.open(self.samples[i][0]), self.samples[i][1]


def tensor_dataset(gib: float) -> TensorDataset:
    rows = int(gib * 2**30 / 4 / 250)
    x = torch.empty(rows, 250).uniform_()
    return TensorDataset(x, torch.randint(0, 10, (rows,)))


def tensors(ds: TensorDataset) -> dict[str, Any]:
    from prov4ml_lightning.capture.fingerprint import fingerprint

    size = sum(t.numel() * t.element_size() for t in ds.tensors)
    t0 = time.perf_counter()
    fp = fingerprint(ds)
    seconds = time.perf_counter() - t0
    return {"bytes": size, "seconds": seconds, "mb_per_s": size / 1e6 / seconds, "method": fp.method,
            "status": fp.status}


def files(root: Path, n: int) -> dict[str, Any]:
    from prov4ml_lightning.capture.fingerprint import fingerprint

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for i in range(n):
        folder = root / f"class{i % 10}"
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (16, 16), dtype=np.uint8)).save(folder / f"{i:05d}.png")
    written = time.perf_counter() - t0
    size = sum(p.stat().st_size for p in root.rglob("*.png"))
    out: dict[str, Any] = {"files": n, "bytes": size, "write_seconds": written}
    for name in ("first", "second"):
        t0 = time.perf_counter()
        fp = fingerprint(Folder(root))
        seconds = time.perf_counter() - t0
        out[name] = {"seconds": seconds, "files_per_s": n / seconds, "mb_per_s": size / 1e6 / seconds,
                     "files_read": fp.files_read, "method": fp.method, "status": fp.status}
    return out


def _model() -> tuple[nn.Module, torch.optim.Optimizer, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(256, 512), nn.ReLU(), nn.Linear(512, 512), nn.ReLU(), nn.Linear(512, 10))
    return model, torch.optim.SGD(model.parameters(), lr=0.01), torch.randn(128, 256), torch.randint(0, 10, (128,))


def _steps(until: Any, max_s: float) -> list[float]:
    """Seconds per training step while ``until()`` is false (at most ``max_s`` seconds)."""
    model, opt, x, y = _model()
    out = []
    t_end = time.perf_counter() + max_s
    while not until() and time.perf_counter() < t_end:
        t = time.perf_counter()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        out.append(time.perf_counter() - t)
    return out


def _ms(steps: list[float]) -> dict[str, float]:
    return {"steps": len(steps), "mean_ms": statistics.fmean(steps) * 1e3, "median_ms": statistics.median(steps) * 1e3}


def _scheduling(policy: str) -> None:
    """This thread's scheduling: ``idle`` is what the library gives its fingerprint thread (Linux SCHED_IDLE)."""
    if policy == "idle":
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))


def paired(ds: TensorDataset, policy: str, pairs: int, window_s: float) -> dict[str, Any]:
    """Training-loop windows alternating without and with a thread hashing ``ds`` (the library's buffers
    path: ``array_chunks`` into SHA-256, 16 MiB at a time, pausing between chunks when told); adjacent
    windows are compared, which cancels slow changes in what else the machine runs."""
    from prov4ml_lightning.capture.canonical import array_chunks

    on, stop = threading.Event(), threading.Event()
    hashed = [0]

    def hasher() -> None:
        _scheduling(policy)
        while not stop.is_set():
            h = hashlib.sha256()
            for tensor in ds.tensors:
                for chunk in array_chunks(tensor):
                    while not on.is_set():
                        if stop.is_set():
                            return
                        on.wait(0.05)
                    h.update(chunk)
                    hashed[0] += len(chunk)

    thread = threading.Thread(target=hasher, daemon=True)
    thread.start()
    ratios, offs, ons, rates = [], [], [], []
    try:
        for _ in range(pairs):
            off = statistics.fmean(_steps(lambda: False, window_s))
            on.set()
            before, t0 = hashed[0], time.perf_counter()
            during = statistics.fmean(_steps(lambda: False, window_s))
            rates.append((hashed[0] - before) / 1e6 / (time.perf_counter() - t0))
            on.clear()
            offs.append(off * 1e3)
            ons.append(during * 1e3)
            ratios.append((during / off - 1) * 100)
    finally:
        stop.set()
        on.set()
        thread.join()
    return {"policy": policy, "pairs": pairs, "window_s": window_s, "median_slowdown_pct": statistics.median(ratios),
            "slowdown_pct": ratios, "off_ms": offs, "on_ms": ons, "median_hash_mb_per_s": statistics.median(rates)}


def library_path(ds: TensorDataset, root: Path) -> dict[str, Any]:
    """``prov4ml.log_dataset`` on the TensorDataset, then the loop until its fingerprint thread is done."""
    import prov4ml_lightning as prov4ml

    prov4ml.start_run("www.example.org", "fingerprint-bench", root / "prov", root / "mlflow")
    prov4ml.get_run_id()  # the MLflow service has started and created the run: its CPU work is over
    before = _ms(_steps(lambda: False, 3.0))
    t0 = time.perf_counter()
    prov4ml.log_dataset("big", ds)
    call = time.perf_counter() - t0
    threads = [t for t in threading.enumerate() if t.name == "prov4ml-fingerprint"]
    steps = _steps(lambda: not any(t.is_alive() for t in threads), 30)
    hashed = time.perf_counter() - t0
    t1 = time.perf_counter()
    prov4ml.end_run()
    return {"log_dataset_ms": call * 1e3, "steps_before": before,
            "hash_done_during_training": not any(t.is_alive() for t in threads),
            "steps_until_hash_done_or_30s": _ms(steps), "seconds_until_hash_done_or_30s": hashed,
            "end_run_s": time.perf_counter() - t1}


def slowdown(ds: TensorDataset, root: Path, pairs: int, window_s: float) -> dict[str, Any]:
    _steps(lambda: False, 1.0)  # warm-up
    out: dict[str, Any] = {"torch_threads": torch.get_num_threads(), "load_average_before": os.getloadavg(),
                           "library_path": library_path(ds, root),
                           "idle_thread": paired(ds, "idle", pairs, window_s),
                           "normal_thread": paired(ds, "normal", pairs, window_s)}
    # a training that leaves a core free (a GPU job's CPU side looks like this): torch on one thread
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        out["one_torch_thread"] = {"idle_thread": paired(ds, "idle", pairs, window_s),
                                   "normal_thread": paired(ds, "normal", pairs, window_s)}
    finally:
        torch.set_num_threads(threads)
    out["load_average_after"] = os.getloadavg()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gib", type=float, default=1.0, help="size of the TensorDataset (GiB of float32)")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--pairs", type=int, default=15, help="window pairs (without, with a hash) per policy")
    parser.add_argument("--window", type=float, default=1.0, help="seconds per window")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "fingerprint.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="p4l-fingerprint-") as tmp:
        root = Path(tmp)
        os.environ["PROV4ML_CACHE_DIR"] = str(root / "cache")
        ds = tensor_dataset(args.gib)
        result: dict[str, Any] = {
            "machine": {"cpus": os.cpu_count(), "python": platform.python_version(), "torch": torch.__version__,
                        "platform": platform.platform()},
            "tensor_dataset": tensors(ds),
            "file_folder": files(root / "images", args.files),
            "training_loop": slowdown(ds, root, args.pairs, args.window),
        }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    json.dump(result, sys.stdout, indent=1)
    print()


if __name__ == "__main__":
    main()
