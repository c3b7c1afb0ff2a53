"""Structured state-change log lines (django_durable.statelog): one per committed change,
none for a change that rolled back, with the fields both in the message and on the record."""

from __future__ import annotations

import datetime
import json
import logging
import re
import unicodedata
import uuid

import pytest
from django.db import transaction
from rest_framework.test import APIClient

import django_durable as durable
from django_durable import store
from django_durable.statelog import JSONFormatter, state_change
from django_durable.testing import WorkflowEnvironment
from tests.test_api import FAIL, post_json
from tests.test_api_activities import awaiting, handed_out
from tests.testapp import testing_workflows as tw
from tests.testapp.async_workflows import ac_approval

pytestmark = pytest.mark.database

START = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)


@pytest.fixture
def state_log(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.INFO, logger="django_durable.state")
    return caplog


def changes(caplog: pytest.LogCaptureFixture, workflow_id: str) -> list[dict]:
    return [
        record.durable
        for record in caplog.records
        if record.name == "django_durable.state" and record.durable.get("workflow_id") == workflow_id
    ]


@pytest.mark.django_db(transaction=True)
def test_a_run_logs_each_state_change_once_committed(state_log: pytest.LogCaptureFixture) -> None:
    key = f"log-{uuid.uuid4().hex[:8]}"
    with WorkflowEnvironment(start_time=START) as env:
        handle = env.start(tw.th_retrying, key, 1, workflow_id=key)
        assert env.result(handle)["attempt"] == 2
    logged = changes(state_log, key)
    summary = [(entry["change"], entry.get("kind")) for entry in logged]
    assert summary[0] == ("run_created", None)
    assert logged[0]["workflow_name"] == handle.describe().workflow_name
    assert ("claimed", "workflow") in summary and ("claimed", "activity") in summary
    assert ("history", "ActivityScheduled") in summary
    assert ("retry_scheduled", None) in summary
    assert ("inbox", "ActivityCompleted") in summary
    assert summary[-1] == ("history", "WorkflowCompleted")
    retry = next(entry for entry in logged if entry["change"] == "retry_scheduled")
    assert retry["attempt"] == 1 and retry["error_type"] and retry["retry_at"] > START
    seqs = [entry["seq"] for entry in logged if entry["change"] == "history"]
    assert seqs == sorted(seqs) and len(seqs) == len(set(seqs))  # each appended event once, in order
    assert all(entry["run_id"] == handle.run_id for entry in logged)
    message = next(
        r.getMessage() for r in state_log.records if getattr(r, "durable", {}).get("change") == "run_created"
    )
    assert message.startswith("run_created ") and f"workflow_id={key}" in message


@pytest.mark.django_db(transaction=True)
def test_a_change_that_rolls_back_logs_nothing(state_log: pytest.LogCaptureFixture) -> None:
    key = f"rollback-{uuid.uuid4().hex[:8]}"
    with pytest.raises(RuntimeError), transaction.atomic():
        durable.start_workflow(tw.th_long_sleep, 1, workflow_id=key)
        raise RuntimeError("the request failed after starting the workflow")
    assert changes(state_log, key) == []
    durable.start_workflow(tw.th_long_sleep, 1, workflow_id=key)
    assert [entry["change"] for entry in changes(state_log, key)] == ["run_created"]


@pytest.mark.django_db(transaction=True)
def test_prune_logs_what_each_batch_deleted(state_log: pytest.LogCaptureFixture) -> None:
    key = f"pruned-{uuid.uuid4().hex[:8]}"
    handle = durable.start_workflow(tw.th_long_sleep, 1, workflow_id=key)
    handle.terminate("done with it")
    assert [entry["change"] for entry in changes(state_log, key)] == ["run_created", "history"]
    counts = store.prune_batch(closed_before=store.db_now() + datetime.timedelta(days=1), batch_size=10)
    [pruned] = [r.durable for r in state_log.records if getattr(r, "durable", {}).get("change") == "pruned"]
    assert pruned["runs"] == counts["runs"] >= 1 and pruned["history_events"] == counts["history_events"] >= 2


@pytest.mark.engine
def test_the_json_formatter_puts_the_fields_at_the_top_level() -> None:
    record = logging.LogRecord("django_durable.state", logging.INFO, __file__, 1, "%s %s", ("claimed", "x=1"), None)
    record.durable = {"change": "claimed", "attempt": 2, "lease_expires_at": START}
    entry = json.loads(JSONFormatter().format(record))
    assert entry["change"] == "claimed" and entry["attempt"] == 2
    assert entry["lease_expires_at"] == str(START)
    assert entry["message"] == "claimed x=1" and entry["level"] == "INFO" and entry["logger"] == "django_durable.state"
    plain = json.loads(JSONFormatter().format(logging.LogRecord("x", logging.WARNING, __file__, 1, "hi", (), None)))
    assert plain["message"] == "hi" and "change" not in plain


def control_characters(text: str) -> list[str]:
    return [c for c in text if unicodedata.category(c) == "Cc"]


@pytest.mark.django_db(transaction=True)
def test_values_that_are_not_printable_are_quoted_with_their_control_characters_escaped(
    state_log: pytest.LogCaptureFixture,
) -> None:
    hostile = {
        "ansi": "\x1b[31mred\x1b[0m",
        "lines": "one\ntwo\rthree",
        "bell": "a\x07b",
        "delete": "a\x7fb",
        "bidi": "file\u202etxt.exe",
        "nul": "a\x00b",
    }
    state_change("claimed", plain="ok", spaced="a b", **hostile)
    [record] = [r for r in state_log.records if getattr(r, "durable", {}).get("change") == "claimed"]
    message = record.getMessage()
    assert control_characters(message) == [] and "\u202e" not in message
    assert message.startswith('claimed plain=ok spaced="a b" ')
    assert 'ansi="\\u001b[31mred\\u001b[0m"' in message and 'lines="one\\ntwo\\rthree"' in message
    assert 'delete="a\\u007fb"' in message and 'bidi="file\\u202etxt.exe"' in message
    shown = dict(re.findall(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)', message))
    assert {key: json.loads(shown[key]) for key in hostile} == hostile  # escaped, not lost
    formatted = JSONFormatter().format(record)
    assert control_characters(formatted) == [] and json.loads(formatted)["ansi"] == hostile["ansi"]


@pytest.mark.workers
def test_error_messages_sent_over_http_reach_the_log_escaped(
    start_worker,
    tmp_path,
    state_log: pytest.LogCaptureFixture,
) -> None:
    handle = durable.start_workflow(ac_approval, str(tmp_path))
    start_worker()
    api = APIClient()
    messages = ["\x1b[31mdeclined\x1b[0m", "\x1b[31mcard declined\x1b[0m\n2030-01-01 INFO forged line"]
    for attempt, message in enumerate(messages, start=1):  # the policy allows three attempts
        token = handed_out(tmp_path, attempt)["token"]
        awaiting(handle, attempt)
        response = post_json(api, FAIL, {"task_token": token, "error": {"message": message, "type": "Declined"}})
        assert response.status_code == 200, response.content

    records = [r for r in state_log.records if getattr(r, "durable", {}).get("change") == "retry_scheduled"]
    assert [record.durable["error"] for record in records] == messages
    for record in records:
        for formatted in (
            logging.Formatter("%(levelname)s %(name)s %(message)s").format(record),
            JSONFormatter().format(record),
        ):
            assert control_characters(formatted) == [], formatted
            assert "\\u001b[31m" in formatted and "declined\\u001b[0m" in formatted
    assert 'error="\\u001b[31mdeclined\\u001b[0m"' in records[0].getMessage()
    assert 'error="\\u001b[31mcard declined\\u001b[0m\\n2030-01-01 INFO forged line"' in records[1].getMessage()
