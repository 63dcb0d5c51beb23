"""Model versions saved during a run (the original prov4ml's ``save_model_version``).

Each call writes the module's state dict to its own file, logs it as an MLflow artifact under
``model_versions/`` and records it in PROV as an entity with the file's sha256 and the weights'
``state_dict_sha256`` (the PROV builder links it to every other entity holding the same weights),
derived from the version saved before it from the same module object (its weights were trained
from those).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import torch

from prov4ml_lightning.capture.measures import measures_of
from prov4ml_lightning.capture.model_info import state_dict_sha256
from prov4ml_lightning.errors import Prov4MLInputError

if TYPE_CHECKING:
    from prov4ml_lightning.records import ArtifactRecord
    from prov4ml_lightning.tracking.recorder import RunRecorder

__all__ = ["MODEL_VERSION_KIND", "note_initial_weights", "save_version"]

#: the artifact kind of a saved version (PROV type ``p4l:Model_version``)
MODEL_VERSION_KIND = "model_version"


def note_initial_weights(run: RunRecorder, model: Any, model_name: str) -> None:
    """A plain loop's first look at ``model`` (``log_model_memory_footprint``, called before
    training): its weights as they are, an entity ``<model_name>.initial`` the run used, with
    their hash; derived from the entities of earlier runs that produced them (weights loaded with
    ``torch.load`` + ``load_state_dict`` or ``mlflow.pytorch.load_model``), found in the store by
    that hash. Once per model object and run."""
    measures = measures_of(run)
    if not isinstance(model, torch.nn.Module) or model in measures.initial:
        return
    measures.initial.add(model)
    name = f"{model_name}.initial"
    digest = state_dict_sha256(model.state_dict())
    run.add_entity("model_state", "ModelState", name, {"state_dict_sha256": digest, "model_name": model_name},
                   label=f"initial weights ({model_name})", relation="used")
    run.trace_weights("model_state", name, digest)


def save_version(run: RunRecorder, model: Any, model_name: str, context: Any = None,
                 step: int | None = None) -> ArtifactRecord:
    """Save ``model``'s state dict as the next version of ``model_name`` in ``run``; return its record."""
    call = f"save_model_version(model, {model_name!r})"
    run.require_open(call)
    if not isinstance(model, torch.nn.Module):
        raise Prov4MLInputError(f"{call}: model must be a torch.nn.Module, got {type(model).__name__}")
    from prov4ml_lightning.tracking import validation as v

    v.check_name(model_name, call, "model_name")
    if step is not None:
        step = v.check_step(step, call)
    folder = run.provenance_dir / f"model_versions_{run.run_id}"
    folder.mkdir(parents=True, exist_ok=True)
    version = 1 + sum(1 for a in run.artifacts if a.kind == MODEL_VERSION_KIND
                      and a.attributes.get("model_name") == model_name)
    path = folder / (f"{model_name}.pth" if version == 1 else f"{model_name}.v{version}.pth")
    state = model.state_dict()
    torch.save(state, path)
    weights = state_dict_sha256(state)
    measures = measures_of(run)
    # Derived from the module's previous version only when training changed the weights since: the same
    # weights saved twice are two files of one state (alternateOf, by the PROV builder), not a derivation.
    previous, previous_weights = measures.versions.get(model, (None, None))
    record = run.log_artifact(
        path, context, artifact_path="model_versions", kind=MODEL_VERSION_KIND, name=path.stem,
        derived_from=previous if previous_weights != weights else None, call=call,
        attributes={"model_name": model_name, "version": version, "step": step,
                    "model_class": f"{type(model).__module__}.{type(model).__qualname__}",
                    "state_dict_sha256": weights},
    )
    measures.versions[model] = (record.name, weights)
    return record
