"""The metric upload process started by :class:`~prov4ml_lightning.sinks.mlflow.uploader.MetricUploader`.

Run as a script, not imported: importing the package would import torch for nothing, so it loads
``sink.py`` (which imports only MLflow) by path. Protocol on stdin/stdout, pickled:
``(tracking_uri, mlflow_save_dir)`` then ``(run_id, points)`` per batch, ``None`` to stop;
replies ``("ready", None)`` once, then ``("ok", n)`` or ``("error", text)`` per batch.
"""

from __future__ import annotations

import importlib.util
import pickle
import sys
from pathlib import Path
from typing import Any

__all__: list[str] = []

_HERE = Path(__file__).resolve().parent


def _load(name: str, path: Path) -> Any:
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def _load_sink_module() -> Any:
    # sink.py imports its rules by their package name; registered under that name first, they are
    # found without importing the package (and torch) in this process
    _load("prov4ml_lightning.sinks.mlflow.rules", _HERE / "rules.py")
    return _load("prov4ml_lightning_upload_sink", _HERE / "sink.py")


def main() -> None:
    # Run as a script, this folder is sys.path[0]: its module names must not shadow real ones.
    sys.path[:] = [p for p in sys.path if p and Path(p).resolve() != _HERE]
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # stdout carries the replies; stray prints must not corrupt them

    def reply(message: tuple[str, Any]) -> None:
        pickle.dump(message, stdout)
        stdout.flush()

    try:
        uri, save_dir = pickle.load(stdin)
        sink = _load_sink_module().MlflowSink(uri, save_dir)
    except BaseException as err:
        reply(("error", repr(err)))
        return
    reply(("ready", None))
    while True:
        try:
            message = pickle.load(stdin)
        except EOFError:
            return
        if message is None:
            return
        run_id, points = message
        try:
            sink.log_metrics(run_id, points)
        except Exception as err:
            reply(("error", f"{type(err).__name__}: {str(err)[:2000]}"))
        else:
            reply(("ok", len(points)))


if __name__ == "__main__":
    main()
