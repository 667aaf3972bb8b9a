"""Named SQL parameters bound on a Spark Connect session (session.bind_parameters), and the live-metric
text the progress line parses: no Spark needed."""

from __future__ import annotations

import pytest

from spark_jobs.cli import JobError
from spark_jobs.session import bind_parameters, sql_literal
from spark_jobs.progress import _metric_number


def test_parameters_become_typed_literals_outside_quotes_and_comments():
    text = ("SELECT ':x' AS s, `:x` AS q, :x AS v, a::int, CEIL(:fraction * n) -- :x\n"
            "FROM t /* :x */ WHERE :flag AND n >= :n")
    bound = bind_parameters(text, {"x": 2, "fraction": 0.2, "flag": True, "n": 3})
    assert bound == ("SELECT ':x' AS s, `:x` AS q, 2L AS v, a::int, CEIL(0.2D * n) -- :x\n"
                     "FROM t /* :x */ WHERE TRUE AND n >= 3L")


@pytest.mark.parametrize("value", ["0.2", "x' OR '1'='1", None, float("nan"), float("inf"), [1]])
def test_only_booleans_and_finite_numbers_are_bound(value):
    with pytest.raises(TypeError, match="only booleans and numbers"):
        sql_literal(value)


def test_a_parameter_without_a_value_is_an_error():
    with pytest.raises(JobError, match=r"SQL parameter :missing has no value"):
        bind_parameters("SELECT :missing", {"other": 1})


def test_live_metric_values_as_the_status_store_prints_them():
    assert _metric_number("16") == 16
    assert _metric_number("1,234") == 1234
    assert _metric_number("total (min, med, max)\n1,234 (10, 20, 30)") == 1234
    assert _metric_number("") == 0
