"""Print a summary of one run's provenance: the run, its status and duration, who ran it where,
the code, the data, the hyperparameters, the final and best value of each metric per context,
the checkpoints, the model and the files.

"best" is the minimum for metrics whose name says smaller is better (loss, error, mse, mae, ...),
the maximum for those whose name says larger is better (accuracy, F1, AUC, ...), and not given
for any other (learning rates, system and carbon readings, times: no direction is better).
"""

from __future__ import annotations

import argparse
import math
from collections import defaultdict
from typing import Any

from prov4ml_lightning.cli._common import EXIT_OK, Scratch, add_run_argument, echo, resolve_prov_file
from prov4ml_lightning.cli._view import RunView, datasets_by_name, fmt, human_bytes, join, metric_direction, table

__all__ = ["HELP", "NAME", "add_arguments", "run", "summary"]

NAME = "show"
HELP = "summarise a run: status, who/where, code, data, hyperparameters, metrics, checkpoints, model"
_MAX_CHECKPOINTS = 8


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    view = RunView.load(resolve_prov_file(args.run, args.tracking_uri, scratch))
    for line in summary(view):
        echo(line)
    return EXIT_OK


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "-"
    minutes, sec = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    if hours:
        return f"{hours}h {minutes:02d}m {sec:04.1f}s"
    return f"{minutes}m {sec:04.1f}s" if minutes else f"{sec:.1f}s"


def summary(view: RunView) -> list[str]:
    """The lines ``prov4ml show`` prints."""
    lines: list[str] = []
    add = lines.append
    run, env, code = view.run, view.environment, view.code
    head: list[tuple[str, Any]] = [
        ("Run", view.title()),
        ("Experiment", view.run_attr("experiment_name")),
        ("Status", view.run_attr("status")),
        ("Started", run.start if run else None),
        ("Duration", _duration(view.duration)),
        ("Description", view.run_attr("description")),
        ("Who", join(a.label for a in view.agents)),
        ("Where", join([env.get("hostname"), env.get("platform")])),
        ("Hardware", join([env.get("cpu_model"), f"{env['cpu_count']} CPUs" if env.get("cpu_count") else "",
                           f"{human_bytes(env['ram_bytes'])} RAM" if env.get("ram_bytes") else "",
                           *(f"{k}={fmt(v, 40)}" for k, v in view.hardware.items() if k.startswith("gpu"))])),
        ("Software", join(f"{name} {env[key]}" for name, key in (
            ("Python", "python_version"), ("torch", "torch_version"), ("lightning", "lightning_version"),
            ("mlflow", "mlflow_version")) if env.get(key))),
        ("Code", join([_tail(code["script_path"], 60) if code.get("script_path") else "", _commit(code)])),
        ("Seed", view.seed),
        ("Tracking", view.run_attr("tracking_uri")),
    ]
    lines.extend(table([(k + ":", fmt(v, 100)) for k, v in head if v not in (None, "", "-")], indent=0))

    datasets = datasets_by_name(view)
    if datasets:
        add("")
        add("Data")
        lines.extend(table([(name, fmt(d.get("dataset_class"), 40),
                             f"{d['length']} samples" if d.get("length") is not None else "",
                             f"batch {d['batch_size']}" if d.get("batch_size") is not None else "",
                             f"fingerprint {str(d['fingerprint'])[:16]}" if d.get("fingerprint") else "")
                            for name, d in datasets.items()]))

    if view.params:
        add("")
        add(f"Hyperparameters ({len(view.params)})")
        lines.extend(table([(k, fmt(v, 80)) for k, v in sorted(view.params.items())]))

    epochs, loops = len(view.typed("TrainingEpoch")), len(view.typed("ValidationLoop"))
    if epochs or loops:
        add("")
        add(f"Epochs: {epochs} training, {loops} validation loops")

    lines.extend(_early_stopping(view))
    lines.extend(_metrics(view))
    lines.extend(_checkpoints(view))
    lines.extend(_model_versions(view))

    models = view.typed("Model")
    if models:
        add("")
        add("Model")
        lines.extend(table([(m.label, f"{int(m.attrs['total_params']):,} params" if m.attrs.get("total_params") else "",
                             fmt(m.attrs.get("model_class"), 50), fmt(m.attrs.get("model_uri"), 60))
                            for m in models]))
    lines.extend(_files(view))
    return lines


def _commit(code: dict[str, Any]) -> str:
    commit = code.get("git_commit")
    if not commit:
        return ""
    extra = join([code.get("git_branch"), "dirty" if str(code.get("git_dirty")).lower() == "true" else ""], ", ")
    return f"git {str(commit)[:12]}" + (f" ({extra})" if extra else "")


def _metrics(view: RunView) -> list[str]:
    by_context: dict[str, list[Any]] = defaultdict(list)
    for m in view.metrics:
        by_context[str(m.attrs.get("context", "-"))].append(m)
    if not by_context:
        return []
    rows: list[tuple[Any, ...]] = [("context", "metric", "final", "best", "points", "steps")]
    for context in sorted(by_context):
        for m in sorted(by_context[context], key=lambda e: str(e.attrs.get("name", e.label))):
            a = m.attrs
            name = str(a.get("name", m.label))
            direction = metric_direction(name)
            best = a.get(f"{direction}_value") if direction else None
            steps = f"{a.get('first_step')}-{a.get('last_step')}" if a.get("first_step") is not None else "-"
            rows.append((context, fmt(name, 40), fmt(a.get("last_value")),
                         f"{fmt(best)} ({direction})" if best is not None else "-",
                         fmt(a.get("count")), steps))
    return ["", "Metrics (final and best per context)", *table(rows)]


def _early_stopping(view: RunView) -> list[str]:
    """EarlyStopping's decision, per fit that it stopped (``early_stopping_state`` in the callback)."""
    lines = []
    for fit in (e for e in view.typed("Fit") if e.attrs.get("stop_reason")):
        a = fit.attrs
        what = join([f"after epoch {a['stopped_epoch']}" if a.get("stopped_epoch") is not None else "",
                     f"monitoring {a['early_stopping_monitor']}" if a.get("early_stopping_monitor") else "",
                     f"best {fmt(a['early_stopping_best_score'])}" if _finite(a.get("early_stopping_best_score"))
                     else ""], ", ")
        lines.append(f"Early stopping ({fit.label}): {a['stop_reason']}" + (f", {what}" if what else ""))
        if a.get("stop_message"):
            lines.append(f"  {fmt(a['stop_message'], 120)}")
    return ["", *lines] if lines else []


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False


def _tail(value: Any, limit: int) -> str:
    """A long path shortened at its start, keeping the end that tells files apart."""
    text = "-" if value is None else str(value)
    return text if len(text) <= limit else "\u2026" + text[-(limit - 1):]


def _step(checkpoint: Any) -> tuple[int, str]:
    try:
        return int(checkpoint.attrs.get("global_step")), checkpoint.label
    except (TypeError, ValueError):
        return -1, checkpoint.label


def _checkpoints(view: RunView) -> list[str]:
    checkpoints = sorted(view.typed("Checkpoint"), key=_step)  # in the order they were saved
    if not checkpoints:
        return []
    shown = checkpoints
    if len(checkpoints) > _MAX_CHECKPOINTS:
        best = [c for c in checkpoints if str(c.attrs.get("best")).lower() == "true"]
        rest = [c for c in checkpoints if c not in best][-max(_MAX_CHECKPOINTS - len(best), 1):]
        shown = sorted([*best, *rest], key=_step)
    rows = [(c.label, f"{c.attrs.get('monitor', 'score')} {fmt(c.attrs.get('score'))}" if "score" in c.attrs else "",
             "best" if str(c.attrs.get("best")).lower() == "true" else "",
             f"sha256 {str(c.attrs.get('sha256', ''))[:12]}" if c.attrs.get("sha256") else "",
             _tail(c.attrs.get("path"), 70)) for c in shown]
    more = len(checkpoints) - len(shown)
    return ["", f"Checkpoints ({len(checkpoints)}{f', best and last {len(shown)} shown' if more else ''})",
            *table(rows)]


def _model_versions(view: RunView) -> list[str]:
    """Every version ``save_model_version`` (or a ``ModelVersioningLogger``) saved, in step order."""
    versions = view.typed("Model_version")
    if not versions:
        return []

    def order(v: Any) -> tuple[float, str]:
        step = v.attrs.get("step")
        return (float(step) if _finite(step) else math.inf, v.label)

    rows = [(v.label, fmt(v.attrs.get("model_name"), 30),
             f"step {v.attrs['step']}" if v.attrs.get("step") is not None else "",
             f"weights {str(v.attrs['state_dict_sha256'])[:12]}" if v.attrs.get("state_dict_sha256") else "",
             _tail(v.attrs.get("path"), 70)) for v in sorted(versions, key=order)]
    return ["", f"Model versions ({len(versions)})", *table(rows)]


def _files(view: RunView) -> list[str]:
    """The document, every file a record names in a ``*_file`` attribute, and the artifacts."""
    rows: list[tuple[str, str]] = [("PROV", str(view.path))]
    seen = {view.path}
    for element in view.elements:
        for key, name in element.attrs.items():
            path = view.sibling(name) if key.endswith("_file") and isinstance(name, str) else None
            if path is not None and path not in seen:
                seen.add(path)
                rows.append((key[: -len("_file")], f"{path}" + ("" if path.is_file() else "  (missing)")))
    for art in view.typed("Artifact"):
        rows.append(("artifact", join([fmt(art.attrs.get("path") or art.label, 70),
                                       f"sha256 {str(art.attrs.get('sha256', ''))[:12]}" if art.attrs.get("sha256")
                                       else ""], "  ")))
    return ["", "Files", *table(rows)]
