"""Finishing live activity attempts over HTTP, through real workers (and a live server)."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.db import connection
from rest_framework.test import APIClient

import django_durable as durable
from django_durable.models import HistoryEvent, WorkItem
from tests.conftest import grant, wait_for
from tests.test_api import COMPLETE, FAIL, HEARTBEAT, assert_error, detail, post_json, snapshot
from tests.testapp.async_workflows import ac_approval
from tests.testapp.workflows import api_greet

pytestmark = pytest.mark.workers


def handed_out(folder: Path, attempt: int = 1) -> dict:
    path = folder / f"token-{attempt}"
    wait_for(path.exists, what=f"attempt {attempt} to hand out its token")
    return json.loads(path.read_text())


def awaiting(handle: durable.WorkflowHandle, attempt: int = 1) -> WorkItem:
    return wait_for(
        lambda: WorkItem.objects.filter(
            instance__run_id=handle.run_id, kind="activity", awaiting_completion=True, attempt=attempt
        ).first(),
        what=f"attempt {attempt} to await completion",
    )


def history_kinds(handle: durable.WorkflowHandle) -> list[str]:
    return list(
        HistoryEvent.objects.filter(instance__run_id=handle.run_id).order_by("seq").values_list("kind", flat=True)
    )


@pytest.fixture
def staff_api(transactional_db, django_user_model) -> APIClient:
    client = APIClient()
    client.force_authenticate(grant(django_user_model.objects.create_user("staff", is_staff=True)))
    return client


@pytest.fixture
def live_attempt(start_worker, tmp_path) -> tuple[durable.WorkflowHandle, str, Path]:
    """An ``ac_approval`` run whose activity attempt awaits completion by token."""
    handle = durable.start_workflow(ac_approval, str(tmp_path))
    start_worker()
    token = handed_out(tmp_path)["token"]
    awaiting(handle)
    return handle, token, tmp_path


def test_complete_over_http(live_attempt, staff_api):
    handle, token, _ = live_attempt
    api = APIClient()

    # While it waits, the run's description shows the attempt, and never its token.
    described = staff_api.get(detail(handle.workflow_id))
    assert described.status_code == 200
    activity = [w for w in described.json()["pending_work"] if w["kind"] == "activity"]
    assert activity[0]["name"] == "ac_request_approval" and activity[0]["attempt"] == 1
    assert token not in described.content.decode()

    response = post_json(api, COMPLETE, {"task_token": token, "result": {"approved": True, "by": "ada"}})
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "completed"}
    assert handle.result(timeout=60) == {"result": {"approved": True, "by": "ada"}}

    history = staff_api.get(detail(handle.workflow_id, "history/")).json()["results"]
    completed = [e for e in history if e["kind"] == "ActivityCompleted"]
    assert completed[0]["payload"]["result"] == {"approved": True, "by": "ada"}
    assert staff_api.get(detail(handle.workflow_id)).json()["result"] == {"result": {"approved": True, "by": "ada"}}

    # A duplicate completion is refused and changes nothing: not the history, not the result.
    before = snapshot()
    for url, body in ((COMPLETE, {"result": "again"}), (FAIL, {"error": {"message": "late"}}), (HEARTBEAT, {})):
        assert_error(post_json(api, url, {"task_token": token, **body}), 409, "activity_not_pending")
    assert snapshot() == before
    assert handle.result(timeout=5) == {"result": {"approved": True, "by": "ada"}}


def test_complete_with_the_token_in_a_header(live_attempt):
    handle, token, _ = live_attempt
    response = post_json(APIClient(), COMPLETE, {"result": 7}, HTTP_X_DURABLE_TASK_TOKEN=token)
    assert response.status_code == 200, response.content
    assert handle.result(timeout=60) == {"result": 7}


def test_complete_without_a_result(live_attempt):
    handle, token, _ = live_attempt
    assert post_json(APIClient(), COMPLETE, {"task_token": token}).status_code == 200
    assert handle.result(timeout=60) == {"result": None}


def test_heartbeat_then_fail_retries_and_the_old_token_goes_stale(live_attempt):
    handle, first, folder = live_attempt
    api = APIClient()

    assert post_json(api, HEARTBEAT, {"task_token": first}).json() == {"cancel_requested": False}
    response = post_json(api, HEARTBEAT, {"task_token": first, "details": {"progress": 40}})
    assert response.status_code == 200, response.content
    assert response.json() == {"cancel_requested": False}
    assert WorkItem.objects.get(instance__run_id=handle.run_id, kind="activity").heartbeat_details == {"progress": 40}

    response = post_json(api, FAIL, {"task_token": first, "error": {"message": "mailbox full", "type": "MailError"}})
    assert response.status_code == 200, response.content
    assert response.json() == {"status": "failed"}

    second = handed_out(folder, 2)
    assert second["heartbeat_details"] == {"progress": 40}  # the last details the first attempt reported
    awaiting(handle, 2)
    before = snapshot()
    for url, body in ((COMPLETE, {"result": "stale"}), (FAIL, {"error": {"message": "stale"}}), (HEARTBEAT, {})):
        assert_error(post_json(api, url, {"task_token": first, **body}), 409, "activity_not_pending")
    assert snapshot() == before

    assert post_json(api, COMPLETE, {"task_token": second["token"], "result": "second"}).status_code == 200
    assert handle.result(timeout=60) == {"result": "second"}


def test_failing_every_attempt_fails_the_activity(live_attempt):
    handle, token, folder = live_attempt
    api = APIClient()
    error = {"message": "no approver", "type": "ApprovalError", "details": {"tried": ["ada"]}}
    for attempt in (1, 2, 3):  # the policy allows three attempts
        token = handed_out(folder, attempt)["token"]
        awaiting(handle, attempt)
        assert post_json(api, FAIL, {"task_token": token, "error": error}).status_code == 200
    outcome = handle.result(timeout=60)
    assert outcome == {"error": {"type": "ApprovalError", "message": "no approver", "attempt": 3}}
    failed = HistoryEvent.objects.get(instance__run_id=handle.run_id, kind="ActivityFailed")
    assert failed.payload["error"]["details"] == {"tried": ["ada"]}


def test_rejected_requests_leave_the_attempt_live(live_attempt):
    handle, token, _ = live_attempt
    api = APIClient()
    payload, _, signature = token.rpartition(":")
    tampered = payload + ":" + ("A" if signature[0] != "A" else "B") + signature[1:]
    edited_payload = ("A" if payload[0] != "A" else "B") + payload[1:] + ":" + signature
    before = snapshot()

    for bad in (tampered, edited_payload, "garbage", "", token + "x", "x" + token, token * 5, " " + token):
        for url, body in ((COMPLETE, {}), (FAIL, {"error": {"message": "m"}}), (HEARTBEAT, {})):
            assert_error(post_json(api, url, {"task_token": bad, **body}), 400, "invalid_token")
    # Malformed, mistyped, incomplete and oversized requests that carry the real token.
    raw = json.dumps({"task_token": token, "result": 1})
    assert_error(api.generic("POST", COMPLETE, raw[:-1], content_type="application/json"), 400, "parse_error")
    assert_error(api.generic("POST", COMPLETE, raw, content_type="text/plain"), 415, "unsupported_media_type")
    assert_error(post_json(api, FAIL, {"task_token": token}), 400, "invalid")
    assert_error(post_json(api, FAIL, {"task_token": token, "error": {"message": ["x"]}}), 400, "invalid")
    assert_error(post_json(api, COMPLETE, {"task_token": token, "result": "a\x00b"}), 400, "invalid")
    assert_error(post_json(api, COMPLETE, {"task_token": token}, HTTP_X_DURABLE_TASK_TOKEN=tampered), 400, "invalid")
    assert_error(post_json(api, COMPLETE, {"task_token": token, "result": "x" * 300_000}), 413, "payload_too_large")
    assert_error(api.get(COMPLETE, {"task_token": token}), 405, "method_not_allowed")
    assert snapshot() == before

    assert post_json(api, COMPLETE, {"task_token": token, "result": "still live"}).status_code == 200
    assert handle.result(timeout=60) == {"result": "still live"}


def test_completion_after_terminate_is_409(live_attempt, staff_api):
    handle, token, _ = live_attempt
    response = post_json(staff_api, detail(handle.workflow_id, "terminate/"), {"reason": "withdrawn"})
    assert response.status_code == 202, response.content
    assert handle.status() == "terminated"
    before = snapshot()
    api = APIClient()
    for url, body in ((COMPLETE, {"result": "late"}), (FAIL, {"error": {"message": "late"}}), (HEARTBEAT, {})):
        assert_error(post_json(api, url, {"task_token": token, **body}), 409, "activity_not_pending")
    assert_error(post_json(staff_api, detail(handle.workflow_id, "terminate/"), {}), 409, "workflow_not_open")
    assert snapshot() == before
    assert history_kinds(handle)[-1] == "WorkflowTerminated"


def test_workflow_started_over_http_runs(start_worker, staff_api):
    response = post_json(
        staff_api,
        "/durable/api/workflows/",
        {
            "workflow": "api_greet",
            "args": ["ada"],
            "kwargs": {"punctuation": "?"},
            "workflow_id": "http-greet",
        },
    )
    assert response.status_code == 201, response.content
    start_worker()
    handle = durable.get_workflow("http-greet")
    assert handle.result(timeout=60) == {"greeting": "hello ada?", "total": 3}
    described = staff_api.get(detail("http-greet")).json()
    assert described["status"] == "completed" and described["vars"] == {"greeting": "hello ada"}
    assert described["result"] == {"greeting": "hello ada?", "total": 3}
    assert described["closed_at"] and described["pending_work"] == []
    kinds = [e["kind"] for e in staff_api.get(detail("http-greet", "history/"), {"limit": 100}).json()["results"]]
    assert kinds[0] == "ExecutionStarted" and kinds[-1] == "WorkflowCompleted"
    assert api_greet  # registered in the worker through tests.testapp.workflows


def http_post(url: str, data: Any, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    request = urllib.request.Request(
        url,
        data=json.dumps(data).encode(),
        method="POST",
        headers={"Content-Type": "application/json", **(headers or {})},
    )
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.mark.http
def test_live_server(live_server, start_worker, tmp_path):
    handle = durable.start_workflow(ac_approval, str(tmp_path))
    start_worker()
    token = handed_out(tmp_path)["token"]
    awaiting(handle)
    url = live_server.url + COMPLETE

    assert http_post(url, {"task_token": "garbage"}) == (
        400,
        {"code": "invalid_token", "detail": "The task token is garbled or its signature does not match."},
    )
    status, body = http_post(live_server.url + HEARTBEAT, {"details": [1]}, {"X-Durable-Task-Token": token})
    assert (status, body) == (200, {"cancel_requested": False})
    assert http_post(url, {"task_token": token, "result": {"approved": True}}) == (200, {"status": "completed"})
    assert handle.result(timeout=60) == {"result": {"approved": True}}
    assert http_post(url, {"task_token": token}) == (
        409,
        {
            "code": "activity_not_pending",
            "detail": "This activity attempt is no longer pending: it finished, timed out, was superseded by a "
            "retry, or its workflow closed.",
        },
    )
    status, body = http_post(live_server.url + "/durable/api/workflows/", {"workflow": "api_greet"})
    assert status == 403 and body["code"] == "not_authenticated"
    with urllib.request.urlopen(live_server.url + "/durable/api/schema/", timeout=30) as response:
        assert "/durable/api/activities/complete/" in json.loads(response.read())["paths"]


def test_concurrent_completions_exactly_one_wins(live_attempt):
    handle, token, _ = live_attempt
    threads_count = 8
    barrier = threading.Barrier(threads_count)
    results: list[tuple[int, int, str]] = []
    lock = threading.Lock()

    def complete(index: int) -> None:
        try:
            client = APIClient()
            barrier.wait(timeout=30)
            response = post_json(client, COMPLETE, {"task_token": token, "result": index})
            body = json.loads(response.content)
            with lock:
                results.append((index, response.status_code, body.get("code", body.get("status"))))
        finally:
            connection.close()  # each thread had its own connection

    threads = [threading.Thread(target=complete, args=(i,)) for i in range(threads_count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert len(results) == threads_count, results
    winners = [r for r in results if r[1] == 200]
    losers = [r for r in results if r[1] != 200]
    assert len(winners) == 1, results
    assert {(status, code) for _, status, code in losers} == {(409, "activity_not_pending")}, results
    assert handle.result(timeout=60) == {"result": winners[0][0]}
    assert history_kinds(handle).count("ActivityCompleted") == 1
