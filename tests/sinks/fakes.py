"""A stand-in for the inner sink in unit tests of the guard's policy (the end-to-end tests use real servers)."""

from __future__ import annotations

import threading
from collections.abc import Iterable
from typing import Any

from prov4ml_lightning.sinks.base import NullSink

REMOTE_URI = "http://user:hunter2@127.0.0.1:9/?token=s3cr3t"


class FakeSink(NullSink):
    """Records the calls that reach it; ``fail`` makes them raise, ``hang`` makes them block until set."""

    def __init__(self, uri: str = REMOTE_URI) -> None:
        self.tracking_uri = uri
        self.mlflow_save_dir = "/nowhere"
        self.offline = False
        self.calls: list[str] = []
        self.fail: BaseException | None = None
        self.hang: threading.Event | None = None

    def _called(self, name: str) -> None:
        self.calls.append(name)
        if self.hang is not None:
            self.hang.wait(10)
        if self.fail is not None:
            raise self.fail

    def go_offline(self) -> None:
        self.offline = True

    def log_params(self, run_id: str, params: Iterable[tuple[str, str]]) -> None:
        self._called("log_params")

    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self._called("log_artifact")

    def log_model(self, run_id: str, model: Any, name: str, *, pip_requirements: list[str] | None = None,
                  params: Any = None, **kwargs: Any) -> tuple[str, str | None]:
        self._called("log_model")
        return f"models:/{name}", str(sorted(kwargs))

    def get_run(self, run_id: str) -> dict[str, Any] | None:
        self._called("get_run")
        return {"status": "RUNNING", "experiment_id": "1", "params": {}, "tags": {}}


class Probe:
    """A health check whose answer the test sets; counts how often it was asked."""

    def __init__(self, up: bool = True) -> None:
        self.up = up
        self.asked = 0

    def __call__(self, uri: str) -> bool:
        self.asked += 1
        return self.up
