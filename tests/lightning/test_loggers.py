"""The original prov4ml's Lightning loggers and get_mlflow_logger, without a fit (the original-style
examples in tests/original_style run them in a Trainer)."""

from __future__ import annotations

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Context
from prov4ml_lightning.lightning.loggers import context_of_key


def test_two_loggers_given_the_same_dict_record_each_point_once(run_args, client):
    prov4ml.start_run(**run_args)
    run_id = prov4ml.get_run_id()
    first, second = prov4ml.ProvMLLogger(name="m"), prov4ml.ModelVersioningLogger("./", name="m")
    for step in range(3):
        metrics = {"train_loss": 1.0 / (step + 1), "val_acc": 0.5, "epoch": 0}
        first.log_metrics(metrics, step)
        second.log_metrics(metrics, step)
    second.log_metrics({"train_loss": 9.0}, 3)  # a new dict: recorded
    first.log_hyperparams({"lr": 0.1})
    prov4ml.end_run()
    run = client.get_run(run_id)
    assert [m.step for m in client.get_metric_history(run_id, "train_loss")] == [0, 1, 2, 3]
    assert run.data.tags["metric.context.val_acc"] == "VALIDATION"
    assert "epoch" not in run.data.metrics and run.data.params["lr"] == "0.1"


def test_context_of_key():
    assert context_of_key("val_loss") is Context.VALIDATION
    assert context_of_key("test/acc") is Context.TESTING
    assert context_of_key("train_loss_step") is Context.TRAINING


def test_get_mlflow_logger_writes_into_the_run_and_leaves_ending_it_to_end_run(run_args, client):
    prov4ml.start_run(**run_args)
    run_id = prov4ml.get_run_id()
    logger = prov4ml.get_mlflow_logger()
    assert logger.run_id == run_id
    logger.log_metrics({"direct": 1.0}, step=0)
    logger.finalize("success")
    assert client.get_run(run_id).info.status == "RUNNING"
    prov4ml.end_run()
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and run.data.metrics["direct"] == 1.0
