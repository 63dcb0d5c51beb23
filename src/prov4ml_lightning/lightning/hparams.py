"""The hyperparameters of a Lightning fit: module and datamodule ``hparams``, trainer settings,
optimizers and LR schedulers, as flat ``{key: value}`` dicts ready for ``RunRecorder.log_params``.

Key layout (documented in the README's callback section):

- ``<name>``: the LightningModule's ``save_hyperparameters()`` values, as Lightning's own
  loggers log them; nested dicts become ``outer/inner``.
- ``<name>`` too for the LightningDataModule's ``hparams``: Lightning merges module and datamodule
  hparams for its loggers, so MLFlowLogger writes both at the top level; a datamodule value that
  differs from the module's under the same name (Lightning's loggers refuse that fit) is kept as
  ``datamodule/<name>``.
- ``trainer/<setting>``: max_epochs, precision, accumulate_grad_batches, gradient clipping,
  strategy, accelerator, devices, limits, ``seed`` when ``lightning.seed_everything`` set one;
  ``deterministic`` (``True``, ``False`` or ``"warn"``) and ``benchmark`` as torch has them when the
  fit starts (the Trainer's arguments set them there; Lightning does not keep them).
- ``checkpoint/<setting>`` and ``early_stopping/<setting>``: the settings of the fit's
  ModelCheckpoint (monitor, mode, save_top_k, every_n_epochs, every_n_train_steps,
  train_time_interval, save_last, save_weights_only) and EarlyStopping (monitor, mode, patience,
  min_delta, stopping_threshold, divergence_threshold, check_finite, strict) callbacks;
  ``checkpoint/<i>/<setting>`` when there are several.
- ``optimizer/<i>/<setting>``: class and defaults of optimizer ``i`` (``lr``, ``betas``, ...),
  and the ``lr`` of each param group when groups differ.
- ``lr_scheduler/<i>/<setting>``: class, ``interval``, ``frequency``, ``monitor`` and the
  scheduler's constructor settings (its running state, e.g. ``last_epoch``, is left out).

Also here: the early-stopping decision (:func:`early_stopping_state`), an attribute of the fit.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

from prov4ml_lightning.errors import Prov4MLWarning, warn
from prov4ml_lightning.tracking import validation as v

__all__ = [
    "callback_params",
    "clean_hparams",
    "datamodule_hparams",
    "early_stopping_decisions",
    "early_stopping_state",
    "fit_params",
    "lr_stats",
    "module_hparams",
    "optimizer_params",
    "prov_attr",
    "trainer_params",
    "warn_renamed",
]

_SCALARS = (bool, int, float, str)
# Scheduler state_dict entries that are running state, not settings.
_SCHEDULER_STATE = {"last_epoch", "best", "cooldown_counter", "num_bad_epochs", "mode_worse", "verbose",
                    "base_lrs", "min_lrs"}


def fit_params(trainer: Any, module: Any, notes: list[str]) -> dict[str, Any]:
    """Every hyperparameter of a fit as one flat ``{"a/b": value}`` dict.

    Each source is flattened on its own, so a module hparam named ``optimizer`` and the
    ``optimizer/0/...`` settings both survive; on a clash of whole keys the module's value wins.
    Keys the user's module or datamodule hold that no run accepts are renamed (:func:`clean_hparams`)
    and noted in ``notes``.
    """
    from prov4ml_lightning.tracking.validation import flatten_params

    flat = flatten_params(clean_hparams(module_hparams(module), notes), "Prov4MLCallback")
    datamodule = flatten_params(clean_hparams(datamodule_hparams(trainer.datamodule), notes), "Prov4MLCallback")
    for key, value in datamodule.items():
        if key in flat and flat[key] != value:
            flat[f"datamodule/{key}"] = value
        else:
            flat.setdefault(key, value)
    for source in (trainer_params(trainer), callback_params(trainer), optimizer_params(trainer)):
        for key, value in flatten_params(source, "Prov4MLCallback").items():
            flat.setdefault(key, value)
    return flat


def module_hparams(module: Any) -> dict[str, Any]:
    """``module.hparams`` as a plain dict (empty when ``save_hyperparameters`` was not called)."""
    hparams = getattr(module, "hparams", None)
    return dict(hparams) if isinstance(hparams, Mapping) else {}


def datamodule_hparams(datamodule: Any) -> dict[str, Any]:
    """``datamodule.hparams`` as a plain dict (empty without a datamodule or its ``save_hyperparameters``)."""
    if datamodule is None:
        return {}
    hparams = getattr(datamodule, "hparams", None)
    return dict(hparams) if isinstance(hparams, Mapping) else {}


def trainer_params(trainer: Any) -> dict[str, Any]:
    """The trainer settings that shape a fit, under ``trainer/``."""
    settings: dict[str, Any] = {}
    for name in ("max_epochs", "min_epochs", "max_steps", "min_steps", "precision", "accumulate_grad_batches",
                 "gradient_clip_val", "gradient_clip_algorithm", "num_nodes", "num_devices", "log_every_n_steps",
                 "check_val_every_n_epoch", "val_check_interval", "limit_train_batches", "limit_val_batches",
                 "limit_test_batches", "limit_predict_batches", "fast_dev_run", "num_sanity_val_steps",
                 "reload_dataloaders_every_n_epochs"):
        value = getattr(trainer, name, None)
        if value is not None:
            settings[name] = value if isinstance(value, _SCALARS) else str(value)
    settings["strategy"] = type(trainer.strategy).__name__
    settings["accelerator"] = type(trainer.accelerator).__name__
    settings["device_ids"] = str(list(getattr(trainer, "device_ids", []) or []))
    settings["world_size"] = getattr(trainer, "world_size", 1)
    settings.update(_torch_determinism())
    seed = os.environ.get("PL_GLOBAL_SEED")  # set by lightning.seed_everything
    if seed is not None:
        settings["seed"] = int(seed) if seed.lstrip("-").isdigit() else seed
    return {"trainer": settings}


def _torch_determinism() -> dict[str, Any]:
    """``deterministic`` and ``benchmark`` as the Trainer leaves them in torch."""
    try:
        import torch
    except ImportError:
        return {}
    deterministic: bool | str = torch.are_deterministic_algorithms_enabled()
    if deterministic and torch.is_deterministic_algorithms_warn_only_enabled():
        deterministic = "warn"
    return {"deterministic": deterministic, "benchmark": bool(torch.backends.cudnn.benchmark)}


_CHECKPOINT_SETTINGS = {"monitor": "monitor", "mode": "mode", "save_top_k": "save_top_k",
                        "every_n_epochs": "_every_n_epochs", "every_n_train_steps": "_every_n_train_steps",
                        "train_time_interval": "_train_time_interval", "save_last": "save_last",
                        "save_weights_only": "save_weights_only"}
_EARLY_STOPPING_SETTINGS = ("monitor", "mode", "patience", "min_delta", "stopping_threshold", "divergence_threshold",
                            "check_finite", "strict")


def callback_params(trainer: Any) -> dict[str, Any]:
    """The settings of the fit's ModelCheckpoint and EarlyStopping callbacks, under ``checkpoint/``
    and ``early_stopping/`` (``checkpoint/<i>/`` when there are several)."""
    out: dict[str, Any] = {}
    groups = (("checkpoint", getattr(trainer, "checkpoint_callbacks", None) or [], _CHECKPOINT_SETTINGS),
              ("early_stopping", getattr(trainer, "early_stopping_callbacks", None) or [],
               {name: name for name in _EARLY_STOPPING_SETTINGS}))
    for prefix, callbacks, names in groups:
        per: dict[str, Any] = {}
        for i, callback in enumerate(callbacks):
            settings: dict[str, Any] = {"class": type(callback).__name__}
            for key, attr in names.items():
                value = getattr(callback, attr, None)
                if key == "min_delta" and isinstance(value, (int, float)):
                    value = abs(value)  # EarlyStopping stores it signed by mode
                if value is not None:
                    settings[key] = _scalar(value)
            per[str(i)] = settings
        if len(per) == 1:
            out[prefix] = per["0"]
        elif per:
            out[prefix] = per
    return out


def optimizer_params(trainer: Any) -> dict[str, Any]:
    """Optimizers and LR schedulers with their settings, under ``optimizer/`` and ``lr_scheduler/``."""
    out: dict[str, Any] = {}
    for i, opt in enumerate(getattr(trainer, "optimizers", []) or []):
        inner = getattr(opt, "optimizer", opt)  # LightningOptimizer wraps the torch one
        settings: dict[str, Any] = {"class": type(inner).__name__, "param_groups": len(inner.param_groups)}
        for key, value in getattr(inner, "defaults", {}).items():
            if value is not None and key != "params":
                # a tuple of numbers (Adam's betas) stays a list: JSON in PROV, never "(0.9, 0.999)"
                settings[key] = (value if isinstance(value, _SCALARS) else list(value)
                                 if isinstance(value, (tuple, list)) and all(isinstance(x, _SCALARS) for x in value)
                                 else str(value))
        lrs = [group.get("lr") for group in inner.param_groups]
        if len(set(map(str, lrs))) > 1:
            settings.update({f"pg{j}/lr": _scalar(lr) for j, lr in enumerate(lrs)})
        out[str(i)] = settings
    schedulers: dict[str, Any] = {}
    for i, config in enumerate(getattr(trainer, "lr_scheduler_configs", []) or []):
        scheduler = config.scheduler
        settings = {"class": type(scheduler).__name__, "interval": config.interval, "frequency": config.frequency}
        if config.monitor:
            settings["monitor"] = config.monitor
        try:
            state = scheduler.state_dict()
        except Exception:  # a custom scheduler without a usable state_dict: its class is enough
            state = {}
        for key, value in state.items():
            if not key.startswith("_") and key not in _SCHEDULER_STATE and isinstance(value, _SCALARS):
                settings[key] = value
        schedulers[str(i)] = settings
    result: dict[str, Any] = {}
    if out:
        result["optimizer"] = out
    if schedulers:
        result["lr_scheduler"] = schedulers
    return result


def lr_stats(trainer: Any, interval: str) -> dict[str, float]:
    """The learning rates ``LearningRateMonitor()`` (``logging_interval=None``) logs now, under its
    names (``lr-Adam``, ``lr-Adam/pg1``..., ``lr-Adam-1``, a scheduler's ``name``): ``interval``
    ``"step"`` (at a training batch's start: per-step schedulers) or ``"epoch"`` (at an epoch's
    start: per-epoch schedulers); optimizers without a scheduler at both. The names come from
    Lightning's own monitor, worked out once per set of optimizers and schedulers (:func:`_lr_plan`);
    its values are read here, so ``trainer.callback_metrics`` stays as the user's callbacks left it."""
    return {name: group["lr"] for when, group, name in _lr_plan(trainer) if when is None or interval in (when, "any")}


_LR_PLAN: list[Any] = [None, []]  # [the key of the optimizers and schedulers it was made for, the plan]


def _lr_plan(trainer: Any) -> list[tuple[str | None, dict[str, Any], str]]:
    """``(interval or None for every point, param group, name)`` of each rate ``LearningRateMonitor`` logs.
    Naming them takes ~40 us (a monitor and its name search); a training step reads them, so the plan is
    kept while the trainer's optimizers, schedulers and their param groups are the same objects."""
    from collections import defaultdict

    configs = getattr(trainer, "lr_scheduler_configs", []) or []
    optimizers = getattr(trainer, "optimizers", []) or []
    key = (tuple(map(id, configs)), tuple(id(c.scheduler) for c in configs),
           tuple(id(g) for o in optimizers for g in o.param_groups))
    if _LR_PLAN[0] == key:
        return _LR_PLAN[1]  # type: ignore[no-any-return]
    from lightning.pytorch.callbacks import LearningRateMonitor

    monitor = LearningRateMonitor()
    names, with_scheduler, types = monitor._find_names_from_schedulers(configs)
    plan: list[tuple[str | None, dict[str, Any], str]] = []
    for group_names, config in zip(names, configs):
        plan.extend((config.interval, group, name)
                    for group, name in zip(config.scheduler.optimizer.param_groups, group_names))
    # Optimizers without a scheduler are logged at both points, as the monitor does.
    opt_names, without = monitor._find_names_from_optimizers(
        optimizers, seen_optimizers=with_scheduler,
        seen_optimizer_types=types if isinstance(types, defaultdict) else defaultdict(int, types))
    for opt, group_names in zip(without, opt_names):
        plan.extend((None, group, name) for group, name in zip(opt.param_groups, group_names))
    _LR_PLAN[:] = [key, plan]
    return plan


def clean_hparams(hparams: Mapping[str, Any], notes: list[str], prefix: str = "") -> dict[str, Any]:
    """``hparams`` with keys our params accept: an empty (or blank) key becomes ``_empty`` (``_empty_2``...
    for a second one), any other key its ``str``; nested mappings likewise. Each renamed key is
    noted in ``notes`` (``"'' -> '_empty'"``) for the one warning of the fit. MLflow's own name
    rules (characters, 250 characters) are applied to the result by the sink."""
    out: dict[str, Any] = {}
    for key, value in hparams.items():
        name = key if isinstance(key, str) else str(key)
        if not name.strip():
            name, n = "_empty", 1
            while name in out or name in hparams:
                n += 1
                name = f"_empty_{n}"
            notes.append(f"{prefix + str(key)!r} -> {prefix + name!r}")
        out[name] = clean_hparams(value, notes, f"{prefix}{name}/") if isinstance(value, Mapping) else value
    return out


def _scalar(value: Any) -> Any:
    if hasattr(value, "item"):
        try:
            return value.item()
        except Exception:
            return str(value)
    return value if isinstance(value, _SCALARS) else str(value)


def early_stopping_state(trainer: Any) -> dict[str, Any]:
    """Why training stopped early: monitor, stopped epoch, reason and message of each
    EarlyStopping callback that stopped it (empty when none did)."""
    out: dict[str, Any] = {}
    for callback in getattr(trainer, "early_stopping_callbacks", []) or []:
        reason = getattr(callback, "stopping_reason", None)
        if getattr(reason, "name", "NOT_STOPPED") == "NOT_STOPPED" and not callback.stopped_epoch:
            continue
        out["early_stopping_monitor"] = callback.monitor
        out["stopped_epoch"] = callback.stopped_epoch
        out["stop_reason"] = getattr(reason, "name", "stopped")
        message = getattr(callback, "stopping_reason_message", None)
        if message:
            out["stop_message"] = message
        best = _scalar(getattr(callback, "best_score", None))
        if isinstance(best, float):
            out["early_stopping_best_score"] = best
    return out


def early_stopping_decisions(trainer: Any) -> list[dict[str, Any]]:
    """The decision of each EarlyStopping callback that stopped this fit (``trainer.should_stop`` is
    set and the callback says it stopped): its settings and why, one dict per callback."""
    if not getattr(trainer, "should_stop", False):
        return []
    out = []
    for callback in getattr(trainer, "early_stopping_callbacks", []) or []:
        reason = getattr(callback, "stopping_reason", None)
        if getattr(reason, "name", "NOT_STOPPED") == "NOT_STOPPED" and not callback.stopped_epoch:
            continue
        decision = {"monitor": callback.monitor, "mode": getattr(callback, "mode", None),
                    "patience": getattr(callback, "patience", None),
                    "min_delta": _scalar(abs(getattr(callback, "min_delta", 0.0) or 0.0)),
                    "wait_count": getattr(callback, "wait_count", None), "stopped_epoch": callback.stopped_epoch,
                    "stop_reason": getattr(reason, "name", "stopped"),
                    "stop_message": getattr(callback, "stopping_reason_message", None) or None,
                    "best_score": None if getattr(callback, "best_score", None) is None
                    else _scalar(callback.best_score)}
        out.append({k: val for k, val in decision.items() if isinstance(val, (bool, int, float, str))})
    return out


def warn_renamed(params: Mapping[str, Any], notes: list[str]) -> None:
    """One warning per fit for the hyperparameter names the run stores under another name: empty
    ones (``_empty``) and those MLflow's name rules change (PROV keeps the name before those)."""
    from prov4ml_lightning.sinks.mlflow.sink import mlflow_safe_key

    notes = notes + [f"{key!r} -> {mkey!r} in MLflow" for key in params if (mkey := mlflow_safe_key(key)) != key]
    if notes:
        warn("Prov4MLCallback: hyperparameter names no run accepts as they are were renamed: "
             + ", ".join(notes), Prov4MLWarning)


def prov_attr(value: Any) -> Any:
    """A PROV attribute value: scalars stay typed, lists and tuples become lists (JSON in the
    document, never a Python repr), anything else text."""
    if isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        return list(value)
    return v.param_text(value)
