"""``call_activity``'s reserved keywords ``concurrency_key`` and ``priority`` (flow control):
recorded with the call's options, never passed to the activity, refused where they cannot
be; an activity that takes a parameter so named is refused when it is registered."""

from __future__ import annotations

import pytest
from django.core.exceptions import ImproperlyConfigured

import django_durable as durable
from django_durable.api.serializers import RESERVED_KWARGS
from django_durable.engine.call_options import RESERVED_ACTIVITY_KEYWORDS
from tests.test_engine import Run, double

pytestmark = pytest.mark.engine


def charge_customer(ctx: durable.WorkflowContext, customer: str, key: object = None, priority: object = None) -> None:
    ctx.call_activity(double, 21, concurrency_key=key, priority=priority).result()


def scheduled(outcome) -> dict:
    (event,) = [event for event in outcome.new_events if event.kind == "ActivityScheduled"]
    return event.payload


def test_the_keywords_are_recorded_as_options_not_arguments() -> None:
    payload = scheduled(Run(charge_customer, "c-1", "customer-c-1", 2).task())
    assert payload["args"] == [21] and payload["kwargs"] == {}
    assert payload["options"]["concurrency_key"] == "customer-c-1"
    assert payload["options"]["priority"] == 2


def test_a_call_without_them_records_what_it_did_before() -> None:
    payload = scheduled(Run(charge_customer, "c-1").task())
    assert "concurrency_key" not in payload["options"] and "priority" not in payload["options"]


@pytest.mark.parametrize(
    ("key", "priority", "message"),
    [
        ("", None, "concurrency_key"),
        (7, None, "concurrency_key"),
        ("k" * 256, None, "concurrency_key"),
        (None, 0, "priority"),
        (None, 6, "priority"),
        (None, True, "priority"),
        (None, "1", "priority"),
    ],
)
def test_bad_values_fail_the_workflow_task_with_a_clear_error(key: object, priority: object, message: str) -> None:
    outcome = Run(charge_customer, "c-1", key, priority).task()
    error = outcome.task_error if outcome.task_error is not None else outcome.error
    assert error is not None and message in str(error), outcome
    assert not [event for event in outcome.new_events if event.kind == "ActivityScheduled"]


def takes_a_key(order: int, concurrency_key: str = "") -> int:  # pragma: no cover
    return order


def takes_a_priority(order: int, *, priority: int = 3) -> int:  # pragma: no cover
    return order


@pytest.mark.parametrize(("fn", "keyword"), [(takes_a_key, "concurrency_key"), (takes_a_priority, "priority")])
def test_an_activity_taking_a_reserved_keyword_is_refused_naming_the_change(fn: object, keyword: str) -> None:
    with pytest.raises(ImproperlyConfigured, match=f"parameter named '{keyword}'.*breaking change"):
        durable.activity(name=f"tests.flow_keywords.{keyword}")(fn)
    assert not hasattr(fn, "__durable_activity__")


def test_the_http_api_reserves_them_too() -> None:
    assert set(RESERVED_ACTIVITY_KEYWORDS) <= RESERVED_KWARGS
