"""The sections of a run's RO-Crate (:func:`.rocrate.write_rocrate`): the people and software, the PROV
files and the run's other recorded files, the code and environment, the inputs (data sets,
hyperparameters), checkpoints, models and final metric values, each as crate entities.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning, warn
from prov4ml_lightning.files import sha256_path
from prov4ml_lightning.provenance.rocrate_input import RunDocument, attr_types, attr_value, location_path

__all__ = ["RO_CRATE_VERSION", "CrateBuilder"]

RO_CRATE_VERSION = "1.1"
_RENDERS = (".json", ".svg", ".html", ".dot", ".provn", ".ttl", ".xml", ".jsonld")
_FORMATS = {".json": "application/json", ".svg": "image/svg+xml", ".html": "text/html", ".dot": "text/vnd.graphviz",
            ".provn": "text/provenance-notation", ".ttl": "text/turtle", ".xml": "application/xml",
            ".jsonld": "application/ld+json", ".csv": "text/csv", ".txt": "text/plain", ".patch": "text/x-diff",
            ".py": "text/x-python", ".ckpt": "application/octet-stream"}


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "x"


class CrateBuilder:
    """One run's crate being built: each section method adds its entities and returns them;
    :meth:`file` copies a file in, refusing one whose bytes differ from the hash recorded for it."""

    def __init__(self, run: RunDocument, prov_file: Path, include_checkpoints: bool) -> None:
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
        digest = sha256_path(path)[0]
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
            types = attr_types(attrs)
            label = str(attr_value(attrs.get("prov:label")) or key)
            if "prov:Person" in types:
                persons.append(self.context(f"#person-{_slug(label)}", {"@type": "Person", "name": label}))
            elif "prov:SoftwareAgent" in types and "prov4ml" in key:
                version = attr_value(attrs.get("p4l:version"))
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
        out: dict[str, Any] = {}
        found: dict[str, list[tuple[str, dict[str, Any], str]]] = {}  # file -> the entities naming it
        for key, attrs in self.run.entities.items():
            digest = attr_value(attrs.get("p4l:sha256"))
            types = attr_types(attrs)
            if not digest or "p4l:Checkpoint" in types:
                continue
            name = attr_value(attrs.get("p4l:file_name"))
            where = location_path(self.run.location(attrs))
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
                warn(f"`export --format rocrate`: {rel} (recorded in the PROV document) is not beside "
                     f"{self.prov_file.name}; the crate leaves it out", Prov4MLWarning)
                continue
            found.setdefault(rel, []).append((key, attrs, str(digest)))
        for rel, versions in found.items():
            path = self.folder / rel
            if len(versions) > 1:
                # one file, recorded once per session (the metric sidecar a resumed run appends to): the
                # crate holds its bytes as they are now, the version whose sha256 they have; the earlier
                # versions are in the PROV document it carries
                now = sha256_path(path)[0]
                versions = [v for v in versions if v[2] == now] or versions[-1:]
            for key, attrs, digest in versions:
                label = str(attr_value(attrs.get("prov:label")) or path.name)
                kind = next(iter(sorted(t.split(":", 1)[-1] for t in attr_types(attrs))), "File")
                out[key] = self.file(path, rel, {"description": f"{kind}: {label}"}, digest)
        return out

    def _original_folder(self) -> Path | None:
        """The folder the run wrote its PROV files to (from the metrics file's recorded location)."""
        for _, attrs in self.run.of_type("p4l:MetricsFile"):
            where = location_path(self.run.location(attrs))
            if where is not None:
                return where.parent
        return None

    def code(self) -> tuple[Any, Any | None]:
        found = self.run.of_type("p4l:Code")
        attrs = found[0][1] if found else {}
        props: dict[str, Any] = {"programmingLanguage": {"@id": "#python"}}
        for src, dst in (("p4l:git_commit", "version"), ("p4l:git_remote", "codeRepository")):
            if attr_value(attrs.get(src)) is not None:
                props[dst] = str(attr_value(attrs.get(src)))
        python = self.context("#python", {"@type": "ComputerLanguage", "name": "Python",
                                           "url": {"@id": "https://www.python.org/"}})
        script_path = attr_value(attrs.get("p4l:script_path"))
        recorded = attr_value(attrs.get("p4l:script_sha256"))
        diff = None
        diff_name = attr_value(attrs.get("p4l:git_diff_file"))
        if diff_name and (self.folder / str(diff_name)).is_file():
            diff = self.file(self.folder / str(diff_name), str(diff_name), {
                "description": "uncommitted changes to the code (git diff HEAD) when the run started",
                "encodingFormat": "text/x-diff"}, str(attr_value(attrs.get("p4l:git_diff_sha256")) or "") or None)
        path = Path(str(script_path)) if script_path else None
        if path is not None and path.is_file() and recorded and sha256_path(path)[0] == recorded:
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
        for key, name, url in (("python_version", "Python", "https://www.python.org/"),
                               ("torch_version", "PyTorch", "https://pytorch.org/"),
                               ("lightning_version", "Lightning", "https://lightning.ai/"),
                               ("mlflow_version", "MLflow", "https://mlflow.org/"),
                               ("prov_version", "prov", "https://pypi.org/project/prov/"),
                               ("numpy_version", "NumPy", "https://numpy.org/")):
            version = attr_value(attrs.get(f"p4l:{key}"))
            if version is not None:
                reqs.append(self.context(f"#software-{_slug(name)}", {
                    "@type": "SoftwareApplication", "name": name, "softwareVersion": str(version), "url": url}))
        if reqs:
            instrument["softwareRequirements"] = reqs
        env = []
        for key, raw in attrs.items():
            if key.startswith("p4l:env_"):
                name = key[len("p4l:env_"):]
                env.append(self.context(f"#env-{_slug(name)}", {"@type": "PropertyValue", "name": name,
                                                                 "value": str(attr_value(raw))}))
        return env

    def inputs(self) -> dict[str, Any]:
        """The data sets and hyperparameters, by PROV id."""
        out = {}
        for key, attrs in self.run.of_type("p4l:Dataset"):
            props = {"@type": "Dataset", "name": str(attr_value(attrs.get("prov:label")) or key)}
            for src, dst in (("p4l:fingerprint", "identifier"), ("p4l:role", "description")):
                if attr_value(attrs.get(src)) is not None:
                    props[dst] = str(attr_value(attrs.get(src)))
            if "description" in props:
                props["description"] = f"{props['description']} data ({attr_value(attrs.get('p4l:dataset_class'))}, " \
                                       f"{attr_value(attrs.get('p4l:length'))} items)"
            out[key] = self.context(f"#dataset-{_slug(key.rsplit('.', 2)[-2] + '-' + key.rsplit('.', 1)[-1])}",
                                    props)
        for key, attrs in self.run.of_type("p4l:Parameter"):
            name = str(attr_value(attrs.get("p4l:name")) or attr_value(attrs.get("prov:label")) or key)
            out[key] = self.context(f"#param-{_slug(key.rsplit('.', 1)[-1])}", {
                "@type": "PropertyValue", "name": name, "value": _json_value(attr_value(attrs.get("prov:value"))),
                "description": "hyperparameter"})
        return out

    def _data_entity(self, identifier: str, props: dict[str, Any]) -> Any:
        """A data entity of the crate whose bytes it does not hold: a local identifier (``#...``:
        RO-Crate's way to describe a file that is not in the payload), listed in the root's hasPart."""
        entity = self.context(identifier, props)
        self.crate.root_dataset.append_to("hasPart", entity)
        return entity

    def checkpoints(self) -> dict[str, Any]:
        """The checkpoints, by PROV id: data entities, copied in (``checkpoints/<file>``) with
        ``include_checkpoints`` when their bytes still match, else described by a local identifier
        with their recorded hash and size (never the recording machine's ``file:`` URL)."""
        out = {}
        for key, attrs in self.run.of_type("p4l:Checkpoint"):
            label = str(attr_value(attrs.get("prov:label")) or key)
            digest = attr_value(attrs.get("p4l:sha256"))
            path = location_path(self.run.location(attrs))
            props: dict[str, Any] = {"description": _ckpt_description(attrs)}
            if self.include_checkpoints and path is not None and path.is_file() and digest \
                    and path.resolve() not in self.copied and sha256_path(path)[0] == digest:
                out[key] = self.file(path, f"checkpoints/{path.name}", {"name": label, **props}, str(digest))
                continue
            props.update({"@type": "File", "name": label, "encodingFormat": _FORMATS[".ckpt"]})
            props["description"] += "; not included in this crate (export --include-checkpoints copies it)"
            if digest:
                props["sha256"] = str(digest)
            if attr_value(attrs.get("p4l:size_bytes")) is not None:
                props["contentSize"] = str(attr_value(attrs.get("p4l:size_bytes")))
            out[key] = self._data_entity(f"#checkpoint-{_slug(key.rsplit('.checkpoint.', 1)[-1])}", props)
        return out

    def models(self, checkpoints: dict[str, Any]) -> dict[str, Any]:
        """The models logged to MLflow, by PROV id: data entities (a model is a folder in MLflow's
        store, not in the crate) with their MLflow URI."""
        out = {}
        for key, attrs in self.run.of_type("p4l:Model"):
            props: dict[str, Any] = {"@type": "Dataset", "name": str(attr_value(attrs.get("prov:label")) or key),
                                     "description": "model logged to MLflow (not included: fetch it with "
                                                    "mlflow.pyfunc.load_model or mlflow.pytorch.load_model)"}
            if self.run.location(attrs):
                props["url"] = self.run.location(attrs)
            if attr_value(attrs.get("p4l:model_id")) is not None:
                props["identifier"] = str(attr_value(attrs.get("p4l:model_id")))
            extra = [{"@type": "PropertyValue", "name": name,
                      "value": _json_value(attr_value(attrs.get(f"p4l:{name}")))}
                     for name in ("state_dict_sha256", "total_params", "model_class")
                     if attr_value(attrs.get(f"p4l:{name}")) is not None]
            entity = self._data_entity(f"#model-{_slug(key.rsplit('.model.', 1)[-1])}", props)
            for pv in extra:
                entity.append_to("additionalProperty", self.context(f"{entity.id}-{pv['name']}", pv))
            best = attr_value(attrs.get("p4l:best_checkpoint"))
            for ckpt in checkpoints.values():
                if best and ckpt.get("name") == best:
                    entity["isBasedOn"] = ckpt
            out[key] = entity
        return out

    def final_metrics(self) -> dict[str, Any]:
        """The last value of each metric series, by PROV id."""
        out = {}
        for key, attrs in self.run.of_type("p4l:MetricSeries"):
            last = attr_value(attrs.get("p4l:last_value"))
            if last is None:
                continue
            out[key] = self.context(f"#metric-{_slug(key.rsplit('.metric.', 1)[-1])}", {
                "@type": "PropertyValue", "name": str(attr_value(attrs.get("p4l:name")) or key),
                "value": _json_value(last), "description": f"last value of {attr_value(attrs.get('prov:label'))} "
                                                           f"({attr_value(attrs.get('p4l:count'))} points)"})
        return out


def _ckpt_description(attrs: dict[str, Any]) -> str:
    parts = [f"checkpoint at epoch {attr_value(attrs.get('p4l:epoch'))}, "
             f"step {attr_value(attrs.get('p4l:global_step'))}"]
    if attr_value(attrs.get("p4l:monitor")) and attr_value(attrs.get("p4l:score")) is not None:
        parts.append(f"{attr_value(attrs.get('p4l:monitor'))} = {attr_value(attrs.get('p4l:score'))}")
    if str(attr_value(attrs.get("p4l:best"))) == "True":
        parts.append("best")
    if str(attr_value(attrs.get("p4l:deleted"))) == "True":
        parts.append("deleted during the run")
    return "; ".join(parts)


def _json_value(value: Any) -> Any:
    return value if isinstance(value, (str, int, float, bool)) else str(value)
