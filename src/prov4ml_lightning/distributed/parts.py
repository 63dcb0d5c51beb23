"""The records of every rank of a distributed run, merged into rank zero's one run.

Global rank zero writes the MLflow run and the PROV document. Every other rank records into a
part folder of its own, ``<provenance_save_dir>/ranks_<run_id>/session_<n>/rank<k>/``: a
:func:`rank_recorder` (the core's recorder with a part sink: no MLflow, no PROV document)
appends its journal and metric sidecar there as it goes, exactly as a run does in its provenance
folder, and an ``end`` event when the rank ends. When rank zero ends the run (a ``before_end``
hook of its recorder), :meth:`RankGroup.merge` reads each part: the rank becomes a ``Rank``
activity of the run (global, local and node rank, host, device, pid, status, its params as
attributes), its metric points are logged into the run as ``rank<k>/<key>`` (so its system
metrics are ``rank<k>/system/...``), and its artifacts and models are recorded as
``rank<k>.<name>``. Rank zero's own system metrics are ``rank0/system/...``.

Why files and not a gather through the strategy: a gather is a collective, and a collective
cannot run when a rank has crashed (the others would wait for it) nor from ``on_exception``;
part files are written incrementally, so the part of a rank that failed, or is still stuck in a
collective when rank zero ends, reaches the document as far as it got. The price: on several
nodes the provenance folder must be shared (as checkpoint folders usually are); a part rank zero
cannot see is recorded as ``MISSING`` with the path it looked at.

With ``collect_all_ranks=False`` (functional API) the other ranks get a :class:`SilentRun`,
which records nothing; rank zero still records itself as ``rank_0``.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prov4ml_lightning.context import Context
from prov4ml_lightning.distributed.ranks import RankInfo, rank_from_env, share_run, torch_broadcast
from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning, warn
from prov4ml_lightning.records import RunInfo
from prov4ml_lightning.sinks.base import NullSink
from prov4ml_lightning.tracking import registry
from prov4ml_lightning.tracking import validation as v
from prov4ml_lightning.tracking.config import RunConfig
from prov4ml_lightning.tracking.journal import journal_path, read_journal
from prov4ml_lightning.tracking.recorder import RunRecorder
from prov4ml_lightning.tracking.writer import read_sidecar

__all__ = ["PART_WAIT_S", "RankGroup", "SilentRun", "attach_ranks", "open_part", "open_silent",
           "rank_recorder", "shared_of", "start_on_ranks"]

log = logging.getLogger(__name__)

#: seconds rank zero waits, at a normal end, for parts whose rank has not ended yet
PART_WAIT_S = 60.0
#: the same at a failed end: a peer may be stuck in a collective that will never complete
FAILED_PART_WAIT_S = 3.0


@dataclasses.dataclass
class RankGroup:
    """The ranks of rank zero's run for one session (attached to its :class:`RunRecorder` as ``ranks``)."""

    rank: RankInfo
    collect: bool
    session: str
    parts: Path
    merged: bool = False
    _lock: threading.Lock = dataclasses.field(default_factory=threading.Lock, repr=False)

    @property
    def prefix(self) -> str:
        """Rank zero's system metric keys start with this."""
        return f"rank{self.rank.global_rank}/"

    def ident(self, global_rank: int) -> str:
        """The activity id of a rank (the session is named from the second session of a run on)."""
        return f"rank_{global_rank}" if self.session == "session_1" else f"rank_{global_rank}.{self.session}"

    def merge_or_warn(self, run: RunRecorder, status: str) -> None:
        """:meth:`merge`, a failure of which warns: rank 0's own records are written anyway."""
        try:
            self.merge(run, status)
        except Exception as err:
            warn(f"end_run: could not merge the parts of the other ranks ({err!r}); rank 0's "
                 "records are written", Prov4MLWarning)

    def merge(self, run: RunRecorder, status: str) -> None:
        """Fold every rank's part into ``run`` (once), before the run closes."""
        with self._lock:
            if self.merged:
                return
            self.merged = True
        run.end_activity(self.ident(0), {"status": status})
        if self.collect:
            deadline = time.monotonic() + (PART_WAIT_S if status == "FINISHED" else FAILED_PART_WAIT_S)
            for k in range(1, self.rank.world_size):
                try:
                    self._merge_part(run, k, deadline)
                except Exception:  # one unreadable part must not cost the run the others
                    log.exception("prov4ml: could not merge the part of rank %d", k)
        # the merged points become series now, so each can name its rank (MLflow is not waited for: a
        # failed job's launcher may kill this process any moment, and the PROV files come first)
        run.flush(wait_for_mlflow=False)
        for series in run.series.values():
            head = series.name.split("/", 1)[0]
            if head.startswith("rank") and head[4:].isdigit() and int(head[4:]) < self.rank.world_size:
                series.activity = self.ident(int(head[4:]))

    def _merge_part(self, run: RunRecorder, k: int, deadline: float) -> None:
        from prov4ml_lightning.recovery.recover import load_run

        folder = self.parts / f"rank{k}"
        journal = journal_path(folder, run.run_id)
        ident = self.ident(k)
        if not journal.exists():
            run.start_activity(ident, "Rank", f"rank {k} (no part found)", attributes={
                "global_rank": k, "world_size": self.rank.world_size, "session": self.session, "status": "MISSING",
                "part": str(folder),
                "note": "no part at this path: the rank never opened one (a run opened there with "
                        "collect_all_ranks=False records nothing), or it ran on another node whose "
                        "provenance folder is not shared with rank 0"})
            run.end_activity(ident)
            return
        events = _wait_for_end(journal, deadline)
        part = load_run(journal)
        rank_attrs = next((e.get("rank", {}) for e in events if e["event"] == "rank"), {"global_rank": k})
        end = part.end
        attrs: dict[str, Any] = {**rank_attrs, "session": self.session, "status": end["status"] if end else "RUNNING",
                                 "part": str(folder)}
        if end and end.get("error"):
            attrs["error"] = end["error"]
        if end is None:
            attrs["note"] = "no end recorded: the rank was still running, or was killed, when rank 0 ended the run"
        attrs.update({f"param.{key}": value for key, value in part.params.items()})
        attrs.update({f"tag.{key}": value for key, value in part.info.tags.items()})
        known = {f.name for f in dataclasses.fields(RankInfo)}
        label = RankInfo(**{key: val for key, val in rank_attrs.items() if key in known}).label
        record = run.start_activity(ident, "Rank", label, attributes=attrs)
        run.end_activity(ident)
        record.start_time = float(part.start.get("time", record.start_time))
        record.end_time = float(end["end_time"]) if end else max(part.last_time, record.start_time)
        for artifact in part.artifacts:
            run.add_artifact(dataclasses.replace(artifact, name=f"rank{k}.{artifact.name}", activity=ident,
                                                 artifact_uri=""))
        for model in part.models:
            run.add_model(dataclasses.replace(model, name=f"rank{k}.{model.name}"))
        call = f"merge of rank {k}"
        for key, ctx, _mkey, step, value, ts in read_sidecar(folder / f"metrics_{run.run_id}.csv"):
            run.log_metric(f"rank{k}/{key}", value, Context(ctx), step, ts, call=call)


def _wait_for_end(journal: Path, deadline: float) -> list[dict[str, Any]]:
    while True:
        events = read_journal(journal)
        if any(e["event"] == "end" for e in events) or time.monotonic() >= deadline:
            return events
        time.sleep(0.1)


def attach_ranks(run: RunRecorder, rank: RankInfo, collect: bool) -> RankGroup:
    """Make rank zero's ``run`` the run of a distributed job (idempotent): its ``rank_0`` activity,
    tags ``prov4ml.world_size`` and ``prov4ml.ranks_recorded``, and the session's part folder."""
    if run.ranks is not None:
        return run.ranks
    root = run.provenance_dir / f"ranks_{run.run_id}"
    # The run's own session number, so ranks, code and environment of one session share it; a
    # folder already there (only if the journal could not be read to count sessions) is skipped.
    n = run.session
    while (root / f"session_{n}").exists():
        n += 1
    session = f"session_{n}"
    group = RankGroup(rank, collect, session, root / session)
    if collect:
        group.parts.mkdir(parents=True, exist_ok=True)
    run.ranks = group
    run.system_prefix = group.prefix
    # Before the run closes: the other ranks' points go in through log_metric. Outside the
    # registry lock: it may wait for a rank that has not ended yet (bounded).
    run.before_end(group.merge_or_warn)
    run.journal.write("ranks", rank=rank.attributes(), collect_all_ranks=collect, session=session,
                      parts=str(group.parts))
    run.set_tags({"prov4ml.world_size": rank.world_size, "prov4ml.ranks_recorded": "all" if collect else "0"})
    run.start_activity(group.ident(0), "Rank", rank.label,
                       attributes={**rank.attributes(), "session": session, "writes_mlflow_run": True})
    return group


def shared_of(run: RunRecorder) -> dict[str, Any]:
    """What rank zero tells the other ranks after opening ``run``."""
    group = run.ranks
    return {"run_id": run.run_id, "session": group.session if group is not None and group.collect else None}


def rank_recorder(info: RunInfo, rank: RankInfo, config: RunConfig, parent: Any = None) -> RunRecorder:
    """The recorder of a rank other than zero: journal and metric sidecar in its part folder
    (``info.provenance_dir``), no MLflow, no PROV document (rank zero merges the part into its own)."""
    part = RunRecorder(config, info, NullSink(), parent=parent, document=False)
    part.journal.write("rank", rank=rank.attributes())
    return part


def open_part(rank: RankInfo, shared: Mapping[str, Any], config: RunConfig, *,
              join_current: bool) -> RunRecorder | SilentRun | None:
    """Open this rank's part of the run rank zero shared, and make it the current run.

    ``join_current`` (the callback): a run the user already opened on this rank takes the
    records instead, and ``None`` is returned.
    """
    from prov4ml_lightning.capture import start_system_metrics

    if join_current and registry.current_run() is not None:
        return None
    run_id, session = shared.get("run_id"), shared.get("session")
    if session is None:  # rank zero records only itself
        return None if join_current else open_silent(rank, run_id, config.nested)
    call = "start_run"
    folder = Path(config.provenance_save_dir).resolve() / f"ranks_{run_id}" / session / f"rank{rank.global_rank}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise Prov4MLInputError(f"{call} on rank {rank.global_rank}: cannot create its part folder {folder} ({err})") \
            from err

    def make(parent: Any) -> RunRecorder:
        info = RunInfo(run_id=str(run_id), experiment_name=config.experiment_name, experiment_id="",
                       run_name=f"rank{rank.global_rank}", namespace=config.namespace, tracking_uri="",
                       provenance_dir=str(folder), start_time=time.time(), user="")
        part = rank_recorder(info, rank, config, parent)
        if config.log_system_metrics:
            start_system_metrics(part, config.system_metrics_interval)
        return part

    return registry.make_current(make, call, config.nested)


class SilentRun:
    """The run of a rank that records nothing (``collect_all_ranks=False``): every call is accepted
    and dropped, so one script runs unchanged on every rank."""

    ranks = None

    def __init__(self, rank: RankInfo, run_id: str | None = None, parent: Any = None) -> None:
        self.rank = rank
        self.run_id = run_id
        self.parent = parent
        self._ended = False
        self._t0 = time.monotonic()

    @property
    def ended(self) -> bool:
        return self._ended

    def elapsed(self) -> float:
        return time.monotonic() - self._t0

    def ancestors(self) -> list[Any]:
        return [] if self.parent is None else [self.parent, *self.parent.ancestors()]

    def log_metric(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_metrics(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_params(self, *args: Any, **kwargs: Any) -> None:
        pass

    def set_tags(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_artifact(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_model(self, *args: Any, **kwargs: Any) -> None:
        pass

    def log_system_metrics(self, *args: Any, **kwargs: Any) -> dict[str, float]:
        return {}

    def flush(self) -> None:
        pass

    def end(self, status: str = "FINISHED", error: str | None = None) -> None:
        v.check_status(status)
        self._ended = True
        registry.release(self)

    def __enter__(self) -> SilentRun:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.end("FAILED" if exc[0] is not None else "FINISHED")


def open_silent(rank: RankInfo, run_id: str | None = None, nested: bool = False) -> SilentRun:
    """Make a :class:`SilentRun` the current run of this rank (a child of the open one when ``nested``)."""
    return registry.make_current(lambda parent: SilentRun(rank, run_id, parent), "start_run", nested)


def start_on_ranks(open_zero: Callable[[RankInfo | None], Any], config: RunConfig) -> Any:
    """``start_run`` of the functional API in any process of a job.

    Not distributed: ``open_zero(None)``. Distributed: rank zero opens the run; with
    ``collect_all_ranks`` the other ranks learn its id (one broadcast: every rank must call
    ``start_run``) and record into their part; without it they get a run that records nothing,
    and no rank communicates.
    """
    rank = rank_from_env()
    if not rank.distributed:
        return open_zero(None)
    if not config.collect_all_ranks:
        return open_zero(rank) if rank.global_rank == 0 else open_silent(rank, nested=config.nested)
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        raise Prov4MLInputError(
            f"start_run(collect_all_ranks=True): rank {rank.global_rank} of {rank.world_size} found no "
            "initialised torch.distributed process group; call torch.distributed.init_process_group() before "
            "start_run, so the ranks can share the run id (or pass collect_all_ranks=False)"
        )

    def zero() -> tuple[Any, dict[str, Any]]:
        run = open_zero(rank)
        return run, shared_of(run)

    run, shared = share_run(rank, zero, torch_broadcast, "start_run")
    if rank.global_rank == 0:
        return run
    return open_part(rank, shared, config, join_current=False)
