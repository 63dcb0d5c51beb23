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
import ssl
import threading
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from prov4ml_lightning.errors import Prov4MLWarning, TrackingUnavailableError

__all__ = ["TrackingGuard", "probe", "redact_uri"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT_S = 2.0
CALL_DEADLINE_S = 15.0
_MAX_BACKOFF_S = 30.0
_SLICE_S = 0.5  # how long a call may hang before the server is probed
#: sink methods bounded by a deadline thread, and those preceded by a probe (long uploads).
_DEADLINE = frozenset({"experiment_id", "create_run", "reopen_run", "end_run", "log_metrics", "log_params",
                       "set_tags", "artifact_uri", "get_metric_history", "get_run", "search_runs"})
_PROBED = frozenset({"log_artifact", "log_model", "download_artifacts", "list_artifacts"})


def redact_uri(uri: str) -> str:
    """``uri`` without user name and password (``http://u:p@h:5000`` -> ``http://***@h:5000``)."""
    parts = urlsplit(uri)
    if parts.password or parts.username:
        host = parts.hostname or ""
        netloc = f"***@{host}" + (f":{parts.port}" if parts.port else "")
        return urlunsplit(parts._replace(netloc=netloc))
    return uri


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
    """Wraps an ``MlflowSink``: the same methods, bounded in time when the store is remote.

    Args:
        sink: the :class:`~prov4ml_lightning.sinks.mlflow.sink.MlflowSink` to call.
        tracking_uri: its URI (with credentials; they are never shown).
        deadline: seconds a small call may take before it is given up.
    """

    def __init__(self, sink: Any, tracking_uri: str, *, deadline: float = CALL_DEADLINE_S) -> None:
        self._sink = sink
        self._uri = tracking_uri
        self.public_uri = redact_uri(tracking_uri)
        self.remote = is_remote(tracking_uri)
        self.deadline = deadline
        self.offline = False
        self._lock = threading.Lock()
        self._down_until = 0.0
        self._failures = 0
        self._warned = False
        self.outages = 0

    # -- state ---------------------------------------------------------------------------
    def available(self) -> bool:
        """Probe the server now (always ``True`` for a local store)."""
        return not self.remote or probe(self._uri)

    def go_offline(self) -> None:
        """Fail every call at once from now on (the run has no MLflow run to write to)."""
        self.offline = True
        self._warned = True  # start_run has said so

    def recheck(self) -> None:
        """End the current backoff: the next call probes the server first (used at ``end_run``)."""
        with self._lock:
            if self._down_until:
                self._down_until = min(self._down_until, time.monotonic())

    def _check(self, name: str) -> None:
        if self.offline:
            raise TrackingUnavailableError(f"{name}: this run is offline (no MLflow run); use `prov4ml sync`")
        with self._lock:
            waiting = self._down_until
        if not waiting:
            return
        if time.monotonic() < waiting:
            raise TrackingUnavailableError(f"{name}: tracking server {self.public_uri} is unreachable (backing off)")
        if not probe(self._uri):
            self._down(name)
            raise TrackingUnavailableError(f"{name}: tracking server {self.public_uri} is still unreachable")
        self._up()

    def _down(self, name: str) -> None:
        with self._lock:
            first = self._failures == 0
            self._failures += 1
            self._down_until = time.monotonic() + min(_MAX_BACKOFF_S, 2.0 ** (self._failures - 1))
            warn = not self._warned
            self._warned = True
        if first:
            self.outages += 1
        if warn:
            warnings.warn(
                f"prov4ml: the MLflow tracking server {self.public_uri} is unreachable ({name}); training goes on. "
                "Metrics are kept and retried with backoff; what MLflow has not taken by end_run is saved to "
                "mlflow_unsent_<run_id>.csv in the provenance folder for `prov4ml sync`. The PROV files are "
                "written locally as usual.",
                Prov4MLWarning, stacklevel=4,
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
        if isinstance(err, TrackingUnavailableError) or not probe(self._uri):
            self._down(name)
            text = str(err).replace(self._uri.rstrip("/"), self.public_uri.rstrip("/"))
            return TrackingUnavailableError(f"{name}: tracking server {self.public_uri} is unreachable ({text[:300]})")
        return err

    # -- calls -------------------------------------------------------------------------------
    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sink, name)
        if not callable(attr) or name.startswith("_"):
            return attr
        if not self.remote:
            return attr
        if name in _DEADLINE:
            return lambda *args, **kwargs: self._bounded(name, attr, args, kwargs)
        if name in _PROBED:
            return lambda *args, **kwargs: self._probed(name, attr, args, kwargs)
        return attr

    def _probed(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        self._check(name)
        if not probe(self._uri):
            self._down(name)
            raise TrackingUnavailableError(f"{name}: tracking server {self.public_uri} is unreachable")
        try:
            return fn(*args, **kwargs)
        except Exception as err:
            raise self._failed(name, err) from None

    def _bounded(self, name: str, fn: Callable[..., Any], args: tuple, kwargs: dict) -> Any:
        self._check(name)
        box: dict[str, Any] = {}

        def call() -> None:
            try:
                box["value"] = fn(*args, **kwargs)
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
            if time.monotonic() >= give_up or not probe(self._uri):
                self._down(name)
                raise TrackingUnavailableError(
                    f"{name}: tracking server {self.public_uri} did not answer "
                    f"(gave up after {self.deadline - max(0.0, give_up - time.monotonic()):.1f} s)")
        if "error" in box:
            raise self._failed(name, box["error"]) from None
        self._up()
        return box.get("value")
