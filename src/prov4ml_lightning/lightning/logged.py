"""What Lightning hands its loggers, recorded by :class:`~prov4ml_lightning.lightning.callback.Prov4MLCallback`:
the callback listens on the Trainer's logger calls (:mod:`.tap`) and records each value under the
same key and step, in the context of the loop that logged it. A part of the callback: its state
(``_link``, ``_loops``, ``_epochs``, ``_fit``, ``log_every_n_steps``) lives in ``Prov4MLCallback``.
"""

from __future__ import annotations

import weakref
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import Callback

from prov4ml_lightning.context import Context
from prov4ml_lightning.lightning.tap import listen, unlisten

__all__ = ["LoggedValuesHooks"]


class LoggedValuesHooks(Callback):
    """The listener on a Trainer's logger calls (mixed into ``Prov4MLCallback``)."""

    def _listen(self, trainer: pl.Trainer) -> None:
        self._unlisten()
        trainer_ref = weakref.ref(trainer)

        def listener(values: dict[str, Any], step: int, step_level: bool) -> None:
            owner = trainer_ref()
            if owner is not None:
                self._on_logged(owner, values, step, step_level)

        if listen(trainer, listener):
            self._listener = (trainer_ref, listener)

    def _unlisten(self) -> None:
        if self._listener is not None:
            trainer_ref, listener = self._listener
            self._listener = None
            trainer = trainer_ref()
            if trainer is not None:
                unlisten(trainer, listener)

    def _on_logged(self, trainer: pl.Trainer, values: dict[str, Any], step: int, step_level: bool) -> None:
        """What Lightning hands its loggers (:mod:`.tap`): recorded under the same keys and step, in the
        context of the loop that logged them, as points of the running activity."""
        if trainer.sanity_checking or self._link is None:
            return
        if trainer.validating or trainer.testing:
            context = Context.VALIDATION if trainer.validating else Context.TESTING
            activity = self._loops.ident or self._fit
        else:
            context, activity = Context.TRAINING, self._epochs.ident or self._fit
            if step_level and not self._step_logged(trainer, step):
                return
        epoch = values.pop("epoch", None) if context is not Context.TRAINING else None
        link = self._link
        link.log(values, context, step, activity)
        if epoch is not None:
            # the epoch counter Lightning adds is the fit's, whichever loop logs it: a training value, a
            # point of the training epoch (else the fit) in progress, of no evaluation loop's segment
            link.log({"epoch": epoch}, Context.TRAINING, step, self._epochs.ident or self._fit)

    def _step_logged(self, trainer: pl.Trainer, step: int) -> bool:
        """Whether a training step value Lightning logs at ``step`` is recorded (``log_every_n_steps``)."""
        every = self.log_every_n_steps
        if every is None:
            return True
        return every > 0 and ((step + 1) % every == 0 or trainer.should_stop)
