"""A run as one shareable package: an RO-Crate (https://w3id.org/ro/crate/1.1) built with the
``rocrate`` library (extra ``rocrate``) from the run's PROV-JSON document and the files beside it.

The crate follows the Process Run Crate profile (https://w3id.org/ro/wfrun/process/0.5): one
``CreateAction`` per stage of the run that consumed data (each ``Trainer.fit``; each stand-alone
test, validate or predict loop: :mod:`.rocrate_actions`), and one for the run itself when its
session used or made something outside them (the functional API: the only one). Each has the
script as ``instrument``, the person as ``agent``, start and end time and status; what the stage
and its parts used as ``object`` (data sets, hyperparameters, the checkpoint a test loaded, the
package list and uncommitted code diff) and what they produced as ``result`` (checkpoints, model,
final metric values), so the test set is an object of the test only, never of the action whose
result is the model. A last ``CreateAction`` is prov4ml-lightning writing the PROV files. The
Workflow Run and Provenance Run Crate profiles describe a workflow of tool steps, which a training
script is not, so they are not claimed.

Files copied into the crate: the PROV document and its renders (SVG, HTML, DOT), the metrics CSV,
the package list, the code diff, the entry script when its bytes still match the recorded sha256,
and (``include_checkpoints``) every checkpoint whose bytes still match. Every copied file carries
its ``sha256`` and ``contentSize``; a file whose bytes differ from the hash the PROV document
recorded is an error (the crate would contradict its own provenance). Checkpoints left out and the
MLflow models are data entities all the same (in the root's ``hasPart``), with local identifiers
(``#checkpoint-...``, ``#model-...``: described, not included), their recorded hashes and sizes, and
for a model its MLflow URI; never a ``file:`` URL of the machine that recorded them.
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning, warn
from prov4ml_lightning.provenance.rocrate_actions import STAGES, ActionPlan, plan_actions
from prov4ml_lightning.provenance.rocrate_input import RunDocument, attr_types, attr_value, read_run
from prov4ml_lightning.provenance.rocrate_sections import RO_CRATE_VERSION, CrateBuilder

__all__ = ["PROCESS_RUN_CRATE", "RO_CRATE_VERSION", "write_rocrate"]

PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
_WFRUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"
_SPDX = "https://spdx.org/licenses/"
_STATUS = {"FINISHED": "CompletedActionStatus", "FAILED": "FailedActionStatus", "KILLED": "FailedActionStatus"}


def _license_entity(builder: CrateBuilder, license_id: str) -> Any:
    url = license_id if "://" in license_id else _SPDX + license_id
    name = license_id.rstrip("/").rsplit("/", 1)[-1]
    return builder.context(url, {"@type": "CreativeWork", "name": name, "identifier": url})


def write_rocrate(prov_file: str | os.PathLike[str], out: str | os.PathLike[str], *, license: str | None = None,
                  include_checkpoints: bool = False, name: str | None = None) -> Path:
    """Write the run whose PROV-JSON document is ``prov_file`` as an RO-Crate in folder ``out``
    (or a zip file when ``out`` ends in ``.zip``).

    Args:
        prov_file: ``provgraph_<run_id>.json``; the files it names are looked up beside it.
        out: a new or empty folder, or a ``.zip`` path.
        license: SPDX identifier (``CC-BY-4.0``) or URL of the license the crate is shared under;
            without one the crate has none (a warning says so: repositories ask for one).
        include_checkpoints: copy the checkpoints whose bytes still match their recorded sha256.
        name: the crate's name (default: run name and experiment).

    Returns:
        The folder or zip file written.

    Raises:
        ModuleNotFoundError: the ``rocrate`` package is missing (``pip install prov4ml-lightning[rocrate]``).
        Prov4MLInputError: ``prov_file`` is not a prov4ml-lightning document, ``out`` is not empty,
            or a file's bytes differ from the hash the document recorded.
    """
    try:
        import rocrate  # noqa: F401
    except ModuleNotFoundError as err:
        raise ModuleNotFoundError("`export --format rocrate` needs the rocrate package: "
                                  "pip install 'prov4ml-lightning[rocrate]'") from err
    prov_file, out = Path(prov_file), Path(out)
    as_zip = out.suffix == ".zip"
    if (as_zip and out.exists()) or (not as_zip and out.exists() and (not out.is_dir() or any(out.iterdir()))):
        raise Prov4MLInputError(f"`export --format rocrate -o {out}`: {out} exists and is not an empty folder; "
                                "name a new folder (or a new .zip file)")
    run = read_run(prov_file)
    b = CrateBuilder(run, prov_file, include_checkpoints)
    crate, attrs = b.crate, run.attrs
    run_name = str(attr_value(attrs.get("p4l:run_name")) or run.run_id)
    experiment = attr_value(attrs.get("p4l:experiment_name"))

    persons, software = b.people()
    prov_entities = b.prov_files()
    side = b.side_files()
    script, diff = b.code()
    env = b.environment(script, software)
    inputs = b.inputs()
    ckpts = b.checkpoints()
    models = b.models(ckpts)
    metrics = b.final_metrics()
    # the code's uncommitted changes and the package list describe what every action ran: objects of each
    ran_with = {k for k, a in run.entities.items() if k in side and attr_types(a) & {"p4l:PackageList", "p4l:CodeDiff"}}
    always = [*([diff] if diff is not None else []), *(side[k] for k in ran_with)]
    metrics_files = [side[k] for k, a in run.entities.items() if k in side and "p4l:MetricsFile" in attr_types(a)]
    produced = {**{k: v for k, v in side.items() if k not in ran_with}, **ckpts, **models}

    plans = plan_actions(run)
    staged = any(plan.activity for plan in plans)
    actions = []
    for plan in plans:
        objects = [inputs.get(k) or produced[k] for k in plan.inputs if k in inputs or k in produced]
        results = [produced[k] for k in plan.results if k in produced
                   and not (staged and plan.activity is None and produced[k] in metrics_files)]
        results += [metrics[k] for k in plan.series if k in metrics]
        if plan.activity is None and staged and not objects and not results:
            continue  # the session only ran the stages
        objects = list({o.id: o for o in always + objects}.values())  # once each (the diff is a side file too)
        actions.append(_action(crate, run, plan, script, objects, results, persons, env))
    if env:
        crate.metadata.extra_contexts.append(_WFRUN_CONTEXT)
    if software is not None:
        record = crate.add_action(software, identifier=f"#record-{run.run_id}", result=prov_entities + metrics_files,
                                  properties={"@type": "CreateAction", "name": "record the run's provenance",
                                              "description": "prov4ml-lightning wrote the W3C PROV document of "
                                                             "the run (its actions above) and the file of its "
                                                             "metric points"})
        _times(record, run.attrs)
        record["actionStatus"] = "http://schema.org/CompletedActionStatus"
        if persons:
            record["agent"] = persons[0] if len(persons) == 1 else persons
        actions.append(record)

    root = crate.root_dataset
    root["name"] = name or (f"{run_name} ({experiment})" if experiment else run_name)
    root["description"] = (f"Training run {run_name} (MLflow run {run.run_id}) with its W3C PROV provenance, "
                           "metrics, code and environment, exported by prov4ml-lightning.")
    root["datePublished"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    root["mentions"] = actions[0] if len(actions) == 1 else actions
    if persons:
        root["author"] = persons[0] if len(persons) == 1 else persons
    if license:
        root["license"] = _license_entity(b, license)
    else:
        warn("`export --format rocrate`: no license given (--license SPDX-ID); the crate has none and "
             "repositories such as Zenodo and WorkflowHub will ask for one", Prov4MLWarning)
    profile = b.context(PROCESS_RUN_CRATE, {"@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"})
    root["conformsTo"] = profile

    if as_zip:
        out.parent.mkdir(parents=True, exist_ok=True)
        crate.write_zip(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        crate.write(out)
    return out


def _action(crate: Any, run: RunDocument, plan: ActionPlan, instrument: Any, objects: list[Any], results: list[Any],
            persons: list[Any], env: list[Any]) -> Any:
    """The CreateAction of one stage (or of the run: ``plan.activity`` None)."""
    attrs = plan.attrs
    run_name = str(attr_value(run.attrs.get("p4l:run_name")) or run.run_id)
    status = str(attr_value(attrs.get("p4l:status")) or "")
    if plan.activity is None:
        ident, name = f"#run-{run.run_id}", f"training run {run_name}"
        props: dict[str, Any] = {"identifier": run.run_id, "description": str(
            attr_value(attrs.get("p4l:description")) or f"MLflow run {run.run_id}")}
    else:
        local = plan.activity.rsplit(f"run_{run.run_id}.", 1)[-1]
        kind = next((t.split(":", 1)[1] for t in sorted(attr_types(attrs)) if t in STAGES), "stage")
        ident, name = f"#run-{run.run_id}-{local}", f"{attr_value(attrs.get('prov:label')) or local} of run {run_name}"
        props = {"identifier": local, "description": f"{kind} {local} of MLflow run {run.run_id}"}
    props.update({"@type": "CreateAction", "name": name,
                  # a plain IRI, as the profile's examples and rules have it
                  "actionStatus": f"http://schema.org/{_STATUS.get(status, 'ActiveActionStatus')}"})
    if status == "FAILED" and attr_value(attrs.get("p4l:error")):
        props["error"] = str(attr_value(attrs.get("p4l:error")))
    action = crate.add_action(instrument, identifier=ident, object=objects or None, result=results or None,
                              properties=props)
    _times(action, attrs)
    if persons:
        action["agent"] = persons[0] if len(persons) == 1 else persons
    if env:
        action["environment"] = env
    return action


def _times(action: Any, attrs: dict[str, Any]) -> None:
    """``startTime`` and ``endTime`` from the activity's, to the millisecond (the profile's format:
    ``2024-01-01T12:00:00.123+00:00``)."""
    for src, dst in (("prov:startTime", "startTime"), ("prov:endTime", "endTime")):
        value = attr_value(attrs.get(src))
        if value:
            when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
            action[dst] = when.astimezone(timezone.utc).isoformat(timespec="milliseconds")
