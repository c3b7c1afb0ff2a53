"""The registry of workflows and activities, a pure unit with no database: the decorators and the lookups."""

from __future__ import annotations

import datetime
import json

import pytest
from django.core.exceptions import ImproperlyConfigured

import django_durable as durable
from django_durable import registry
from django_durable.exceptions import NotRegistered
from django_durable.retry import RetryPolicy

pytestmark = pytest.mark.engine


# -- the registry -----------------------------------------------------------------


@pytest.fixture(autouse=False)
def clean_registry(monkeypatch):
    """Registrations made by a test vanish with it."""
    monkeypatch.setattr(registry, "_workflows", dict(registry._workflows))
    monkeypatch.setattr(registry, "_activities", dict(registry._activities))


def test_workflow_decorator_without_arguments(clean_registry):
    @durable.workflow
    def units_checkout(ctx):
        return None

    definition = registry.get_workflow_definition("units_checkout")
    assert definition.fn is units_checkout
    assert definition.name == "units_checkout"
    assert definition.queue is None
    assert registry.get_workflow_definition(units_checkout) is definition
    assert registry.workflow_name(units_checkout) == "units_checkout"
    assert "units_checkout" in registry.registered_workflows()
    assert units_checkout(None) is None  # the function itself is returned, still callable


def test_workflow_decorator_with_arguments(clean_registry):
    @durable.workflow(name="units.billing", queue="billing")
    def bill(ctx):
        pass

    definition = registry.get_workflow_definition("units.billing")
    assert (definition.name, definition.queue, definition.fn) == ("units.billing", "billing", bill)
    assert registry.workflow_name(bill) == "units.billing"
    with pytest.raises(NotRegistered):
        registry.get_workflow_definition("bill")


def test_activity_decorator_without_arguments(clean_registry):
    @durable.activity
    def units_send_email(to):
        return f"sent to {to}"

    definition = registry.get_activity_definition(units_send_email)
    assert definition.name == "units_send_email"
    assert definition.queue is None
    assert definition.retry == RetryPolicy()
    assert definition.start_to_close_timeout is None
    assert definition.schedule_to_close_timeout is None
    assert definition.heartbeat_timeout is None
    assert units_send_email("ada") == "sent to ada"


def test_activity_decorator_with_arguments(clean_registry):
    policy = RetryPolicy(maximum_attempts=5)

    @durable.activity(
        name="units.charge",
        queue="payments",
        retry=policy,
        start_to_close_timeout=30,
        schedule_to_close_timeout=datetime.timedelta(minutes=10),
        heartbeat_timeout=datetime.timedelta(seconds=1.5),
    )
    def charge(amount):
        pass

    definition = registry.get_activity_definition("units.charge")
    assert definition.fn is charge
    assert definition.queue == "payments"
    assert definition.retry is policy
    assert definition.start_to_close_timeout == 30.0
    assert definition.schedule_to_close_timeout == 600.0
    assert definition.heartbeat_timeout == 1.5
    assert registry.activity_name(charge) == "units.charge"


def test_two_functions_under_one_workflow_name_are_refused(clean_registry):
    @durable.workflow(name="units.dup")
    def first(ctx):
        pass

    with pytest.raises(ImproperlyConfigured) as info:

        @durable.workflow(name="units.dup")
        def second(ctx):
            pass

    message = str(info.value)
    assert "'units.dup'" in message
    assert "first" in message and "second" in message
    assert registry.get_workflow_definition("units.dup").fn is first


def test_two_functions_under_one_activity_name_are_refused(clean_registry):
    @durable.activity(name="units.dup_activity")
    def first():
        pass

    with pytest.raises(ImproperlyConfigured, match="units.dup_activity"):

        @durable.activity(name="units.dup_activity")
        def second():
            pass


def test_a_workflow_and_an_activity_may_share_a_name(clean_registry):
    @durable.workflow(name="units.shared")
    def wf(ctx):
        pass

    @durable.activity(name="units.shared")
    def act():
        pass

    assert registry.get_workflow_definition("units.shared").fn is wf
    assert registry.get_activity_definition("units.shared").fn is act


def test_registering_the_same_function_again_is_allowed(clean_registry):
    def reloaded(ctx):
        pass

    durable.workflow(reloaded)
    durable.workflow(reloaded)  # e.g. the module was imported twice
    assert registry.get_workflow_definition("reloaded").fn is reloaded


def test_unknown_names_raise_not_registered(clean_registry):
    with pytest.raises(NotRegistered, match="units_nope"):
        registry.get_workflow_definition("units_nope")
    with pytest.raises(NotRegistered, match="units_nope"):
        registry.get_activity_definition("units_nope")


def test_undecorated_functions_raise_not_registered():
    def plain():
        pass

    with pytest.raises(NotRegistered, match="durable.workflow"):
        registry.workflow_name(plain)
    with pytest.raises(NotRegistered, match="durable.activity"):
        registry.activity_name(plain)
    with pytest.raises(NotRegistered):
        registry.activity_call_options(plain)
    assert issubclass(NotRegistered, LookupError)


def test_activity_call_options_of_a_registered_activity(clean_registry):
    policy = RetryPolicy(initial_interval=0.5, maximum_attempts=4, non_retryable_errors=(KeyError,))

    @durable.activity(name="units.options", queue="slow", retry=policy, heartbeat_timeout=5)
    def options_demo():
        pass

    expected = {
        "queue": "slow",
        "retry": policy.to_json(),
        "start_to_close_timeout": None,
        "schedule_to_close_timeout": None,
        "heartbeat_timeout": 5.0,
    }
    assert registry.activity_call_options(options_demo) == ("units.options", expected)
    assert registry.activity_call_options("units.options") == ("units.options", expected)
    name, options = registry.activity_call_options(options_demo)
    assert json.loads(json.dumps(options)) == options
    assert RetryPolicy.from_json(options["retry"]) == policy


def test_activity_call_options_of_an_activity_registered_elsewhere(clean_registry):
    assert registry.activity_call_options("units.elsewhere") == (
        "units.elsewhere",
        {"queue": None, "retry": None},
    )


def test_clean_registry_fixture_does_not_leak():
    assert "units_checkout" not in registry.registered_workflows()
    assert "units.charge" not in registry.registered_activities()
