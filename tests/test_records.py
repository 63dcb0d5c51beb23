"""Unit tests of tracking/records.py: the summary statistics of a metric series."""

from __future__ import annotations

import math

from prov4ml_lightning.context import Context
from prov4ml_lightning.records import MetricSeries


def _series(*points: tuple[int, float, int]) -> MetricSeries:
    s = MetricSeries("loss", Context.TRAINING, "training/loss")
    for step, value, ts in points:
        s.add(step, value, ts)
    return s


def test_an_empty_series():
    s = _series()
    assert s.count == 0 and s.non_finite == 0
    assert s.first_step is None and s.last_step is None and s.first_time is None and s.last_time is None
    assert s.min_value == math.inf and s.max_value == -math.inf and math.isnan(s.last_value)


def test_summary_of_finite_points():
    s = _series((0, 0.5, 1_000), (1, 0.125, 2_500), (5, 0.75, 4_000), (6, 0.25, 4_001))
    assert s.count == 4
    assert (s.first_step, s.last_step) == (0, 6)
    assert (s.min_value, s.max_value, s.last_value) == (0.125, 0.75, 0.25)
    assert (s.first_time, s.last_time) == (1.0, 4.001)  # milliseconds in, seconds out
    assert s.non_finite == 0


def test_non_finite_points_are_counted_but_stay_out_of_min_and_max():
    s = _series((0, 0.5, 0), (1, math.nan, 1), (2, math.inf, 2), (3, -math.inf, 3), (4, 2.0, 4), (5, math.nan, 5))
    assert s.count == 6 and s.non_finite == 4
    assert (s.min_value, s.max_value) == (0.5, 2.0)
    assert math.isnan(s.last_value)  # the last point is recorded as it was
    assert s.last_step == 5


def test_a_series_of_only_non_finite_points_has_no_min_or_max():
    s = _series((0, math.nan, 0), (1, math.inf, 1))
    assert s.count == s.non_finite == 2
    assert s.min_value == math.inf and s.max_value == -math.inf
    assert s.last_value == math.inf


def test_steps_need_not_increase():
    s = _series((10, 1.0, 0), (3, 2.0, 1))
    assert (s.first_step, s.last_step) == (10, 3)
