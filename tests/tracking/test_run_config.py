"""``RunConfig`` is the one definition of the run options: the front doors' parameters agree with it."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

import prov4ml_lightning as prov4ml
from prov4ml_lightning import Prov4MLInputError, RunConfig

FIELDS = {f.name: f.default for f in dataclasses.fields(RunConfig)}


def test_start_run_takes_every_run_option_with_its_default():
    params = {n: p.default for n, p in inspect.signature(prov4ml.start_run).parameters.items()}
    assert params.keys() == FIELDS.keys()
    for name, default in FIELDS.items():
        expected = inspect.Parameter.empty if default is dataclasses.MISSING else default
        assert params[name] == expected, name


def test_callback_takes_every_run_option_but_collect_all_ranks_with_its_default():
    from prov4ml_lightning.lightning.callback import Prov4MLCallback

    params = {n: p.default for n, p in inspect.signature(Prov4MLCallback.__init__).parameters.items()}
    # the callback always records every rank (collect_all_ranks=True): not an option there
    assert set(FIELDS) - set(params) == {"collect_all_ranks"}
    for name, default in FIELDS.items():
        if name == "collect_all_ranks":
            continue
        expected = inspect.Parameter.empty if default is dataclasses.MISSING else default
        assert params[name] == expected, name


def test_run_config_checks_itself_and_names_the_front_door(tmp_path):
    args = {"prov_user_namespace": "www.example.org", "experiment_name": "x", "provenance_save_dir": tmp_path,
            "mlflow_save_dir": tmp_path}
    config = RunConfig(**args, provenance_formats=("ttl", "json", "ttl"))
    assert config.provenance_formats == ("json", "ttl")
    assert config.namespace == "http://www.example.org/"
    with pytest.raises(Prov4MLInputError, match="start_run: system_metrics_interval must be a number of seconds > 0"):
        RunConfig(**args, system_metrics_interval=0)
    with pytest.raises(Prov4MLInputError, match="Prov4MLCallback: provenance_formats must be among"):
        RunConfig(**args, provenance_formats=("rdf",), call="Prov4MLCallback")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.nested = True  # type: ignore[misc]


def test_a_reopened_run_continues_its_model_versions(run_args):
    import torch

    from prov4ml_lightning.runs import open_run

    run = prov4ml.start_run(**run_args)
    first = run.log_model(torch.nn.Linear(2, 1), "net", log_model_info=False)
    prov4ml.end_run()
    again = open_run(RunConfig(**run_args), run_id=run.run_id)
    second = again.log_model(torch.nn.Linear(2, 1), "net", log_model_info=False)
    out = again.end()
    # reopened by the same process: the same session (a new process would be session 2)
    assert (first.version, second.version, again.session) == (1, 2, 1)
    from tests.helpers import attr, by_type, read_prov

    versions = sorted(attr(m, "version") for m in by_type(read_prov(out.prov_json), "Model"))
    assert versions == [1, 2]  # the first session's model is carried over, the second is a new version


def test_identity_options_are_normalised_and_taken_from_the_environment(tmp_path, monkeypatch):
    args = {"prov_user_namespace": "www.example.org", "experiment_name": "x", "provenance_save_dir": tmp_path,
            "mlflow_save_dir": tmp_path}
    monkeypatch.setenv("PROV4ML_ORGANIZATION", "Example Lab")
    monkeypatch.delenv("PROV4ML_PERSON_NAME", raising=False)
    config = RunConfig(**args, person_orcid="orcid:0000-0002-1825-0097", person_email="mailto:a@example.org")
    assert (config.person_orcid, config.person_email) == ("https://orcid.org/0000-0002-1825-0097", "a@example.org")
    assert (config.organization, config.person_name) == ("Example Lab", None)
    with pytest.raises(Prov4MLInputError, match="Prov4MLCallback: person_email must be an e-mail address"):
        RunConfig(**args, person_email="nobody", call="Prov4MLCallback")
