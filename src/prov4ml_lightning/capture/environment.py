"""The environment of a run: interpreter, machine, GPUs, key library versions, every installed
package, the command line and selected environment variables (secrets redacted).

Everything is read in-process (``importlib.metadata``, ``platform``, ``psutil``, NVML through
``nvidia-ml-py`` when installed); no ``pip freeze`` subprocess, so capture stays cheap.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import re
import shlex
import socket
import sys
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

from prov4ml_lightning.redact import redact_argv, redact_env

__all__ = ["ENV_NAMES", "ENV_PREFIXES", "capture_environment", "host_id", "installed_packages"]

#: Environment variables recorded when set (values of secret-looking names become ``***``).
ENV_NAMES = (
    "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
    "VIRTUAL_ENV", "CONDA_DEFAULT_ENV", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
)
#: ... and every variable starting with one of these prefixes.
ENV_PREFIXES = ("PL_", "TORCH_", "NCCL_", "SLURM_", "PBS_", "LSB_", "MLFLOW_", "CUDA_")
_VERSIONS = {"torch": "torch", "lightning": "lightning", "mlflow": "mlflow", "prov": "prov", "numpy": "numpy"}


def host_id() -> str:
    """A stable identifier of this machine that two machines never share, even with one host
    name (``vm``, ``localhost``, a container's): the first 12 hex digits of the sha256 of the
    systemd/D-Bus machine id, else of the first network interface's MAC address, with the host
    name. Hashed, so the raw machine id is not published."""
    ident = ""
    for candidate in ("/etc/machine-id", "/var/lib/dbus/machine-id"):
        with contextlib.suppress(OSError):
            ident = Path(candidate).read_text(encoding="ascii").strip()
            if ident:
                break
    if not ident:
        import uuid

        ident = f"mac:{uuid.getnode():012x}"
    return hashlib.sha256(f"{ident}|{socket.gethostname()}".encode()).hexdigest()[:12]


def installed_packages() -> list[str]:
    """``name==version`` of every installed distribution, sorted; the first of a name on
    ``sys.path`` wins, as for ``import``."""
    seen: dict[str, str] = {}
    for dist in metadata.distributions():
        name, version = _name_version(dist)
        if name:
            seen.setdefault(re.sub(r"[-_.]+", "-", name).lower(), f"{name}=={version}")
    return sorted(seen.values(), key=str.lower)


def _name_version(dist: metadata.Distribution) -> tuple[str | None, str | None]:
    """Name and version from the METADATA header alone: ``dist.metadata`` parses the whole file
    as an e-mail message, which makes listing ~200 packages take 100+ ms instead of ~10."""
    text = dist.read_text("METADATA") or dist.read_text("PKG-INFO") or ""
    end = text.find("\n\n")
    name = version = None
    for line in (text if end < 0 else text[:end]).splitlines():
        if line.startswith("Name:"):
            name = line[5:].strip()
        elif line.startswith("Version:"):
            version = line[8:].strip()
    if name is None or version is None:  # an unusual file: let importlib parse it
        meta = dist.metadata
        return (meta["Name"] if meta else None), dist.version
    return name, version


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as fh:
            for line in fh:
                if line.startswith(("model name", "Hardware", "cpu model")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _gpus() -> dict[str, Any]:
    """GPU attributes from NVML; without ``nvidia-ml-py`` only the count torch sees (no CUDA init)."""
    try:
        import pynvml
    except ImportError:
        try:
            import torch

            count = torch.cuda.device_count()
        except Exception:
            count = 0
        note = "install prov4ml-lightning[gpu] (nvidia-ml-py) for GPU details" if count else None
        return {"gpu_count": count, "gpu_note": note}
    try:
        pynvml.nvmlInit()
    except Exception:  # no driver, no GPU: the ordinary CPU-only case
        return {"gpu_count": 0}
    try:
        out: dict[str, Any] = {"gpu_count": pynvml.nvmlDeviceGetCount()}
        out["gpu_driver_version"] = _text(pynvml.nvmlSystemGetDriverVersion())
        cuda = pynvml.nvmlSystemGetCudaDriverVersion_v2()
        out["gpu_cuda_driver_version"] = f"{cuda // 1000}.{cuda % 1000 // 10}"
        for i in range(out["gpu_count"]):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            out[f"gpu_{i}_name"] = _text(pynvml.nvmlDeviceGetName(handle))
            out[f"gpu_{i}_memory_bytes"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
        return out
    except Exception as err:
        return {"gpu_error": f"NVML query failed: {err}"}
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ram_bytes() -> int | None:
    try:
        import psutil

        return int(psutil.virtual_memory().total)
    except Exception:
        return None


def selected_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """The recorded environment variables (:data:`ENV_NAMES`, :data:`ENV_PREFIXES`), redacted."""
    env = os.environ if env is None else env
    names = sorted(n for n in env if n in ENV_NAMES or n.startswith(ENV_PREFIXES))
    return redact_env(env, names)


def capture_environment(out_dir: Path, run_id: str) -> tuple[dict[str, Any], Path]:
    """Attributes of the ``environment`` entity and the package list file written.

    Args:
        out_dir: where ``packages_<run_id>.txt`` is written.
        run_id: the run, for the file name.
    """
    packages = installed_packages()
    text = "".join(f"{line}\n" for line in packages).encode("utf-8")
    path = out_dir / f"packages_{run_id}.txt"
    path.write_bytes(text)
    try:
        available = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        available = None
    torch_mod = sys.modules.get("torch")
    attrs: dict[str, Any] = {
        "python_version": platform.python_version(),
        "python_implementation": platform.python_implementation(),
        "python_executable": sys.executable,
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "host_id": host_id(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_count_available": available,
        "ram_bytes": _ram_bytes(),
        **_gpus(),
        **{f"{key}_version": _version(dist) for key, dist in _VERSIONS.items()},
        "torch_cuda_version": getattr(getattr(torch_mod, "version", None), "cuda", None),
        "packages_file": path.name,
        "packages_count": len(packages),
        "packages_sha256": hashlib.sha256(text).hexdigest(),
        "command_line": shlex.join(redact_argv(sys.argv)),
    }
    attrs.update({f"env_{name}": value for name, value in selected_env().items()})
    return attrs, path
