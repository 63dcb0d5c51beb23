"""The learning rates the callback records each step are named as ``LearningRateMonitor`` names them,
and read live, although the names are worked out once per set of optimizers (lightning/hparams.py)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from lightning.pytorch.callbacks import LearningRateMonitor
from lightning.pytorch.utilities.types import LRSchedulerConfig

from prov4ml_lightning.lightning.hparams import lr_stats


def _params() -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(torch.zeros(2))]


def _monitor_names(trainer: SimpleNamespace) -> set[str]:
    monitor = LearningRateMonitor()
    names, seen, types = monitor._find_names_from_schedulers(trainer.lr_scheduler_configs)
    opt_names, _ = monitor._find_names_from_optimizers(trainer.optimizers, seen_optimizers=seen,
                                                       seen_optimizer_types=types)
    return {n for group in names + opt_names for n in group}


def test_names_follow_the_optimizers_and_values_are_read_live() -> None:
    adam = torch.optim.Adam(_params(), lr=0.1)
    first = SimpleNamespace(optimizers=[adam], lr_scheduler_configs=[])
    assert lr_stats(first, "step") == {"lr-Adam": 0.1}
    adam.param_groups[0]["lr"] = 0.05
    assert lr_stats(first, "step") == {"lr-Adam": 0.05}  # the value now, not the one named with
    adam.add_param_group({"params": _params(), "lr": 0.2})
    assert lr_stats(first, "epoch") == {"lr-Adam/pg1": 0.05, "lr-Adam/pg2": 0.2} and _monitor_names(first) == {
        "lr-Adam/pg1", "lr-Adam/pg2"}

    sgd = torch.optim.SGD(_params(), lr=0.3)
    config = LRSchedulerConfig(torch.optim.lr_scheduler.StepLR(sgd, step_size=1), interval="epoch", name="sched")
    second = SimpleNamespace(optimizers=[sgd, torch.optim.Adam(_params(), lr=0.4)], lr_scheduler_configs=[config])
    assert lr_stats(second, "step") == {"lr-Adam": 0.4}  # an epoch scheduler's rate is not a step's
    assert lr_stats(second, "epoch") == {"sched": 0.3, "lr-Adam": 0.4}
    assert set(lr_stats(second, "epoch")) == _monitor_names(second)
    assert lr_stats(first, "step") == {"lr-Adam/pg1": 0.05, "lr-Adam/pg2": 0.2}  # back to the first trainer
