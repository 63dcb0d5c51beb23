"""Unit tests of tracking/validation.py: each documented transformation, and errors that name the call."""

from __future__ import annotations

import math
import warnings
from decimal import Decimal

import numpy as np
import pytest
import torch

from prov4ml_lightning.context import Context
from prov4ml_lightning.errors import Prov4MLError, Prov4MLInputError, Prov4MLWarning
from prov4ml_lightning.tracking import validation as v


# -- to_number ------------------------------------------------------------------------------------
@pytest.mark.parametrize("value", [0.5, 3, -1e300])
def test_to_number_passes_python_numbers_through(value):
    out = v.to_number(value, "log_metric", "loss")
    assert out == value and type(out) is type(value)


@pytest.mark.parametrize(("value", "expected"), [
    (np.float32(0.5), 0.5), (np.int64(7), 7), (np.array([2.5]), 2.5), (np.array(4, dtype=np.uint8), 4),
])
def test_to_number_turns_numpy_scalars_into_python_numbers(value, expected):
    out = v.to_number(value, "log_metric", "loss")
    assert out == expected and type(out) in (int, float)


def test_to_number_keeps_tensors_as_detached_0d_tensors():
    weight = torch.tensor([1.5], requires_grad=True)
    out = v.to_number(weight * 2, "log_metric", "loss")  # a one-element 1-d tensor with a graph
    assert isinstance(out, torch.Tensor)
    assert out.dim() == 0 and not out.requires_grad and out.grad_fn is None
    assert out.item() == 3.0


def test_to_number_turns_number_subclasses_into_floats():
    class Meters(float):
        pass

    out = v.to_number(Meters(2.0), "log_metric", "loss")
    assert out == 2.0 and type(out) is float


@pytest.mark.parametrize(("value", "message"), [
    ("abc", "log_metric('loss', 'abc'): value must be a real number (int, float, NumPy scalar or 0-d tensor), "
            "got str"),
    (True, "log_metric('loss', True): value must be a real number (int, float, NumPy scalar or 0-d tensor), got bool"),
    (np.bool_(True), "got bool"),
    (None, "got NoneType"),
    (Decimal("1.5"), "got Decimal"),
    (1 + 2j, "got complex"),
    (torch.ones(3), "log_metric('loss', tensor(shape=(3,), dtype=torch.float32)): value must be a scalar, "
                    "got a tensor of shape (3,)"),
    (torch.tensor(True), "value must be a real number, got a torch.bool tensor"),
    (torch.tensor(1 + 1j), "value must be a real number, got a torch.complex64 tensor"),
    (np.array([1.0, 2.0]), "got ndarray"),
])
def test_to_number_errors_name_the_call_key_and_value(value, message):
    with pytest.raises(Prov4MLInputError) as info:
        v.to_number(value, "log_metric", "loss")
    assert message in str(info.value)
    assert isinstance(info.value, Prov4MLError) and isinstance(info.value, ValueError)


def test_to_number_error_shortens_a_long_repr():
    with pytest.raises(Prov4MLInputError) as info:
        v.to_number("x" * 500, "log_metrics", "k")
    shown = str(info.value).split("log_metrics('k', ", 1)[1].split("): ", 1)[0]
    assert len(shown) == 60 and shown.endswith("...")


# -- to_floats ------------------------------------------------------------------------------------
def test_to_floats_keeps_exact_values_across_dtypes():
    # One stack of mixed dtypes would make 2**24 + 1 a float32 (2**24): each dtype is stacked apart.
    values = [torch.tensor(2**24 + 1, dtype=torch.int64), torch.tensor(0.25, dtype=torch.float32), 3,
              torch.tensor(0.1, dtype=torch.float64), 1.5]
    out = v.to_floats(values)
    assert out == [float(2**24 + 1), 0.25, 3.0, 0.1, 1.5]
    assert all(type(x) is float for x in out)


# -- keys and names --------------------------------------------------------------------------------
def test_check_finite_warns_and_reports_non_finite_values():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert v.check_finite(1.0, "metric 'loss'") is True
    for value in (math.nan, math.inf, -math.inf):
        with pytest.warns(Prov4MLWarning,
                          match=r"metric 'loss' \(training\) at step 3 is .*record it as is.*1\.7976931348623157e308"):
            assert v.check_finite(value, "metric 'loss' (training) at step 3") is False


@pytest.mark.parametrize("key", ["", "   ", None, 5])
def test_check_key_needs_a_non_empty_string(key):
    with pytest.raises(Prov4MLInputError, match=rf"^log_param: key must be a non-empty string, got {key!r}$"):
        v.check_key(key, "log_param")


def test_check_context_accepts_contexts_and_their_values():
    assert v.check_context(Context.VALIDATION, "log_metric") is Context.VALIDATION
    assert v.check_context("testing", "log_metric") is Context.TESTING
    with pytest.raises(Prov4MLInputError, match=r"^log_metric: context must be a Context \(TRAINING, VALIDATION, "
                                                r"TESTING, EVALUATION\), got 'train'$"):
        v.check_context("train", "log_metric")


@pytest.mark.parametrize(("name", "message"), [
    ("", "must be a non-empty string, got ''"),
    (None, "must be a non-empty string, got None"),
    ("a/b", "must not contain path separators, NUL or '..'"),
    ("a\\b", "must not contain path separators"),
    ("a\x00b", "must not contain path separators"),
    ("..", "must not contain path separators"),
    ("a..b", "must not contain path separators"),
    ("m" * 251, "must be at most 250 characters"),
])
def test_check_name_refuses_what_cannot_be_a_file_name(name, message):
    with pytest.raises(Prov4MLInputError) as info:
        v.check_name(name, "log_model", "model_name")
    assert str(info.value).startswith("log_model: model_name")
    assert message in str(info.value)


def test_check_name_accepts_a_plain_name():
    assert v.check_name("model-1.v2", "log_model") == "model-1.v2"


# -- namespaces ------------------------------------------------------------------------------------
@pytest.mark.parametrize(("given", "expected"), [
    ("www.example.org", "http://www.example.org/"),
    ("  www.example.org  ", "http://www.example.org/"),
    ("https://example.org/ns", "https://example.org/ns/"),
    ("https://example.org/ns/", "https://example.org/ns/"),
    ("https://example.org/ns#", "https://example.org/ns#"),
    ("localhost:8080/ns", "http://localhost:8080/ns/"),
    ("urn:example:ns:", "urn:example:ns:/"),
])
def test_normalise_namespace(given, expected):
    assert v.normalise_namespace(given) == expected


@pytest.mark.parametrize(("given", "message"), [
    ("", "start_run: prov_user_namespace must be a non-empty string, got ''"),
    (5, "start_run: prov_user_namespace must be a non-empty string, got 5"),
    ("mailto:x", "(scheme 'mailto' names no namespace)"),
    ("http://example.org:99999/", "(bad port)"),
    ("https://alice:secret@example.org/", "(no user name or password in it)"),
    ("not an iri", "is not a usable IRI; expected e.g. 'www.example.org'"),
    ("http://", "is not a usable IRI"),
])
def test_normalise_namespace_errors_name_the_call(given, message):
    with pytest.raises(Prov4MLInputError) as info:
        v.normalise_namespace(given)
    assert message in str(info.value)
    assert str(info.value).startswith("start_run: prov_user_namespace")


def test_normalise_namespace_names_the_calling_front_door():
    with pytest.raises(Prov4MLInputError, match=r"^Prov4MLCallback: prov_user_namespace"):
        v.normalise_namespace("", "Prov4MLCallback")


# -- params -----------------------------------------------------------------------------------------
def test_flatten_params_joins_levels_with_slashes():
    flat = v.flatten_params({"opt": {"name": "sgd", "sched": {"gamma": 0.5}}, "lr": 0.1, "empty": {}, 3: "x"},
                            "log_params")
    assert flat == {"opt/name": "sgd", "opt/sched/gamma": 0.5, "lr": 0.1, "empty": {}, "3": "x"}


def test_flatten_params_errors_name_the_call():
    with pytest.raises(Prov4MLInputError, match=r"^log_params: params must be a mapping, got list$"):
        v.flatten_params([("lr", 0.1)], "log_params")  # type: ignore[arg-type]
    with pytest.raises(Prov4MLInputError, match=r"^log_params: key must be a non-empty string, got ''$"):
        v.flatten_params({"opt": {"": 1}}, "log_params")


@pytest.mark.parametrize(("value", "text"), [
    (torch.tensor(3), "3"), (torch.tensor(0.5), "0.5"), ([1, 2], "[1, 2]"), (None, "None"), ("adam", "adam"),
])
def test_param_text_is_what_mlflow_stores(value, text):
    assert v.param_text(value) == text


@pytest.mark.slow
def test_infinite_values_read_back_as_the_warning_says(run_args, client):
    """The warning's claim, checked against MLflow's SQLite store: inf comes back as the largest float."""
    import sys

    import prov4ml_lightning as prov4ml

    with pytest.warns(Prov4MLWarning, match="1.7976931348623157e308"), prov4ml.start_run(**run_args) as run:
        prov4ml.log_metric("blowup", float("inf"), step=0)
        prov4ml.log_metric("blowup", float("-inf"), step=1)
    (key,) = [k for k in client.get_run(run.run_id).data.metrics if k.endswith("blowup")]
    values = [m.value for m in sorted(client.get_metric_history(run.run_id, key), key=lambda m: m.step)]
    assert values == [sys.float_info.max, -sys.float_info.max]
