"""Keeps a remote MLflow tracking server from blocking the training: probe, deadline, circuit breaker.

MLflow's REST client retries a refused connection for about four minutes by default
(``MLFLOW_HTTP_REQUEST_MAX_RETRIES=7``, backoff factor 2) and waits up to 120 s for a reply. We
leave those settings, which are process-wide and belong to the user, alone and bound *our*
calls instead:

- :meth:`TrackingGuard.available` asks ``GET <uri>/health`` once, with a 2-second timeout and no
  retry. Any HTTP reply counts as reachable (a proxy asking for credentials is reachable); a
  refused connection, a DNS failure or a timeout does not.
- Small calls (params, tags, metric batches, run status) run on a helper thread. While one has
  not returned, the server is probed every half second; the call is given up as soon as the
  server does not answer, and after ``deadline`` seconds in any case (the helper finishes or
  fails on its own; MLflow's SQL stores merge a metric point that arrives twice).
- Uploads (artifacts, models), which may rightly take long, are preceded by a probe instead.
- After a failure the server is probed; if it is down, every call fails at once for a backoff
  period (1, 2, 4 ... 30 s) and the first call after it probes again (a circuit breaker).
- The first outage of a run warns once (:class:`Prov4MLWarning`); the failures that follow raise
  :class:`TrackingUnavailableError`, which the recorder and the metric writer handle quietly:
  the data is kept, retried and, at the end, spilled to disk for ``prov4ml sync``.

Local stores (``sqlite:``, ``file:``, plain paths) are called directly.
"""

from __future__ import annotations

import logging
import os
import ssl
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from prov4ml_lightning.errors import Prov4MLWarning, TrackingUnavailableError, warn
from prov4ml_lightning.redact import redact_text, redact_url
from prov4ml_lightning.sinks.base import TrackingSink

__all__ = ["TrackingGuard", "is_remote", "probe"]

_T = TypeVar("_T")

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
CALL_DEADLINE_S = 15.0
_MAX_BACKOFF_S = 30.0
_SLICE_S = 0.5  # how long a call may hang before the server is probed


def is_remote(uri: str) -> bool:
    return urlsplit(uri).scheme in ("http", "https")


def probe(uri: str, timeout: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the HTTP tracking server at ``uri`` answers at all within ``timeout`` seconds."""
    parts = urlsplit(uri)
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    if ":" in (parts.hostname or ""):  # IPv6 literal
        netloc = f"[{parts.hostname}]" + (f":{parts.port}" if parts.port else "")
    url = urlunsplit((parts.scheme, netloc, parts.path.rstrip("/") + "/health", "", ""))
    try:
        with urllib.request.urlopen(url, timeout=timeout) as reply:
            reply.read(64)
        return True
    except urllib.error.HTTPError:
        return True  # it answered: reachable, whatever it thinks of /health
    except urllib.error.URLError as err:
        return isinstance(err.reason, ssl.SSLError)  # TLS trouble is MLflow's to report, not an outage
    except (OSError, ValueError):
        return False


class TrackingGuard:
    """Wraps a sink: the same :class:`~prov4ml_lightning.sinks.base.TrackingSink` members, bounded
    in time when the store is remote (a local store is called directly).

    Args:
        sink: the sink to call (an :class:`~prov4ml_lightning.sinks.mlflow.sink.MlflowSink`).
        tracking_uri: its URI (with credentials; they are never shown); default ``sink.tracking_uri``.
        deadline: seconds a small call may take before it is given up.
        health_check: ``health_check(uri)`` says whether the server answers (default :func:`probe`).
    """

    def __init__(self, sink: TrackingSink, tracking_uri: str | None = None, *, deadline: float = CALL_DEADLINE_S,
                 health_check: Callable[[str], bool] = probe) -> None:
        self._sink = sink
        self._uri = tracking_uri if tracking_uri is not None else sink.tracking_uri
        self.public_uri = redact_url(self._uri)
        self.remote = is_remote(self._uri)
        self.deadline = deadline
        self.offline = False
        self._probe = health_check
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._failures = 0
        self._warned = False

    @property
    def tracking_uri(self) -> str:
        return self._sink.tracking_uri

    @property
    def mlflow_save_dir(self) -> str | os.PathLike[str]:
        return self._sink.mlflow_save_dir

    # -- state ---------------------------------------------------------------------------
    def available(self) -> bool:
        """Probe the server now (always ``True`` for a local store)."""
        return not self.remote or self._probe(self._uri)

    def go_offline(self) -> None:
        """Fail every call at once from now on (the run has no MLflow run to write to)."""
        self.offline = True
        self._warned = True  # start_run has said so
        self._sink.go_offline()

    def recheck(self) -> None:
        """End the current backoff: the next call probes the server first (used at ``end_run``)."""
        with self._lock:
            if self._down_until:
                self._down_until = min(self._down_until, time.monotonic())

    def flush(self, timeout: float | None = None) -> bool:
        return self._sink.flush(timeout)

    def pending(self) -> str:
        return self._sink.pending()

    def incomplete(self) -> str:
        return self._sink.incomplete()  # an outage is announced by the guard and the writer's spill

    def run_created(self, timeout: float | None = None) -> bool:
        return not self.offline and self._sink.run_created(timeout)

    # -- run lifecycle: small calls, bounded by the deadline -------------------------------------
    def experiment_id(self, name: str) -> str:
        return self._bounded("experiment_id", self._sink.experiment_id, name)

    def create_run(self, experiment_id: str, run_name: str | None, tags: Mapping[str, str],
                   description: str | None, parent_run_id: str | None, start_time_ms: int) -> tuple[str, str]:
        return self._bounded("create_run", self._sink.create_run, experiment_id, run_name, tags, description,
                             parent_run_id, start_time_ms)

    def reopen_run(self, run_id: str) -> dict[str, Any]:
        return self._bounded("reopen_run", self._sink.reopen_run, run_id)

    def end_run(self, run_id: str, status: str, end_time_ms: int) -> None:
        self._bounded("end_run", self._sink.end_run, run_id, status, end_time_ms)

    # -- data ------------------------------------------------------------------------------------
    def log_metrics(self, run_id: str, points: Sequence[tuple[str, float, int, int]]) -> None:
        self._bounded("log_metrics", self._sink.log_metrics, run_id, points)

    def log_params(self, run_id: str, params: Iterable[tuple[str, str]]) -> None:
        self._bounded("log_params", self._sink.log_params, run_id, params)

    def set_tags(self, run_id: str, tags: Iterable[tuple[str, str]]) -> None:
        self._bounded("set_tags", self._sink.set_tags, run_id, tags)

    def log_dataset_inputs(self, run_id: str, datasets: Sequence[Mapping[str, Any]]) -> None:
        self._bounded("log_dataset_inputs", self._sink.log_dataset_inputs, run_id, datasets)

    # Uploads may rightly take long: a probe first instead of a deadline.
    def log_artifact(self, run_id: str, local_path: str, artifact_path: str | None = None) -> None:
        self._probed("log_artifact", self._sink.log_artifact, run_id, local_path, artifact_path)

    def log_model(self, run_id: str, model: Any, name: str, *, pip_requirements: list[str] | None = None,
                  params: Mapping[str, Any] | None = None, **kwargs: Any) -> tuple[str, str | None]:
        return self._probed("log_model", lambda: self._sink.log_model(
            run_id, model, name, pip_requirements=pip_requirements, params=params, **kwargs))

    # -- reading back (``prov4ml sync``) -------------------------------------------------------
    def get_run(self, run_id: str) -> dict[str, Any] | None:
        return self._bounded("get_run", self._sink.get_run, run_id)

    def get_metric_history(self, run_id: str, key: str) -> set[tuple[int, int]]:
        return self._bounded("get_metric_history", self._sink.get_metric_history, run_id, key)

    def search_runs(self, experiment_id: str, tag: str, value: str) -> list[str]:
        return self._bounded("search_runs", self._sink.search_runs, experiment_id, tag, value)

    def list_artifacts(self, run_id: str, path: str | None = None) -> list[str]:
        return self._probed("list_artifacts", self._sink.list_artifacts, run_id, path)

    def find_weights(self, digest: str) -> list[dict[str, Any]]:
        return self._bounded("find_weights", self._sink.find_weights, digest)

    # -- the policy ----------------------------------------------------------------------------
    def _check(self, name: str) -> None:
        if self.offline:
            raise TrackingUnavailableError(f"{name}: this run is offline (no MLflow run); use `prov4ml sync`")
        with self._lock:
            waiting = self._down_until
        if not waiting:
            return
        if time.monotonic() < waiting:
            raise TrackingUnavailableError(f"{name}: tracking server {self.public_uri} is unreachable (backing off)")
        if not self._probe(self._uri):
            self._down(name)
            raise TrackingUnavailableError(f"{name}: tracking server {self.public_uri} is still unreachable")
        self._up()

    def _down(self, name: str) -> None:
        with self._lock:
            self._failures += 1
            self._down_until = time.monotonic() + min(_MAX_BACKOFF_S, 2.0 ** (self._failures - 1))
            first = not self._warned
            self._warned = True
        if first:
            warn(
                f"prov4ml: the MLflow tracking server {self.public_uri} is unreachable ({name}); training goes on. "
                "Metrics are kept and retried with backoff; what MLflow has not taken by end_run is saved to "
                "mlflow_unsent_<run_id>.csv in the provenance folder for `prov4ml sync`. The PROV files are "
                "written locally as usual.",
                Prov4MLWarning,
            )
        else:
            log.info("prov4ml: tracking server %s unreachable (%s)", self.public_uri, name)

    def _up(self) -> None:
        with self._lock:
            was_down = self._failures > 0
            self._failures = 0
            self._down_until = 0.0
        if was_down:
            log.info("prov4ml: tracking server %s is reachable again", self.public_uri)

    def _failed(self, name: str, err: BaseException) -> BaseException:
        """Turn a failure into the exception to raise: an outage, or the store's own error."""
        if isinstance(err, TrackingUnavailableError) or not self._probe(self._uri):
            self._down(name)
            text = redact_text(str(err).replace(self._uri.rstrip("/"), self.public_uri.rstrip("/")))
            return TrackingUnavailableError(f"{name}: tracking server {self.public_uri} is unreachable ({text[:300]})")
        return err

    def _probed(self, name: str, fn: Callable[..., _T], *args: Any) -> _T:
        if not self.remote:
            return fn(*args)
        self._check(name)
        if not self._probe(self._uri):
            self._down(name)
            raise TrackingUnavailableError(f"{name}: tracking server {self.public_uri} is unreachable")
        try:
            return fn(*args)
        except Exception as err:
            raise self._failed(name, err) from None

    def _bounded(self, name: str, fn: Callable[..., _T], *args: Any) -> _T:
        if not self.remote:
            return fn(*args)
        self._check(name)
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = fn(*args)
            except BaseException as err:  # handed to the caller's thread
                box["error"] = err

        helper = threading.Thread(target=call, name=f"prov4ml-mlflow-{name}", daemon=True)
        helper.start()
        give_up = time.monotonic() + self.deadline
        while True:
            helper.join(min(_SLICE_S, max(0.0, give_up - time.monotonic())))
            if not helper.is_alive():
                break
            # Still waiting: MLflow may be retrying a refused connection for minutes. Ask the server
            # ourselves; if it does not answer, the outage is known now, not at the deadline.
            if time.monotonic() >= give_up or not self._probe(self._uri):
                self._down(name)
                raise TrackingUnavailableError(
                    f"{name}: tracking server {self.public_uri} did not answer "
                    f"(gave up after {self.deadline - max(0.0, give_up - time.monotonic()):.1f} s)")
        if "error" in box:
            raise self._failed(name, box["error"]) from None
        self._up()
        return box.get("value")  # type: ignore[return-value]
