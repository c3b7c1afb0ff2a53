"""LISTEN/NOTIFY wake-ups (django_durable.notify): the Listener on a real PostgreSQL, and
``WorkflowHandle.result()`` and the API's ``?wait=`` long poll waking on a run's close.

The store does not announce closes itself yet, so where a test closes a run it calls
``notify.notify_closed()`` in the same transaction, as the store will.
PostgreSQL-only tests are skipped on the SQLite pass and run (and fail) on the PostgreSQL one.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from django.conf import settings
from django.db import connection, transaction
from django.test import override_settings
from rest_framework.test import APIClient

import django_durable as durable
from django_durable import notify, store
from django_durable.conf import durable_settings
from django_durable.models import WorkflowStatus
from tests.conftest import grant, wait_for
from tests.test_api import SCHEMA, assert_error, detail, snapshot
from tests.testapp.workflows import api_greet

ON_POSTGRES = os.environ.get("DURABLE_TEST_DB", "sqlite") == "postgres"
postgres_only = pytest.mark.skipif(
    not ON_POSTGRES, reason="LISTEN/NOTIFY is PostgreSQL's (the PostgreSQL pass runs it)"
)
sqlite_only = pytest.mark.skipif(ON_POSTGRES, reason="the fallback without LISTEN/NOTIFY")

# Far longer than any test may take: a wait that ends sooner was ended by a notification.
NO_FALLBACK_POLL = 60.0
WOKEN_WELL_BEFORE_THE_FALLBACK = 30.0


def no_fallback_poll() -> override_settings:
    return override_settings(DURABLE={**settings.DURABLE, "RESULT_POLL_INTERVAL": NO_FALLBACK_POLL})


def notify_in_transaction(*queues: str, rollback: bool = False) -> None:
    with transaction.atomic():
        for queue in queues:
            notify.notify_work(queue)
        transaction.set_rollback(rollback)


def receive_until(listener: notify.Listener, wanted: tuple[str, str], timeout: float = 30.0) -> list[tuple[str, str]]:
    """Everything the listener receives up to and including ``wanted``."""
    received: list[tuple[str, str]] = []
    deadline = time.monotonic() + timeout
    while wanted not in received:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            pytest.fail(f"{wanted} did not arrive within {timeout}s; received {received}")
        received += listener.wait(remaining)
    return received


def listening_backends() -> list[int]:
    """Backend pids of this database's Listeners (a pg_stat_activity read in autocommit: a fresh one)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database() AND application_name = %s",
            ["django_durable listener"],
        )
        return [pid for (pid,) in cursor.fetchall()]


def greet(workflow_id: str) -> durable.WorkflowHandle:
    """An open run that stays pending: no worker runs in these tests."""
    return durable.start_workflow(api_greet, "ada", workflow_id=workflow_id)


@pytest.fixture
def close_in_another_thread(transactional_db: None) -> Iterator[Callable[[durable.WorkflowHandle], None]]:
    """``close(handle)``: in another thread and connection, terminate the run and announce its
    close in one transaction: on PostgreSQL once somebody LISTENs for closes (so the close
    happens while they wait), after announcing another run's close; on SQLite at once."""
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def close(handle: durable.WorkflowHandle) -> None:
        def terminate() -> None:
            try:
                if ON_POSTGRES:
                    wait_for(listening_backends, what="a Listener on the closed channel")
                    with transaction.atomic():
                        notify.notify_closed("another-run")  # wakes the waiter, who waits on
                with transaction.atomic():
                    store.terminate(handle.workflow_id, handle.run_id, "closed by the test")
                    notify.notify_closed(handle.run_id)  # the store will do this itself
            except BaseException as exc:
                errors.append(exc)
            finally:
                connection.close()

        thread = threading.Thread(target=terminate)
        threads.append(thread)
        thread.start()

    yield close
    for thread in threads:
        thread.join(60)
    assert not errors, errors


# -- the Listener on PostgreSQL ------------------------------------------------------------


@postgres_only
def test_postgresql_is_supported(db):
    assert notify.supported()


@postgres_only
def test_committed_notifications_arrive_and_rolled_back_ones_do_not(transactional_db):
    with notify.Listener([notify.WORK_CHANNEL]) as listener:
        notify_in_transaction("rolled-back", rollback=True)
        notify_in_transaction("first", "first", "second")  # identical ones in a transaction arrive once
        notify_in_transaction("third")
        received = receive_until(listener, (notify.WORK_CHANNEL, "third"))
    # Delivery follows commit order, so the rolled-back one would have come first.
    assert received == [(notify.WORK_CHANNEL, "first"), (notify.WORK_CHANNEL, "second"), (notify.WORK_CHANNEL, "third")]


@postgres_only
def test_notify_is_one_query_in_the_callers_transaction(transactional_db, django_assert_num_queries):
    with notify.Listener([notify.WORK_CHANNEL, notify.CLOSED_CHANNEL]) as listener:
        with transaction.atomic():
            with django_assert_num_queries(1):
                notify.notify_closed("run-1")
            assert listener.wait(0) == []  # not before the commit
        assert receive_until(listener, (notify.CLOSED_CHANNEL, "run-1")) == [(notify.CLOSED_CHANNEL, "run-1")]


@postgres_only
def test_a_listener_hears_only_its_channels(transactional_db):
    with notify.Listener([notify.CLOSED_CHANNEL]) as listener:
        notify_in_transaction("a-queue")
        with transaction.atomic():
            notify.notify_closed("run-2")
        assert receive_until(listener, (notify.CLOSED_CHANNEL, "run-2")) == [(notify.CLOSED_CHANNEL, "run-2")]


@postgres_only
def test_a_listener_whose_backend_is_terminated_reconnects(transactional_db, caplog):
    with notify.Listener([notify.WORK_CHANNEL]) as listener:
        (first_pid,) = listening_backends()
        with connection.cursor() as cursor:
            cursor.execute("SELECT pg_terminate_backend(%s)", [first_pid])
        # Until it has listened again notifications are lost, so keep sending: one gets through.
        received: list[tuple[str, str]] = []
        deadline = time.monotonic() + 30
        with caplog.at_level(logging.WARNING, logger="django_durable.notify"):
            while not received:
                assert time.monotonic() < deadline, "the Listener never heard anything again"
                notify_in_transaction("after-the-kill")
                received = listener.wait(1.0)
        assert received == [(notify.WORK_CHANNEL, "after-the-kill")]
        assert "Lost the LISTEN connection" in caplog.text
        (second_pid,) = listening_backends()
        assert second_pid != first_pid


@postgres_only
def test_a_listener_that_cannot_connect_polls_and_retries(transactional_db, caplog):
    database = connection.settings_dict
    real_name = database["NAME"]
    database["NAME"] = "django_durable_no_such_database"
    try:
        with caplog.at_level(logging.WARNING, logger="django_durable.notify"):
            listener = notify.Listener([notify.WORK_CHANNEL])
    finally:
        database["NAME"] = real_name
    with listener:
        assert "Could not LISTEN" in caplog.text
        assert listener.wait(30) == []  # reconnected after the backoff: the caller re-checks
        notify_in_transaction("reconnected")
        assert receive_until(listener, (notify.WORK_CHANNEL, "reconnected")) == [(notify.WORK_CHANNEL, "reconnected")]


# -- interrupt, on either database ------------------------------------------------------------------


def test_interrupt_from_another_thread_ends_a_wait(transactional_db):
    with notify.Listener([notify.WORK_CHANNEL]) as listener:
        waiting = threading.Event()
        interrupter = threading.Thread(target=lambda: (waiting.wait(30), listener.interrupt()))
        interrupter.start()
        started = time.monotonic()
        waiting.set()  # the interrupt may land before wait() starts: it ends the next wait then
        assert listener.wait(NO_FALLBACK_POLL) == []
        assert time.monotonic() - started < WOKEN_WELL_BEFORE_THE_FALLBACK
        interrupter.join(30)

        listener.interrupt()
        listener.interrupt()  # wake-ups do not pile up: one wait consumes them
        assert listener.wait(NO_FALLBACK_POLL) == []
        started = time.monotonic()
        assert listener.wait(0.2) == []
        assert time.monotonic() - started >= 0.15
    listener.interrupt()  # harmless once closed


# -- result() --------------------------------------------------------------------------------


@postgres_only
def test_result_wakes_on_the_close_notification(close_in_another_thread):
    handle = greet("woken")
    with no_fallback_poll():
        close_in_another_thread(handle)
        started = time.monotonic()
        with pytest.raises(durable.WorkflowFailed) as failed:
            handle.result(timeout=50)
    assert time.monotonic() - started < WOKEN_WELL_BEFORE_THE_FALLBACK
    assert failed.value.status == WorkflowStatus.TERMINATED
    wait_for(lambda: not listening_backends(), what="result() to close its Listener")


@postgres_only
def test_result_times_out_and_closes_its_listener(transactional_db):
    handle = greet("open")
    with pytest.raises(durable.TimeoutError):
        handle.result(timeout=0.3)
    wait_for(lambda: not listening_backends(), what="result() to close its Listener")


def test_result_of_a_closed_run_needs_no_listener(db, django_assert_num_queries):
    handle = greet("already-closed")
    handle.terminate("done")
    # One read of the run: no LISTEN, no wait.
    with django_assert_num_queries(1), pytest.raises(durable.WorkflowFailed):
        handle.result(timeout=NO_FALLBACK_POLL)


# -- the API's ?wait= ----------------------------------------------------------------------------


@pytest.fixture
def admin_api(transactional_db: None, django_user_model: Any) -> APIClient:
    client = APIClient()
    client.force_authenticate(grant(django_user_model.objects.create_user("staff", is_staff=True)))
    return client


def test_api_wait_returns_when_the_run_closes(admin_api, close_in_another_thread):
    handle = greet("long-poll")
    close_in_another_thread(handle)
    with no_fallback_poll() if ON_POSTGRES else override_settings():
        started = time.monotonic()
        response = admin_api.get(detail("long-poll"), {"wait": "50"})
    assert time.monotonic() - started < WOKEN_WELL_BEFORE_THE_FALLBACK
    assert response.status_code == 200
    body = response.json()
    assert body["run_id"] == handle.run_id and body["status"] == "terminated"
    assert body["error"]["message"] == "closed by the test"


def test_api_wait_answers_with_the_open_run_when_the_time_is_up(admin_api):
    handle = greet("still-open")
    started = time.monotonic()
    response = admin_api.get(detail("still-open"), {"wait": "0.3", "run_id": handle.run_id})
    assert time.monotonic() - started >= 0.25
    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    assert admin_api.get(detail("still-open"), {"wait": "0"}).json() == admin_api.get(detail("still-open")).json()


def test_api_wait_on_a_closed_run_answers_at_once(admin_api):
    greet("done").terminate("done")
    started = time.monotonic()
    response = admin_api.get(detail("done"), {"wait": "60"})
    assert time.monotonic() - started < WOKEN_WELL_BEFORE_THE_FALLBACK
    assert response.json()["status"] == "terminated"


@pytest.mark.parametrize("wait", ["-1", "abc", "", "nan", "inf", "1e400", "60.5", "61", "1" * 2000])
def test_api_wait_rejects_bad_values(admin_api, wait):
    greet("bad-wait")
    before = snapshot()
    started = time.monotonic()
    body = assert_error(admin_api.get(detail("bad-wait"), {"wait": wait}), 400, "invalid")
    assert time.monotonic() - started < WOKEN_WELL_BEFORE_THE_FALLBACK
    assert set(body["detail"]) == {"wait"}
    assert snapshot() == before
    assert_error(admin_api.get(detail("no-such-run"), {"wait": wait}), 400, "invalid")


def test_api_max_wait_is_a_setting(admin_api):
    greet("capped")
    with override_settings(DURABLE={**settings.DURABLE, "API_MAX_WAIT": 5}):
        body = assert_error(admin_api.get(detail("capped"), {"wait": "5.01"}), 400, "invalid")
        assert body["detail"]["wait"] == ["Ensure this value is less than or equal to 5 (the API_MAX_WAIT setting)."]
        assert admin_api.get(detail("capped"), {"wait": "0.01"}).status_code == 200


def test_api_wait_of_an_unknown_run_is_404(admin_api):
    assert_error(admin_api.get(detail("nobody"), {"wait": "30"}), 404, "workflow_not_found")


def test_schema_documents_wait(admin_api):
    schema = admin_api.get(SCHEMA).json()
    describe = schema["paths"]["/durable/api/workflows/{workflow_id}/"]["get"]
    (wait,) = [param for param in describe["parameters"] if param["name"] == "wait"]
    maximum = float(durable_settings.API_MAX_WAIT)
    assert wait["in"] == "query" and wait["schema"] == {"type": "number", "minimum": 0, "maximum": maximum}


# -- without LISTEN/NOTIFY ------------------------------------------------------------------------


@sqlite_only
def test_sqlite_has_no_notifications_but_waits_and_results_work(close_in_another_thread, django_assert_num_queries):
    assert not notify.supported()
    with django_assert_num_queries(0):
        notify.notify_work("default")
        notify.notify_closed("run")
    with notify.Listener([notify.WORK_CHANNEL]) as listener:
        started = time.monotonic()
        assert listener.wait(0.2) == []
        assert time.monotonic() - started >= 0.15
    handle = greet("polled")
    close_in_another_thread(handle)
    with pytest.raises(durable.WorkflowFailed) as failed:
        handle.result(timeout=50)
    assert failed.value.status == WorkflowStatus.TERMINATED
