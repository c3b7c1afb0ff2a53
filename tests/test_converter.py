"""The data converter, a pure unit with no database: what it encodes, decodes and refuses."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import json
import sys
import uuid

import pytest

from django_durable.converter import JSONDataConverter, to_json
from django_durable.exceptions import SerializationError

pytestmark = pytest.mark.engine

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
        "__dataclass__": "tests.test_converter:Address",
        "fields": {"street": "1 Main St", "city": "London"},
    }


def test_pydantic_style_model_round_trip(conv):
    Point.dump_modes.clear()
    encoded = conv.to_json(Point(1, 2))
    assert encoded == {"__model__": "tests.test_converter:Point", "data": {"x": 1, "y": 2}}
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
        {"__dataclass__": "tests.test_converter:Nowhere", "fields": {"a": 1}},  # no such name
        {"__model__": "builtins:object", "data": {"a": 1}},  # no model_validate
        {"__model__": "tests.test_converter:Address.missing", "data": {"a": 1}},
    ],
)
def test_tags_that_do_not_name_a_suitable_loaded_class_decode_as_plain_dicts(conv, data):
    assert conv.from_json(data) == {"a": 1}


# -- input from outside cannot build objects, and what PostgreSQL cannot store is refused


def test_a_plain_dict_using_a_tag_key_stays_a_plain_dict(conv):
    data = {"__dataclass__": "tests.test_converter:Address", "fields": {"street": "x"}}
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
