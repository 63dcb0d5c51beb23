"""A model card of a run, from its provenance: Markdown with the Hugging Face model card YAML header.

The header holds ``library_name``, ``license`` (only with ``--license``), ``tags``, ``datasets``
(the training datasets' recorded names), ``model-index`` (the final value of each test metric,
per test dataset, with its fingerprint) and a ``prov4ml`` block (run id, PROV document, each
dataset's fingerprint and section). The body: intended use (left for the author), training data
(then the validation data), procedure (hyperparameters as recorded: a float stays a float,
epochs, early stopping, the checkpoint chosen and why), evaluation (the test data and metrics),
environment, how to load the model (its ``models:/`` URI) and a lineage summary. Every number
comes from the PROV document; the metric values are the last logged, as MLflow keeps them.

Written to standard output, or to ``--output FILE``. ``Prov4MLCallback(model_card=True)``
writes one at the end of a run and logs it as an artifact (``model_card/``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from prov4ml_lightning.cli._common import EXIT_OK, Scratch, add_run_argument, echo, resolve_prov_file

__all__ = ["HELP", "NAME", "add_arguments", "card_header", "model_card", "run"]

NAME = "card"
HELP = "a model card (Markdown, Hugging Face YAML header) of a run, generated from its provenance"

_TEST = "testing"
_PLURAL = {"activity": "activities", "entity": "entities"}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_run_argument(parser)
    parser.add_argument("--license", default=None, help="the license identifier for the header (e.g. apache-2.0)")
    parser.add_argument("--output", "-o", metavar="FILE", default=None, help="write the card here, not to stdout")


def _test_metrics(view: Any) -> dict[str, float]:
    """The last value of each test-context metric, under its MLflow key."""
    out = {}
    for m in view.metrics:
        if m.attrs.get("context") == _TEST and isinstance(m.attrs.get("last_value"), (int, float)):
            out[str(m.attrs.get("mlflow_key") or m.attrs.get("name"))] = float(m.attrs["last_value"])
    return dict(sorted(out.items()))


def _models(view: Any) -> list[Any]:
    latest: dict[str, Any] = {}
    for model in view.typed("Model"):
        name = str(model.attrs.get("name", model.label))
        if name not in latest or (model.attrs.get("version") or 0) > (latest[name].attrs.get("version") or 0):
            latest[name] = model
    return list(latest.values())


def _datasets(view: Any) -> dict[str, dict[str, Any]]:
    """Datasets by role (``train[0]``), each with its ``name`` (the recorded one, else its label)."""
    from prov4ml_lightning.cli._view import datasets_by_name

    # datasets_by_name keys view.typed("Dataset") in order: pair each with its record's label
    return {key: {"name": element.label, **attrs}
            for element, (key, attrs) in zip(view.typed("Dataset"), datasets_by_name(view).items())}


# where a dataset belongs: a dataloader's role (train, val, test, predict), else a declared dataset's context
_SECTIONS = {"train": "training", "training": "training", "val": "validation", "validation": "validation",
             "test": "evaluation", "testing": "evaluation", "evaluation": "evaluation", "predict": "prediction"}


def _section(dataset: dict[str, Any]) -> str:
    """``training``, ``validation``, ``evaluation``, ``prediction`` or ``other``."""
    return _SECTIONS.get(str(dataset.get("role") or dataset.get("context") or ""), "other")


def _of_section(datasets: dict[str, dict[str, Any]], section: str) -> dict[str, dict[str, Any]]:
    return {k: d for k, d in datasets.items() if _section(d) == section}


def _value(value: Any) -> str:
    """A recorded value as recorded: a float stays a float (``1.0``, not ``1``: to Lightning
    ``limit_train_batches=1`` is one batch, ``1.0`` all of them)."""
    from prov4ml_lightning.cli._view import fmt

    return repr(value) if isinstance(value, float) else fmt(value, 200)


def card_header(view: Any, license: str | None = None) -> dict[str, Any]:
    """The YAML header as a mapping: ``datasets`` names the training data only (the Hugging Face
    field's meaning); the test data appear in ``model-index``, every dataset under ``prov4ml``."""
    datasets = _datasets(view)
    models = _models(view)
    metrics = _test_metrics(view)
    tests = _of_section(datasets, "evaluation") or {"test": {}}
    header: dict[str, Any] = {"library_name": "pytorch"}
    if license:
        header["license"] = license
    header["tags"] = ["pytorch", "lightning" if view.typed("Fit") else "torch", "prov4ml-lightning", "provenance"]
    names = [str(d.get("name") or k) for k, d in _of_section(datasets, "training").items()]
    if names:
        header["datasets"] = list(dict.fromkeys(names))
    if metrics and models:
        results = []
        for key, data in tests.items():
            dataset = {"name": str(data.get("name") or key), "type": str(data.get("dataset_class") or "unknown")}
            if data.get("fingerprint"):
                dataset["fingerprint"] = str(data["fingerprint"])
            results.append({"task": {"type": "other", "name": "evaluation on the test data"}, "dataset": dataset,
                            "metrics": [{"type": k, "name": k, "value": v} for k, v in metrics.items()]})
        header["model-index"] = [{"name": str(m.attrs.get("name", m.label)), "results": results} for m in models]
    header["prov4ml"] = {
        "run_id": view.run_attr("run_id"), "run_name": view.run_attr("run_name"),
        "experiment": view.run_attr("experiment_name"), "prov_document": view.path.name,
        "datasets": [{"role": k, "section": _section(d), "name": str(d.get("name") or k),
                      "fingerprint": d.get("fingerprint"), "fingerprint_status": d.get("fingerprint_status")}
                     for k, d in datasets.items()],
    }
    return header


def _bullets(mapping: dict[str, Any]) -> list[str]:
    return [f"- `{k}`: {_value(v)}" for k, v in mapping.items()]


def _dataset_table(datasets: dict[str, dict[str, Any]]) -> list[str]:
    from prov4ml_lightning.cli._view import fmt

    out = ["| role | dataset | class | items | fingerprint | status |", "|---|---|---|---|---|---|"]
    for key, d in datasets.items():
        out.append(f"| {key} | {d.get('name', '')} | {d.get('dataset_class', '')} | {fmt(d.get('length'))} | "
                   f"`{d.get('fingerprint') or '-'}` | {d.get('fingerprint_status') or '-'} |")
    return out


def model_card(view: Any, license: str | None = None) -> str:
    """The card of the run ``view`` (a ``cli._view.RunView``) as Markdown text."""
    import yaml

    from prov4ml_lightning.cli._view import fmt, human_bytes

    header = card_header(view, license)
    models = _models(view)
    name = str(models[0].attrs.get("name", models[0].label)) if models else str(view.run_attr("run_name"))
    params = view.params
    out = ["---", yaml.safe_dump(header, sort_keys=False, allow_unicode=True).rstrip(), "---", "",
           f"# {name}", "",
           f"Model trained in run `{view.run_attr('run_id')}` ({view.run_attr('run_name')}) of experiment "
           f"`{view.run_attr('experiment_name')}`; this card was generated from its provenance "
           f"(`{view.path.name}`) by prov4ml-lightning.", ""]
    description = view.run_attr("description")
    if description:
        out += [str(description), ""]
    out += ["## Intended use", "", "<!-- For the author: what the model is for, who should use it, and what it must "
            "not be used for. Provenance cannot say. -->", "",
            "## Training data", ""]
    datasets = _datasets(view)
    training = _of_section(datasets, "training")
    out += _dataset_table(training) if training else ["No training dataset was recorded."]
    validation = _of_section(datasets, "validation")
    if validation:
        out += ["", "### Validation data", "", *_dataset_table(validation)]
    for section, title in (("prediction", "Prediction data"), ("other", "Other datasets")):
        if part := _of_section(datasets, section):
            out += ["", f"### {title}", "", *_dataset_table(part)]
    out += ["", "## Training procedure", ""]
    fits = view.typed("Fit")
    for fit in fits:
        a = fit.attrs
        out.append(f"- {fit.label}: {fmt(a.get('epochs_completed'))} epoch(s), {fmt(a.get('last_step'))} steps, "
                   f"status {a.get('status', '-')}")
        if a.get("stop_reason"):
            out.append(f"  - stopped early: {a.get('stop_reason')} on `{a.get('early_stopping_monitor')}` at epoch "
                       f"{fmt(a.get('stopped_epoch'))}" + (f" ({a['stop_message']})" if a.get("stop_message") else ""))
    stopping = {k: v for k, v in params.items() if k.startswith("early_stopping/")}
    if stopping:
        out += ["- early stopping settings:", *("  " + line for line in _bullets(stopping))]
    elif fits:
        out.append("- no early stopping")
    for model in models:
        best = model.attrs.get("best_checkpoint")
        if best:
            checkpoint = next((c for c in view.typed("Checkpoint") if c.label == best), None)
            ca = checkpoint.attrs if checkpoint else {}
            mode = params.get("checkpoint/mode") or params.get("checkpoint/0/mode")
            why = (f"the best `{ca.get('monitor')}` ({fmt(ca.get('score'))}, mode {mode or '-'}) of the checkpoints "
                   "ModelCheckpoint kept" if ca.get("monitor") else "the checkpoint ModelCheckpoint marked best")
            same = model.attrs.get("same_weights_as_best_checkpoint")
            out.append(f"- checkpoint chosen: `{best}` (epoch {fmt(ca.get('epoch'))}, "
                       f"step {fmt(ca.get('global_step'))}):"
                       f" {why}; the logged model {'holds' if same else 'does not hold'} its weights")
    out += ["", "### Hyperparameters", ""]
    out += _bullets({k: v for k, v in params.items() if not k.startswith("execution_")}) or ["None recorded."]
    out += ["", "## Evaluation", ""]
    metrics = _test_metrics(view)
    evaluation = _of_section(datasets, "evaluation")
    if evaluation:
        out += ["Evaluation data:", "", *_dataset_table(evaluation), ""]
    if metrics:
        tests = [d.get("name") or k for k, d in evaluation.items()]
        out += [f"On {', '.join(map(str, tests)) or 'the test data'} (last logged values):", "",
                "| metric | value |", "|---|---|"]
        out += [f"| {k} | {v:.6g} |" for k, v in metrics.items()]
    else:
        out.append("No test metric was recorded.")
    env = view.environment
    out += ["", "## Environment", ""]
    out += [f"- Python {env.get('python_version', '-')} ({env.get('python_implementation', '-')}), "
            f"torch {env.get('torch_version', '-')}, Lightning {env.get('lightning_version', '-')}, "
            f"MLflow {env.get('mlflow_version', '-')}",
            f"- {env.get('platform', '-')}; {env.get('cpu_model', '-')} ({env.get('cpu_count', '-')} CPUs), "
            f"{human_bytes(env.get('ram_bytes'))} RAM, {env.get('gpu_count', 0)} GPU(s)",
            f"- {env.get('packages_count', '-')} packages (`{env.get('packages_file', '-')}`)"]
    code = view.code
    if code.get("git_commit"):
        out.append(f"- code: commit `{code['git_commit']}`" + (f" of {code['git_remote']}" if code.get("git_remote")
                                                               else "") + (" with uncommitted changes (recorded diff)"
                                                                           if code.get("git_dirty") else ""))
    out += ["", "## How to load", ""]
    for model in models:
        uri = model.attrs.get("model_uri")
        if uri:
            tracking = str(view.run_attr("tracking_uri"))
            out += ["```python", "import mlflow", "", f"mlflow.set_tracking_uri({tracking!r})",
                    f"model = mlflow.pytorch.load_model({str(uri)!r})", "```", "",
                    f"`state_dict` sha256 of `{model.attrs.get('name')}` v{model.attrs.get('version')}: "
                    f"`{model.attrs.get('state_dict_sha256', '-')}`", ""]
    if not any(m.attrs.get("model_uri") for m in models):
        out += ["No model was logged.", ""]
    out += ["## Lineage", ""]
    kinds: dict[str, int] = {}
    for e in view.elements:
        kinds[e.kind] = kinds.get(e.kind, 0) + 1
    counts = ", ".join(f"{n} {_PLURAL.get(k, k + 's')}" for k, n in sorted(kinds.items()))
    out.append(f"- the PROV document holds {counts} and "
               f"{len(view.relations)} relations")
    for rel in ("Fit", "TestLoop", "Checkpoint", "Dataset", "Model"):
        found = view.typed(rel)
        if found:
            out.append(f"- {rel}: {', '.join(e.label for e in found[:6])}" + (" ..." if len(found) > 6 else ""))
    reproduces = view.run_attr("reproduces")
    if reproduces:
        out.append(f"- this run reproduces run `{reproduces}`")
    out.append(f"- full graph: `prov4ml render {view.path.name}`")
    return "\n".join(out) + "\n"


def run(args: argparse.Namespace, scratch: Scratch) -> int:
    from prov4ml_lightning.cli._view import RunView

    view = RunView.load(resolve_prov_file(args.run, args.tracking_uri, scratch))
    text = model_card(view, args.license)
    if args.output:
        Path(args.output).write_text(text, encoding="utf-8")
        echo(f"model card written to {args.output}")
    else:
        echo(text.rstrip("\n"))
    return EXIT_OK
