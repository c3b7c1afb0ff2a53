"""The HTTP API's control verbs: signal, cancel, suspend, resume, rerun, purge (DELETE); the run's
lineage in describe; cancel_requested on the heartbeat endpoint. Through DRF's test client, real
workers, and a live server."""

from __future__ import annotations

import base64
import json
import urllib.error
import urllib.request
import uuid
from typing import Any

import pytest
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

import django_durable as durable
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem
from tests.conftest import grant, wait_for
from tests.test_api import (
    COMPLETE,
    HEARTBEAT,
    SCHEMA,
    WORKFLOWS,
    assert_error,
    detail,
    post_json,
    snapshot,
)
from tests.test_api_activities import awaiting, handed_out
from tests.testapp.api_control_workflows import (
    apc_approval_outlives_cancel,
    apc_cleans_up_on_cancel,
    apc_counts_down,
    apc_parent,
    apc_waits_for,
)
from tests.testapp.async_workflows import ac_approval
from tests.testapp.workflows import api_greet

pytestmark = pytest.mark.database

TIMEOUT = 60


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def staff(db, django_user_model) -> Any:
    # No password: hashing one is slow. Staff alone grants nothing: the four permissions do.
    return grant(django_user_model.objects.create_user("staff", is_staff=True))


@pytest.fixture
def admin_api(staff) -> APIClient:
    client = APIClient()
    client.force_authenticate(staff)
    return client


def greet(workflow_id: str) -> durable.WorkflowHandle:
    """A pending run (no worker runs it unless the test starts one)."""
    return durable.start_workflow(api_greet, "ada", workflow_id=workflow_id)


def closed(workflow_id: str) -> durable.WorkflowHandle:
    """A terminated run: history is ExecutionStarted (1), WorkflowTerminated (2)."""
    handle = greet(workflow_id)
    handle.terminate("for the test")
    return handle


@pytest.fixture
def runs(db) -> dict[str, durable.WorkflowHandle]:
    suspended = greet("suspended-run")
    suspended.suspend("for the test")
    return {"open": greet("open-run"), "suspended": suspended, "closed": closed("closed-run")}


def send(client: APIClient, method: str, url: str, data: Any = None, **extra: Any) -> Any:
    if method == "delete":
        return client.delete(url, **extra)
    return post_json(client, url, {} if data is None else data, **extra)


def run_row(run_id: str) -> WorkflowInstance:
    return WorkflowInstance.objects.get(run_id=run_id)


def history_kinds(client: APIClient, workflow_id: str, **params: str) -> list[str]:
    page = client.get(detail(workflow_id, "history/"), {"limit": 1000, **params}).json()
    return [event["kind"] for event in page["results"]]


def finished(worker: Any) -> None:
    code = worker.wait(TIMEOUT)
    assert code == 0, f"worker exited with {code}:\n{worker.log()}"


# -- the schema -----------------------------------------------------------------------------


def test_schema_documents_the_control_verbs(api, db):
    schema = json.loads(api.get(SCHEMA).content)
    paths = schema["paths"]
    one = "/durable/api/workflows/{workflow_id}/"
    expected = {
        (f"{one}signal/", "post"): ("signalWorkflow", "202", "SignalWorkflow"),
        (f"{one}cancel/", "post"): ("cancelWorkflow", "202", None),
        (f"{one}suspend/", "post"): ("suspendWorkflow", "202", "SuspendWorkflow"),
        (f"{one}resume/", "post"): ("resumeWorkflow", "202", None),
        (f"{one}rerun/", "post"): ("rerunWorkflow", "201", "RerunWorkflow"),
        (one, "delete"): ("purgeWorkflow", "204", None),
    }
    for (path, method), (operation_id, success, request) in expected.items():
        operation = paths[path][method]
        assert operation["operationId"] == operation_id
        assert {code for code in operation["responses"] if code.startswith("2")} == {success}
        assert "4XX" in operation["responses"]
        if request is None:
            assert "requestBody" not in operation, path
        else:
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            assert body == {"$ref": f"#/components/schemas/{request}"}
        # Every route on one run takes ?run_id=, and none of them takes the list's filters.
        query = {p["name"] for p in operation["parameters"] if p["in"] == "query"}
        assert query == {"run_id"}, (path, method, query)
    components = schema["components"]["schemas"]
    assert components["SignalWorkflow"]["required"] == ["name"]
    assert components["SignalWorkflow"]["properties"]["name"]["maxLength"] == 255
    assert components["RerunWorkflow"]["required"] == ["from_event"]
    from_event = components["RerunWorkflow"]["properties"]["from_event"]
    assert (from_event["type"], from_event["minimum"]) == ("integer", 2)
    detail_fields = components["WorkflowDetail"]["properties"]
    for field in ("cancel_requested_at", "parent", "continued_from", "continued_as"):
        assert detail_fields[field]["nullable"] is True and detail_fields[field]["readOnly"] is True
    assert "parent" not in components["WorkflowSummary"]["properties"]
    list_query = {p["name"] for p in paths["/durable/api/workflows/"]["get"]["parameters"]}
    assert {"status", "workflow_name", "workflow_id"} <= list_query and "run_id" not in list_query


# -- permissions: anonymous / authenticated non-staff / staff ---------------------------------


CONTROL_REQUESTS = [
    ("post", detail("open-run", "signal/"), {"name": "go", "payload": {"n": 1}}, 202),
    ("post", detail("open-run", "cancel/"), None, 202),
    ("post", detail("open-run", "suspend/"), {"reason": "maintenance"}, 202),
    ("post", detail("suspended-run", "resume/"), None, 202),
    ("post", detail("closed-run", "rerun/"), {"from_event": 2}, 201),
    ("delete", detail("closed-run"), None, 204),
]
CONTROL_REQUEST_IDS = ["signal", "cancel", "suspend", "resume", "rerun", "purge"]


@pytest.mark.parametrize(("method", "url", "data", "success"), CONTROL_REQUESTS, ids=CONTROL_REQUEST_IDS)
def test_anonymous_users_are_refused(api, runs, method, url, data, success):
    before = snapshot()
    assert_error(send(api, method, url, data), 403, "not_authenticated")
    assert snapshot() == before


@pytest.mark.parametrize(("method", "url", "data", "success"), CONTROL_REQUESTS, ids=CONTROL_REQUEST_IDS)
def test_authenticated_non_staff_users_are_forbidden(api, runs, django_user_model, method, url, data, success):
    api.force_authenticate(django_user_model.objects.create_user("user"))
    before = snapshot()
    assert_error(send(api, method, url, data), 403, "permission_denied")
    assert snapshot() == before


@pytest.mark.parametrize(("method", "url", "data", "success"), CONTROL_REQUESTS, ids=CONTROL_REQUEST_IDS)
def test_users_with_the_permissions_may(admin_api, runs, method, url, data, success):
    before = snapshot()
    response = send(admin_api, method, url, data)
    assert response.status_code == success, response.content
    assert snapshot() != before


@pytest.mark.parametrize(("method", "url", "data", "success"), CONTROL_REQUESTS, ids=CONTROL_REQUEST_IDS)
def test_session_writes_need_the_csrf_token(db, staff, runs, method, url, data, success):
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(staff)  # a session cookie, but no CSRF token
    before = snapshot()
    body = assert_error(send(client, method, url, data), 403, "permission_denied")
    assert "CSRF" in body["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(("method", "url", "data", "success"), CONTROL_REQUESTS, ids=CONTROL_REQUEST_IDS)
def test_permission_classes_are_a_setting(api, runs, method, url, data, success):
    with override_settings(DURABLE={"API_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"]}):
        assert send(api, method, url, data).status_code == success


@pytest.mark.parametrize(("method", "url", "data", "success"), CONTROL_REQUESTS, ids=CONTROL_REQUEST_IDS)
def test_options_describe_the_verbs(admin_api, api, runs, method, url, data, success):
    response = admin_api.options(url)
    assert response.status_code == 200
    allowed = {verb.strip() for verb in response["Allow"].split(",")}
    assert method.upper() in allowed
    if "signal" in url:
        assert set(response.json()["actions"]["POST"]) == {"name", "payload"}
    if "rerun" in url:
        assert set(response.json()["actions"]["POST"]) == {"from_event", "workflow_id"}
    assert_error(api.options(url), 403, "not_authenticated")


# -- errors every verb shares -----------------------------------------------------------------


VERBS = ["signal", "cancel", "suspend", "resume", "rerun"]
VALID_BODIES = {"signal": {"name": "go"}, "cancel": {}, "suspend": {}, "resume": {}, "rerun": {"from_event": 2}}


@pytest.mark.parametrize("verb", [*VERBS, "purge"])
@pytest.mark.parametrize("workflow_id", ["nope", "n" * 300, "a%00b", "%F0%9F%98%80", "spa%20ce"])
def test_unknown_workflow_is_404(admin_api, runs, verb, workflow_id):
    before = snapshot()
    if verb == "purge":
        response = admin_api.delete(detail(workflow_id))
    else:
        response = post_json(admin_api, detail(workflow_id, f"{verb}/"), VALID_BODIES[verb])
    assert_error(response, 404, "workflow_not_found")
    assert snapshot() == before


@pytest.mark.parametrize("verb", [*VERBS, "purge"])
def test_run_id_must_name_a_run_of_the_id(admin_api, runs, verb):
    before = snapshot()
    for run_id, status, code in [
        ("not-a-uuid", 400, "invalid"),
        (str(uuid.uuid4()), 404, "workflow_not_found"),
        (runs["closed"].run_id, 404, "workflow_not_found"),
    ]:
        url = detail("open-run", "" if verb == "purge" else f"{verb}/") + f"?run_id={run_id}"
        response = admin_api.delete(url) if verb == "purge" else post_json(admin_api, url, VALID_BODIES[verb])
        assert_error(response, status, code)
    assert snapshot() == before


@pytest.mark.parametrize("verb", ["signal", "cancel", "suspend", "resume"])
def test_verbs_on_a_closed_run_are_409_workflow_not_open(admin_api, runs, verb):
    before = snapshot()
    body = assert_error(
        post_json(admin_api, detail("closed-run", f"{verb}/"), VALID_BODIES[verb]), 409, "workflow_not_open"
    )
    assert "closed-run" in body["detail"]
    assert snapshot() == before


@pytest.mark.parametrize("verb", ["signal", "cancel", "suspend", "resume"])
def test_verbs_address_the_run_that_run_id_names(admin_api, db, verb):
    """The latest run of the id is open, the older one closed: ?run_id= picks the closed one."""
    old = closed("reused")
    greet("reused").suspend()  # the latest: open (suspended, so that resume applies too)
    before = snapshot()
    response = post_json(admin_api, detail("reused", f"{verb}/") + f"?run_id={old.run_id}", VALID_BODIES[verb])
    assert_error(response, 409, "workflow_not_open")
    assert snapshot() == before


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("data", [[], ["go"], "go", 1, True], ids=["list", "list-of-str", "str", "int", "bool"])
def test_bodies_must_be_objects(admin_api, runs, verb, data):
    target = "closed-run" if verb == "rerun" else ("suspended-run" if verb == "resume" else "open-run")
    before = snapshot()
    body = assert_error(post_json(admin_api, detail(target, f"{verb}/"), data), 400, "invalid")
    assert "non_field_errors" in body["detail"]
    assert snapshot() == before


# -- signal -------------------------------------------------------------------------------------


def test_signal(admin_api, runs):
    handle = runs["open"]
    response = post_json(admin_api, detail("open-run", "signal/"), {"name": "approved", "payload": {"by": "ada"}})
    assert response.status_code == 202, response.content
    assert response.json() == {"workflow_id": "open-run", "run_id": handle.run_id, "status": "pending"}
    assert list(InboxEvent.objects.filter(instance__run_id=handle.run_id).values_list("kind", "name")) == [
        ("EventRaised", "approved"),
    ]
    # A payload is optional; a suspended run takes events too (kept for after resume).
    response = post_json(admin_api, detail("suspended-run", "signal/"), {"name": "x" * 255})
    assert response.status_code == 202 and response.json()["status"] == "suspended"
    assert InboxEvent.objects.filter(instance__run_id=runs["suspended"].run_id, name="x" * 255).exists()


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "name"),
        ({"payload": 1}, "name"),
        ({"name": ""}, "name"),
        ({"name": "n" * 256}, "name"),
        ({"name": None}, "name"),
        ({"name": ["go"]}, "name"),
        ({"name": {"go": 1}}, "name"),
        ({"name": True}, "name"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "go", "payload": "a\x00b"}, "payload"),
        ({"name": "go", "payload": {"k\x00": 1}}, "payload"),
    ],
)
def test_signal_validation(admin_api, runs, data, field):
    before = snapshot()
    body = assert_error(post_json(admin_api, detail("open-run", "signal/"), data), 400, "invalid")
    assert list(body["detail"]) == [field], body
    assert snapshot() == before


def test_signal_payload_the_converter_refuses_is_400(admin_api, runs):
    with override_settings(DURABLE={"DATA_CONVERTER": "tests.test_api.PickyConverter"}):
        before = snapshot()
        response = post_json(admin_api, detail("open-run", "signal/"), {"name": "go", "payload": ["unserialisable"]})
        assert_error(response, 400, "not_serializable")
        assert snapshot() == before


def test_signal_body_size_limit(admin_api, runs):
    before = snapshot()
    response = post_json(admin_api, detail("open-run", "signal/"), {"name": "go", "payload": "p" * (300 * 1024)})
    assert_error(response, 413, "payload_too_large")
    assert snapshot() == before


@pytest.mark.workers
def test_signal_reaches_a_waiting_workflow(start_worker, admin_api):
    response = post_json(
        admin_api, WORKFLOWS, {"workflow": "apc_waits_for", "args": ["approval"], "workflow_id": "awaits"}
    )
    assert response.status_code == 201, response.content
    finished(start_worker(batch=True))  # runs until the workflow waits for the event
    described = admin_api.get(detail("awaits")).json()
    assert described["status"] == "running" and described["result"] is None

    payload = {"approved": True, "by": ["ada", 2**70, 0.5, None]}
    response = post_json(admin_api, detail("awaits", "signal/"), {"name": "approval", "payload": payload})
    assert response.status_code == 202, response.content
    finished(start_worker(batch=True))
    described = admin_api.get(detail("awaits")).json()
    assert described["status"] == "completed", described
    assert described["result"] == {"payload": payload}
    assert durable.get_workflow("awaits").result(timeout=TIMEOUT) == {"payload": payload}
    assert "EventRaised" in history_kinds(admin_api, "awaits")
    assert apc_waits_for  # registered in the worker through tests.testapp.workflows


# -- cancel ---------------------------------------------------------------------------------------


def test_cancel(admin_api, runs):
    handle = runs["open"]
    assert admin_api.get(detail("open-run")).json()["cancel_requested_at"] is None
    response = post_json(admin_api, detail("open-run", "cancel/"), {})
    assert response.status_code == 202, response.content
    assert response.json() == {"workflow_id": "open-run", "run_id": handle.run_id, "status": "pending"}
    requested_at = admin_api.get(detail("open-run")).json()["cancel_requested_at"]
    assert requested_at is not None
    assert run_row(handle.run_id).cancel_requested_at is not None

    # Asking again is accepted and changes nothing.
    before = snapshot()
    response = admin_api.post(detail("open-run", "cancel/"))  # no body at all
    assert response.status_code == 202, response.content
    assert snapshot() == before
    assert admin_api.get(detail("open-run")).json()["cancel_requested_at"] == requested_at


def test_cancel_ignores_fields_it_does_not_take(admin_api, runs):
    response = post_json(admin_api, detail("suspended-run", "cancel/"), {"reason": "ignored"})
    assert response.status_code == 202 and response.json()["status"] == "suspended"
    assert run_row(runs["suspended"].run_id).cancel_requested_at is not None


@pytest.mark.workers
def test_cancel_reaches_the_workflow(start_worker, admin_api):
    durable.start_workflow(apc_waits_for, "never", workflow_id="cancel-me")
    durable.start_workflow(apc_cleans_up_on_cancel, "never", workflow_id="clean-up")
    finished(start_worker(batch=True))
    for workflow_id in ("cancel-me", "clean-up"):
        assert admin_api.get(detail(workflow_id)).json()["status"] == "running"
        assert post_json(admin_api, detail(workflow_id, "cancel/"), {}).status_code == 202
    finished(start_worker(batch=True))

    canceled = admin_api.get(detail("cancel-me")).json()
    assert canceled["status"] == "canceled", canceled
    assert canceled["cancel_requested_at"] is not None and canceled["closed_at"] is not None
    assert history_kinds(admin_api, "cancel-me")[-1] == "WorkflowCanceled"
    cleaned = admin_api.get(detail("clean-up")).json()
    assert cleaned["status"] == "completed", cleaned
    assert cleaned["result"] == "cleaned up after cancel"
    assert apc_cleans_up_on_cancel  # registered in the worker through tests.testapp.workflows


# -- suspend and resume ------------------------------------------------------------------------


def test_suspend_and_resume(admin_api, runs):
    handle = runs["open"]
    response = post_json(admin_api, detail("open-run", "suspend/"), {"reason": "deploying"})
    assert response.status_code == 202, response.content
    assert response.json() == {"workflow_id": "open-run", "run_id": handle.run_id, "status": "suspended"}
    page = admin_api.get(detail("open-run", "history/")).json()
    assert page["results"][-1]["kind"] == "ExecutionSuspended"
    assert page["results"][-1]["payload"]["reason"] == "deploying"
    assert WorkItem.objects.get(instance__run_id=handle.run_id).parked_at is not None

    before = snapshot()
    body = assert_error(post_json(admin_api, detail("open-run", "suspend/"), {}), 409, "invalid_state")
    assert "already suspended" in body["detail"]
    assert snapshot() == before

    response = post_json(admin_api, detail("open-run", "resume/"), {})
    assert response.status_code == 202, response.content
    assert response.json() == {"workflow_id": "open-run", "run_id": handle.run_id, "status": "pending"}
    assert history_kinds(admin_api, "open-run")[-1] == "ExecutionResumed"
    assert WorkItem.objects.get(instance__run_id=handle.run_id).parked_at is None

    before = snapshot()
    body = assert_error(post_json(admin_api, detail("open-run", "resume/"), {}), 409, "invalid_state")
    assert "not suspended" in body["detail"]
    assert snapshot() == before


def test_suspend_without_a_reason(admin_api, runs):
    response = admin_api.post(detail("open-run", "suspend/"))
    assert response.status_code == 202
    assert admin_api.get(detail("open-run", "history/")).json()["results"][-1]["payload"]["reason"] == ""


@pytest.mark.parametrize(
    "data", [{"reason": "r" * 10_001}, {"reason": ["r"]}, {"reason": {"r": 1}}, {"reason": "a\x00"}]
)
def test_suspend_validation(admin_api, runs, data):
    before = snapshot()
    body = assert_error(post_json(admin_api, detail("open-run", "suspend/"), data), 400, "invalid")
    assert list(body["detail"]) == ["reason"]
    assert snapshot() == before


@pytest.mark.workers
def test_a_suspended_run_waits_for_resume(start_worker, admin_api):
    handle = greet("paused")
    assert post_json(admin_api, detail("paused", "suspend/"), {}).status_code == 202
    finished(start_worker(batch=True))  # nothing is due: the worker exits without running it
    described = admin_api.get(detail("paused")).json()
    assert described["status"] == "suspended" and described["history_length"] == 2
    assert post_json(admin_api, detail("paused", "resume/"), {}).status_code == 202
    finished(start_worker(batch=True))
    assert handle.result(timeout=TIMEOUT) == {"greeting": "hello ada!", "total": 3}
    kinds = history_kinds(admin_api, "paused")
    assert kinds[:3] == ["ExecutionStarted", "ExecutionSuspended", "ExecutionResumed"]
    assert kinds[-1] == "WorkflowCompleted"


# -- rerun ---------------------------------------------------------------------------------------


def test_rerun(admin_api, runs):
    source = runs["closed"]
    response = post_json(admin_api, detail("closed-run", "rerun/"), {"from_event": 2})
    assert response.status_code == 201, response.content
    body = response.json()
    assert body == {"workflow_id": "closed-run", "run_id": body["run_id"], "status": "pending"}
    assert body["run_id"] != source.run_id
    assert response["Location"].endswith(detail("closed-run"))
    assert history_kinds(admin_api, "closed-run") == ["ExecutionStarted"]
    assert history_kinds(admin_api, "closed-run", run_id=source.run_id) == ["ExecutionStarted", "WorkflowTerminated"]
    new = run_row(body["run_id"])
    assert new.rerun_of_id == run_row(source.run_id).pk and new.rerun_from_seq == 2
    assert new.input == {"args": ["ada"], "kwargs": {}}

    # The id has an open run now: the old run can be rerun only under another id.
    before = snapshot()
    url = detail("closed-run", "rerun/") + f"?run_id={source.run_id}"
    assert_error(post_json(admin_api, url, {"from_event": 2}), 409, "workflow_already_exists")
    assert snapshot() == before
    response = post_json(admin_api, url, {"from_event": 2, "workflow_id": "closed-run-again"})
    assert response.status_code == 201, response.content
    assert response.json()["workflow_id"] == "closed-run-again"
    assert response["Location"].endswith(detail("closed-run-again"))


def test_rerun_of_an_open_run_is_409(admin_api, runs):
    before = snapshot()
    for workflow_id in ("open-run", "suspended-run"):
        body = assert_error(
            post_json(admin_api, detail(workflow_id, "rerun/"), {"from_event": 2}), 409, "workflow_open"
        )
        assert workflow_id in body["detail"]
    assert snapshot() == before


def test_rerun_into_an_id_with_an_open_run_is_409(admin_api, runs):
    before = snapshot()
    response = post_json(admin_api, detail("closed-run", "rerun/"), {"from_event": 2, "workflow_id": "open-run"})
    assert_error(response, 409, "workflow_already_exists")
    assert snapshot() == before


@pytest.mark.parametrize("from_event", [3, 1000, 2**63])
def test_rerun_past_the_history_is_409_invalid_state(admin_api, runs, from_event):
    before = snapshot()
    response = post_json(admin_api, detail("closed-run", "rerun/"), {"from_event": from_event})
    body = assert_error(response, 409, "invalid_state")
    assert "between 2 and 2" in body["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({}, "from_event"),
        ({"from_event": 1}, "from_event"),
        ({"from_event": 0}, "from_event"),
        ({"from_event": -5}, "from_event"),
        ({"from_event": None}, "from_event"),
        ({"from_event": "two"}, "from_event"),
        ({"from_event": 2.5}, "from_event"),
        ({"from_event": True}, "from_event"),
        ({"from_event": [2]}, "from_event"),
        ({"from_event": 2, "workflow_id": ""}, "workflow_id"),
        ({"from_event": 2, "workflow_id": "a/b"}, "workflow_id"),
        ({"from_event": 2, "workflow_id": "i" * 256}, "workflow_id"),
        ({"from_event": 2, "workflow_id": "a\x00"}, "workflow_id"),
        ({"from_event": 2, "workflow_id": ["x"]}, "workflow_id"),
    ],
)
def test_rerun_validation(admin_api, runs, data, field):
    before = snapshot()
    body = assert_error(post_json(admin_api, detail("closed-run", "rerun/"), data), 400, "invalid")
    assert list(body["detail"]) == [field], body
    assert snapshot() == before


@pytest.mark.workers
def test_a_rerun_runs(start_worker, admin_api):
    closed("again")
    response = post_json(admin_api, detail("again", "rerun/"), {"from_event": 2})
    assert response.status_code == 201, response.content
    finished(start_worker(batch=True))
    handle = durable.get_workflow("again", response.json()["run_id"])
    assert handle.result(timeout=TIMEOUT) == {"greeting": "hello ada!", "total": 3}
    assert admin_api.get(detail("again")).json()["status"] == "completed"


# -- purge (DELETE) ------------------------------------------------------------------------------


def test_purge_deletes_every_closed_run_of_the_id(admin_api, db):
    first, second = closed("gone"), closed("gone")
    keep = closed("kept")
    response = admin_api.delete(detail("gone"))
    assert response.status_code == 204, response.content
    assert response.content == b""
    assert not WorkflowInstance.objects.filter(workflow_id="gone").exists()
    assert not HistoryEvent.objects.filter(instance__workflow_id="gone").exists()
    remaining = {str(run_id) for run_id in WorkflowInstance.objects.values_list("run_id", flat=True)}
    assert remaining == {keep.run_id} and first.run_id != second.run_id
    assert_error(admin_api.get(detail("gone")), 404, "workflow_not_found")
    assert_error(admin_api.delete(detail("gone")), 404, "workflow_not_found")
    assert admin_api.get(detail("kept")).json()["run_id"] == keep.run_id


def test_purge_refuses_while_a_run_of_the_id_is_open(admin_api, runs):
    old = closed("open-run-2")
    greet("open-run-2")
    before = snapshot()
    for workflow_id in ("open-run", "suspended-run", "open-run-2"):
        body = assert_error(admin_api.delete(detail(workflow_id)), 409, "workflow_open")
        assert workflow_id in body["detail"]
    assert_error(admin_api.delete(detail("open-run") + f"?run_id={runs['open'].run_id}"), 409, "workflow_open")
    assert snapshot() == before
    # One closed run can go while the id's latest run is open.
    response = admin_api.delete(detail("open-run-2") + f"?run_id={old.run_id}")
    assert response.status_code == 204, response.content
    assert list(WorkflowInstance.objects.filter(workflow_id="open-run-2").values_list("status", flat=True)) == [
        "pending",
    ]


def test_purging_a_parent_leaves_its_children(admin_api, db):
    parent, child = closed("parent-run"), closed("child-run")
    WorkflowInstance.objects.filter(run_id=child.run_id).update(parent=run_row(parent.run_id))
    assert admin_api.get(detail("child-run")).json()["parent"] == "parent-run"
    assert admin_api.delete(detail("parent-run")).status_code == 204
    assert admin_api.get(detail("child-run")).json()["parent"] is None


# -- describe: cancel request and lineage ------------------------------------------------------


@pytest.mark.workers
def test_describe_shows_lineage(start_worker, admin_api):
    durable.start_workflow(apc_parent, "the-child", workflow_id="the-parent")
    first = durable.start_workflow(apc_counts_down, 2, workflow_id="countdown")
    finished(start_worker(batch=True))
    assert durable.get_workflow("the-parent").result(timeout=TIMEOUT) == 42
    assert durable.get_workflow("countdown").result(timeout=TIMEOUT) == "done"

    parent = admin_api.get(detail("the-parent")).json()
    child = admin_api.get(detail("the-child")).json()
    assert child["parent"] == "the-parent" and child["status"] == "completed" and child["result"] == 42
    assert parent["parent"] is None and parent["continued_from"] is None and parent["continued_as"] is None

    chain = []
    run_id: str | None = first.run_id
    while run_id is not None:
        described = admin_api.get(detail("countdown"), {"run_id": run_id}).json()
        chain.append(described)
        run_id = described["continued_as"]
    assert [run["status"] for run in chain] == ["continued_as_new", "continued_as_new", "completed"]
    assert [run["args"] for run in chain] == [[2], [1], [0]]
    assert chain[0]["continued_from"] is None
    assert [run["continued_from"] for run in chain[1:]] == [run["run_id"] for run in chain[:-1]]
    assert admin_api.get(detail("countdown")).json()["run_id"] == chain[-1]["run_id"]  # the latest run


def test_list_rows_cost_no_extra_queries(admin_api, db):
    def list_queries() -> int:
        with CaptureQueriesContext(connection) as queries:
            response = admin_api.get(WORKFLOWS)
        assert response.status_code == 200
        assert all("parent" not in row and "continued_as" not in row for row in response.json()["results"])
        return len(queries)

    closed("one")
    list_queries()  # the first request also reads the user's permissions, cached on the user from then on
    few = list_queries()
    parent = WorkflowInstance.objects.get(workflow_id="one")
    for i in range(5):
        WorkflowInstance.objects.filter(run_id=closed(f"more-{i}").run_id).update(parent=parent)
    assert list_queries() == few


# -- heartbeat: cancel_requested ---------------------------------------------------------------


@pytest.mark.workers
def test_heartbeat_answers_cancel_requested(start_worker, admin_api, tmp_path):
    """The workflow catches the cancel request and still waits for the activity, so the
    attempt stays pending: the activity hears of the cancel, then reports its result."""
    handle = durable.start_workflow(apc_approval_outlives_cancel, str(tmp_path), workflow_id="approval")
    start_worker()
    token = handed_out(tmp_path)["token"]
    awaiting(handle)

    response = post_json(admin_api, HEARTBEAT, {"task_token": token, "details": {"step": 1}})
    assert (response.status_code, response.json()) == (200, {"cancel_requested": False})
    assert post_json(admin_api, detail("approval", "cancel/"), {}).status_code == 202
    response = post_json(admin_api, HEARTBEAT, {"task_token": token})
    assert (response.status_code, response.json()) == (200, {"cancel_requested": True})
    response = post_json(APIClient(), HEARTBEAT, {}, HTTP_X_DURABLE_TASK_TOKEN=token)  # no login needed
    assert (response.status_code, response.json()) == (200, {"cancel_requested": True})

    response = post_json(APIClient(), COMPLETE, {"task_token": token, "result": "stopped early"})
    assert response.status_code == 200, response.content
    assert handle.result(timeout=TIMEOUT) == {"approval_after_cancel": "stopped early"}
    assert admin_api.get(detail("approval")).json()["status"] == "completed"


@pytest.mark.workers
def test_heartbeat_of_a_suspended_run_asked_to_cancel(start_worker, admin_api, tmp_path):
    """A run that lets CancelledError propagate: suspended first, so that it cannot close
    before the heartbeat; once resumed it closes as canceled and the token goes stale."""
    handle = durable.start_workflow(ac_approval, str(tmp_path), workflow_id="approval")
    start_worker()
    token = handed_out(tmp_path)["token"]
    awaiting(handle)
    assert post_json(admin_api, detail("approval", "suspend/"), {}).status_code == 202
    assert post_json(admin_api, detail("approval", "cancel/"), {}).status_code == 202
    response = post_json(APIClient(), HEARTBEAT, {"task_token": token})
    assert (response.status_code, response.json()) == (200, {"cancel_requested": True})

    assert post_json(admin_api, detail("approval", "resume/"), {}).status_code == 202
    wait_for(lambda: admin_api.get(detail("approval")).json()["status"] == "canceled", what="the run to cancel")
    assert history_kinds(admin_api, "approval")[-1] == "WorkflowCanceled"
    assert_error(post_json(APIClient(), HEARTBEAT, {"task_token": token}), 409, "activity_not_pending")


# -- over real HTTP --------------------------------------------------------------------------------


def http(method: str, url: str, data: Any = None, *, auth: tuple[str, str] | None = None) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if auth is not None:
        headers["Authorization"] = "Basic " + base64.b64encode(":".join(auth).encode()).decode()
    body = None if data is None else json.dumps(data).encode()
    request = urllib.request.Request(url, data=body, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            raw = response.read()
            return response.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.http
def test_control_verbs_over_real_http(live_server, start_worker, django_user_model):
    grant(django_user_model.objects.create_user("operator", password="pw", is_staff=True))
    staff = ("operator", "pw")
    base = live_server.url + WORKFLOWS
    status, body = http("POST", base, {"workflow": "apc_waits_for", "args": ["go"], "workflow_id": "live"}, auth=staff)
    assert status == 201, body
    finished(start_worker(batch=True))

    assert http("POST", f"{base}live/signal/", {"name": "go"}) == (
        403,
        {"code": "not_authenticated", "detail": "Authentication credentials were not provided."},
    )
    assert http("POST", f"{base}live/suspend/", {"reason": "x"}, auth=("operator", "wrong"))[0] == 403
    assert http("POST", f"{base}live/resume/", None, auth=staff) == (
        409,
        {
            "code": "invalid_state",
            "detail": "Workflow 'live' is not suspended (it is running).",
        },
    )
    status, body = http("POST", f"{base}live/signal/", {"name": "go", "payload": "hello"}, auth=staff)
    assert (status, body["status"]) == (202, "running")
    finished(start_worker(batch=True))
    status, body = http("GET", f"{base}live/", auth=staff)
    assert (status, body["status"], body["result"]) == (200, "completed", {"payload": "hello"})

    status, body = http("POST", f"{base}live/rerun/", {"from_event": 1}, auth=staff)
    assert status == 400 and body["code"] == "invalid" and list(body["detail"]) == ["from_event"]
    assert http("DELETE", f"{base}live/", auth=staff) == (204, None)
    assert http("DELETE", f"{base}live/", auth=staff) == (
        404,
        {
            "code": "workflow_not_found",
            "detail": "No workflow with id 'live'.",
        },
    )
