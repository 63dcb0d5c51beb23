"""The end of a run: its records handed to the PROV sink (the document, its graph) and MLflow
(the PROV files, the provenance tag, the run's end).

:func:`publish` is the last step of ``RunRecorder.end`` once the metric writer has drained; it
also writes the params MLflow holds truncated whole, and the journal's ``end`` event.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prov4ml_lightning.errors import Prov4MLError, Prov4MLWarning, warn
from prov4ml_lightning.files import atomic_write_text
from prov4ml_lightning.version import __version__

if TYPE_CHECKING:
    from prov4ml_lightning.tracking.recorder import RunRecorder

__all__ = ["RunOutputs", "publish", "snapshot", "write_provenance"]


@dataclass(frozen=True)
class RunOutputs:
    """Where a run was written."""

    run_id: str
    tracking_uri: str
    provenance_dir: Path
    prov_json: Path
    prov_dot: Path
    prov_svg: Path | None
    metrics_file: Path
    extra: Mapping[str, Path]


def disk_error(run: RunRecorder, err: OSError) -> str:
    """What ``end_run`` says when the disk refused the PROV files: what is safe, what is lost, what to
    free, and the command that completes the run."""
    import shutil

    writer = run.writer
    on_disk = writer.points_written - writer.points_lost
    parts = [f"end_run: could not write the PROV files of run {run.run_id} to {run.provenance_dir} ({err}); "
             "no half-written file was left"]
    if writer.points_lost:
        parts.append(f"the metric sidecar {writer.sidecar.name} holds {on_disk} of the run's {writer.points_written} "
                     f"points; {writer.points_lost} never reached it and are lost from the local record: "
                     f"{writer.describe_lost()} (MLflow may hold them)")
    else:
        parts.append(f"the metric sidecar {writer.sidecar.name} holds all {on_disk} points and the journal the rest")
    try:
        free = f"{shutil.disk_usage(run.provenance_dir).free / 2**20:.1f} MB free now"
    except OSError:
        free = "its free space unknown"
    try:  # the PROV-JSON's size, measured; the graph (DOT, SVG) and the HTML page are about three more
        from prov4ml_lightning.provenance import build_document

        need = f"about {4 * len(build_document(snapshot(run)).serialize(format='json')) / 2**20 + 0.1:.1f} MB"
    except Exception:  # the message must not fail: the size is a hint
        need = "a few MB"
    parts.append(f"free {need} on the filesystem of {run.provenance_dir} ({free}), then run "
                 f"`prov4ml recover {run.provenance_dir}`: it writes the PROV document from the journal and the "
                 "sidecar and brings MLflow up to date")
    return "; ".join(parts)


def snapshot(run: RunRecorder) -> Any:
    """The run's records as the PROV builder takes them (a ``provenance.RunSnapshot``)."""
    from prov4ml_lightning.provenance import RunSnapshot

    return RunSnapshot(
        info=run.info, params={**run.params, **run.long_params},
        series=list(run.series.values()), artifacts=list(run.artifacts), models=list(run.models),
        activities=list(run.activities.values()), software_version=__version__,
        metrics_file=run.writer.sidecar.name, extra_entities=list(run.extra_entities),
        invalidations=list(run.invalidations),
        context=run.context.for_prov() if run.context is not None else None,
        previous_document=run.previous_document, side_files=side_files(run),
    )


def side_files(run: RunRecorder) -> dict[str, dict[str, Any]]:
    """Path, sha256 and size of the files beside the document: the metric sidecar (as it is now)
    and the session's package list, code diff and untracked-source snapshot."""
    from prov4ml_lightning.files import sha256_path

    paths = {"metrics": run.writer.sidecar}
    for path, folder in (run.context.files if run.context is not None else ()):
        kind = ("untracked" if Path(path).name.startswith("untracked_")
                else {"code": "diff", "environment": "packages"}.get(folder, folder))
        paths[kind] = Path(path)
    out = {}
    for kind, path in paths.items():
        try:
            digest, size = sha256_path(path)
        except OSError:
            continue
        out[kind] = {"path": str(path), "sha256": digest, "size_bytes": size}
    return out


def write_provenance(run: RunRecorder) -> dict[str, Path]:
    """Write the PROV document (and graph) of the run as it stands; return the paths."""
    from prov4ml_lightning.provenance import build_document, write_run_files

    return write_run_files(build_document(snapshot(run)), run.provenance_dir / f"provgraph_{run.run_id}",
                           run.provenance_formats, f"{run.info.experiment_name} / {run.info.run_name}")


def publish(run: RunRecorder, status: str, now: float) -> RunOutputs:
    """Write the PROV files of the ended ``run``, upload them, end the MLflow run.

    Raises:
        Prov4MLError: the disk refused the files (full, gone); the message says which points the
            metric sidecar holds, which it lost, what to free and that ``prov4ml recover`` completes the run.
    """
    extra: dict[str, Path] = {}
    long_file = run.provenance_dir / f"long_params_{run.run_id}.json"
    if run.writer.points_sent < run.writer.points_written:
        extra["mlflow_unsent"] = run.writer.spill
    try:
        if run.long_params:  # atomic: a full disk leaves no empty file (recover writes it from the journal)
            atomic_write_text(long_file, json.dumps(run.long_params, indent=1))
            extra["long_params"] = long_file
        paths = write_provenance(run)
    except OSError as err:  # disk full, folder gone: the atomic writes left no half-written file
        lost = run.writer.points_lost
        run.journal.write("end", status=status, end_time=now, prov_error=str(err),
                          **({"metric_points_lost": lost} if lost else {}))
        run.journal.close()
        run.call_sink("end the MLflow run", run.sink.end_run, run.run_id, status, int(now * 1000))
        raise Prov4MLError(disk_error(run, err)) from err
    if run.writer.points_lost:
        warn(f"end_run: {run.writer.points_lost} metric points never reached the metric sidecar "
             f"{run.writer.sidecar} (the disk was full): {run.writer.describe_lost()}; the PROV summary counts "
             "them, `prov4ml recover` and `prov4ml sync` cannot replay them", Prov4MLWarning)
    if "long_params" in extra:
        run.call_sink("upload long params", run.sink.log_artifact, run.run_id, str(long_file), "params")
    run.journal.write("end", status=status, end_time=now)
    run.journal.close()
    for path in [paths["json"], paths["dot"], paths.get("svg"), paths.get("html"), run.writer.sidecar,
                 *(paths.get(f) for f in ("provn", "ttl", "xml")),
                 # packages list and code diff beside the document, where `prov4ml show/diff <run id>` looks
                 *(f for f, _ in (run.context.files if run.context is not None else ()) if f.exists())]:
        if path is not None:
            run.call_sink(f"upload {path.name}", run.sink.log_artifact, run.run_id, str(path), "prov")
    run.call_sink("set provenance tag", run.sink.set_tags, run.run_id,
                  [("prov4ml.provenance_file", f"prov/{paths['json'].name}")])
    run.call_sink("end the MLflow run", run.sink.end_run, run.run_id, status, int(now * 1000))
    return RunOutputs(
        run_id=run.run_id, tracking_uri=run.info.tracking_uri, provenance_dir=run.provenance_dir,
        prov_json=paths["json"], prov_dot=paths["dot"], prov_svg=paths.get("svg"),
        metrics_file=run.writer.sidecar,
        extra={**extra, **{k: p for k, p in paths.items() if k in ("provn", "ttl", "xml", "html")}},
    )
