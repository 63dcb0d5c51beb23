"""A run's PROV document read back as the questions ``show`` and ``diff`` ask of it.

Records are found by their ``p4l:`` type (``p4l:Run``, ``p4l:Parameter``, ``p4l:Dataset``, ...),
never by identifier patterns, and every part is optional: a document written before a kind of
record existed simply has none of it.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any

from prov4ml_lightning.cli._common import CliError
from prov4ml_lightning.errors import Prov4MLError
from prov4ml_lightning.provenance import Element, Relation, flatten, load_document

__all__ = ["RunView", "datasets_by_name", "final_metrics", "final_weights", "fmt", "human_bytes", "initial_weights",
           "join", "metric_direction", "table"]

# Metric names where smaller is better; anything else is taken as larger-is-better.
# Names whose best value has a known direction; anything else (learning rates, system and carbon readings,
# execution times, epochs, FLOPs) has no "best". Matched on the last path segment, as words.
_NO_DIRECTION = re.compile(r"^(rank\d+/)?((system|execution_time|lr)\b|lr[-_]|(epoch|step|\w*flops|cpu_usage|"
                           r"memory_usage|disk_usage|gpu_usage|gpu_memory_usage|emissions|emissions_rate|"
                           r"\w*_power|\w*_energy|energy_consumed)$)", re.I)
_MIN_BEST = re.compile(r"loss|err(or)?|mse|mae|rmse|nll|perplex|wer|cer|bpd|distance|xent|cross_?entropy|"
                       r"(^|_)ce(_|$)", re.I)
_MAX_BEST = re.compile(r"acc(uracy)?|f1|precision|recall|auc|auroc|iou|dice|bleu|rouge|r2|top\d|map\b|score", re.I)


def metric_direction(metric: str) -> str | None:
    """``"min"`` or ``"max"``, where the "best" value of ``metric`` is known to be its minimum (losses,
    errors) or its maximum (accuracy, F1, AUC...); ``None`` for a metric with no better direction."""
    if _NO_DIRECTION.search(metric):
        return None
    last = metric.rsplit("/", 1)[-1]
    if _MIN_BEST.search(last):
        return "min"
    if _MAX_BEST.search(last):
        return "max"
    return None


def fmt(value: Any, limit: int = 60) -> str:
    """A value for a terminal table: floats with 6 significant digits, long text shortened."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return str(value) if math.isnan(value) or math.isinf(value) else f"{value:.6g}"
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    text = str(value).replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "\u2026"


def table(rows: Sequence[Sequence[Any]], indent: int = 2) -> list[str]:
    """Left-aligned columns, two spaces apart."""
    cells = [[fmt(c) if not isinstance(c, str) else c for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells if i < len(row)) for i in range(max(map(len, cells), default=0))]
    return [" " * indent + "  ".join(c.ljust(widths[i]) for i, c in enumerate(row)).rstrip() for row in cells]


def human_bytes(n: Any) -> str:
    """``17179869184`` -> ``16.0 GiB``."""
    try:
        value = float(n)
    except (TypeError, ValueError):
        return str(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return str(n)


@dataclass
class RunView:
    """One PROV document, with the run's parts picked out by type."""

    path: Path
    elements: list[Element]
    relations: list[Relation]

    @classmethod
    def load(cls, path: Path) -> RunView:
        """Read ``path``; a missing or malformed file is a :class:`CliError` (exit status 2)."""
        try:
            doc = load_document(path)
        except Prov4MLError as err:
            raise CliError(str(err)) from err
        elements, relations = flatten(doc)
        return cls(Path(path), elements, relations)

    # -- records by type ---------------------------------------------------------------
    def typed(self, local: str) -> list[Element]:
        return [e for e in self.elements if e.has_type(local)]

    @cached_property
    def run(self) -> Element | None:
        runs = self.typed("Run")
        if runs:
            return runs[0]
        activities = [e for e in self.elements if e.kind == "activity"]
        return activities[0] if activities else None

    def run_attr(self, name: str) -> Any:
        return self.run.attrs.get(name) if self.run else None

    @cached_property
    def params(self) -> dict[str, Any]:
        return {str(p.attrs.get("name", p.label)): p.attrs.get("prov:value") for p in self.typed("Parameter")}

    @property
    def seed(self) -> Any:
        seed = self.run_attr("seed")
        return seed if seed is not None else self.params.get("seed")

    @property
    def metrics(self) -> list[Element]:
        return self.typed("MetricSeries")

    @property
    def agents(self) -> list[Element]:
        return [e for e in self.elements if e.kind == "agent"]

    def one(self, local: str) -> dict[str, Any]:
        """Attributes of the (first) record of type ``local``, or ``{}``."""
        found = self.typed(local)
        return dict(found[0].attrs) if found else {}

    @property
    def code(self) -> dict[str, Any]:
        return self.one("Code")

    @property
    def environment(self) -> dict[str, Any]:
        return self.one("Environment")

    @property
    def command_line(self) -> Any:
        return self.environment.get("command_line")

    @property
    def environment_variables(self) -> dict[str, Any]:
        """The selected environment variables the run recorded (``env_<NAME>``), by name."""
        return {k.removeprefix("env_"): v for k, v in self.environment.items() if k.startswith("env_")}

    @property
    def duration(self) -> float | None:
        if self.run and self.run.start and self.run.end:
            return (self.run.end - self.run.start).total_seconds()
        return None

    def sibling(self, name: Any) -> Path | None:
        """A file the document names (``series_file``, ``packages_file``), looked up next to it."""
        if not name:
            return None
        path = Path(str(name))
        return path if path.is_absolute() else self.path.parent / path

    @cached_property
    def packages(self) -> dict[str, str] | None:
        """``{name: version}`` from the environment's packages file; ``None`` when there is none."""
        from prov4ml_lightning.capture.environment import read_lock

        path = self.sibling(self.environment.get("packages_file"))
        if path is None or not path.is_file():
            return None
        lock = read_lock(path.read_text(encoding="utf-8", errors="replace"))
        # a distribution from a URL (VCS commit, local folder, archive) is known by its URL too
        return {key: p["version"] if p["source"] == "index" else f"{p['version']} ({p['requirement']})"
                for key, p in lock.items()}

    @property
    def hardware(self) -> dict[str, Any]:
        env = self.environment
        keys = ["hostname", "platform", "cpu_model", "cpu_count", "ram_bytes"]
        keys += sorted(k for k in env if k.startswith(("gpu", "cuda")))
        return {k: env[k] for k in keys if k in env}

    def title(self) -> str:
        name = self.run_attr("run_name") or (self.run.label if self.run else self.path.name)
        run_id = self.run_attr("run_id")
        return f"{name} ({run_id})" if run_id else str(name)


def datasets_by_name(view: RunView) -> dict[str, dict[str, Any]]:
    """Datasets keyed by where they were used (``train[0]``, ``val[0]``), else by name or label.

    Keying by role, not by content, is what lets ``diff`` report a changed fingerprint rather
    than one dataset removed and another added.
    """
    out: dict[str, dict[str, Any]] = {}
    for e in view.typed("Dataset"):
        role, index = e.attrs.get("role"), e.attrs.get("dataloader_index")
        if role is not None:
            key = f"{role}[{index}]" if index is not None else str(role)
        else:
            key = str(e.attrs.get("name") or e.label)
        while key in out:
            key += "'"
        out[key] = dict(e.attrs)
    return out


def initial_weights(view: RunView) -> dict[str, Any]:
    """``state_dict_sha256`` (``None`` when not recorded) of the weights each fit started from
    (the ``ModelState`` it used: fresh, or restored from a checkpoint), keyed by the fit's label."""
    states = {e.ident: e for e in view.typed("ModelState")}
    fits = {e.ident: e for e in view.typed("Fit")}
    out: dict[str, Any] = {}
    for rel in view.relations:
        if rel.name == "used" and rel.subject in fits and rel.obj in states:
            out[fits[rel.subject].label] = states[rel.obj].attrs.get("state_dict_sha256")
    return out


def final_weights(view: RunView) -> dict[str, Any]:
    """``state_dict_sha256`` of each logged model's latest version, keyed by the model's name."""
    latest: dict[str, Element] = {}
    for model in view.typed("Model"):
        name = str(model.attrs.get("name", model.label))
        version = model.attrs.get("version")
        held = latest.get(name)
        if held is None or (isinstance(version, int) and version > (held.attrs.get("version") or 0)):
            latest[name] = model
    return {name: m.attrs.get("state_dict_sha256") for name, m in latest.items()}


def final_metrics(view: RunView) -> dict[tuple[str, str], Element]:
    """Metric series keyed by ``(context, name)``."""
    return {(str(m.attrs.get("context", "")), str(m.attrs.get("name", m.label))): m for m in view.metrics}


def join(parts: Iterable[Any], sep: str = " \u00b7 ") -> str:
    return sep.join(str(p) for p in parts if p not in (None, ""))
