"""What Lightning hands its loggers, taken where Lightning hands it over.

Every value a LightningModule logs with ``self.log`` reaches Lightning's loggers through one
call, ``trainer._logger_connector.log_metrics(metrics, step)``: step values after each training
batch Lightning logs at (``log_every_n_steps``, accumulation, manual optimization), epoch values
at the end of each loop, evaluation step values with their own per-dataloader step. The
callback listens on that call (:func:`listen`), so its MLflow keys, steps and values are the
ones ``CSVLogger`` and ``MLFlowLogger`` get, in every setup, by construction; it applies the same
step rule as Lightning (:func:`resolve_step`): a value logged as ``step`` is the x value, not a
metric; without it Lightning adds ``epoch`` and uses the count of batches that stepped.

The listener is an attribute set on the trainer's connector instance, shared by every callback
listening on that trainer and removed when the last one stops listening. ``log_metrics`` is
Lightning's private API (stable from 2.0 to 2.6); if it disappears, :func:`listen` warns once
and the callback records no ``self.log`` values (its activities and other records go on).
The connector's own early return (no loggers in the trainer) comes after the listeners: the
callback records the values with ``logger=False`` too.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from typing import Any

from prov4ml_lightning.errors import Prov4MLWarning, warn

__all__ = ["Listener", "listen", "resolve_step", "unlisten"]

log = logging.getLogger(__name__)

#: ``listener(metrics, step, step_level)``: the values (tensors or numbers, ``step`` removed and
#: ``epoch`` added as Lightning does), Lightning's x value, and whether they are step values.
Listener = Callable[[dict[str, Any], int, bool], None]

_ATTR = "_prov4ml_listeners"
_warned: set[str] = set()


def listen(trainer: Any, listener: Listener) -> bool:
    """Call ``listener`` with every dict Lightning hands its loggers; ``False`` (one warning) when
    this Lightning has no such call."""
    connector = getattr(trainer, "_logger_connector", None)
    original = getattr(type(connector), "log_metrics", None) if connector is not None else None
    if original is None:
        _warn_once("tap", "Prov4MLCallback: this Lightning version has no logger connector to read from; "
                          "values logged with self.log are not recorded (activities and files are)")
        return False
    listeners: list[Listener] | None = connector.__dict__.get(_ATTR)
    if listeners is None:
        listeners = []

        def log_metrics(metrics: Mapping[str, Any], step: int | None = None) -> None:
            if metrics:
                _dispatch(trainer, listeners, metrics, step, connector)
            original(connector, metrics, step)

        connector.__dict__[_ATTR] = listeners
        connector.log_metrics = log_metrics
    if listener not in listeners:
        listeners.append(listener)
    return True


def unlisten(trainer: Any, listener: Listener) -> None:
    """Stop calling ``listener``; the last one gone, the connector is as Lightning made it."""
    connector = getattr(trainer, "_logger_connector", None)
    listeners = connector.__dict__.get(_ATTR) if connector is not None else None
    if listeners is None:
        return
    if listener in listeners:
        listeners.remove(listener)
    if not listeners:
        connector.__dict__.pop(_ATTR, None)
        connector.__dict__.pop("log_metrics", None)


def resolve_step(trainer: Any, metrics: Mapping[str, Any], step: int | None) -> tuple[dict[str, Any], int]:
    """Lightning's rule (``_LoggerConnector.log_metrics``), without turning tensors into floats:
    an explicit ``step`` wins; else a logged ``step`` value is the x value and not a metric; else
    ``epoch`` (the current epoch) is added and the x value is the count of batches that stepped."""
    values = dict(metrics)
    if step is None:
        logged = values.pop("step", None)
        if logged is not None:
            step = int(logged)
        else:
            values.setdefault("epoch", trainer.current_epoch)
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
    return values, int(step)


def _dispatch(trainer: Any, listeners: list[Listener], metrics: Mapping[str, Any], step: int | None,
              connector: Any) -> None:
    # Input the user did not hand us never stops training: a failure here is reported, not raised.
    try:
        values, x = resolve_step(trainer, metrics, step)
        step_level = connector._first_loop_iter is not None  # Lightning's own on_step test
    except Exception as err:
        _warn_once("resolve", f"Prov4MLCallback: could not read the values Lightning logs ({err!r}); "
                              "they are not recorded")
        return
    for listener in list(listeners):
        try:
            listener(values, x, step_level)
        except Exception as err:
            log.exception("prov4ml: recording logged values failed")
            _warn_once(f"listener:{type(err).__name__}",
                       f"Prov4MLCallback: could not record the values logged at step {x} ({err!r}); "
                       "training goes on")


def _warn_once(key: str, message: str) -> None:
    if key not in _warned:
        _warned.add(key)
        warn(message, Prov4MLWarning)
