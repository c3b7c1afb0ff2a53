"""The HTTP API's schedule endpoints: shapes, the OpenAPI document, permissions per endpoint,
the start rules (a schedule is no way around them), bad input changing nothing. Through DRF's
test client; a real worker firing a schedule made over the API; real HTTP on a live server,
with schemathesis fuzzing every schedule operation for a user who holds the permissions."""

from __future__ import annotations

import datetime
import json
import re
from typing import Any
from urllib.parse import quote

import pytest
from django.apps import apps
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from hypothesis import given
from hypothesis import strategies as st
from rest_framework.test import APIClient

import django_durable as durable
from django_durable.models import Schedule, WorkflowInstance
from django_durable.schedules.client import schedule_values
from django_durable.store import schedules as schedule_store
from tests.conftest import WORKFLOW_PERMISSIONS, wait_for
from tests.test_api import API, FUZZ, SCHEMA, WORKFLOWS, assert_error, json_values, post_json, schema_strategy
from tests.testapp.schedule_workflows import sc_tick

pytestmark = pytest.mark.database

SCHEDULES = f"{API}schedules/"
SCHEDULE_PERMISSIONS = ("view_schedule", "add_schedule", "change_schedule", "delete_schedule")
EVERY_PERMISSION = (*SCHEDULE_PERMISSIONS, *WORKFLOW_PERMISSIONS)
RUN_TASK = "django_durable.run_task"
NEW = {"schedule_id": "new-one", "workflow": "sc_tick", "args": ["k"], "every": 60}
HOUR = datetime.timedelta(hours=1)


def one(schedule_id: str, suffix: str = "") -> str:
    return f"{SCHEDULES}{schedule_id}/{suffix}"


def past_hours(count: int) -> dict[str, str]:
    """A backfill body: ``count`` whole hours, all in the past."""
    end = datetime.datetime.now(datetime.timezone.utc).replace(minute=0, second=0, microsecond=0) - HOUR
    return {"start": (end - (count - 1) * HOUR).isoformat(), "end": end.isoformat()}


def snapshot() -> list[list[dict[str, Any]]]:
    """Every row of every django-durable table."""
    return [list(model.objects.order_by("pk").values()) for model in apps.get_app_config("django_durable").get_models()]


def send(client: APIClient, method: str, url: str, data: Any = None) -> Any:
    if method in ("get", "delete", "options"):
        return getattr(client, method)(url)
    return client.generic(
        method.upper(), url, json.dumps({} if data is None else data), content_type="application/json"
    )


def client_with(django_user_model: Any, *codenames: str, name: str = "user", **flags: Any) -> APIClient:
    user = django_user_model.objects.create_user(name, **flags)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="django_durable", codename__in=codenames)
    )
    client = APIClient()
    client.force_authenticate(user)
    return client


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def admin_api(db, django_user_model) -> APIClient:
    """Staff with every permission of runs and schedules (staff alone grants nothing)."""
    return client_with(django_user_model, *EVERY_PERMISSION, name="staff", is_staff=True)


@pytest.fixture
def schedules(db) -> dict[str, durable.ScheduleHandle]:
    """An hourly schedule, and a paused one; no worker runs, so nothing fires by itself."""
    return {
        "nightly": durable.create_schedule("nightly", sc_tick, args=["k"], every=3600),
        "paused-one": durable.create_schedule("paused-one", sc_tick, args=["p"], every=3600, paused=True, note="n"),
    }


def internal_schedule(schedule_id: str) -> None:
    """A schedule of an internal workflow, as code could declare one (never the API)."""
    values = schedule_values(schedule_id, workflow=sc_tick, args=["k"], every=3600)
    schedule_store.create_schedule({**values, "schedule_id": schedule_id, "workflow_name": RUN_TASK})


def runs() -> list[str]:
    return list(WorkflowInstance.objects.order_by("pk").values_list("workflow_id", flat=True))


# -- the OpenAPI document -------------------------------------------------------------------


def test_schema_documents_every_schedule_operation(api, db):
    schema = json.loads(api.get(SCHEMA).content)
    paths, components = schema["paths"], schema["components"]["schemas"]
    by_id = f"{SCHEDULES}{{schedule_id}}/"
    expected = {
        (SCHEDULES, "get"): ("listSchedules", {"200"}, None),
        (SCHEDULES, "post"): ("createSchedule", {"201"}, "CreateSchedule"),
        (by_id, "get"): ("describeSchedule", {"200"}, None),
        (by_id, "patch"): ("updateSchedule", {"200"}, "ScheduleOptions"),
        (by_id, "delete"): ("deleteSchedule", {"204"}, None),
        (f"{by_id}pause/", "post"): ("pauseSchedule", {"200"}, "ScheduleNote"),
        (f"{by_id}unpause/", "post"): ("unpauseSchedule", {"200"}, "ScheduleNote"),
        (f"{by_id}trigger/", "post"): ("triggerSchedule", {"200", "201"}, None),
        (f"{by_id}backfill/", "post"): ("backfillSchedule", {"200"}, "BackfillSchedule"),
    }
    assert {(path, method) for path, ops in paths.items() if "schedules" in path for method in ops} == set(expected)
    for (path, method), (operation_id, success, request) in expected.items():
        operation = paths[path][method]
        assert operation["operationId"] == operation_id
        assert operation["tags"] == ["schedules"]
        assert {code for code in operation["responses"] if code.startswith("2")} == success, path
        assert "4XX" in operation["responses"]
        if request is None:
            assert "requestBody" not in operation, (path, method)
        else:
            assert operation["requestBody"]["content"]["application/json"]["schema"] == {
                "$ref": f"#/components/schemas/{request}"
            }
    assert paths[f"{by_id}pause/"]["post"]["requestBody"].get("required") is None  # the note is optional
    assert paths[f"{by_id}backfill/"]["post"]["requestBody"]["required"] is True
    trigger = paths[f"{by_id}trigger/"]["post"]["responses"]
    assert trigger["200"]["content"] == trigger["201"]["content"]
    assert {p["name"] for p in paths[SCHEDULES]["get"]["parameters"]} == {"limit", "offset"}
    assert [p["in"] for p in paths[by_id]["get"]["parameters"]] == ["path"]
    listed = paths[SCHEDULES]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert listed["properties"]["results"]["items"] == {"$ref": "#/components/schemas/ScheduleSummary"}

    create = components["CreateSchedule"]
    assert sorted(create["required"]) == ["schedule_id", "workflow"]
    assert create["properties"]["schedule_id"] | {"description": ""} == {
        "type": "string",
        "maxLength": 200,
        "minLength": 1,
        "pattern": "^[^/\\x00]*$",
        "description": "",
    }
    every = create["properties"]["every"]
    assert (every["type"], every["minimum"], every["maximum"], every["nullable"]) == ("integer", 1, 2**31 - 1, True)
    assert create["properties"]["overlap"]["enum"] == list(durable.OverlapPolicy.values)
    assert create["properties"]["paused"]["type"] == "boolean"
    assert "required" not in components["ScheduleOptions"]  # PATCH: every field optional
    assert set(components["ScheduleOptions"]["properties"]) == set(create["properties"]) - {"schedule_id"}
    assert sorted(components["BackfillSchedule"]["required"]) == ["end", "start"]
    described = components["Schedule"]["properties"]
    assert {"next_fire_times", "recent_runs", "args", "kwargs", "runs_started", "ticks_skipped"} <= set(described)
    assert described["recent_runs"]["items"]["properties"]["status"]["nullable"] is True
    assert set(components["Triggered"]["properties"]) == {
        "started",
        "workflow_id",
        "run_id",
        "status",
        "overlap",
        "buffered",
    }


# -- permissions, per endpoint ---------------------------------------------------------------

# (name, method, url, body, success, the permissions it needs)
ENDPOINTS = [
    ("list", "get", SCHEDULES, None, 200, {"view_schedule"}),
    ("retrieve", "get", one("nightly"), None, 200, {"view_schedule"}),
    ("create", "post", SCHEDULES, NEW, 201, {"add_schedule", "add_workflowinstance"}),
    ("update", "patch", one("nightly"), {"note": "n", "every": 120, "paused": True}, 200, {"change_schedule"}),
    ("update-args", "patch", one("nightly"), {"args": ["other"]}, 200, {"change_schedule", "add_workflowinstance"}),
    (
        "update-workflow",
        "patch",
        one("nightly"),
        {"workflow": "sc_until_released"},
        200,
        {"change_schedule", "add_workflowinstance"},
    ),
    ("delete", "delete", one("nightly"), None, 204, {"delete_schedule"}),
    ("pause", "post", one("nightly", "pause/"), {"note": "n"}, 200, {"change_schedule"}),
    ("unpause", "post", one("paused-one", "unpause/"), None, 200, {"change_schedule"}),
    ("trigger", "post", one("nightly", "trigger/"), None, 201, {"change_schedule", "add_workflowinstance"}),
    ("backfill", "post", one("nightly", "backfill/"), "past", 200, {"change_schedule", "add_workflowinstance"}),
]
ENDPOINT_IDS = [endpoint[0] for endpoint in ENDPOINTS]
NEEDED = [(endpoint, codename) for endpoint in ENDPOINTS for codename in sorted(endpoint[5])]


def body_of(data: Any) -> Any:
    return past_hours(3) if data == "past" else data


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_anonymous_requests_are_refused(api, schedules, endpoint):
    _, method, url, data, _, _ = endpoint
    before = snapshot()
    assert_error(send(api, method, url, body_of(data)), 403, "not_authenticated")
    assert snapshot() == before


@pytest.mark.parametrize(("endpoint", "missing"), NEEDED, ids=[f"{e[0]}-without-{c}" for e, c in NEEDED])
def test_each_permission_an_endpoint_needs_is_needed(schedules, django_user_model, endpoint, missing):
    """A user with every other permission (of runs and schedules, and staff) is refused."""
    _, method, url, data, _, _ = endpoint
    client = client_with(django_user_model, *(c for c in EVERY_PERMISSION if c != missing), is_staff=True)
    before = snapshot()
    assert_error(send(client, method, url, body_of(data)), 403, "permission_denied")
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_the_permissions_an_endpoint_needs_suffice(schedules, django_user_model, endpoint):
    _, method, url, data, success, needs = endpoint
    client = client_with(django_user_model, *needs)
    before = snapshot()
    response = send(client, method, url, body_of(data))
    assert response.status_code == success, response.content
    assert (snapshot() == before) == (method == "get")


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_every_permission_of_runs_grants_nothing_on_schedules(schedules, django_user_model, endpoint):
    _, method, url, data, _, _ = endpoint
    client = client_with(django_user_model, *WORKFLOW_PERMISSIONS, is_staff=True)
    before = snapshot()
    assert_error(send(client, method, url, body_of(data)), 403, "permission_denied")
    assert snapshot() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_session_writes_need_the_csrf_token(schedules, django_user_model, endpoint):
    _, method, url, data, success, _ = endpoint
    user = django_user_model.objects.create_superuser("root")
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(user)
    before = snapshot()
    response = send(client, method, url, body_of(data))
    if method == "get":
        assert response.status_code == success
    else:
        assert "CSRF" in assert_error(response, 403, "permission_denied")["detail"]
        assert snapshot() == before


@pytest.mark.parametrize("endpoint", ENDPOINTS, ids=ENDPOINT_IDS)
def test_the_permission_classes_setting_applies(api, schedules, django_user_model, settings, endpoint):
    _, method, url, data, success, _ = endpoint
    settings.DURABLE = {**settings.DURABLE, "API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"]}
    staff = client_with(django_user_model, is_staff=True)  # staff, without any model permission
    assert send(staff, method, url, body_of(data)).status_code == success
    assert_error(send(client_with(django_user_model, *EVERY_PERMISSION, name="other"), "get", SCHEDULES), 403)


def test_options_need_view_schedule(schedules, django_user_model, api):
    viewer = client_with(django_user_model, "view_schedule")
    response = viewer.options(one("nightly"))
    assert response.status_code == 200
    assert {verb.strip() for verb in response["Allow"].split(",")} >= {"GET", "PATCH", "DELETE"}
    assert "POST" not in viewer.options(SCHEDULES).json().get("actions", {})  # it may not create
    creator = client_with(django_user_model, "view_schedule", "add_schedule", "add_workflowinstance", name="creator")
    assert "schedule_id" in creator.options(SCHEDULES).json()["actions"]["POST"]
    assert_error(client_with(django_user_model, "add_schedule", name="other").options(SCHEDULES), 403)
    assert_error(api.options(SCHEDULES), 403, "not_authenticated")


def test_put_is_not_an_update(admin_api, schedules):
    before = snapshot()
    assert_error(send(admin_api, "put", one("nightly"), {"note": "x"}), 405, "method_not_allowed")
    assert snapshot() == before


# -- the start rules: a schedule is no way around them --------------------------------------


def refused_like_start(admin_api: APIClient, response: Any, workflow: str) -> None:
    """The answer ``POST workflows/`` gives for the same workflow."""
    assert_error(response, 400, "not_registered")
    assert response.json() == post_json(admin_api, WORKFLOWS, {"workflow": workflow, "args": ["k"]}).json()


@pytest.mark.parametrize("workflow", [RUN_TASK, "django_durable.anything", "no_such_workflow"])
def test_create_refuses_what_post_workflows_refuses(admin_api, db, workflow):
    before = snapshot()
    refused_like_start(admin_api, post_json(admin_api, SCHEDULES, {**NEW, "workflow": workflow}), workflow)
    assert snapshot() == before


def test_create_obeys_api_startable_workflows(admin_api, db, settings):
    settings.DURABLE = {**settings.DURABLE, "API_STARTABLE_WORKFLOWS": ["sc_until_released"]}
    before = snapshot()
    refused_like_start(admin_api, post_json(admin_api, SCHEDULES, NEW), "sc_tick")
    assert snapshot() == before
    response = post_json(admin_api, SCHEDULES, {**NEW, "workflow": "sc_until_released"})
    assert response.status_code == 201, response.content


@pytest.mark.parametrize("workflow", [RUN_TASK, "no_such_workflow"])
def test_update_refuses_what_post_workflows_refuses(admin_api, schedules, workflow):
    before = snapshot()
    refused_like_start(admin_api, send(admin_api, "patch", one("nightly"), {"workflow": workflow}), workflow)
    assert snapshot() == before


def test_update_of_what_an_unstartable_schedule_starts_is_refused(admin_api, schedules, settings):
    settings.DURABLE = {**settings.DURABLE, "API_STARTABLE_WORKFLOWS": ["sc_until_released"]}
    before = snapshot()
    refused_like_start(admin_api, send(admin_api, "patch", one("nightly"), {"args": ["other"]}), "sc_tick")
    refused_like_start(admin_api, send(admin_api, "patch", one("nightly"), {"kwargs": {"key": "x"}}), "sc_tick")
    assert snapshot() == before
    # What does not change what it starts is allowed (the same workflow and arguments included).
    response = send(admin_api, "patch", one("nightly"), {"workflow": "sc_tick", "args": ["k"], "note": "kept"})
    assert (response.status_code, response.json()["note"]) == (200, "kept")
    assert send(admin_api, "patch", one("nightly"), {"workflow": "sc_until_released"}).status_code == 200


@pytest.mark.parametrize("verb", ["trigger", "backfill"])
@pytest.mark.parametrize("how", ["internal", "not-listed"])
def test_trigger_and_backfill_refuse_a_schedule_whose_workflow_is_not_startable(
    admin_api, schedules, settings, verb, how
):
    if how == "internal":
        internal_schedule("internal")
        schedule_id, workflow = "internal", RUN_TASK
    else:
        settings.DURABLE = {**settings.DURABLE, "API_STARTABLE_WORKFLOWS": ["sc_until_released"]}
        schedule_id, workflow = "nightly", "sc_tick"
    before = snapshot()
    body = past_hours(3) if verb == "backfill" else {}
    refused_like_start(admin_api, post_json(admin_api, one(schedule_id, f"{verb}/"), body), workflow)
    assert snapshot() == before and not WorkflowInstance.objects.exists()


def test_a_superuser_is_held_to_the_start_rules_too(db, django_user_model):
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_superuser("root"))
    internal_schedule("internal")
    before = snapshot()
    assert_error(post_json(client, SCHEDULES, {**NEW, "workflow": RUN_TASK}), 400, "not_registered")
    assert_error(post_json(client, one("internal", "trigger/"), {}), 400, "not_registered")
    assert_error(send(client, "patch", one("internal"), {"args": ["x"]}), 400, "not_registered")
    assert snapshot() == before


# -- create ------------------------------------------------------------------------------------


def test_create(admin_api, db):
    body = {
        "schedule_id": "paris",
        "workflow": "sc_tick",
        "args": ["k"],
        "cron": "30 2 * * *",
        "timezone": "Europe/Paris",
        "overlap": "buffer_one",
        "catchup_window": 600,
        "jitter": 1.5,
        "start_at": "2026-03-01T00:00:00Z",
        "end_at": "2100-01-01T00:00:00+01:00",
        "queue": "reports",
        "note": "night batch",
    }
    response = post_json(admin_api, SCHEDULES, body)
    assert response.status_code == 201, response.content
    assert response["Location"] == "http://testserver/durable/api/schedules/paris/"
    data = response.json()
    for name in ("schedule_id", "workflow", "args", "cron", "timezone", "overlap", "jitter", "queue", "note"):
        assert data[name] == body[name], name
    assert (data["every"], data["catchup_window"], data["kwargs"], data["paused"]) == (None, 600.0, {}, False)
    assert (data["end_at"], data["from_settings"], data["recent_runs"], data["last_run"]) == (
        "2099-12-31T23:00:00Z",
        False,
        [],
        None,
    )
    assert (data["runs_started"], data["ticks_skipped"], data["ticks_missed"], data["buffered"]) == (0, 0, 0, 0)
    fire_times = [datetime.datetime.fromisoformat(t.replace("Z", "+00:00")) for t in data["next_fire_times"]]
    assert len(fire_times) == 10 and fire_times == sorted(fire_times)
    paris = [t.astimezone(datetime.timezone(datetime.timedelta(hours=1))) for t in fire_times]
    assert all((t.minute, t.second) == (30, 0) for t in paris)
    row = Schedule.objects.get(schedule_id="paris")
    assert (row.workflow_name, row.cron, row.every, row.catchup_window, row.jitter) == (
        "sc_tick",
        "30 2 * * *",
        None,
        datetime.timedelta(minutes=10),
        1.5,
    )
    assert admin_api.get(one("paris")).json() == data


def test_create_defaults_and_paused(admin_api, db, settings):
    response = post_json(admin_api, SCHEDULES, {**NEW, "every": 300, "paused": True})
    data = response.json()
    assert response.status_code == 201, data
    assert (data["paused"], data["next_fire_times"], data["next_fire_at"]) == (True, [], None)
    assert (data["timezone"], data["overlap"], data["catchup_window"], data["queue"]) == (
        settings.TIME_ZONE,
        "skip",
        3600.0,
        "default",
    )
    assert (data["kwargs"], data["note"], data["jitter"], data["cron"]) == ({}, "", None, None)


def test_create_an_existing_id_is_409_and_changes_nothing(admin_api, schedules):
    before = snapshot()
    body = assert_error(
        post_json(admin_api, SCHEDULES, {**NEW, "schedule_id": "nightly"}), 409, "schedule_already_exists"
    )
    assert "nightly" in body["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"every": None, "cron": "61 * * * *"}, "invalid cron"),
        ({"every": None, "cron": "* * * *"}, "has 4 fields"),
        ({"every": None, "cron": "@reboot"}, "@reboot"),
        ({"every": None}, "got neither"),
        ({"cron": "@daily"}, "got both"),
        ({"every": None, "cron": "@daily", "timezone": "Mars/Olympus"}, "unknown timezone"),
        ({"start_at": "2030-01-01T00:00:00Z", "end_at": "2029-01-01T00:00:00Z"}, "must be after start_at"),
        ({"schedule_id": "   "}, "non-empty string"),
    ],
)
def test_what_makes_no_schedule_is_400_invalid_schedule(admin_api, db, change, message):
    body = assert_error(post_json(admin_api, SCHEDULES, {**NEW, **change}), 400, "invalid_schedule")
    assert message in body["detail"], body
    assert not Schedule.objects.exists()


BAD_FIELDS = [
    ({"schedule_id": "a/b"}, "schedule_id", "cannot contain '/'"),
    ({"schedule_id": ""}, "schedule_id", None),
    ({"schedule_id": "s" * 201}, "schedule_id", None),
    ({"schedule_id": "a\x00b"}, "schedule_id", None),
    ({"schedule_id": None}, "schedule_id", None),
    ({"workflow": ""}, "workflow", None),
    ({"workflow": ["sc_tick"]}, "workflow", None),
    ({"args": "k"}, "args", None),
    ({"args": {"k": 1}}, "args", None),
    ({"args": ["a\x00"]}, "args", "NUL"),
    ({"kwargs": ["k"]}, "kwargs", None),
    ({"args": ["k", "extra"]}, "args", "do not match workflow 'sc_tick'"),
    ({"args": [], "kwargs": {"nope": 1}}, "args", "do not match workflow 'sc_tick'"),
    ({"every": 0}, "every", None),
    ({"every": 1.5}, "every", None),
    ({"every": "60"}, "every", None),
    ({"every": True}, "every", None),
    ({"every": 2**31}, "every", None),
    ({"jitter": -1}, "jitter", None),
    ({"jitter": "1"}, "jitter", None),
    ({"catchup_window": -1}, "catchup_window", None),
    ({"catchup_window": None}, "catchup_window", None),
    ({"catchup_window": False}, "catchup_window", None),
    ({"catchup_window": 1e300}, "catchup_window", None),
    ({"overlap": "sometimes"}, "overlap", None),
    ({"paused": "yes"}, "paused", None),
    ({"paused": 1}, "paused", None),
    ({"start_at": "tomorrow"}, "start_at", None),
    ({"timezone": "z" * 65}, "timezone", None),
    ({"cron": ""}, "cron", None),
    ({"queue": ""}, "queue", None),
    ({"note": "n" * 10_001}, "note", None),
]


@pytest.mark.parametrize(
    ("change", "field", "message"), BAD_FIELDS, ids=[f"{i}-{b[1]}" for i, b in enumerate(BAD_FIELDS)]
)
def test_bad_fields_are_400_and_change_nothing(admin_api, schedules, change, field, message):
    before = snapshot()
    body = assert_error(post_json(admin_api, SCHEDULES, {**NEW, **change}), 400, "invalid")
    assert list(body["detail"]) == [field], body
    if message:
        assert message in " ".join(body["detail"][field]), body
    patched = {name: value for name, value in change.items() if name != "schedule_id"}
    if patched:  # the same in an update
        body = assert_error(send(admin_api, "patch", one("nightly"), patched), 400, "invalid")
        assert list(body["detail"]) == [field], body
    assert snapshot() == before


@pytest.mark.parametrize("url", [SCHEDULES, one("nightly"), one("nightly", "pause/"), one("nightly", "backfill/")])
def test_malformed_bodies_change_nothing(admin_api, schedules, url):
    method = "PATCH" if url == one("nightly") else "POST"
    before = snapshot()
    for raw, content_type, status, code in [
        (b'{"schedule_id": ', "application/json", 400, "parse_error"),
        (b'{"every": NaN}', "application/json", 400, "parse_error"),
        (b"[1, 2]", "application/json", 400, "invalid"),
        (b'"text"', "application/json", 400, "invalid"),
        (b"schedule_id=x", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b'{"note": "' + b"n" * (300 * 1024) + b'"}', "application/json", 413, "payload_too_large"),
    ]:
        assert_error(admin_api.generic(method, url, raw, content_type=content_type), status, code)
    assert snapshot() == before


def test_input_over_the_payload_limit_is_413(admin_api, schedules, settings):
    settings.DURABLE = {**settings.DURABLE, "PAYLOAD_MAX_BYTES": 1000}
    before = snapshot()
    assert_error(post_json(admin_api, SCHEDULES, {**NEW, "args": ["x" * 2000]}), 413, "payload_too_large")
    assert_error(send(admin_api, "patch", one("nightly"), {"args": ["x" * 2000]}), 413, "payload_too_large")
    assert snapshot() == before


@pytest.mark.parametrize(
    ("moment", "status"),
    [
        ("0001-01-01T00:00:00Z", 400),
        ("0999-12-31T23:59:59.999999Z", 400),
        ("1000-01-01T00:30:00+01:00", 400),
        ("1000-01-01T00:00:00Z", 201),
        ("9999-12-31T23:00:00Z", 201),
        ("9999-12-31T23:59:59.999999Z", 201),
        ("9999-12-31T23:59:59-01:00", 400),  # past Python's datetime in UTC
    ],
)
@pytest.mark.parametrize("field", ["start_at", "end_at"])
@pytest.mark.parametrize("jitter", [None, 3600, 2**31 - 1])
def test_datetimes_a_database_cannot_store_are_400(admin_api, db, moment, status, field, jitter):
    response = post_json(admin_api, SCHEDULES, {**NEW, field: moment, "jitter": jitter})
    assert response.status_code == status, response.content
    if status == 400:
        assert list(response.json()["detail"]) == [field]
        assert not Schedule.objects.exists()
    else:
        assert admin_api.get(one(NEW["schedule_id"])).status_code == 200


# -- describe, list ----------------------------------------------------------------------------


@pytest.mark.parametrize("schedule_id", ["nope", "n" * 201, "a%00b", "%F0%9F%98%80", "spa%20ce"])
@pytest.mark.parametrize("verb", ["retrieve", "update", "delete", "pause", "unpause", "trigger", "backfill"])
def test_unknown_schedule_is_404(admin_api, schedules, schedule_id, verb):
    before = snapshot()
    method, suffix, data = {
        "retrieve": ("get", "", None),
        "update": ("patch", "", {"note": "x"}),
        "delete": ("delete", "", None),
        "backfill": ("post", "backfill/", past_hours(1)),
    }.get(verb, ("post", f"{verb}/", {}))
    assert_error(send(admin_api, method, one(schedule_id, suffix), data), 404, "schedule_not_found")
    assert snapshot() == before


def test_describe_shows_recent_runs_with_their_status(admin_api, schedules):
    started = post_json(admin_api, one("nightly", "trigger/"), {}).json()
    data = admin_api.get(one("nightly")).json()
    (recent,) = data["recent_runs"]
    assert (recent["workflow_id"], recent["run_id"], recent["reason"], recent["status"]) == (
        started["workflow_id"],
        started["run_id"],
        "trigger",
        "pending",
    )
    assert data["last_run"] == {"workflow_id": started["workflow_id"], "run_id": started["run_id"], "status": "pending"}
    assert data["runs_started"] == 1
    durable.get_workflow(started["workflow_id"]).terminate("for the test")
    assert admin_api.get(one("nightly")).json()["recent_runs"][0]["status"] == "terminated"
    assert admin_api.delete(f"{WORKFLOWS}{started['workflow_id']}/").status_code == 204  # purged
    data = admin_api.get(one("nightly")).json()
    assert (data["recent_runs"][0]["status"], data["last_run"]) == (None, None)


def test_list_is_paginated_and_ordered(admin_api, db):
    for name in ("c", "a", "b"):
        durable.create_schedule(name, sc_tick, args=["k"], every=60)
    page = admin_api.get(SCHEDULES, {"limit": 2}).json()
    assert (page["count"], [row["schedule_id"] for row in page["results"]]) == (3, ["a", "b"])
    assert [row["schedule_id"] for row in admin_api.get(page["next"]).json()["results"]] == ["c"]
    assert "args" not in page["results"][0] and "recent_runs" not in page["results"][0]
    assert_error(admin_api.get(SCHEDULES, {"limit": "0"}), 400, "invalid")
    assert_error(admin_api.get(SCHEDULES, {"offset": "-1"}), 400, "invalid")


def test_list_costs_the_same_queries_for_any_number_of_schedules(admin_api, db):
    def queries() -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_api.get(SCHEDULES).status_code == 200
        return len(captured)

    durable.create_schedule("first", sc_tick, args=["k"], every=60).trigger()
    queries()  # the user's permissions are read once, then cached
    few = queries()
    for index in range(5):
        durable.create_schedule(f"more-{index}", sc_tick, args=["k"], every=60).trigger()
    assert queries() == few


# -- update ------------------------------------------------------------------------------------


def test_update_changes_only_what_it_names(admin_api, schedules):
    before = Schedule.objects.get(schedule_id="nightly")
    response = send(admin_api, "patch", one("nightly"), {"note": "changed", "jitter": 2})
    assert response.status_code == 200, response.content
    after = Schedule.objects.get(schedule_id="nightly")
    assert (after.note, after.jitter) == ("changed", 2.0)
    for name in ("workflow_name", "input", "every", "cron", "timezone", "overlap", "catchup_window", "queue", "paused"):
        assert getattr(after, name) == getattr(before, name), name
    assert response.json()["note"] == "changed"
    # An empty PATCH, or one with fields the API does not know, changes nothing.
    for body in ({}, {"bogus": 1, "schedule_id": "renamed"}):
        unchanged = snapshot()
        assert send(admin_api, "patch", one("nightly"), body).status_code == 200
        assert snapshot() == unchanged


def test_update_cron_and_every_replace_each_other(admin_api, schedules):
    data = send(admin_api, "patch", one("nightly"), {"cron": "0 4 * * *", "timezone": "UTC"}).json()
    assert (data["cron"], data["every"]) == ("0 4 * * *", None)
    assert all(t.endswith("T04:00:00Z") for t in data["next_fire_times"])
    data = send(admin_api, "patch", one("nightly"), {"every": 900}).json()
    assert (data["cron"], data["every"]) == (None, 900)
    before = snapshot()
    assert_error(send(admin_api, "patch", one("nightly"), {"every": None}), 400, "invalid_schedule")
    assert_error(send(admin_api, "patch", one("nightly"), {"every": 60, "cron": "@daily"}), 400, "invalid_schedule")
    assert snapshot() == before


def test_update_keeps_the_stored_input_as_it_is(admin_api, db):
    """Arguments with the data converter's tag keys are encoded once, and never again."""
    tagged = [{"__dict__": 1, "x": [{"__model__": "m"}]}]
    assert post_json(admin_api, SCHEDULES, {**NEW, "args": tagged}).status_code == 201
    stored = Schedule.objects.get(schedule_id="new-one").input
    assert stored != {"args": tagged, "kwargs": {}}  # encoded (wrapped) by the converter
    assert send(admin_api, "patch", one("new-one"), {"note": "x", "every": 120}).status_code == 200
    assert Schedule.objects.get(schedule_id="new-one").input == stored
    assert send(admin_api, "patch", one("new-one"), {"args": tagged}).status_code == 200
    assert Schedule.objects.get(schedule_id="new-one").input == stored


def test_update_of_the_workflow_checks_the_stored_arguments(admin_api, db):
    durable.create_schedule("two-args", "sc_continued", args=["k", "t"], every=60)
    before = snapshot()
    body = assert_error(send(admin_api, "patch", one("two-args"), {"workflow": "sc_tick"}), 400, "invalid")
    assert "do not match workflow 'sc_tick'" in body["detail"]["args"][0]
    assert snapshot() == before
    assert send(admin_api, "patch", one("two-args"), {"workflow": "sc_tick", "args": ["k"]}).status_code == 200


# -- delete, pause, unpause ----------------------------------------------------------------------


def test_delete_keeps_the_runs(admin_api, schedules):
    started = post_json(admin_api, one("nightly", "trigger/"), {}).json()
    assert admin_api.delete(one("nightly")).status_code == 204
    assert_error(admin_api.get(one("nightly")), 404, "schedule_not_found")
    assert_error(admin_api.delete(one("nightly")), 404, "schedule_not_found")
    assert WorkflowInstance.objects.filter(workflow_id=started["workflow_id"]).exists()


def test_pause_and_unpause(admin_api, schedules):
    data = post_json(admin_api, one("nightly", "pause/"), {"note": "migrating"}).json()
    assert (data["paused"], data["note"], data["next_fire_times"], data["next_fire_at"]) == (
        True,
        "migrating",
        [],
        None,
    )
    data = post_json(admin_api, one("nightly", "unpause/"), {}).json()  # no note: the note stays
    assert (data["paused"], data["note"]) == (False, "migrating")
    first = datetime.datetime.fromisoformat(data["next_fire_times"][0].replace("Z", "+00:00"))
    assert first > datetime.datetime.now(datetime.timezone.utc) and first.timestamp() % 3600 == 0
    assert data["next_fire_at"] == data["next_fire_times"][0]
    data = post_json(admin_api, one("nightly", "pause/"), {"note": None}).json()
    assert (data["paused"], data["note"]) == (True, "migrating")
    assert post_json(admin_api, one("nightly", "unpause/"), {"note": ""}).json()["note"] == ""
    before = snapshot()
    for bad in ([], "x", {"note": ["x"]}, {"note": "a\x00"}):
        assert_error(post_json(admin_api, one("nightly", "pause/"), bad), 400, "invalid")
    assert snapshot() == before


# -- trigger -------------------------------------------------------------------------------------


def test_trigger_starts_a_run_even_while_paused(admin_api, schedules):
    response = post_json(admin_api, one("paused-one", "trigger/"), {})
    assert response.status_code == 201, response.content
    body = response.json()
    assert re.fullmatch(r"paused-one-\d{8}T\d{6}\.\d{3}Z", body["workflow_id"]), body
    assert (body["started"], body["status"], body["overlap"], body["buffered"]) == (True, "pending", "skip", 0)
    assert response["Location"] == f"http://testserver{WORKFLOWS}{body['workflow_id']}/"
    run = WorkflowInstance.objects.get(workflow_id=body["workflow_id"])
    assert (str(run.run_id), run.workflow_name, run.input["args"]) == (body["run_id"], "sc_tick", ["p"])
    assert Schedule.objects.get(schedule_id="paused-one").paused


@pytest.mark.parametrize(
    ("overlap", "second", "buffered", "skipped"),
    [("skip", 200, 0, 1), ("buffer_one", 200, 1, 0), ("buffer_all", 200, 1, 0), ("allow_all", 201, 0, 0)],
)
def test_trigger_follows_the_overlap_policy(admin_api, db, overlap, second, buffered, skipped):
    durable.create_schedule("o", sc_tick, args=["k"], every=3600, overlap=overlap)
    assert post_json(admin_api, one("o", "trigger/"), {}).status_code == 201
    response = post_json(admin_api, one("o", "trigger/"), {})
    assert response.status_code == second, response.content
    body = response.json()
    assert (body["started"], body["overlap"], body["buffered"]) == (second == 201, overlap, buffered)
    if second == 200:
        assert (body["workflow_id"], body["run_id"], body["status"]) == (None, None, None)
    row = Schedule.objects.get(schedule_id="o")
    assert (row.runs_started, row.buffered_count, row.ticks_skipped) == (1 + (second == 201), buffered, skipped)


def test_trigger_takes_no_body_but_an_object(admin_api, schedules):
    before = snapshot()
    for bad in ([], "go", 1):
        assert_error(post_json(admin_api, one("nightly", "trigger/"), bad), 400, "invalid")
    assert snapshot() == before
    assert post_json(admin_api, one("nightly", "trigger/"), {"ignored": True}).status_code == 201


# -- backfill ------------------------------------------------------------------------------------


def test_backfill_starts_the_ticks_that_have_no_run(admin_api, db):
    durable.create_schedule("hourly", sc_tick, args=["k"], every=3600, overlap="allow_all")
    interval = past_hours(3)
    response = post_json(admin_api, one("hourly", "backfill/"), interval)
    body = response.json()
    assert response.status_code == 200, body
    start = datetime.datetime.fromisoformat(interval["start"])
    expected = [f"hourly-{(start + n * HOUR).strftime('%Y%m%dT%H%M%S')}Z" for n in range(3)]
    assert body == {"started": expected, "started_count": 3, "buffered": 0, "skipped": 0, "already_run": 0}
    assert runs() == expected
    again = post_json(admin_api, one("hourly", "backfill/"), interval).json()
    assert again == {"started": [], "started_count": 0, "buffered": 0, "skipped": 0, "already_run": 3}


def test_backfill_under_skip_starts_the_first_tick_only(admin_api, schedules):
    body = post_json(admin_api, one("nightly", "backfill/"), past_hours(3)).json()
    assert (body["started_count"], body["skipped"], body["buffered"]) == (1, 2, 0)


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"start": "2026-01-02T00:00:00Z", "end": "2026-01-01T00:00:00Z"}, "end"),
        ({"end": "2026-01-01T00:00:00Z"}, "start"),
        ({"start": "2026-01-01T00:00:00Z"}, "end"),
        ({"start": "yesterday", "end": "2026-01-01T00:00:00Z"}, "start"),
        ({"start": 5, "end": "2026-01-01T00:00:00Z"}, "start"),
    ],
)
def test_backfill_validation(admin_api, schedules, data, field):
    before = snapshot()
    body = assert_error(post_json(admin_api, one("nightly", "backfill/"), data), 400, "invalid")
    assert list(body["detail"]) == [field], body
    assert snapshot() == before


def test_backfill_of_more_than_1000_ticks_is_400_and_changes_nothing(admin_api, db):
    durable.create_schedule("fast", sc_tick, args=["k"], every=1)  # skip: one run, the other ticks skipped
    end = datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0) - HOUR
    before = snapshot()
    body = assert_error(
        post_json(
            admin_api,
            one("fast", "backfill/"),
            {"start": (end - datetime.timedelta(seconds=1000)).isoformat(), "end": end.isoformat()},
        ),
        400,
        "invalid",
    )
    assert "more than 1000 ticks" in body["detail"]["non_field_errors"][0]
    assert snapshot() == before
    exactly = {"start": (end - datetime.timedelta(seconds=999)).isoformat(), "end": end.isoformat()}
    body = post_json(admin_api, one("fast", "backfill/"), exactly).json()
    assert (body["started_count"], body["skipped"]) == (1, 999)


@pytest.mark.parametrize("start", ["0999-12-31T23:59:59Z", "1000-01-01T00:00:00Z", "1969-12-31T23:59:59Z"])
@pytest.mark.parametrize("end", ["1000-01-01T00:00:01Z", "9999-12-31T23:59:59.999999Z"])
def test_backfill_of_extreme_intervals_is_no_server_error(admin_api, schedules, start, end):
    response = post_json(admin_api, one("nightly", "backfill/"), {"start": start, "end": end})
    assert response.status_code == (400 if start < "1000" or end < start else 200) or (
        response.status_code == 400 and "more than 1000 ticks" in response.content.decode()
    ), response.content


# -- fuzzing every schedule operation from the document -------------------------------------------

KNOWN = ["nightly", "paused-one"]
SCHEDULE_OPERATION_IDS = [
    "listSchedules",
    "createSchedule",
    "describeSchedule",
    "updateSchedule",
    "deleteSchedule",
    "pauseSchedule",
    "unpauseSchedule",
    "triggerSchedule",
    "backfillSchedule",
]


@pytest.fixture(scope="module")
def schedule_operations(django_db_blocker) -> list[tuple[str, str, dict]]:
    with django_db_blocker.unblock():
        document = json.loads(APIClient().get(SCHEMA).content)
    components = document["components"]["schemas"]
    return [
        (path, method, {**op, "components": components})
        for path, ops in document["paths"].items()
        if "schedules" in path
        for method, op in ops.items()
    ]


def ensure_known() -> None:
    for schedule_id in KNOWN:
        if not Schedule.objects.filter(schedule_id=schedule_id).exists():
            durable.create_schedule(schedule_id, sc_tick, args=["k"], every=3600, paused=schedule_id == "paused-one")


@pytest.mark.parametrize("index", range(9))
@FUZZ
@given(data=st.data())
def test_fuzz_every_schedule_operation(admin_api, db, schedule_operations, index, data):
    path, method, op = schedule_operations[index]
    ensure_known()
    schedule_id = data.draw(
        st.sampled_from([*KNOWN, "nope"]) | st.text(min_size=1, max_size=20).filter(lambda s: not set(s) & set("/?#%"))
    )
    url = path.replace("{schedule_id}", quote(schedule_id, safe=""))
    before = snapshot()
    if method in ("get", "delete"):
        params = data.draw(st.dictionaries(st.sampled_from(["limit", "offset"]), st.text(max_size=10), max_size=2))
        response = admin_api.get(url, params) if method == "get" else admin_api.delete(url)
    else:
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        body = data.draw(schema_strategy(schema, op["components"]) if schema else json_values())
        response = send(admin_api, method, url, body)
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 400 or method == "get":
        if response.status_code >= 400:
            assert_error(response, response.status_code)
        assert snapshot() == before, response.content[:500]


# -- a real worker fires what the API made ---------------------------------------------------------


@pytest.mark.workers
def test_a_schedule_made_over_the_api_fires_in_a_worker(start_worker, admin_api):
    response = post_json(
        admin_api, SCHEDULES, {"schedule_id": "live", "workflow": "sc_tick", "args": ["w"], "every": 1}
    )
    assert response.status_code == 201, response.content
    triggered = post_json(admin_api, one("live", "trigger/"), {}).json()
    worker = start_worker()

    def completed_ticks() -> list[dict[str, Any]]:
        recent = admin_api.get(one("live")).json()["recent_runs"]
        return [run for run in recent if run["reason"] == "tick" and run["status"] == "completed"]

    wait_for(lambda: len(completed_ticks()) >= 2, timeout=60, what="two ticks to run")
    assert post_json(admin_api, one("live", "pause/"), {"note": "done"}).status_code == 200
    assert durable.get_workflow(triggered["workflow_id"]).result(timeout=60)["reason"] == "trigger"
    worker.terminate()
    assert worker.wait(60) == 0, worker.log()
    for run in completed_ticks():
        tick = run["tick"].replace("Z", "+00:00")
        assert durable.get_workflow(run["workflow_id"]).result(timeout=5)["tick"] == tick
        assert run["workflow_id"] == "live-" + datetime.datetime.fromisoformat(tick).strftime("%Y%m%dT%H%M%SZ")


def test_the_fuzzed_operations_are_every_schedule_operation(schedule_operations):
    assert sorted(op["operationId"] for _, _, op in schedule_operations) == sorted(SCHEDULE_OPERATION_IDS)
