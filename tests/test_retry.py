"""RetryPolicy, a pure unit with no database: its delays, its limits and its non-retryable errors."""

from __future__ import annotations

import dataclasses
import json

import pytest

import django_durable as durable
from django_durable.engine.failures import failure_from_exception
from django_durable.retry import RetryPolicy

pytestmark = pytest.mark.engine


# -- RetryPolicy ----------------------------------------------------------------


def test_retry_policy_defaults_match_the_contract():
    policy = RetryPolicy()
    assert policy.initial_interval == 1.0
    assert policy.backoff_coefficient == 2.0
    assert policy.maximum_interval is None
    assert policy.maximum_attempts == 0
    assert policy.non_retryable_errors == ()
    assert durable.RetryPolicy is RetryPolicy


def test_delays_back_off_exponentially_up_to_the_maximum_interval():
    policy = RetryPolicy(initial_interval=0.5, backoff_coefficient=3.0, maximum_interval=10.0)
    assert [policy.delay(n) for n in range(1, 6)] == [0.5, 1.5, 4.5, 10.0, 10.0]


def test_default_cap_is_a_hundred_times_the_initial_interval():
    policy = RetryPolicy(initial_interval=2.0)
    assert [policy.delay(n) for n in (1, 2, 3, 7, 8, 50)] == [2.0, 4.0, 8.0, 128.0, 200.0, 200.0]


def test_backoff_coefficient_of_one_gives_a_constant_delay():
    policy = RetryPolicy(initial_interval=3.0, backoff_coefficient=1.0)
    assert {policy.delay(n) for n in range(1, 20)} == {3.0}


def test_maximum_attempts_bounds_retries():
    policy = RetryPolicy(maximum_attempts=3)
    assert policy.allows_retry(1, "RuntimeError")
    assert policy.allows_retry(2, "RuntimeError")
    assert not policy.allows_retry(3, "RuntimeError")
    assert not policy.allows_retry(4, "RuntimeError")


def test_zero_maximum_attempts_means_unlimited():
    assert RetryPolicy().allows_retry(10_000, "RuntimeError")


def test_one_maximum_attempt_means_no_retry():
    assert not RetryPolicy(maximum_attempts=1).allows_retry(1, "RuntimeError")


class CardDeclined(ValueError):
    pass


def failure_of(exc: BaseException) -> tuple[str, tuple[str, ...]]:
    """The (type, mro) an activity failure records, as the worker passes them on."""
    failure = failure_from_exception(exc)
    return failure["type"], tuple(failure["mro"])


@pytest.mark.parametrize(
    "configured",
    [
        ("CardDeclined",),  # bare name
        ("tests.test_retry.CardDeclined",),  # qualified name
        (CardDeclined,),  # the class
        ("ValueError",),  # a base class, by name
    ],
)
def test_non_retryable_errors_match_custom_exceptions(configured):
    policy = RetryPolicy(non_retryable_errors=configured)
    error_type, mro = failure_of(CardDeclined("no funds"))
    assert not policy.allows_retry(1, error_type, mro)
    other_type, other_mro = failure_of(ConnectionError("reset"))
    assert policy.allows_retry(1, other_type, other_mro)


@pytest.mark.parametrize("configured", [("ValueError",), ("builtins.ValueError",), (ValueError,)])
def test_non_retryable_errors_match_builtin_exceptions(configured):
    policy = RetryPolicy(non_retryable_errors=configured)
    error_type, mro = failure_of(ValueError("bad input"))
    assert error_type == "ValueError"
    assert not policy.allows_retry(1, error_type, mro)


def test_non_retryable_base_class_given_as_a_class_matches_subclasses():
    policy = RetryPolicy(non_retryable_errors=(ValueError,))
    error_type, mro = failure_of(CardDeclined("no funds"))
    assert not policy.allows_retry(1, error_type, mro)


def test_bare_name_does_not_match_a_different_class_by_prefix():
    policy = RetryPolicy(non_retryable_errors=("Declined",))
    assert policy.allows_retry(1, "billing.CardDeclined")


def test_non_retryable_classes_are_stored_as_names():
    policy = RetryPolicy(non_retryable_errors=(CardDeclined, "billing.Other"))
    assert policy.non_retryable_errors == ("tests.test_retry.CardDeclined", "billing.Other")


def test_retry_policy_json_round_trip():
    policy = RetryPolicy(
        initial_interval=0.25,
        backoff_coefficient=1.5,
        maximum_interval=30.0,
        maximum_attempts=7,
        non_retryable_errors=(CardDeclined, "KeyError"),
    )
    data = policy.to_json()
    assert json.loads(json.dumps(data)) == data
    assert data["non_retryable_errors"] == ["tests.test_retry.CardDeclined", "KeyError"]
    assert RetryPolicy.from_json(data) == policy


@pytest.mark.parametrize(
    "kwargs",
    [
        {"initial_interval": -1},
        {"backoff_coefficient": 0.5},
        {"maximum_attempts": -1},
    ],
)
def test_invalid_retry_policies_are_rejected(kwargs):
    with pytest.raises(ValueError, match="RetryPolicy"):
        RetryPolicy(**kwargs)


def test_retry_policy_is_immutable():
    with pytest.raises(dataclasses.FrozenInstanceError):
        RetryPolicy().maximum_attempts = 3  # type: ignore[misc]
