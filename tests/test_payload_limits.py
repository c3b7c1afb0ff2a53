"""Payload and history size limits (issue 8): ``DURABLE["PAYLOAD_MAX_BYTES"]`` by kind of
value, ``HISTORY_MAX_BYTES`` / ``HISTORY_WARN_BYTES``, and their system checks.

An oversized value is refused where it is passed (``PayloadTooLarge``, 413 over HTTP) and
nothing is written; in workflow code it raises where the code passed it; an activity result
over the limit fails the attempt for good; a history that would outgrow its limit fails the
run with ``HistoryTooLarge`` and the worker goes on.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import pytest
from django.apps import apps
from django.db.models import JSONField
from rest_framework.test import APIClient

import django_durable as durable
from django_durable.checks import check_settings
from django_durable.converter import payload_limits
from django_durable.engine.events import PAYLOAD_KINDS
from django_durable.exceptions import HistoryTooLarge, PayloadTooLarge, SerializationError
from django_durable.jsontext import MAX_JSON_DEPTH
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem
from django_durable.testing import WorkflowEnvironment
from tests.conftest import grant
from tests.testapp.models import ActivityRun
from tests.testapp.workflows import ac_approval, add, api_greet, sequence

pytestmark = pytest.mark.database

PAYLOAD_ERROR = "django_durable.exceptions.PayloadTooLarge"
HISTORY_ERROR = "django_durable.exceptions.HistoryTooLarge"


def json_bytes(value: Any) -> int:
    return len(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def snapshot() -> list[list[dict[str, Any]]]:
    """Every row of every django-durable table, and the test activities' side effects."""
    models = [*apps.get_app_config("django_durable").get_models(), ActivityRun]
    return [list(model.objects.order_by("pk").values()) for model in models]


def limit(settings: Any, **durable_settings: Any) -> None:
    settings.DURABLE = {**settings.DURABLE, **durable_settings}


def token_of(folder: Path) -> str:
    return json.loads((folder / "token-1").read_text())["token"]


# -- workflows of this module (run in this process by WorkflowEnvironment) -----------


@durable.workflow
def pl_refused_calls_leave_no_gap(ctx: durable.WorkflowContext, size: int) -> dict:
    """Oversized inputs raise in the code, before the call takes a sequence number."""
    refused = []
    for call in (lambda: ctx.call_activity(add, "x" * size, "y"), lambda: ctx.call_workflow(api_greet, "x" * size)):
        try:
            call()
        except PayloadTooLarge as exc:
            refused.append([exc.kind, exc.size, exc.limit, str(exc)])
    return {"refused": refused, "total": ctx.call_activity(add, 1, 2).result()}


@durable.workflow
def pl_doubling(ctx: durable.WorkflowContext, text: str) -> int:
    """Continues as new with twice its input until the input is too large to pass on."""
    ctx.call_activity(add, 1, 1).result()
    if len(text) < 10_000:
        ctx.continue_as_new(text * 2)
    return len(text)


# -- settings and system checks ---------------------------------------------------------


@pytest.mark.engine
def test_payload_limit_forms(settings):
    assert payload_limits() == dict.fromkeys(PAYLOAD_KINDS, 2 * 1024 * 1024)
    limit(settings, PAYLOAD_MAX_BYTES=1000)
    assert payload_limits() == dict.fromkeys(PAYLOAD_KINDS, 1000)
    limit(settings, PAYLOAD_MAX_BYTES=None)
    assert payload_limits() == dict.fromkeys(PAYLOAD_KINDS, None)
    limit(settings, PAYLOAD_MAX_BYTES={"heartbeat": 100, "signal": None})
    assert payload_limits() == {**dict.fromkeys(PAYLOAD_KINDS, 2 * 1024 * 1024), "heartbeat": 100, "signal": None}
    assert set(PAYLOAD_KINDS) == {
        "workflow_input",
        "workflow_result",
        "activity_input",
        "activity_result",
        "signal",
        "heartbeat",
        "variable",
    }


@pytest.mark.engine
@pytest.mark.parametrize(
    "overrides, check_id",
    [
        ({"PAYLOAD_MAX_BYTES": 0}, "django_durable.E007"),
        ({"PAYLOAD_MAX_BYTES": "1MB"}, "django_durable.E007"),
        ({"PAYLOAD_MAX_BYTES": True}, "django_durable.E007"),
        ({"PAYLOAD_MAX_BYTES": {"signals": 10}}, "django_durable.E007"),
        ({"PAYLOAD_MAX_BYTES": {"signal": -1}}, "django_durable.E007"),
        ({"PAYLOAD_MAX_BYTES": {"signal": 1.5}}, "django_durable.E007"),
        ({"HISTORY_MAX_BYTES": 0}, "django_durable.E006"),
        ({"HISTORY_WARN_BYTES": "big"}, "django_durable.E006"),
        ({"HISTORY_MAX_EVENTS": -5}, "django_durable.E006"),
        ({"API_MAX_BODY_SIZE": None}, "django_durable.E006"),
        ({"HISTORY_WARN_BYTES": 100, "HISTORY_MAX_BYTES": 100}, "django_durable.W002"),
        ({"HISTORY_WARN_EVENTS": 500, "HISTORY_MAX_EVENTS": 20}, "django_durable.W002"),
    ],
)
def test_system_checks_refuse_bad_limits(settings, overrides, check_id):
    limit(settings, **overrides)
    messages = check_settings()
    assert [m.id for m in messages] == [check_id], messages
    assert "DURABLE[" in messages[0].msg


@pytest.mark.engine
@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {
            "PAYLOAD_MAX_BYTES": None,
            "HISTORY_MAX_BYTES": None,
            "HISTORY_WARN_BYTES": None,
            "HISTORY_MAX_EVENTS": None,
            "HISTORY_WARN_EVENTS": None,
        },
        {"PAYLOAD_MAX_BYTES": {"signal": 10, "heartbeat": None}, "HISTORY_WARN_BYTES": 10, "HISTORY_MAX_BYTES": 11},
    ],
)
def test_system_checks_accept_good_limits(settings, overrides):
    limit(settings, **overrides)
    assert check_settings() == []


# -- at the Python call site -----------------------------------------------------------------


def test_start_workflow_over_the_limit_writes_nothing(db, settings):
    name = "é" * 100  # two bytes each in UTF-8: the limit counts bytes, not characters
    size = json_bytes({"args": [name], "kwargs": {"punctuation": "?"}})
    limit(settings, PAYLOAD_MAX_BYTES={"workflow_input": size - 1})
    before = snapshot()
    with pytest.raises(PayloadTooLarge) as refused:
        durable.start_workflow(api_greet, name, punctuation="?", workflow_id="too-big")
    assert snapshot() == before
    error = refused.value
    assert isinstance(error, SerializationError) and isinstance(error, durable.DurableError)
    assert (error.status_code, error.code, error.kind, error.size, error.limit) == (
        413,
        "payload_too_large",
        "workflow_input",
        size,
        size - 1,
    )
    assert str(error) == (
        f"Cannot store the input of workflow 'api_greet': {size} bytes of JSON, over the limit of {size - 1} bytes "
        "for workflow inputs (DURABLE['PAYLOAD_MAX_BYTES'])."
    )
    limit(settings, PAYLOAD_MAX_BYTES={"workflow_input": size})  # the limit itself is allowed
    durable.start_workflow(api_greet, name, punctuation="?", workflow_id="just-fits")
    assert WorkflowInstance.objects.filter(workflow_id="just-fits").exists()


def test_every_json_column_holds_a_value_nested_as_deep_as_the_api_admits(db):
    """The HTTP API admits MAX_JSON_DEPTH levels, and the store wraps a value in a few more (a
    start's arguments in {"args": [...]}, a failure's details in {"error": {"details": ...}}).
    MariaDB's JSON columns as Django makes them refuse a document 32 levels deep: migration
    0007 lifts that there."""
    deep = json.loads("[" * (MAX_JSON_DEPTH + 3) + "]" * (MAX_JSON_DEPTH + 3))
    handle = durable.start_workflow(api_greet, "deep", workflow_id="deep")
    handle.signal("go", None)
    run = WorkflowInstance.objects.get(run_id=handle.run_id)
    rows = {
        WorkflowInstance: run.pk,
        HistoryEvent: HistoryEvent.objects.get(instance=run).pk,
        InboxEvent: InboxEvent.objects.get(instance=run).pk,
        WorkItem: WorkItem.objects.get(instance=run).pk,
    }
    for model, pk in rows.items():
        columns = [field.name for field in model._meta.concrete_fields if isinstance(field, JSONField)]
        model.objects.filter(pk=pk).update(**dict.fromkeys(columns, deep))
        assert model.objects.values(*columns).get(pk=pk) == dict.fromkeys(columns, deep), model


def test_signal_over_its_own_limit_writes_nothing(db, settings):
    limit(settings, PAYLOAD_MAX_BYTES={"signal": 50})
    handle = durable.start_workflow(api_greet, "x" * 1000, workflow_id="signalled")  # other kinds keep 2 MiB
    before = snapshot()
    with pytest.raises(
        PayloadTooLarge,
        match=r"Cannot store the payload of event 'go': 51 bytes of JSON, over the limit "
        r"of 50 bytes for signal payloads",
    ):
        handle.signal("go", "z" * 49)
    assert snapshot() == before
    handle.signal("go", "z" * 48)
    assert snapshot() != before


def test_activity_outcomes_by_token_over_the_limit_write_nothing(db, settings, tmp_path):
    limit(settings, PAYLOAD_MAX_BYTES={"activity_result": 100, "heartbeat": 60})
    with WorkflowEnvironment() as env:
        handle = env.start(ac_approval, str(tmp_path))
        env.run_until_idle()
        token = token_of(tmp_path)
        before = snapshot()
        with pytest.raises(PayloadTooLarge, match="Cannot store the activity result: 202 bytes of JSON"):
            durable.complete_activity(token, "r" * 200)
        with pytest.raises(PayloadTooLarge, match="Cannot store the error details: 102 bytes of JSON"):
            durable.fail_activity(token, {"message": "no", "details": "d" * 100})
        with pytest.raises(
            PayloadTooLarge, match="Cannot store the heartbeat details: 74 bytes .* for heartbeat details"
        ):
            durable.heartbeat_activity(token, ["h" * 70])
        assert snapshot() == before
        assert durable.heartbeat_activity(token, ["h" * 50]) is False
        durable.complete_activity(token, "r" * 98)
        assert env.result(handle) == {"result": "r" * 98}


def test_heartbeat_over_the_limit_is_an_error_in_the_activity(db, settings):
    limit(settings, PAYLOAD_MAX_BYTES={"heartbeat": 10})
    seen: list[Any] = []

    def beating_add(a: int, b: int) -> int:
        try:
            durable.heartbeat("h" * 20)
        except PayloadTooLarge as exc:
            seen.append(str(exc))
        seen.append(WorkItem.objects.get(kind="activity").heartbeat_details)
        durable.heartbeat("ok")
        return a + b

    with WorkflowEnvironment(activities={add: beating_add}) as env:
        handle = env.start(api_greet, "ada")
        assert env.result(handle) == {"greeting": "hello ada!", "total": 3}
    assert seen == [
        (
            "Cannot store the heartbeat details: 22 bytes of JSON, over the limit of 10 bytes for "
            "heartbeat details (DURABLE['PAYLOAD_MAX_BYTES'])."
        ),
        None,  # nothing was recorded
    ]


# -- in workflow code -------------------------------------------------------------------------


def test_oversized_inputs_raise_in_workflow_code_and_leave_no_gap(db, settings):
    limit(settings, PAYLOAD_MAX_BYTES={"activity_input": 100, "workflow_input": 100})
    with WorkflowEnvironment() as env:
        handle = env.start(pl_refused_calls_leave_no_gap, 200)
        outcome = env.result(handle)
    assert outcome["total"] == 3
    activity, child = outcome["refused"]
    assert activity[:3] == ["activity_input", json_bytes({"args": ["x" * 200, "y"], "kwargs": {}}), 100]
    assert activity[3].startswith("Cannot store the input of activity 'add': ")
    assert child[:3] == ["workflow_input", json_bytes({"args": ["x" * 200], "kwargs": {}}), 100]
    assert child[3].startswith("Cannot store the input of child workflow 'api_greet': ")
    scheduled = HistoryEvent.objects.filter(instance__run_id=handle.run_id, kind="ActivityScheduled")
    assert list(scheduled.values_list("task_id", flat=True)) == [1]  # the refused calls took no number
    assert WorkflowInstance.objects.count() == 1  # and started no child


def test_a_lowered_limit_does_not_break_calls_history_recorded(db, settings, tmp_path):
    with WorkflowEnvironment() as env:  # it replays every workflow task from the top
        handle = env.start(ac_approval, str(tmp_path))
        env.run_until_idle()
        limit(settings, PAYLOAD_MAX_BYTES={"activity_input": 10})  # the recorded input is larger
        durable.complete_activity(token_of(tmp_path), "done")
        assert env.result(handle) == {"result": "done"}


def test_oversized_values_fail_the_run_where_the_code_passes_them(db, settings):
    limit(settings, PAYLOAD_MAX_BYTES={"activity_input": 100})
    with WorkflowEnvironment() as env:
        handle = env.start(sequence, "k" * 100, 1)
        with pytest.raises(durable.WorkflowFailed) as failed:
            env.result(handle)
    assert failed.value.type == PAYLOAD_ERROR
    assert failed.value.message.startswith("Cannot store the input of activity 'record': ")
    assert env.history_kinds(handle)[-1] == "WorkflowFailed"
    assert "ActivityScheduled" not in env.history_kinds(handle)

    limit(settings, PAYLOAD_MAX_BYTES={"variable": 100})
    with WorkflowEnvironment() as env:
        handle = env.start(api_greet, "v" * 100)
        with pytest.raises(durable.WorkflowFailed) as failed:
            env.result(handle)
    assert failed.value.message.startswith("Cannot store variable 'greeting': 108 bytes of JSON")

    limit(settings, PAYLOAD_MAX_BYTES={"workflow_result": 100})
    with WorkflowEnvironment() as env:
        handle = env.start(api_greet, "w" * 100)
        with pytest.raises(durable.WorkflowFailed) as failed:
            env.result(handle)
        assert failed.value.message.startswith("Cannot store the workflow's return value: ")
        assert "over the limit of 100 bytes for workflow results" in failed.value.message
        assert WorkflowInstance.objects.get(run_id=handle.run_id).result is None

    limit(settings, PAYLOAD_MAX_BYTES={"workflow_input": 1000})
    with WorkflowEnvironment() as env:
        handle = env.start(pl_doubling, "d" * 300)  # 300 -> 600 -> 1200: refused
        with pytest.raises(durable.WorkflowFailed) as failed:
            env.result(handle)
    size = json_bytes({"args": ["d" * 1200], "kwargs": {}})
    assert failed.value.message.startswith(f"Cannot store the input of continue_as_new(): {size} bytes of JSON")
    assert list(
        WorkflowInstance.objects.filter(workflow_id=handle.workflow_id)
        .order_by("created_at", "id")
        .values_list("status", flat=True)
    ) == ["continued_as_new", "failed"]


def test_a_history_over_its_byte_limit_fails_the_run(db, settings, caplog):
    limit(settings, HISTORY_MAX_BYTES=6000, HISTORY_WARN_BYTES=3000)
    caplog.set_level(logging.WARNING, logger="django_durable")
    with WorkflowEnvironment() as env:
        handle = env.start(sequence, "k" * 150, 50)
        with pytest.raises(durable.WorkflowFailed) as failed:
            env.result(handle)
        other = env.start(api_greet, "ada")  # the environment's worker goes on
        assert env.result(other)["total"] == 3
    assert failed.value.type == HISTORY_ERROR
    assert "over the limit of 6000 bytes (DURABLE['HISTORY_MAX_BYTES'])" in failed.value.message
    assert "ctx.continue_as_new()" in failed.value.message
    instance = WorkflowInstance.objects.get(run_id=handle.run_id)
    assert instance.task_error is None  # failed by the engine, not a failing workflow task
    assert not WorkItem.objects.filter(instance=instance).exists()
    payloads = list(HistoryEvent.objects.filter(instance=instance).order_by("seq").values_list("payload", flat=True))
    assert sum(json_bytes(payload) for payload in payloads[:-1]) <= 6000 < sum(map(json_bytes, payloads)) + 2000
    assert 5 < ActivityRun.objects.count() < 20
    warnings = [r.getMessage() for r in caplog.records if "bytes of JSON (warning at 3000" in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert issubclass(HistoryTooLarge, durable.DurableError)


# -- over HTTP (413, nothing written) -----------------------------------------------------------


@pytest.fixture
def staff_api(db, django_user_model) -> APIClient:
    client = APIClient()
    client.force_authenticate(grant(django_user_model.objects.create_user("staff", password="pw", is_staff=True)))
    return client


def test_api_answers_413_for_a_payload_over_its_limit(staff_api, settings, tmp_path):
    limit(settings, PAYLOAD_MAX_BYTES=200)
    before = snapshot()
    response = staff_api.post("/durable/api/workflows/", {"workflow": "api_greet", "args": ["x" * 300]}, format="json")
    assert response.status_code == 413, response.content
    assert response.json() == {
        "code": "payload_too_large",
        "detail": f"Cannot store the input of workflow 'api_greet': {json_bytes({'args': ['x' * 300], 'kwargs': {}})} "
        "bytes of JSON, over the limit of 200 bytes for workflow inputs (DURABLE['PAYLOAD_MAX_BYTES']).",
    }
    assert snapshot() == before
    with WorkflowEnvironment() as env:
        handle = env.start(ac_approval, str(tmp_path))
        env.run_until_idle()
        token = token_of(tmp_path)
        before = snapshot()
        for url, body in [
            (f"/durable/api/workflows/{handle.workflow_id}/signal/", {"name": "go", "payload": "s" * 300}),
            ("/durable/api/activities/complete/", {"task_token": token, "result": ["r" * 300]}),
            ("/durable/api/activities/fail/", {"task_token": token, "error": {"message": "m", "details": "d" * 300}}),
            ("/durable/api/activities/heartbeat/", {"task_token": token, "details": {"h": "h" * 300}}),
        ]:
            response = staff_api.post(url, body, format="json")
            assert response.status_code == 413, (url, response.content)
            assert response.json()["code"] == "payload_too_large"
            assert "DURABLE['PAYLOAD_MAX_BYTES']" in response.json()["detail"]
        assert snapshot() == before
        response = staff_api.post(
            "/durable/api/activities/complete/", {"task_token": token, "result": "ok"}, format="json"
        )
        assert response.status_code == 200
        assert env.result(handle) == {"result": "ok"}


# -- a real worker -------------------------------------------------------------------------------


@pytest.mark.workers
def test_worker_fails_runs_over_the_limits_and_goes_on(start_worker, tmp_path):
    (tmp_path / "limits_settings.py").write_text(
        "from tests.settings import *  # noqa: F403\n"
        "DURABLE = {**DURABLE, 'HISTORY_MAX_BYTES': 6000, 'HISTORY_WARN_BYTES': 3000,\n"
        "           'PAYLOAD_MAX_BYTES': {'activity_result': 100}}\n"
    )
    too_long = durable.start_workflow(sequence, "k" * 80, 50)
    big_result = durable.start_workflow(sequence, "r" * 150, 1)
    fine = durable.start_workflow(api_greet, "ada")
    from tests.conftest import REPO

    worker = start_worker(batch=True, args=["--settings", "limits_settings"], env={"PYTHONPATH": f"{tmp_path}:{REPO}"})
    assert worker.wait(120) == 0, worker.log()[-3000:]

    with pytest.raises(durable.WorkflowFailed) as failed:
        too_long.result(timeout=5)
    assert failed.value.type == HISTORY_ERROR and "DURABLE['HISTORY_MAX_BYTES']" in failed.value.message
    with pytest.raises(durable.WorkflowFailed) as failed:
        big_result.result(timeout=5)
    assert failed.value.type == "django_durable.exceptions.ActivityError"
    assert (
        "Cannot store the result of activity 'record': 154 bytes of JSON, over the limit of 100 bytes for "
        "activity results" in failed.value.message
    )
    # Failed for good on its first attempt: the activity ran once.
    assert ActivityRun.objects.filter(key__startswith="r").count() == 1
    assert fine.result(timeout=5) == {"greeting": "hello ada!", "total": 3}
    assert not WorkItem.objects.exists()  # nothing parked, nothing left to retry
    assert WorkflowInstance.objects.filter(task_error__isnull=False).count() == 0
    log = worker.log()
    assert "bytes of JSON (warning at 3000, limit 6000)" in log
