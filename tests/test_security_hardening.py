"""Smaller hardenings (issue 15, section 4): the API's list reads no large columns, an
activity's info keeps its task token out of its repr, task tokens can expire, and the
debugger's pages refuse to be framed."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from django.core import signing
from django.db import connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from rest_framework.test import APIClient

import django_durable as durable
from django_durable import checks
from django_durable.activity import ActivityInfo
from django_durable.conf import durable_settings
from django_durable.models import HistoryEvent, WorkflowInstance
from django_durable.testing import WorkflowEnvironment
from django_durable.tokens import read_task_token
from tests.test_api import COMPLETE, FAIL, HEARTBEAT, WORKFLOWS, assert_error, post_json, snapshot
from tests.test_api_activities import awaiting, handed_out
from tests.testapp import testing_workflows as tw
from tests.testapp.async_workflows import ac_approval

pytestmark = pytest.mark.engine

LARGE_COLUMNS = ("input", "result", "vars", "error", "task_error")


@pytest.fixture
def superuser_api(django_user_model: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(django_user_model.objects.create_superuser("root", "root@example.com", "pw"))
    return client


# -- the list endpoint --------------------------------------------------------------


def selects_column(sql: str, column: str) -> bool:
    return f'."{column}"' in sql or f".`{column}`" in sql


@pytest.mark.database
@pytest.mark.django_db
def test_the_workflow_list_reads_none_of_the_large_columns(superuser_api: APIClient) -> None:
    big = "x" * 100_000
    for number in range(3):
        durable.start_workflow(tw.th_long_sleep, number, workflow_id=f"list-{number}")
    WorkflowInstance.objects.update(
        result={"big": big}, vars={"big": big}, error={"message": big}, task_error={"message": big}
    )

    with CaptureQueriesContext(connection) as captured:
        response = superuser_api.get(WORKFLOWS, {"limit": 1000})
    assert response.status_code == 200, response.content
    listed = response.json()["results"]
    assert sorted(run["workflow_id"] for run in listed) == ["list-0", "list-1", "list-2"]
    assert all(run["status"] == "pending" and run["workflow_name"] for run in listed)

    reads = [query["sql"] for query in captured.captured_queries if "django_durable_workflowinstance" in query["sql"]]
    assert any(selects_column(sql, "workflow_id") for sql in reads), reads
    for column in LARGE_COLUMNS:
        assert not any(selects_column(sql, column) for sql in reads), (column, reads)
    assert big not in response.content.decode()


@pytest.mark.database
@pytest.mark.django_db
def test_a_run_description_still_has_its_large_columns(superuser_api: APIClient) -> None:
    durable.start_workflow(tw.th_long_sleep, 5, workflow_id="described")
    WorkflowInstance.objects.update(vars={"note": "kept"})
    described = superuser_api.get(f"{WORKFLOWS}described/").json()
    assert described["args"] == [5] and described["vars"] == {"note": "kept"}


# -- ActivityInfo ---------------------------------------------------------------------


def test_activity_info_repr_leaves_out_the_task_token() -> None:
    info = ActivityInfo(
        workflow_id="order-1",
        run_id="r",
        activity_id="1",
        activity_name="charge",
        attempt=2,
        task_token="secret-capability-token",
    )
    shown = repr(info)
    assert "secret-capability-token" not in shown and "task_token" not in shown
    assert "order-1" in shown and "attempt=2" in shown
    assert info.task_token == "secret-capability-token"
    assert "secret-capability-token" not in str(info)


# -- TASK_TOKEN_MAX_AGE -----------------------------------------------------------------


class _PastSigner(signing.TimestampSigner):
    """Signs as Django's signing.dumps does, with a timestamp ``age`` seconds ago."""

    def __init__(self, age: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.age = age

    def timestamp(self) -> str:
        return signing.b62_encode(int(time.time()) - self.age)


def made_ago(token: str, seconds: int) -> str:
    """The same token (same attempt, same key and salt), as if it had been made ``seconds`` ago."""
    parsed = read_task_token(token)
    data = {"i": parsed.item_id, "r": parsed.run_id, "t": parsed.task_id, "a": parsed.attempt}
    return _PastSigner(seconds, salt=durable_settings.TASK_TOKEN_SALT).sign_object(data)


@pytest.fixture
def live_attempt(start_worker: Any, tmp_path: Any) -> tuple[durable.WorkflowHandle, str]:
    handle = durable.start_workflow(ac_approval, str(tmp_path))
    start_worker()
    token = handed_out(tmp_path)["token"]
    awaiting(handle)
    return handle, token


@pytest.mark.workers
def test_an_old_token_is_refused_over_http_and_changes_nothing(live_attempt: Any) -> None:
    handle, token = live_attempt
    old = made_ago(token, 3600)
    api = APIClient()
    assert read_task_token(old) == read_task_token(token)  # valid without a maximum age

    with override_settings(DURABLE={"TASK_TOKEN_MAX_AGE": 600}):
        before = snapshot()
        for url, body in ((COMPLETE, {"result": "late"}), (FAIL, {"error": {"message": "late"}}), (HEARTBEAT, {})):
            detail = assert_error(post_json(api, url, {"task_token": old, **body}), 400, "invalid_token")["detail"]
            assert "expired" in detail and "600" in detail
            assert_error(post_json(api, url, body, HTTP_X_DURABLE_TASK_TOKEN=old), 400, "invalid_token")
        for call, args in (
            (durable.complete_activity, ("late",)),
            (durable.fail_activity, ("late",)),
            (durable.heartbeat_activity, ()),
        ):
            with pytest.raises(durable.InvalidTaskToken, match="expired"):
                call(old, *args)
        assert snapshot() == before

        # A token within the age works: the worker's own, and one made a little while ago.
        response = post_json(api, HEARTBEAT, {"task_token": made_ago(token, 300), "details": {"step": 1}})
        assert response.status_code == 200, response.content
        response = post_json(api, COMPLETE, {"task_token": token, "result": "in time"})
        assert response.status_code == 200, response.content
    assert handle.result(timeout=60) == {"result": "in time"}
    assert HistoryEvent.objects.filter(instance__run_id=handle.run_id, kind="ActivityCompleted").count() == 1


@pytest.mark.parametrize("value", [0, -5, "60", True, [1]])
def test_task_token_max_age_must_be_none_or_a_positive_number(value: Any) -> None:
    with override_settings(DURABLE={"TASK_TOKEN_MAX_AGE": value}):
        (error,) = checks.check_task_token_max_age()
    assert error.id == "django_durable.E040" and "TASK_TOKEN_MAX_AGE" in error.msg


@pytest.mark.parametrize("value", [None, 1, 86400, 0.5])
def test_task_token_max_age_accepts_none_and_positive_numbers(value: Any) -> None:
    with override_settings(DURABLE={"TASK_TOKEN_MAX_AGE": value}):
        assert checks.check_task_token_max_age() == []


# -- X-Frame-Options on the debugger -------------------------------------------------------


@pytest.fixture
def sleeping_run(db: None) -> Iterator[WorkflowInstance]:
    with WorkflowEnvironment() as env:
        handle = env.start(tw.th_long_sleep, 3, workflow_id="framed")
        env.run_until_idle()
        yield WorkflowInstance.objects.get(run_id=handle.run_id)


@pytest.mark.database
def test_every_debugger_page_refuses_to_be_framed(admin_client: Any, sleeping_run: WorkflowInstance) -> None:
    from django.conf import settings

    assert "django.middleware.clickjacking.XFrameOptionsMiddleware" not in settings.MIDDLEWARE
    run = sleeping_run
    prefix = "admin:django_durable_workflowinstance"
    pages = [
        reverse(f"{prefix}_changelist"),
        reverse(f"{prefix}_changelist") + "?status__exact=running",
        reverse(f"{prefix}_change", args=[run.pk]),
        reverse(f"{prefix}_history", args=[run.pk]),
        reverse(f"{prefix}_dashboard"),
        reverse(f"{prefix}_at", args=[run.pk, 1]),
        reverse(f"{prefix}_at", args=[run.pk, run.history_length]),
        reverse(f"{prefix}_action", args=[run.pk, "signal"]),
        reverse(f"{prefix}_action", args=[run.pk, "cancel"]),
    ]
    for url in pages:
        response = admin_client.get(url)
        assert response.status_code == 200, (url, response.status_code)
        assert response.get("X-Frame-Options") == "DENY", url
    # A form sent back with errors is a page too.
    refused = admin_client.post(reverse(f"{prefix}_action", args=[run.pk, "signal"]), {"name": ""})
    assert refused.status_code == 200 and refused["X-Frame-Options"] == "DENY"
