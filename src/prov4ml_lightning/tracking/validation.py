"""Input checks and the documented transformations applied to user-supplied names and values.

Every check names the public call it guards, so an error reads like
``log_metric("loss", "abc"): value must be a real number (int, float, NumPy scalar or 0-d tensor), got str``.
"""

from __future__ import annotations

import math
import re
import sys
from collections.abc import Mapping
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import torch

from prov4ml_lightning.context import Context
from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning, warn
from prov4ml_lightning.records import RUN_STATUSES

__all__ = [
    "MAX_KEY_LENGTH",
    "STEP_MAX",
    "STEP_MIN",
    "check_artifact_path",
    "check_context",
    "check_name",
    "check_status",
    "check_step",
    "check_timestamp",
    "flatten_params",
    "normalise_namespace",
    "param_text",
    "plain_json",
    "to_floats",
    "to_number",
]

MAX_KEY_LENGTH = 250  # names: MLflow's key limit (sinks.mlflow.sink.MAX_KEY_LENGTH)
_NAME_FORBIDDEN = ("/", "\\", "\x00")


def to_number(value: Any, call: str, key: str = "") -> float | int | torch.Tensor:
    """Return ``value`` as something the metric writer can turn into a float.

    ``call`` and ``key`` only name the call in an error message (built lazily: this is the hot path).

    0-d (or one-element) tensors are returned detached and still on their device: the
    conversion to a Python float, which forces a device sync, happens on the writer thread.
    """
    kind = type(value)
    if kind is float:
        return value
    if kind is int:
        if -_FLOAT_MAX_INT <= value <= _FLOAT_MAX_INT:
            return value
        raise _number_error(call, key, value, _TOO_LARGE)
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise _number_error(call, key, value, f"value must be a scalar, got a tensor of shape {tuple(value.shape)}")
        if value.is_complex() or value.dtype == torch.bool:
            raise _number_error(call, key, value, f"value must be a real number, got a {value.dtype} tensor")
        if value.requires_grad:  # keep no autograd graph alive in the buffer (a grad-free tensor has none)
            value = value.detach()
        return value if value.dim() == 0 else value.reshape(())
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray) and value.size == 1 and value.dtype.kind in "iuf":
        return value.item()
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float)):
        raise _number_error(
            call, key, value,
            f"value must be a real number (int, float, NumPy scalar or 0-d tensor), got {type(value).__name__}",
        )
    try:
        return float(value)  # int/float subclasses
    except OverflowError:
        raise _number_error(call, key, value, _TOO_LARGE) from None



def to_floats(values: list[Any]) -> list[float]:
    """Floats of values :func:`to_number` returned (numbers and detached 0-d tensors): one stack and
    one copy per device and dtype, so one device sync per group (one stack of mixed dtypes would
    round int64 values to float32)."""
    out: list[Any] = list(values)
    groups: dict[tuple[Any, Any], list[int]] = {}
    for i, value in enumerate(values):
        if type(value) is not float and isinstance(value, torch.Tensor):
            groups.setdefault((value.device, value.dtype), []).append(i)
        else:
            out[i] = float(value)
    for indices in groups.values():
        for i, number in zip(indices, torch.stack([values[i] for i in indices]).cpu().tolist()):
            out[i] = float(number)
    return out

#: the largest int a float holds (MLflow stores metric values as 64-bit floats); past it float() overflows
_FLOAT_MAX_INT = int(sys.float_info.max)
_TOO_LARGE = "value is too large for a 64-bit float, which is how MLflow (and the metrics CSV) store a metric"
#: MLflow stores steps as 64-bit integers
STEP_MIN, STEP_MAX = -(2**63), 2**63 - 1


def _number_error(call: str, key: str, value: Any, message: str) -> Prov4MLInputError:
    return Prov4MLInputError(f"{call}({key!r}, {_short_repr(value)}): {message}")


def _short_repr(value: Any) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def check_finite(value: float, what: str) -> bool:
    """Return whether ``value`` is finite, warning (not dropping) when it is NaN or infinite."""
    if math.isfinite(value):
        return True
    warn(
        f"{what} is {value!r}; the metrics CSV and PROV record it as is (PROV counts it in the series' "
        "non_finite_count); MLflow keeps NaN, but its database stores (SQLite, PostgreSQL, MySQL) turn "
        "inf into +-1.7976931348623157e308, the largest float.",
        Prov4MLWarning,
    )
    return False


def check_key(key: Any, call: str) -> str:
    """Check a metric or param key is a non-empty string."""
    if not isinstance(key, str) or not key.strip():
        raise Prov4MLInputError(f"{call}: key must be a non-empty string, got {key!r}")
    return key


def check_context(context: Any, call: str) -> Context:
    """Accept a :class:`Context` or its string value."""
    if type(context) is Context:
        return context
    try:
        return Context(context)
    except ValueError:
        allowed = ", ".join(c.name for c in Context)
        raise Prov4MLInputError(f"{call}: context must be a Context ({allowed}), got {context!r}") from None


def check_name(name: Any, call: str, what: str = "name") -> str:
    """Check a name that becomes a file or folder name: no separators, no ``..``, not empty."""
    if not isinstance(name, str) or not name.strip():
        raise Prov4MLInputError(f"{call}: {what} must be a non-empty string, got {name!r}")
    if any(ch in name for ch in _NAME_FORBIDDEN) or name in (".", "..") or ".." in name:
        raise Prov4MLInputError(
            f"{call}: {what} {name!r} must not contain path separators, NUL or '..' "
            "(it is used as a file and folder name)"
        )
    if len(name) > MAX_KEY_LENGTH:
        raise Prov4MLInputError(f"{call}: {what} must be at most {MAX_KEY_LENGTH} characters")
    return name


def normalise_namespace(namespace: Any, call: str = "start_run") -> str:
    """Turn the user's namespace into an absolute IRI ending in ``/`` or ``#``.

    A seed-style ``www.example.org`` gains ``http://``; ``https://x.org/ns`` gains ``/``.
    """
    if not isinstance(namespace, str) or not namespace.strip():
        raise Prov4MLInputError(f"{call}: prov_user_namespace must be a non-empty string, got {namespace!r}")
    iri = namespace.strip()
    usable = (f"{call}: prov_user_namespace {namespace!r} is not a usable IRI; expected e.g. 'www.example.org', "
              "'https://example.org/ns/' or 'urn:example:ns:'")
    scheme = re.match(r"([A-Za-z][A-Za-z0-9+.\-]*):", iri)
    opaque = scheme is not None and scheme.group(1).lower() in ("urn", "tag")
    if "://" not in iri and not opaque:
        if scheme is not None and not iri[scheme.end():][:1].isdigit():  # 'mailto:x', not 'localhost:8080/ns'
            raise Prov4MLInputError(f"{usable} (scheme {scheme.group(1)!r} names no namespace)")
        iri = "http://" + iri
    parts = urlsplit(iri)
    try:
        parts.port  # noqa: B018 - urlsplit checks the port only when asked
    except ValueError:
        raise Prov4MLInputError(f"{usable} (bad port)") from None
    bad = re.search(r"[\s<>\"{}|\\^`]", iri)
    if bad or not parts.scheme or (not opaque and not parts.netloc):
        raise Prov4MLInputError(usable)
    if "@" in parts.netloc:  # a user name or password would be copied into every document
        raise Prov4MLInputError(f"{usable} (no user name or password in it)")
    if not iri.endswith(("/", "#")):
        iri += "/"
    return iri


def flatten_params(params: Mapping[str, Any], call: str, prefix: str = "",
                   _open: frozenset[int] = frozenset()) -> dict[str, Any]:
    """Flatten nested mappings with ``/`` between levels; a mapping that contains itself is refused."""
    if not isinstance(params, Mapping):
        raise Prov4MLInputError(f"{call}: params must be a mapping, got {type(params).__name__}")
    inside = _open | {id(params)}
    flat: dict[str, Any] = {}
    for key, value in params.items():
        text = key if isinstance(key, str) else _text(key, call, f"a key under {prefix!r}")
        name = f"{prefix}{check_key(text, call)}"
        if isinstance(value, Mapping) and value:
            if id(value) in inside:
                raise Prov4MLInputError(f"{call}: param {name!r} contains itself (a dict holding itself); "
                                        "pass a value that can be written out")
            flat.update(flatten_params(value, call, prefix=f"{name}/", _open=inside))
        else:
            flat[name] = value
    return flat


def param_text(value: Any, call: str = "log_param", key: str = "") -> str:
    """The string MLflow stores for a param value; a value that cannot be written out (its ``str``
    raises, it contains itself) is a :class:`Prov4MLInputError` naming ``call`` and ``key``."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, (list, tuple, dict, set, frozenset)) and _contains_itself(value):
        raise Prov4MLInputError(f"{call}: param {key!r} contains itself (a {type(value).__name__} holding "
                                "itself); pass a value that can be written out")
    return _text(value, call, f"param {key!r}")


def plain_json(value: Any) -> bool:
    """Whether ``value`` is made of JSON's own types only (lists, dicts with string keys, strings,
    numbers, bools, ``None``): what PROV and the journal keep typed instead of as text."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return True
    if isinstance(value, (list, tuple)):
        return all(plain_json(x) for x in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and plain_json(x) for k, x in value.items())
    return False


def _text(value: Any, call: str, what: str) -> str:
    """``str(value)``; a ``__str__`` that raises (or recurses without end) is our error, not the user's."""
    try:
        return str(value)
    except Exception as err:  # the user's own exception, a RecursionError: never passed through
        raise Prov4MLInputError(f"{call}: {what}: str() of the {type(value).__name__} value failed "
                                f"({type(err).__name__}); pass a value that can be written out as text") from None


def _contains_itself(value: Any) -> bool:
    """Whether a list, tuple, dict or set holds itself at any depth (shared parts are fine)."""
    open_ids: set[int] = set()
    # depth-first without recursion: (container, iterator over its items); a container is "open" while
    # its items are walked, and meeting an open one again is a cycle
    stack = [(value, iter(value.values() if isinstance(value, dict) else value))]
    open_ids.add(id(value))
    while stack:
        container, items = stack[-1]
        for item in items:
            if isinstance(item, (list, tuple, dict, set, frozenset)):
                if id(item) in open_ids:
                    return True
                open_ids.add(id(item))
                stack.append((item, iter(item.values() if isinstance(item, dict) else item)))
                break
        else:
            stack.pop()
            open_ids.discard(id(container))
    return False


def check_status(status: Any, call: str = "end_run") -> str:
    """``status`` if a run can end with it (:data:`~prov4ml_lightning.records.RUN_STATUSES`)."""
    if status not in RUN_STATUSES:
        raise Prov4MLInputError(f"{call}(status={status!r}): status must be one of {', '.join(RUN_STATUSES)}")
    return status


def check_timestamp(timestamp: Any, call: str) -> int:
    """A timestamp in milliseconds since the epoch: an int (or an integral NumPy/tensor scalar) >= 0."""
    if isinstance(timestamp, bool) or type(timestamp).__name__ == "bool_" or not hasattr(timestamp, "__index__"):
        raise Prov4MLInputError(f"{call}: timestamp must be an int of milliseconds since the epoch, "
                                f"got {type(timestamp).__name__}")
    value = int(timestamp.__index__())
    if value < 0:
        raise Prov4MLInputError(f"{call}: timestamp must be >= 0 milliseconds since the epoch, got {value}")
    return value


def check_step(step: Any, call: str) -> int:
    """``step`` as an int: an int, or anything with ``__index__`` except a bool."""
    if isinstance(step, bool) or type(step).__name__ == "bool_":  # NumPy's bool has __index__ too
        raise Prov4MLInputError(f"{call}: step must be an int, got {type(step).__name__}")
    if not isinstance(step, int):
        if not hasattr(step, "__index__"):
            raise Prov4MLInputError(f"{call}: step must be an int, got {type(step).__name__}")
        step = step.__index__()
    if not STEP_MIN <= step <= STEP_MAX:
        raise Prov4MLInputError(f"{call}: step {step} is outside the 64-bit range MLflow stores steps in "
                                "(-2**63 to 2**63 - 1)")
    return int(step)


def check_artifact_path(artifact_path: str, call: str) -> str:
    """``artifact_path`` if it is a relative path that stays inside the run's artifacts."""
    parts = artifact_path.replace("\\", "/").split("/")
    if artifact_path.startswith(("/", "\\")) or ".." in parts or ":" in artifact_path:
        raise Prov4MLInputError(f"{call}: artifact_path {artifact_path!r} must be a relative path without '..'")
    return artifact_path
