"""Pure units with no database: the data converter, RetryPolicy and the registry."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import sys
import uuid

import pytest
from django.core.exceptions import ImproperlyConfigured

import django_durable as durable
from django_durable import registry
from django_durable.converter import JSONDataConverter, to_json
from django_durable.engine.failures import failure_from_exception
from django_durable.exceptions import NotRegistered, SerializationError
from django_durable.retry import RetryPolicy

UTC = datetime.timezone.utc


# -- the data converter ---------------------------------------------------------


@dataclasses.dataclass
class Address:
    street: str
    city: str


@dataclasses.dataclass
class Customer:
    name: str
    home: Address
    previous: list[Address] = dataclasses.field(default_factory=list)
    tags: dict[str, int] = dataclasses.field(default_factory=dict)


class Point:
    """Pydantic-style: ``model_dump(mode=...)`` and ``model_validate()``, nothing else."""

    dump_modes: list[str] = []

    def __init__(self, x: int, y: int) -> None:
        self.x, self.y = x, y

    def model_dump(self, mode: str = "python") -> dict:
        Point.dump_modes.append(mode)
        return {"x": self.x, "y": self.y}

    @classmethod
    def model_validate(cls, data: dict) -> Point:
        return cls(**data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)

    __hash__ = None  # type: ignore[assignment]


@dataclasses.dataclass
class Shape:
    name: str
    corners: list[Point]


@pytest.fixture
def conv() -> JSONDataConverter:
    return JSONDataConverter()


def round_trip(conv: JSONDataConverter, value):
    """Encode, pass through real JSON text (as the database would), decode."""
    return conv.from_json(json.loads(json.dumps(conv.to_json(value))))


def test_plain_json_values_pass_through(conv):
    value = {"a": [1, 2.5, "x", None, True], "b": {"c": False}}
    assert conv.to_json(value) == value
    assert conv.from_json(value) == value


def test_tuples_become_lists(conv):
    assert conv.to_json((1, (2, 3))) == [1, [2, 3]]


def test_dataclass_round_trip_nested_and_in_containers(conv):
    customer = Customer(
        name="Ada",
        home=Address("1 Main St", "London"),
        previous=[Address("2 Side St", "Paris"), Address("3 Back St", "Rome")],
        tags={"vip": 1},
    )
    value = [customer, {"billing": Address("4 Bank St", "Zurich")}, [Address("5 Low St", "Oslo")]]
    back = round_trip(conv, value)
    assert back == value
    assert type(back[0]) is Customer
    assert type(back[0].home) is Address
    assert all(type(a) is Address for a in back[0].previous)
    assert type(back[1]["billing"]) is Address


def test_dataclass_encoding_is_tagged_with_its_class(conv):
    encoded = conv.to_json(Address("1 Main St", "London"))
    assert encoded == {
        "__dataclass__": "tests.test_units:Address",
        "fields": {"street": "1 Main St", "city": "London"},
    }


def test_pydantic_style_model_round_trip(conv):
    Point.dump_modes.clear()
    encoded = conv.to_json(Point(1, 2))
    assert encoded == {"__model__": "tests.test_units:Point", "data": {"x": 1, "y": 2}}
    assert Point.dump_modes == ["json"]  # JSON mode, so the model encodes its own fields

    back = round_trip(conv, [Point(1, 2), {"p": Point(3, 4)}])
    assert back == [Point(1, 2), {"p": Point(3, 4)}]
    assert type(back[0]) is Point


def test_model_inside_a_dataclass_round_trips(conv):
    shape = Shape("triangle", [Point(0, 0), Point(1, 0), Point(0, 1)])
    back = round_trip(conv, shape)
    assert back == shape
    assert all(type(p) is Point for p in back.corners)


def test_dates_decimals_uuids_and_durations_encode_to_strings(conv):
    ident = uuid.UUID("12345678-1234-5678-1234-567812345678")
    value = {
        "at": datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        "day": datetime.date(2024, 1, 2),
        "clock": datetime.time(3, 4, 5),
        "price": decimal.Decimal("19.90"),
        "id": ident,
        "wait": datetime.timedelta(minutes=90),
    }
    encoded = conv.to_json(value)
    assert encoded == {
        "at": "2024-01-02T03:04:05Z",
        "day": "2024-01-02",
        "clock": "03:04:05",
        "price": "19.90",
        "id": "12345678-1234-5678-1234-567812345678",
        "wait": "P0DT01H30M00S",
    }
    assert json.loads(json.dumps(encoded)) == encoded


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_nan_and_infinity_are_rejected(conv, bad):
    with pytest.raises(SerializationError, match="NaN/Infinity"):
        conv.to_json(bad)


def test_error_message_names_where_the_bad_value_is(conv):
    with pytest.raises(SerializationError) as info:
        conv.to_json({"scores": [1.0, float("nan")]})
    assert "value['scores'][1]" in str(info.value)
    assert "nan" in str(info.value)


@pytest.mark.parametrize("key", [1, ("a", "b"), None])
def test_non_string_keys_are_rejected(conv, key):
    with pytest.raises(SerializationError) as info:
        conv.to_json({"outer": {key: "v"}})
    message = str(info.value)
    assert repr(key) in message
    assert "keys must be strings" in message
    assert "value['outer']" in message


@pytest.mark.parametrize(
    ("value", "type_name"),
    [(object(), "object"), ({1, 2}, "set"), (b"raw", "bytes"), (lambda: None, "<lambda>")],
)
def test_arbitrary_objects_are_rejected_clearly(conv, value, type_name):
    with pytest.raises(SerializationError) as info:
        conv.to_json({"x": [value]})
    message = str(info.value)
    assert "value['x'][0]" in message
    assert "cannot be serialised to JSON" in message
    if type_name != "<lambda>":
        assert f"type {type_name} " in message


def test_serialization_error_is_a_type_error(conv):
    with pytest.raises(TypeError):
        conv.to_json(object())


def test_a_dataclass_class_is_not_a_dataclass_value(conv):
    # The class itself, not an instance: not JSON, and must say so.
    with pytest.raises(SerializationError):
        conv.to_json({"kind": Address})


def test_timezone_aware_time_is_rejected_as_a_serialization_error(conv):
    # Django's encoder refuses aware times (ValueError); the converter must
    # still report a SerializationError, as for every other unencodable value.
    with pytest.raises(SerializationError):
        conv.to_json(datetime.time(12, 0, tzinfo=UTC))


def test_circular_structures_are_rejected_as_a_serialization_error(conv):
    loop: list = []
    loop.append(loop)
    with pytest.raises(SerializationError):
        conv.to_json(loop)


def test_module_level_to_json_names_what_was_being_encoded():
    with pytest.raises(SerializationError, match=r"^Cannot serialise the input: value\['a'\]"):
        to_json({"a": object()}, "the input")


def test_classes_of_unimported_modules_are_not_imported(conv, tmp_path, monkeypatch):
    module = "durable_canary_never_imported"
    (tmp_path / f"{module}.py").write_text(
        "import dataclasses\n"
        "@dataclasses.dataclass\n"
        "class Thing:\n"
        "    a: int\n"
        "class Model:\n"
        "    @classmethod\n"
        "    def model_validate(cls, data):\n"
        "        return cls()\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop(module, None)

    data = {
        "__dataclass__": f"{module}:Thing",
        "fields": {"a": 1, "home": conv.to_json(Address("1 Main St", "London"))},
    }
    assert conv.from_json(data) == {"a": 1, "home": Address("1 Main St", "London")}
    assert conv.from_json({"__model__": f"{module}:Model", "data": {"b": 2}}) == {"b": 2}
    assert module not in sys.modules


@pytest.mark.parametrize(
    "data",
    [
        {"__dataclass__": "builtins:dict", "fields": {"a": 1}},  # a class, not a dataclass
        {"__dataclass__": "os:getcwd", "fields": {"a": 1}},  # not a class at all
        {"__dataclass__": "tests.test_units:Nowhere", "fields": {"a": 1}},  # no such name
        {"__model__": "builtins:object", "data": {"a": 1}},  # no model_validate
        {"__model__": "tests.test_units:Address.missing", "data": {"a": 1}},
    ],
)
def test_tags_that_do_not_name_a_suitable_loaded_class_decode_as_plain_dicts(conv, data):
    assert conv.from_json(data) == {"a": 1}


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
        ("tests.test_units.CardDeclined",),  # qualified name
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
    assert policy.non_retryable_errors == ("tests.test_units.CardDeclined", "billing.Other")


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
    assert data["non_retryable_errors"] == ["tests.test_units.CardDeclined", "KeyError"]
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


# -- input from outside cannot build objects, and what PostgreSQL cannot store is refused


def test_a_plain_dict_using_a_tag_key_stays_a_plain_dict(conv):
    data = {"__dataclass__": "tests.test_units:Address", "fields": {"street": "x"}}
    assert round_trip(conv, data) == data


def test_a_non_string_class_tag_is_decoded_as_data(conv):
    assert conv.from_json({"__dataclass__": 42, "fields": {}}) == {}


@pytest.mark.parametrize("bad", ["nul \x00 inside", "lone \ud800 surrogate"], ids=["nul", "surrogate"])
def test_strings_postgresql_cannot_store_are_refused(conv, bad):
    with pytest.raises(SerializationError):
        conv.to_json({"key": bad})
    with pytest.raises(SerializationError):
        conv.to_json({bad: 1})


def test_very_deep_nesting_is_refused_clearly(conv):
    value: list = []
    for _ in range(150):
        value = [value]
    with pytest.raises(SerializationError, match="nested more than 100 levels"):
        conv.to_json(value)
