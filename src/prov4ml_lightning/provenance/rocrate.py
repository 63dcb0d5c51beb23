"""A run as one shareable package: an RO-Crate (https://w3id.org/ro/crate/1.1) built with the
``rocrate`` library (extra ``rocrate``) from the run's PROV-JSON document and the files beside it.

The crate follows the Process Run Crate profile (https://w3id.org/ro/wfrun/process/0.5): one
``CreateAction`` for the training run (its script as ``instrument``, the person as ``agent``,
start and end time, status), what it used as ``object`` (data sets, hyperparameters, the
uncommitted code diff) and what it produced as ``result`` (metrics file, checkpoints, model, final
metric values), and a second ``CreateAction`` for prov4ml-lightning writing the PROV files. The
Workflow Run and Provenance Run Crate profiles describe a workflow of tool steps, which a training
script is not, so they are not claimed.

Files copied into the crate: the PROV document and its renders (SVG, HTML, DOT), the metrics CSV,
the package list, the code diff, the entry script when its bytes still match the recorded sha256,
and (``include_checkpoints``) every checkpoint whose bytes still match. Every copied file carries
its ``sha256`` and ``contentSize``; a file whose bytes differ from the hash the PROV document
recorded is an error (the crate would contradict its own provenance). Checkpoints left out and the
MLflow model are referenced (``url``) with their recorded hashes.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning

__all__ = ["PROCESS_RUN_CRATE", "RO_CRATE_VERSION", "write_rocrate"]

RO_CRATE_VERSION = "1.1"
PROCESS_RUN_CRATE = "https://w3id.org/ro/wfrun/process/0.5"
_WFRUN_CONTEXT = "https://w3id.org/ro/terms/workflow-run/context"
_SPDX = "https://spdx.org/licenses/"
_STATUS = {"FINISHED": "CompletedActionStatus", "FAILED": "FailedActionStatus", "KILLED": "FailedActionStatus"}
_RENDERS = (".json", ".svg", ".html", ".dot", ".provn", ".ttl", ".xml", ".jsonld")
_FORMATS = {".json": "application/json", ".svg": "image/svg+xml", ".html": "text/html", ".dot": "text/vnd.graphviz",
            ".provn": "text/provenance-notation", ".ttl": "text/turtle", ".xml": "application/xml",
            ".jsonld": "application/ld+json", ".csv": "text/csv", ".txt": "text/plain", ".patch": "text/x-diff",
            ".py": "text/x-python", ".ckpt": "application/octet-stream"}
_CASTS = {"xsd:int": int, "xsd:long": int, "xsd:integer": int, "xsd:double": float, "xsd:float": float}


def _value(raw: Any) -> Any:
    """A PROV-JSON attribute value without its type wrapper (first of a list)."""
    if isinstance(raw, list):
        raw = raw[0] if raw else None
    if isinstance(raw, dict) and "$" in raw:
        cast = _CASTS.get(str(raw.get("type")))
        try:
            return cast(raw["$"]) if cast else raw["$"]
        except ValueError:
            return raw["$"]
    return raw


def _types(attrs: dict[str, Any]) -> set[str]:
    raw = attrs.get("prov:type")
    return {str(_value(t)) for t in (raw if isinstance(raw, list) else [raw]) if t is not None}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


def _local_path(location: Any) -> Path | None:
    text = _value(location)
    if not isinstance(text, str) or not text.startswith("file://"):
        return None
    return Path(unquote(urlsplit(text).path))


@dataclass
class _Run:
    """What the crate needs from the PROV-JSON document, read as plain JSON."""

    run_id: str
    attrs: dict[str, Any]
    entities: dict[str, dict[str, Any]] = field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)

    def of_type(self, prov_type: str) -> list[tuple[str, dict[str, Any]]]:
        return [(key, attrs) for key, attrs in self.entities.items() if prov_type in _types(attrs)]


def _read_run(prov_file: Path) -> _Run:
    try:
        doc = json.loads(prov_file.read_text(encoding="utf-8"))
    except (OSError, ValueError) as err:
        raise Prov4MLInputError(f"`export --format rocrate {prov_file}`: not a readable PROV-JSON file "
                                f"({err})") from err
    runs = [attrs for attrs in (doc.get("activity") or {}).values() if "p4l:Run" in _types(attrs)]
    if len(runs) != 1:
        raise Prov4MLInputError(f"`export --format rocrate {prov_file}`: expected one p4l:Run activity, "
                                f"found {len(runs)} (is it a prov4ml-lightning document?)")
    run_id = str(_value(runs[0].get("p4l:run_id")))
    return _Run(run_id, runs[0], dict(doc.get("entity") or {}), dict(doc.get("agent") or {}))


class _Builder:
    def __init__(self, run: _Run, prov_file: Path, include_checkpoints: bool) -> None:
        from rocrate.model.contextentity import ContextEntity
        from rocrate.rocrate import ROCrate

        self.run = run
        self.folder = prov_file.parent
        self.prov_file = prov_file
        self.include_checkpoints = include_checkpoints
        self.crate = ROCrate(version=RO_CRATE_VERSION)
        self._context_entity = ContextEntity
        self.copied: set[Path] = set()

    def context(self, identifier: str, props: dict[str, Any]) -> Any:
        return self.crate.add(self._context_entity(self.crate, identifier, properties=props))

    def file(self, path: Path, dest: str, props: dict[str, Any], recorded_sha256: str | None = None) -> Any:
        digest = _sha256(path)
        if recorded_sha256 and digest != recorded_sha256:
            raise Prov4MLInputError(
                f"`export --format rocrate`: {path} has sha256 {digest}, the PROV document recorded "
                f"{recorded_sha256}; the file changed after the run (the crate would contradict its provenance)")
        self.copied.add(path.resolve())
        base = {"name": path.name, "sha256": digest, "contentSize": str(path.stat().st_size),
                "encodingFormat": _FORMATS.get(path.suffix, "application/octet-stream")}
        base.update(props)
        return self.crate.add_file(str(path), dest_path=dest, properties=base)

    # -- sections ---------------------------------------------------------------------------------------------

    def people(self) -> tuple[list[Any], Any | None]:
        persons, software = [], None
        for key, attrs in self.run.agents.items():
            types = _types(attrs)
            label = str(_value(attrs.get("prov:label")) or key)
            if "prov:Person" in types:
                persons.append(self.context(f"#person-{_slug(label)}", {"@type": "Person", "name": label}))
            elif "prov:SoftwareAgent" in types and "prov4ml" in key:
                version = _value(attrs.get("p4l:version"))
                software = self.context("#prov4ml-lightning", {
                    "@type": "SoftwareApplication", "name": "prov4ml-lightning", "softwareVersion": str(version),
                    "description": "records PyTorch/Lightning training runs as MLflow runs and W3C PROV documents"})
        return persons, software

    def prov_files(self) -> list[Any]:
        stem = self.prov_file.stem
        out = []
        for suffix in _RENDERS:
            path = self.prov_file.with_suffix(suffix)
            if path.is_file():
                what = "W3C PROV document (PROV-JSON)" if path == self.prov_file else f"render of {stem}.json"
                out.append(self.file(path, f"prov/{path.name}", {"description": what}))
        return out

    def side_files(self) -> dict[str, Any]:
        """The run's files the document records with a sha256 (metrics, packages, model versions, ...),
        looked up beside the PROV file (by file name, or by their path under the run's folder), by entity key."""
        original = self._original_folder()
        out = {}
        for key, attrs in self.run.entities.items():
            digest = _value(attrs.get("p4l:sha256"))
            types = _types(attrs)
            if not digest or "p4l:Checkpoint" in types:
                continue
            name = _value(attrs.get("p4l:file_name"))
            where = _local_path(attrs.get("prov:location"))
            rel: str | None = str(name) if name else None
            if rel is None and where is not None and original is not None:
                try:
                    rel = where.relative_to(original).as_posix()
                except ValueError:
                    rel = None
            if rel is None:
                continue
            path = self.folder / rel
            if not path.is_file():
                warnings.warn(f"`export --format rocrate`: {rel} (recorded in the PROV document) is not beside "
                              f"{self.prov_file.name}; the crate leaves it out", Prov4MLWarning, stacklevel=3)
                continue
            label = str(_value(attrs.get("prov:label")) or path.name)
            kind = next(iter(sorted(t.split(":", 1)[-1] for t in types)), "File")
            out[key] = self.file(path, rel, {"description": f"{kind}: {label}"}, str(digest))
        return out

    def _original_folder(self) -> Path | None:
        """The folder the run wrote its PROV files to (from the metrics file's recorded location)."""
        for _, attrs in self.run.of_type("p4l:MetricsFile"):
            where = _local_path(attrs.get("prov:location"))
            if where is not None:
                return where.parent
        return None

    def code(self) -> tuple[Any, Any | None]:
        found = self.run.of_type("p4l:Code")
        attrs = found[0][1] if found else {}
        props: dict[str, Any] = {"programmingLanguage": {"@id": "#python"}}
        for src, dst in (("p4l:git_commit", "version"), ("p4l:git_remote", "codeRepository")):
            if _value(attrs.get(src)) is not None:
                props[dst] = str(_value(attrs.get(src)))
        python = self.context("#python", {"@type": "ComputerLanguage", "name": "Python",
                                           "url": {"@id": "https://www.python.org/"}})
        script_path = _value(attrs.get("p4l:script_path"))
        recorded = _value(attrs.get("p4l:script_sha256"))
        diff = None
        diff_name = _value(attrs.get("p4l:git_diff_file"))
        if diff_name and (self.folder / str(diff_name)).is_file():
            diff = self.file(self.folder / str(diff_name), str(diff_name), {
                "description": "uncommitted changes to the code (git diff HEAD) when the run started",
                "encodingFormat": "text/x-diff"}, str(_value(attrs.get("p4l:git_diff_sha256")) or "") or None)
        path = Path(str(script_path)) if script_path else None
        if path is not None and path.is_file() and recorded and _sha256(path) == recorded:
            entity = self.file(path, f"code/{path.name}", {"@type": ["File", "SoftwareSourceCode"], **props,
                                                           "description": "the entry script the run executed"},
                               str(recorded))
        else:
            ident = f"#code-{_slug(path.name if path else 'script')}"
            entity = self.context(ident, {"@type": "SoftwareSourceCode", "name": path.name if path else "script",
                                          "description": "the entry script (not included: its file is gone or "
                                                         "changed since the run)", **props,
                                          **({"sha256": str(recorded)} if recorded else {})})
        entity["programmingLanguage"] = python
        return entity, diff

    def environment(self, instrument: Any, software: Any | None) -> list[Any]:
        found = self.run.of_type("p4l:Environment")
        attrs = found[-1][1] if found else {}
        reqs = [software] if software is not None else []
        for key, name in (("python_version", "Python"), ("torch_version", "PyTorch"),
                          ("lightning_version", "Lightning"), ("mlflow_version", "MLflow"), ("prov_version", "prov"),
                          ("numpy_version", "NumPy")):
            version = _value(attrs.get(f"p4l:{key}"))
            if version is not None:
                reqs.append(self.context(f"#software-{_slug(name)}", {
                    "@type": "SoftwareApplication", "name": name, "softwareVersion": str(version)}))
        if reqs:
            instrument["softwareRequirements"] = reqs
        env = []
        for key, raw in attrs.items():
            if key.startswith("p4l:env_"):
                name = key[len("p4l:env_"):]
                env.append(self.context(f"#env-{_slug(name)}", {"@type": "PropertyValue", "name": name,
                                                                 "value": str(_value(raw))}))
        return env

    def inputs(self) -> list[Any]:
        out = []
        for key, attrs in self.run.of_type("p4l:Dataset"):
            props = {"@type": "Dataset", "name": str(_value(attrs.get("prov:label")) or key)}
            for src, dst in (("p4l:fingerprint", "identifier"), ("p4l:role", "description")):
                if _value(attrs.get(src)) is not None:
                    props[dst] = str(_value(attrs.get(src)))
            if "description" in props:
                props["description"] = f"{props['description']} data ({_value(attrs.get('p4l:dataset_class'))}, " \
                                       f"{_value(attrs.get('p4l:length'))} items)"
            out.append(self.context(f"#dataset-{_slug(key.rsplit('.', 2)[-2] + '-' + key.rsplit('.', 1)[-1])}",
                                    props))
        for key, attrs in self.run.of_type("p4l:Parameter"):
            name = str(_value(attrs.get("p4l:name")) or _value(attrs.get("prov:label")) or key)
            out.append(self.context(f"#param-{_slug(key.rsplit('.', 1)[-1])}", {
                "@type": "PropertyValue", "name": name, "value": _json_value(_value(attrs.get("prov:value"))),
                "description": "hyperparameter"}))
        return out

    def checkpoints(self) -> list[Any]:
        out = []
        for key, attrs in self.run.of_type("p4l:Checkpoint"):
            label = str(_value(attrs.get("prov:label")) or key)
            digest = _value(attrs.get("p4l:sha256"))
            path = _local_path(attrs.get("prov:location"))
            props: dict[str, Any] = {"description": _ckpt_description(attrs)}
            if self.include_checkpoints and path is not None and path.is_file() and digest \
                    and path.resolve() not in self.copied and _sha256(path) == digest:
                out.append(self.file(path, f"checkpoints/{path.name}", {"name": label, **props}, str(digest)))
                continue
            props.update({"@type": "File", "name": label})
            if digest:
                props["sha256"] = str(digest)
            if _value(attrs.get("p4l:size_bytes")) is not None:
                props["contentSize"] = str(_value(attrs.get("p4l:size_bytes")))
            if _value(attrs.get("prov:location")):
                props["url"] = str(_value(attrs.get("prov:location")))
            out.append(self.context(f"#checkpoint-{_slug(key.rsplit('.checkpoint.', 1)[-1])}", props))
        return out

    def models(self, checkpoints: dict[str, Any]) -> list[Any]:
        out = []
        for key, attrs in self.run.of_type("p4l:Model"):
            props: dict[str, Any] = {"@type": "Dataset", "name": str(_value(attrs.get("prov:label")) or key),
                                     "description": "model logged to MLflow (not included: fetch it with "
                                                    "mlflow.pyfunc.load_model or mlflow.pytorch.load_model)"}
            for src, dst in (("prov:location", "url"), ("p4l:model_id", "identifier")):
                if _value(attrs.get(src)) is not None:
                    props[dst] = str(_value(attrs.get(src)))
            extra = [{"@type": "PropertyValue", "name": name, "value": _json_value(_value(attrs.get(f"p4l:{name}")))}
                     for name in ("state_dict_sha256", "total_params", "model_class")
                     if _value(attrs.get(f"p4l:{name}")) is not None]
            entity = self.context(f"#model-{_slug(key.rsplit('.model.', 1)[-1])}", props)
            for pv in extra:
                entity.append_to("additionalProperty", self.context(f"{entity.id}-{pv['name']}", pv))
            best = _value(attrs.get("p4l:best_checkpoint"))
            for ckpt in checkpoints.values():
                if best and ckpt.get("name") == best:
                    entity["isBasedOn"] = ckpt
            out.append(entity)
        return out

    def final_metrics(self) -> list[Any]:
        out = []
        for key, attrs in self.run.of_type("p4l:MetricSeries"):
            last = _value(attrs.get("p4l:last_value"))
            if last is None:
                continue
            out.append(self.context(f"#metric-{_slug(key.rsplit('.metric.', 1)[-1])}", {
                "@type": "PropertyValue", "name": str(_value(attrs.get("p4l:name")) or key),
                "value": _json_value(last), "description": f"last value of {_value(attrs.get('prov:label'))} "
                                                           f"({_value(attrs.get('p4l:count'))} points)"}))
        return out


def _ckpt_description(attrs: dict[str, Any]) -> str:
    parts = [f"checkpoint at epoch {_value(attrs.get('p4l:epoch'))}, step {_value(attrs.get('p4l:global_step'))}"]
    if _value(attrs.get("p4l:monitor")) and _value(attrs.get("p4l:score")) is not None:
        parts.append(f"{_value(attrs.get('p4l:monitor'))} = {_value(attrs.get('p4l:score'))}")
    if str(_value(attrs.get("p4l:best"))) == "True":
        parts.append("best")
    if str(_value(attrs.get("p4l:deleted"))) == "True":
        parts.append("deleted during the run")
    return "; ".join(parts)


def _json_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else str(value)


def _license_entity(builder: _Builder, license_id: str) -> Any:
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
    run = _read_run(prov_file)
    b = _Builder(run, prov_file, include_checkpoints)
    crate, attrs = b.crate, run.attrs
    run_name = str(_value(attrs.get("p4l:run_name")) or run.run_id)
    experiment = _value(attrs.get("p4l:experiment_name"))

    persons, software = b.people()
    prov_entities = b.prov_files()
    side = b.side_files()
    script, diff = b.code()
    env = b.environment(script, software)
    inputs = b.inputs() + ([diff] if diff is not None else [])
    ckpts = b.checkpoints()
    models = b.models({c.id: c for c in ckpts})
    # the package list describes the environment the run used; every other recorded file it produced
    env_files = [side[k] for k, a in run.entities.items() if k in side and "p4l:PackageList" in _types(a)]
    metrics_files = [side[k] for k, a in run.entities.items() if k in side and "p4l:PackageList" not in _types(a)]
    inputs += env_files

    status = str(_value(attrs.get("p4l:status")) or "")
    action_props: dict[str, Any] = {
        "@type": "CreateAction", "name": f"training run {run_name}",
        "description": str(_value(attrs.get("p4l:description")) or f"MLflow run {run.run_id}"),
        "identifier": run.run_id,
        "actionStatus": {"@id": f"http://schema.org/{_STATUS.get(status, 'ActiveActionStatus')}"},
    }
    for src, dst in (("prov:startTime", "startTime"), ("prov:endTime", "endTime")):
        if attrs.get(src):
            action_props[dst] = str(_value(attrs[src]))
    if status == "FAILED" and _value(attrs.get("p4l:error")):
        action_props["error"] = str(_value(attrs.get("p4l:error")))
    action = crate.add_action(script, identifier=f"#run-{run.run_id}", object=inputs or None,
                              result=metrics_files + ckpts + models + b.final_metrics() or None,
                              properties=action_props)
    if persons:
        action["agent"] = persons[0] if len(persons) == 1 else persons
    if env:
        action["environment"] = env
        crate.metadata.extra_contexts.append(_WFRUN_CONTEXT)
    if software is not None:
        record = crate.add_action(software, identifier=f"#record-{run.run_id}", result=prov_entities + metrics_files,
                                  properties={"@type": "CreateAction", "name": "record the run's provenance",
                                              "object": {"@id": action.id}})
        for src, dst in (("prov:startTime", "startTime"), ("prov:endTime", "endTime")):
            if attrs.get(src):
                record[dst] = str(_value(attrs[src]))
        record["actionStatus"] = {"@id": "http://schema.org/CompletedActionStatus"}

    root = crate.root_dataset
    root["name"] = name or (f"{run_name} ({experiment})" if experiment else run_name)
    root["description"] = (f"Training run {run_name} (MLflow run {run.run_id}) with its W3C PROV provenance, "
                           "metrics, code and environment, exported by prov4ml-lightning.")
    root["datePublished"] = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    root["mentions"] = action
    if persons:
        root["author"] = persons[0] if len(persons) == 1 else persons
    if license:
        root["license"] = _license_entity(b, license)
    else:
        warnings.warn("`export --format rocrate`: no license given (--license SPDX-ID); the crate has none and "
                      "repositories such as Zenodo and WorkflowHub will ask for one", Prov4MLWarning, stacklevel=2)
    profile = b.context(PROCESS_RUN_CRATE, {"@type": "CreativeWork", "name": "Process Run Crate", "version": "0.5"})
    root["conformsTo"] = profile

    if as_zip:
        out.parent.mkdir(parents=True, exist_ok=True)
        crate.write_zip(out)
    else:
        out.mkdir(parents=True, exist_ok=True)
        crate.write(out)
    return out
