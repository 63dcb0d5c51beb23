"""The environment of a run: interpreter (path, flags, ``-X`` options, ``sys.path`` additions),
machine, GPUs, torch's determinism flags, key library versions, every installed package with
its source, the command line and selected environment variables (secrets redacted).

Everything is read in-process (``importlib.metadata``, ``platform``, ``psutil``, NVML through
``nvidia-ml-py`` when installed); no ``pip freeze`` subprocess, so capture stays cheap.

The package list (``packages_<run>.txt``) is a lock file in pip's requirements syntax, one
distribution a line, ``pip install -r`` ready: ``name==version`` for a distribution from an index;
``name @ URL`` for one installed from a URL, a local folder or a VCS (PEP 610's
``direct_url.json``: a VCS URL carries its commit, ``git+https://host/repo@<commit>``; an archive
its hash, ``#sha256=...``), followed by a comment ``# version V; editable; local`` with what the
URL alone does not say. :func:`read_lock` reads it back.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import re
import shlex
import socket
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from prov4ml_lightning.redact import redact_argv, redact_env, redact_text, redact_url

__all__ = [
    "ENV_NAMES", "ENV_PREFIXES", "Package", "capture_environment", "host_id", "installed_packages",
    "interpreter_snapshot", "interpreter_state", "lock_text", "locked_packages", "read_lock", "torch_flags",
]

#: Environment variables recorded when set (values of secret-looking names become ``***``).
ENV_NAMES = (
    "CUDA_VISIBLE_DEVICES", "CUBLAS_WORKSPACE_CONFIG", "PYTHONHASHSEED", "OMP_NUM_THREADS",
    "MKL_NUM_THREADS", "WORLD_SIZE", "RANK", "LOCAL_RANK", "NODE_RANK", "MASTER_ADDR", "MASTER_PORT",
    "VIRTUAL_ENV", "CONDA_DEFAULT_ENV", "PYTHONPATH", "PYTHONOPTIMIZE", "PYTHONDONTWRITEBYTECODE",
    "PYTHONUTF8", "PYTHONWARNINGS", "PYTHONNOUSERSITE", "MLFLOW_TRACKING_URI", "MLFLOW_EXPERIMENT_NAME",
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


@dataclass(frozen=True)
class Package:
    """One installed distribution and where it came from.

    Attributes:
        name: its name as its metadata spells it.
        version: its version.
        source: ``"index"`` (no ``direct_url.json``: from an index, or unknown), ``"vcs"``,
            ``"local"`` (a folder) or ``"archive"`` (a wheel or sdist file or URL).
        url: the URL it was installed from (credentials redacted); ``None`` for ``"index"``.
        commit: the VCS commit (``vcs_info.commit_id``).
        editable: installed with ``pip install -e``.
        hashes: ``(algorithm, hex)`` pairs of the archive, where PEP 610 recorded them.
        vcs: the version control system of a ``"vcs"`` source (``git``, ``hg``...).
    """

    name: str
    version: str
    source: str = "index"
    url: str | None = None
    commit: str | None = None
    editable: bool = False
    hashes: tuple[tuple[str, str], ...] = ()
    vcs: str | None = None

    def requirement(self) -> str:
        """This distribution as a line of a requirements file (see the module docstring)."""
        if self.url is None:
            return f"{self.name}=={self.version}"
        url = self.url
        if self.source == "vcs" and self.commit:
            vcs = self.vcs or "git"
            url = f"{vcs}+{url}@{self.commit}" if not url.startswith(f"{vcs}+") else f"{url}@{self.commit}"
        elif self.hashes:
            url += "#" + "&".join(f"{k}={h}" for k, h in self.hashes)
        notes = [f"version {self.version}", *(["editable"] if self.editable else []), self.source]
        return f"{self.name} @ {url}  # {'; '.join(notes)}"


_URL_HASH = re.compile(r"^(?P<algo>sha\d+|md5)=(?P<hex>[0-9a-fA-F]+)$")


def _package(dist: metadata.Distribution, name: str, version: str) -> Package:
    """``name``/``version`` of ``dist`` with its source from ``direct_url.json`` (PEP 610), if any."""
    try:
        text = dist.read_text("direct_url.json")
    except OSError:
        text = None
    if not text:
        return Package(name, version)
    try:
        direct = json.loads(text)
        url = redact_url(str(direct["url"]))
    except (ValueError, KeyError, TypeError):
        return Package(name, version)
    if isinstance(direct.get("vcs_info"), dict):
        vcs = direct["vcs_info"]
        return Package(name, version, "vcs", url, str(vcs.get("commit_id") or "") or None,
                       vcs=str(vcs.get("vcs") or "git"))
    if isinstance(direct.get("dir_info"), dict):
        return Package(name, version, "local", url, editable=bool(direct["dir_info"].get("editable")))
    archive = direct.get("archive_info") if isinstance(direct.get("archive_info"), dict) else {}
    hashes = dict(archive.get("hashes") or {})
    if not hashes and isinstance(archive.get("hash"), str):  # the older "algo=hex" form
        match = _URL_HASH.match(archive["hash"])
        if match:
            hashes[match["algo"]] = match["hex"]
    return Package(name, version, "archive", url, hashes=tuple(sorted(hashes.items())))


def locked_packages() -> list[Package]:
    """Every installed distribution with its source, sorted by name; the first of a name on
    ``sys.path`` wins, as for ``import``."""
    seen: dict[str, Package] = {}
    for dist in metadata.distributions():
        name, version = _name_version(dist)
        if name:
            key = re.sub(r"[-_.]+", "-", name).lower()
            if key not in seen:
                seen[key] = _package(dist, name, version or "")
    return sorted(seen.values(), key=lambda p: p.name.lower())


def lock_text(packages: list[Package] | None = None) -> str:
    """The lock file's text: one :meth:`Package.requirement` a line (default: every installed one)."""
    return "".join(f"{p.requirement()}\n" for p in (locked_packages() if packages is None else packages))


def interpreter_snapshot() -> dict[str, Any]:
    """This interpreter as a reproduction compares it with a record: ``python_version``,
    ``python_implementation``, its options (:func:`interpreter_state`) and ``packages`` (the lock's
    text). Standard library only: ``prov4ml reproduce --venv`` runs it in the venv's interpreter."""
    return {"python_version": platform.python_version(), "python_implementation": platform.python_implementation(),
            **interpreter_state(), "packages": lock_text()}


def installed_packages() -> list[str]:
    """``name==version`` of every installed distribution, sorted; the first of a name on
    ``sys.path`` wins, as for ``import``."""
    return [f"{p.name}=={p.version}" for p in locked_packages()]


def read_lock(text: str) -> dict[str, dict[str, Any]]:
    """A package list (this module's lock, or an older ``name==version`` list) as
    ``{normalized name: {"name", "version", "requirement", "source", "editable"}}``."""
    out: dict[str, dict[str, Any]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        requirement, _, comment = line.partition("  #")
        requirement = requirement.strip()
        notes = [n.strip() for n in comment.split(";")] if comment else []
        if " @ " in requirement:
            name = requirement.split(" @ ", 1)[0].strip()
            version = next((n[8:] for n in notes if n.startswith("version ")), "")
            source = notes[-1] if notes and notes[-1] in ("vcs", "local", "archive") else "url"
        else:
            name, _, version = requirement.partition("==")
            source = "index"
        key = re.sub(r"[-_.]+", "-", name.strip()).lower()
        out[key] = {"name": name.strip(), "version": version.strip(), "requirement": requirement,
                    "source": source, "editable": "editable" in notes}
    return out


def torch_flags() -> dict[str, Any]:
    """torch's settings that change results, as they are now (torch already imported only: this
    never imports it): deterministic algorithms (and warn-only), cuDNN benchmark/deterministic/
    enabled/TF32, matmul TF32 and float32 matmul precision."""
    torch_mod = sys.modules.get("torch")
    if torch_mod is None:
        return {}
    out: dict[str, Any] = {}
    reads = {
        "torch_deterministic_algorithms": lambda: torch_mod.are_deterministic_algorithms_enabled(),
        "torch_deterministic_warn_only": lambda: torch_mod.is_deterministic_algorithms_warn_only_enabled(),
        "torch_cudnn_benchmark": lambda: torch_mod.backends.cudnn.benchmark,
        "torch_cudnn_deterministic": lambda: torch_mod.backends.cudnn.deterministic,
        "torch_cudnn_enabled": lambda: torch_mod.backends.cudnn.enabled,
        "torch_cudnn_allow_tf32": lambda: torch_mod.backends.cudnn.allow_tf32,
        "torch_matmul_allow_tf32": lambda: torch_mod.backends.cuda.matmul.allow_tf32,
        "torch_float32_matmul_precision": lambda: torch_mod.get_float32_matmul_precision(),
    }
    for key, read in reads.items():
        with contextlib.suppress(Exception):  # an older or stripped-down torch lacks one
            value = read()
            out[key] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return out


#: ``sys.flags`` fields and their values when python runs with no option.
_DEFAULT_FLAGS = {"debug": 0, "inspect": 0, "interactive": 0, "optimize": 0, "dont_write_bytecode": 0,
                  "no_user_site": 0, "no_site": 0, "ignore_environment": 0, "verbose": 0, "bytes_warning": 0,
                  "quiet": 0, "hash_randomization": 1, "isolated": 0, "dev_mode": False, "utf8_mode": 0,
                  "warn_default_encoding": 0, "safe_path": False, "int_max_str_digits": -1}


def interpreter_state() -> dict[str, Any]:
    """The interpreter's options as python was started: ``sys.flags`` that differ from a plain
    ``python`` (``python_flags``, ``name=value`` joined by spaces), ``-X`` options
    (``python_xoptions``), and the ``sys.path`` entries that neither the interpreter's
    installation nor the script's folder explain (``python_path_added``: PYTHONPATH, ``.pth``
    files of editable installs, entries the program added), as JSON lists."""
    flags = {name: getattr(sys.flags, name) for name in _DEFAULT_FLAGS if hasattr(sys.flags, name)}
    changed = [f"{k}={int(v) if isinstance(v, bool) else v}" for k, v in flags.items() if v != _DEFAULT_FLAGS[k]]
    xoptions = [k if v is True else f"{k}={v}" for k, v in sorted(sys._xoptions.items())]
    roots = [Path(p) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}]
    main = sys.modules.get("__main__")
    script_dir = Path(main.__file__).resolve().parent if getattr(main, "__file__", None) else None
    added = []
    for entry in sys.path:
        if not entry:
            continue  # the current folder of ``python -c``/``-m``
        path = Path(entry)
        if any(path.is_relative_to(root) for root in roots) or (script_dir is not None and path == script_dir):
            continue
        added.append(redact_text(entry))
    return {"python_flags": " ".join(changed), "python_xoptions": xoptions,
            "python_path_added": list(dict.fromkeys(added))}


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
    packages = locked_packages()
    text = lock_text(packages).encode("utf-8")
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
        "packages_direct_count": sum(1 for p in packages if p.url is not None),
        **interpreter_state(),
        **torch_flags(),
        "command_line": shlex.join(redact_argv(sys.argv)),
    }
    attrs.update({f"env_{name}": value for name, value in selected_env().items()})
    return attrs, path
