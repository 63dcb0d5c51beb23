"""System metrics: one sample on demand, or a background sampler that costs the loop nothing.

CPU, memory and disk come from ``psutil``; GPU utilisation and memory from NVML when the
``gpu`` extra (``nvidia-ml-py``) is installed and a GPU is present.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections.abc import Callable
from typing import Any

import psutil

__all__ = ["SystemMetricsSampler", "sample_system_metrics"]

log = logging.getLogger(__name__)
_MB = 1024 * 1024
_nvml_state: dict[str, Any] = {}
_process_state: dict[str, Any] = {}


def _gpu_handles() -> list[Any]:
    if "handles" not in _nvml_state:
        _nvml_state["handles"] = []
        try:
            import pynvml  # provided by nvidia-ml-py

            pynvml.nvmlInit()
            _nvml_state["module"] = pynvml
            _nvml_state["handles"] = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(pynvml.nvmlDeviceGetCount())]
        except Exception as err:  # no extra, no driver or no GPU: GPU metrics are simply absent
            log.debug("NVML unavailable: %s", err)
    return _nvml_state["handles"]


def _gpu_metrics() -> dict[str, float]:
    out: dict[str, float] = {}
    handles = _gpu_handles()
    if not handles:
        return out
    nvml = _nvml_state["module"]
    for i, handle in enumerate(handles):
        try:
            util = nvml.nvmlDeviceGetUtilizationRates(handle)
            mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            out[f"system/gpu{i}/utilization_percent"] = float(util.gpu)
            out[f"system/gpu{i}/memory_used_mb"] = mem.used / _MB
            out[f"system/gpu{i}/memory_percent"] = 100.0 * mem.used / mem.total if mem.total else 0.0
            out[f"system/gpu{i}/power_w"] = nvml.nvmlDeviceGetPowerUsage(handle) / 1000.0
        except Exception as err:
            log.debug("NVML read failed for GPU %d: %s", i, err)
    return out


def _this_process() -> psutil.Process:
    """One ``psutil.Process`` per process: its ``cpu_percent`` measures since its previous call, so a new
    object each sample would read 0.0 every time (a forked child gets its own)."""
    pid = os.getpid()
    if _process_state.get("pid") != pid:
        _process_state.update(pid=pid, process=psutil.Process(pid))
    return _process_state["process"]


def sample_system_metrics(disk_path: str | os.PathLike[str] = ".") -> dict[str, float]:
    """One sample of CPU %, process and system memory, disk and GPU metrics.

    The original prov4ml's five metrics keep its names: ``cpu_usage``, ``memory_usage`` and
    ``disk_usage`` (percent), ``gpu_usage`` and ``gpu_memory_usage`` (percent, the mean over this
    machine's GPUs; 0 without one, as the original logged). What this project adds is under
    ``system/``: the process's CPU % and RSS, memory used, disk I/O, each GPU's own readings.
    CPU % is measured since the previous call in this process (the first call primes it).
    """
    proc = _this_process()
    vm = psutil.virtual_memory()
    out = {
        "cpu_usage": psutil.cpu_percent(interval=None),
        "memory_usage": vm.percent,
        "system/process_cpu_percent": proc.cpu_percent(interval=None),
        "system/process_rss_mb": proc.memory_info().rss / _MB,
        "system/memory_used_mb": (vm.total - vm.available) / _MB,
    }
    with contextlib.suppress(OSError):
        out["disk_usage"] = psutil.disk_usage(os.fspath(disk_path)).percent
    io = psutil.disk_io_counters()
    if io is not None:
        out["system/disk_read_mb"] = io.read_bytes / _MB
        out["system/disk_write_mb"] = io.write_bytes / _MB
    gpus = _gpu_metrics()
    for name, reading in (("gpu_usage", "utilization_percent"), ("gpu_memory_usage", "memory_percent")):
        values = [v for k, v in gpus.items() if k.endswith(f"/{reading}")]
        out[name] = sum(values) / len(values) if values else 0.0
    out.update(gpus)
    return out


class SystemMetricsSampler(threading.Thread):
    """Calls ``sink(sample, index)`` every ``interval`` seconds on a daemon thread until stopped."""

    def __init__(self, sink: Callable[[dict[str, float], int], None], interval: float,
                 disk_path: str | os.PathLike[str] = ".") -> None:
        super().__init__(name="prov4ml-system-metrics", daemon=True)
        if interval <= 0:
            raise ValueError("interval must be positive")
        self.interval = interval
        self._sink = sink
        self._disk_path = disk_path
        self._stop_event = threading.Event()
        self.samples = 0

    def run(self) -> None:
        sample_system_metrics(self._disk_path)  # prime CPU % counters
        while not self._stop_event.wait(self.interval):
            try:
                self._sink(sample_system_metrics(self._disk_path), self.samples)
                self.samples += 1
            except Exception:
                log.exception("system metrics sample failed")

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout=10)
