"""``Prov4MLCallback``: full provenance of a Lightning fit, validate, test or predict, with no logging code.

A thin front door over the same :class:`~prov4ml_lightning.tracking.recorder.RunRecorder` the functional
API uses; its hooks read Lightning's state and hand it to :class:`.run_link.RunLink` (the
writes), :mod:`.loops` (epochs and evaluation loops) and :mod:`.hparams` (hyperparameters).
What is recorded: the class docstring and the README's callback section.
"""

from __future__ import annotations

import logging
import os
import uuid
import weakref
from collections.abc import Mapping
from typing import Any

import lightning.pytorch as pl
from typing_extensions import override

from prov4ml_lightning.distributed.handoff import handoff_path, read_handoff, write_handoff
from prov4ml_lightning.distributed.parts import SilentRun, open_part, shared_of
from prov4ml_lightning.distributed.ranks import rank_from_trainer, share_run
from prov4ml_lightning.errors import Prov4MLInputError, Prov4MLWarning, warn
from prov4ml_lightning.lightning.checkpoints import CheckpointHooks
from prov4ml_lightning.lightning.evaluation import EvaluationHooks
from prov4ml_lightning.lightning.hparams import (
    early_stopping_decisions,
    early_stopping_state,
    fit_params,
    prov_attr,
    warn_renamed,
)
from prov4ml_lightning.lightning.logged import LoggedValuesHooks
from prov4ml_lightning.lightning.loops import EpochTracker, LoopTracker
from prov4ml_lightning.lightning.null_link import NullLink
from prov4ml_lightning.lightning.run_link import RunLink, open_link
from prov4ml_lightning.tracking import validation as v
from prov4ml_lightning.tracking.config import RunConfig
from prov4ml_lightning.tracking.recorder import RunOutputs, RunRecorder

__all__ = ["Prov4MLCallback"]

log = logging.getLogger(__name__)


class Prov4MLCallback(LoggedValuesHooks, CheckpointHooks, EvaluationHooks):
    r"""Record a Lightning run as an MLflow run and a W3C PROV document.

    Per ``trainer.fit``: hyperparameters (``save_hyperparameters()`` of the module and datamodule,
    trainer settings, optimizers and LR schedulers), every value the module logs with
    ``self.log`` with the keys, steps and values Lightning hands its loggers (:mod:`.tap`; the
    README's "Step semantics"), the context of each key in PROV and in the MLflow tag
    ``metric.context.<key>``, learning rates as ``LearningRateMonitor`` logs them, one PROV
    activity per fit, training epoch, validation loop and sanity check, the datasets each one
    read, every checkpoint ModelCheckpoint saved, the early-stopping decision, and the final
    model. The sanity check is recorded as an activity but its metrics are not (Lightning's
    loggers drop them too). With ``fast_dev_run`` nothing is recorded, as by Lightning's loggers.

    One callback per Trainer (a second raises in ``setup``, before training); a ``fit`` in
    another Trainer that resumes no checkpoint starts a new run. Hyperparameter and metric names
    no run accepts as they are are renamed (README, "Hyperparameters"), with one warning.

    In a distributed job (``strategy="ddp"``, ``"ddp_spawn"``, several nodes) global rank zero
    writes the one MLflow run and PROV document; each rank is a ``Rank`` activity of it (global,
    local and node rank, host, device, status), and with ``log_system_metrics`` each rank's
    samples are ``rank<k>/system/...`` (docs/distributed-and-servers.md). The values the module
    logs are rank zero's, as Lightning reduced them (``sync_dist``), like Lightning's loggers.

    Args:
        prov_user_namespace, experiment_name, provenance_save_dir, mlflow_save_dir, nested,
            tags, description, log_system_metrics, tracking_uri, run_name,
            system_metrics_interval, provenance_formats, flush_interval, wait_for_mlflow: as for
            ``prov4ml.start_run``
            (the fields of :class:`~prov4ml_lightning.tracking.config.RunConfig`; every rank
            records, as with ``collect_all_ranks=True``). ``nested=True`` starts a child of a run
            the user opened instead of joining it.
        log_every_n_steps: ``None`` records every training step value Lightning logs; ``N`` only
            those at steps ``s`` with ``(s + 1) % N == 0``; 0 epoch values only.
        log_learning_rates: record learning rates as ``LearningRateMonitor()`` names and times them.
        log_datasets: record dataset entities with a content fingerprint of all their data
            (``capture/fingerprint.py``; computed off the training thread).
        log_checkpoints: record each checkpoint file ModelCheckpoint saves (path, sha256, score).
        upload_checkpoints: also copy each checkpoint into the MLflow artifacts. Off by default:
            a checkpoint holds the weights and optimizer state (three times the model for Adam),
            every saved one would be copied, synchronously, into the artifact store, and the
            files stay on disk anyway. PROV keeps the path and sha256 either way.
        log_model: log the trained module at the end of ``fit`` with ``prov4ml.log_model``.
        model_name: the name of that model (default: the module's class name).
        model_card: write a model card (``prov4ml card``'s Markdown with the Hugging Face YAML
            header) when the run ends, as ``model_card_<run_id>.md`` in the provenance folder,
            and log it as an artifact (``model_card/``).
        model_card_license: the license identifier the card's header names (e.g. ``apache-2.0``).
        person_name, person_email, person_orcid, organization: the responsible person and
            organisation, as for ``prov4ml.start_run`` (or ``PROV4ML_PERSON_NAME`` / ``_EMAIL`` /
            ``_ORCID`` and ``PROV4ML_ORGANIZATION``).

    Raises:
        Prov4MLInputError: a namespace, name or option is unusable (at construction); a second
            Prov4MLCallback in the same Trainer (in ``setup``).

    Example::

        import lightning as L
        import prov4ml_lightning as prov4ml

        trainer = L.Trainer(max_epochs=10, callbacks=[prov4ml.Prov4MLCallback(
            prov_user_namespace="www.example.org", experiment_name="mnist",
            provenance_save_dir="prov", mlflow_save_dir="mlflow")])
        trainer.fit(model, datamodule=dm)
        trainer.test(model, datamodule=dm)      # same run, TestLoop activity

        # resume: same MLflow run, a new Fit activity informed by the first one
        trainer.fit(model, datamodule=dm, ckpt_path="last")
    """

    def __init__(
        self,
        prov_user_namespace: str,
        experiment_name: str,
        provenance_save_dir: str | os.PathLike[str],
        mlflow_save_dir: str | os.PathLike[str],
        nested: bool = False,
        tags: Mapping[str, Any] | None = None,
        description: str | None = None,
        log_system_metrics: bool = False,
        *,
        tracking_uri: str | None = None,
        run_name: str | None = None,
        system_metrics_interval: float = 10.0,
        provenance_formats: tuple[str, ...] = ("json",),
        flush_interval: float = 2.0,
        wait_for_mlflow: bool | None = None,
        log_every_n_steps: int | None = None,
        log_learning_rates: bool = True,
        log_datasets: bool = True,
        log_checkpoints: bool = True,
        upload_checkpoints: bool = False,
        log_model: bool = True,
        model_name: str | None = None,
        model_card: bool = False,
        model_card_license: str | None = None,
        person_name: str | None = None,
        person_email: str | None = None,
        person_orcid: str | None = None,
        organization: str | None = None,
    ) -> None:
        super().__init__()
        call = "Prov4MLCallback"
        self.config = RunConfig(
            prov_user_namespace=prov_user_namespace, experiment_name=experiment_name,
            provenance_save_dir=provenance_save_dir, mlflow_save_dir=mlflow_save_dir, nested=nested, tags=tags,
            description=description, log_system_metrics=log_system_metrics, tracking_uri=tracking_uri,
            run_name=run_name, system_metrics_interval=system_metrics_interval,
            provenance_formats=provenance_formats, collect_all_ranks=True, flush_interval=flush_interval,
            wait_for_mlflow=wait_for_mlflow, person_name=person_name, person_email=person_email,
            person_orcid=person_orcid, organization=organization,
            call=call,
        )
        if model_name is not None:
            v.check_name(model_name, call, "model_name")
        if log_every_n_steps is not None and (isinstance(log_every_n_steps, bool)
                                              or not isinstance(log_every_n_steps, int) or log_every_n_steps < 0):
            raise Prov4MLInputError(f"{call}: log_every_n_steps must be None or an int >= 0, "
                                    f"got {log_every_n_steps!r}")
        # Lightning reads state_key around every hook of every callback (its profiler names the
        # action with it): built once, it costs nothing per step.
        self._state_key = self._generate_state_key(experiment_name=experiment_name)
        self.log_every_n_steps = log_every_n_steps
        self.log_learning_rates = log_learning_rates
        self.log_datasets = log_datasets
        self.log_checkpoints = log_checkpoints
        self.upload_checkpoints = upload_checkpoints
        self.log_model = log_model
        self.model_name = model_name
        self.model_card = bool(model_card)
        self.model_card_license = model_card_license
        # ddp_spawn: the ranks run in other processes; rank zero hands the run back (distributed/handoff.py)
        self._home_pid = os.getpid()
        self._handoff_token = uuid.uuid4().hex
        # Survives checkpoints (state_dict): the run, and the fits recorded in it.
        self._run_id: str | None = None
        self._fits = 0
        self._last_fit: str | None = None
        self._loops = LoopTracker()
        self._earlier_checkpoints: dict[str, str] = {}  # path -> PROV name, from the checkpoint state
        # Per session.
        self._link: RunLink | NullLink | None = None
        self._part: RunRecorder | SilentRun | None = None  # this rank's part (ranks other than zero)
        self._outputs: RunOutputs | None = None  # where the run was written when the callback last ended it
        self._fit: str | None = None
        self._loaded: dict[str, Any] | None = None  # step and epoch of the checkpoint Lightning loaded
        self._epochs = EpochTracker()
        self._stage: str | None = None  # a stand-alone validate/test/predict holding the run open
        self._ckpt_pending: tuple[int, int] | None = None
        self._trainer: weakref.ref[pl.Trainer] | None = None  # the Trainer whose run this callback records
        self._listener: Any = None  # listening on that Trainer's logger calls (tap.listen)
        self._dev_run = False  # fast_dev_run: nothing recorded, as Lightning's loggers

    @property
    @override
    def state_key(self) -> str:
        return self._state_key

    # -- the run id and outputs, also in the process that launched ddp_spawn's ranks ---------------
    @property
    def run_id(self) -> str | None:
        """The MLflow run id (None before the first fit, and on ranks that learned none)."""
        self._adopt_handoff()
        return self._run_id

    @run_id.setter
    def run_id(self, value: str | None) -> None:
        self._run_id = value

    @property
    def outputs(self) -> RunOutputs | None:
        """Where the run was written when the callback last ended it (rank zero, or the launching process)."""
        self._adopt_handoff()
        return self._outputs

    @outputs.setter
    def outputs(self, value: RunOutputs | None) -> None:
        self._outputs = value

    def _adopt_handoff(self) -> None:
        # only the process that built the callback, and never a rank that runs in it itself (ddp, one process)
        if os.getpid() != self._home_pid or self._link is not None:
            return
        path = handoff_path(self.config.provenance_save_dir, self._handoff_token)
        if path.exists():
            handed = read_handoff(path)
            if handed is not None:
                self._run_id = handed[0] or self._run_id
                self._outputs = handed[1] or self._outputs

    def __getstate__(self) -> dict[str, Any]:
        # pickled into spawned ranks: a run an earlier fit handed back is the one the ranks reopen
        self._adopt_handoff()
        state = self.__dict__.copy()
        # weak references to this process's Trainer mean nothing in another process (and do not pickle)
        state["_trainer"] = None
        if "_listener" in state:
            state["_listener"] = None
        return state

    # -- run lifecycle ----------------------------------------------------------------------
    def _open(self, trainer: pl.Trainer) -> RunLink | NullLink:
        if self._dev_run:
            return NullLink()
        if self._link is None:
            rank = rank_from_trainer(trainer)

            def open_zero() -> tuple[RunLink | NullLink, dict[str, Any]]:
                link = open_link(rank, self.config, self.run_id)
                return link, shared_of(link.run) if isinstance(link, RunLink) else {"run_id": None}

            # Every rank gets here (fit start, or a stand-alone stage's start) and joins the broadcast
            # of the run id; rank zero alone opens the run.
            link, shared = share_run(rank, open_zero, trainer.strategy.broadcast, "Prov4MLCallback")
            self._link = link if link is not None else NullLink()
            self.run_id = shared.get("run_id") or self.run_id
            if self.model_card and isinstance(self._link, RunLink):
                self._link.run.before_end(self._write_model_card)
            if rank.distributed and rank.global_rank != 0:
                self._part = open_part(rank, shared, self.config, join_current=True)
        return self._link

    def _write_model_card(self, run: Any, status: str) -> None:
        """The model card of ``run`` as it ends (before_end), written and logged as an artifact."""
        try:
            from prov4ml_lightning.cli._view import RunView
            from prov4ml_lightning.cli.card import model_card
            from prov4ml_lightning.provenance import build_document, flatten
            from prov4ml_lightning.tracking.finish import snapshot

            run.flush(wait_for_mlflow=False)  # the last points into the series summaries
            elements, relations = flatten(build_document(snapshot(run)))
            view = RunView(run.provenance_dir / f"provgraph_{run.run_id}.json", elements, relations)
            path = run.provenance_dir / f"model_card_{run.run_id}.md"
            path.write_text(model_card(view, self.model_card_license), encoding="utf-8")
            run.log_artifact(path, artifact_path="model_card")
        except Exception as err:  # the card is a convenience: the run's record must still end well
            warn(f"Prov4MLCallback: the model card could not be written ({err!r})", Prov4MLWarning)

    def _close(self, status: str, error: str | None = None) -> None:
        part, self._part = self._part, None
        if part is not None:  # a rank other than zero: its part is complete, rank zero may merge it
            part.end(status, error)
        link, self._link = self._link, None
        if link is not None:
            outputs = link.close(status)
            if outputs is not None:
                self.outputs = outputs
            if os.getpid() != self._home_pid and isinstance(link, RunLink):  # rank zero of a spawned job
                try:
                    write_handoff(handoff_path(self.config.provenance_save_dir, self._handoff_token),
                                  self._run_id, self._outputs)
                except OSError:
                    log.warning("prov4ml: could not hand run %s back to the launching process", self._run_id)

    @property
    def link(self) -> RunLink | NullLink:
        return self._link if self._link is not None else NullLink()

    # -- fit ----------------------------------------------------------------------------------
    # -- one Trainer's logger calls ----------------------------------------------------------
    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        mine = [cb for cb in trainer.callbacks if isinstance(cb, Prov4MLCallback)]
        if len(mine) > 1:
            # Two would share the process's one current run (the second joined the first's, and
            # both ended it): refused before anything is recorded or trained.
            raise Prov4MLInputError(
                f"Prov4MLCallback: this Trainer has {len(mine)} Prov4MLCallbacks; use one per Trainer "
                "(one callback records fit, validate, test and predict of the Trainer in one run)")
        self._dev_run = bool(getattr(trainer, "fast_dev_run", False))
        if self._dev_run:
            warn("Prov4MLCallback: fast_dev_run is on; nothing is recorded (Lightning turns its loggers "
                 "off for a dev run too)", Prov4MLWarning)
            return
        self._listen(trainer)

    # -- fit ----------------------------------------------------------------------------------
    @override
    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._dev_run:
            return
        previous = self._trainer() if self._trainer is not None else None
        if previous is not None and previous is not trainer and self._loaded is None and self._link is None:
            # The callback's earlier run belongs to another Trainer, whose steps this one restarts:
            # a fit of a new Trainer that resumes no checkpoint is a run of its own.
            self._forget_run()
        self._trainer = weakref.ref(trainer)
        link = self._open(trainer)
        self._fits += 1
        self._fit = f"fit_{self._fits}"
        self._epochs.completed = 0  # epochs this fit ran to their end (a resumed fit counts its own)
        notes: list[str] = []
        params = fit_params(trainer, pl_module, notes)
        warn_renamed(params, notes)
        # Every hyperparameter is a parameter entity the fit uses: the run's, or a new version where
        # this fit's value differs; trainer settings also describe the fit as its attributes.
        attrs: dict[str, Any] = {k: val for k, val in params.items() if k.startswith("trainer/")}
        used = link.fit_params(self._fit, params)
        attrs.update(self._used_checkpoint(trainer, self._fit, restored_model=True))
        # "a/b" keys become "a.b" attribute names ("/" is not allowed in a PROV local name).
        link.start(self._fit, "Fit", f"fit {self._fits}", informed_by=self._last_fit, used=used,
                   attributes={k.replace("/", "."): prov_attr(val) for k, val in attrs.items()})
        if self.log_checkpoints and "resumed_from" not in attrs:  # the weights its first checkpoint derives from
            link.initial_weights(self._fit, pl_module, trainer.global_step, trainer.current_epoch)
        if self.log_checkpoints:
            link.seed_checkpoints(trainer, self._earlier_checkpoints)

    def _forget_run(self) -> None:
        self.run_id, self._fits, self._last_fit, self._earlier_checkpoints = None, 0, None, {}
        self._epochs, self._loops = EpochTracker(), LoopTracker()  # the earlier run's epochs inform nothing here

    @override
    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch(trainer)
        link = self.link
        used = link.datasets(trainer.train_dataloader, "train") if self.log_datasets else []
        self._epochs.start(trainer, link, self._fit, used)
        if self.log_learning_rates:
            self._epochs.learning_rates(trainer, link, "epoch")

    @override
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self._ckpt_pending is not None:
            self._poll_checkpoints(trainer)
        if self.log_learning_rates and self._link is not None and self.log_every_n_steps != 0:
            step = trainer.fit_loop.epoch_loop._batches_that_stepped
            if self.log_every_n_steps is None or (step + 1) % self.log_every_n_steps == 0:
                self._epochs.learning_rates(trainer, self._link, "step")

    @override
    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._ckpt_pending is not None:
            self._poll_checkpoints(trainer)

    def _close_epoch(self, trainer: pl.Trainer, status: str = "FINISHED") -> None:
        if self._epochs.ident is None:
            return
        self._poll_checkpoints(trainer, force=True)  # before the epoch ends: it generated them
        attrs: dict[str, Any] = {"status": status, "last_step": trainer.global_step, **early_stopping_state(trainer)}
        self._epochs.end(self.link, attrs)
        if self._fit is not None:  # EarlyStopping decided this was the last epoch: the decision, with its inputs
            for n, decision in enumerate(early_stopping_decisions(trainer)):
                self.link.stop_decision(self._fit, decision, n)

    @override
    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch(trainer)

    @override
    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._close_epoch(trainer)
        link = self.link
        if self.log_checkpoints:
            self._poll_checkpoints(trainer, force=True)
            link.mark_checkpoints(trainer)
            link.select_checkpoints(trainer, self._fit)
        if self.log_model:
            # A resumed fit's model is a new version of the same name (the recorder counts every session's).
            link.log_model(pl_module, self.model_name or type(pl_module).__name__, self._fit,
                           last_epoch=self._epochs.last_ended(self._fit), step=trainer.global_step)
        link.end(self._fit, {"status": "FINISHED", "last_step": trainer.global_step,
                             "epochs_completed": self._epochs.completed, **early_stopping_state(trainer)})
        self._last_fit, self._fit = self._fit, None
        self._close("FINISHED")

    # -- failures and teardown ------------------------------------------------------------------
    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        status = "KILLED" if _is_termination(exception) else "FAILED"
        link = self.link
        error = f"{type(exception).__name__}: {str(exception)[:500]}"
        # Never raise from here: it would hide the exception that ended the run.
        in_fit = self._fit is not None
        self._unlisten()
        sanity = f"{self._fit}.sanity_check" if in_fit and trainer.sanity_checking else None
        for step in (lambda: sanity and link.end(sanity, {"status": status, "error": error}),
                     lambda: self._close_epoch(trainer, status), lambda: self._end_loop(trainer, status),
                     lambda: in_fit and link.mark_checkpoints(trainer),
                     lambda: in_fit and self.log_checkpoints and link.select_checkpoints(trainer, self._fit),
                     lambda: link.end(self._fit, {"status": status, "error": error,
                                                  "last_step": trainer.global_step,
                                                  "epochs_completed": self._epochs.completed})):
            try:
                step()
            except Exception:
                log.exception("prov4ml: could not record the end of the failed run")
        if self._fit is not None:
            self._last_fit, self._fit = self._fit, None
        self._close(status, error)

    @override
    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # on_fit_end / on_*_end closed everything already; this covers exits that skip them
        # (Lightning's tuner ends a fit through teardown alone).
        self._unlisten()
        if self._link is not None:
            self._close_epoch(trainer)
            self._end_loop(trainer)
            if self._fit is not None:
                self.link.end(self._fit, {"status": "FINISHED", "last_step": trainer.global_step,
                                          "epochs_completed": self._epochs.completed})
                self._last_fit, self._fit = self._fit, None
            self._close("FINISHED")

    # -- state that travels in checkpoints ---------------------------------------------------
    @override
    def state_dict(self) -> dict[str, Any]:
        return {"run_id": self.run_id, "fits": self._fits, "last_fit": self._fit or self._last_fit,
                "checkpoints": {**self._earlier_checkpoints, **self.link.checkpoint_names()}}

    @override
    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # A fresh callback adopts the checkpoint's run (resume). One that already records a run
        # keeps it: testing another run's checkpoint is recorded in this run, which notes the file.
        if self.run_id is not None and state_dict.get("run_id") not in (None, self.run_id):
            return
        self.run_id = state_dict.get("run_id", self.run_id)
        self._fits = state_dict.get("fits", self._fits)
        self._last_fit = state_dict.get("last_fit", self._last_fit)
        self._earlier_checkpoints = dict(state_dict.get("checkpoints", {}))


def _is_termination(exception: BaseException) -> bool:
    """Ctrl+C or SIGTERM (Lightning's ``SIGTERMException``, or ours from ``install_signal_handlers``):
    the run was stopped from outside (MLflow ``KILLED``), not broken (``FAILED``)."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from prov4ml_lightning.signals import RunTerminated

    return isinstance(exception, (KeyboardInterrupt, SIGTERMException, RunTerminated))

