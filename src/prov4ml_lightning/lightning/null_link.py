"""Ranks other than zero record nothing of the callback's own (their part is ``distributed/``):
:class:`NullLink`, the null object standing in for :class:`~.run_link.RunLink` there."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

__all__ = ["NullLink"]

Ref = tuple[str, str]  # (kind, name) of an entity, as in run_link


class NullLink:
    """What ranks other than zero write: nothing."""

    owned = False
    reopened = False
    run_id = None

    def log(self, *args: Any, **kwargs: Any) -> None:
        pass

    def start(self, *args: Any, **kwargs: Any) -> None:
        pass

    def end(self, *args: Any, **kwargs: Any) -> None:
        pass

    def use(self, *args: Any, **kwargs: Any) -> None:
        pass

    def stop_decision(self, *args: Any, **kwargs: Any) -> None:
        pass

    def select_checkpoints(self, *args: Any, **kwargs: Any) -> None:
        pass

    def fit_params(self, fit: str, params: Mapping[str, Any]) -> list[Ref]:
        return []

    def initial_weights(self, fit: str, module: Any, step: int, epoch: int) -> None:
        pass

    def note_weights(self, step: int, state_dict: Mapping[str, Any]) -> None:
        pass

    def datasets(self, loaders: Any, role: str) -> list[Ref]:
        return []

    def seed_checkpoints(self, trainer: Any, earlier: Mapping[str, str]) -> None:
        pass

    def checkpoint_names(self) -> dict[str, str]:
        return {}

    def use_checkpoint(self, *args: Any, **kwargs: Any) -> None:
        pass

    def poll_checkpoints(self, *args: Any, **kwargs: Any) -> None:
        pass

    def mark_checkpoints(self, trainer: Any) -> None:
        pass

    def log_model(self, module: torch.nn.Module, name: str, fit: str | None, **kwargs: Any) -> None:
        pass

    def close(self, status: str) -> None:
        return None
