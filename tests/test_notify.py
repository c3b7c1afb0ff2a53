"""LISTEN/NOTIFY wake-ups (django_durable.notify): the Listener alone on a real PostgreSQL
(notifications sent by hand), the store's own notifications, ``WorkflowHandle.result()`` and the
API's ``?wait=`` long poll waking on a run's close, and an idle worker process waking on new work.

Where a test closes a run it goes through the store (``store.terminate``, a workflow task), which
announces the close itself; the waits it ends have no fall-back poll that could end them in time.
PostgreSQL-only tests are skipped on the SQLite and MariaDB passes and run (and fail) on the PostgreSQL
one; those two test the fallback without LISTEN/NOTIFY instead.
"""

from __future__ import annotations

import datetime
import json
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
from django_durable.engine.events import EventKind
from django_durable.models import HistoryEvent, WorkflowInstance, WorkflowStatus
from django_durable.worker import Worker
from tests.conftest import grant, wait_for
from tests.test_api import SCHEMA, assert_error, detail, snapshot
from tests.testapp.workflows import api_greet

pytestmark = pytest.mark.database

ON_POSTGRES = os.environ.get("DURABLE_TEST_DB", "sqlite") == "postgres"
postgres_only = pytest.mark.skipif(
    not ON_POSTGRES, reason="LISTEN/NOTIFY is PostgreSQL's (the PostgreSQL pass runs it)"
)
without_notify = pytest.mark.skipif(ON_POSTGRES, reason="the fallback without LISTEN/NOTIFY, which PostgreSQL has")

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
def waiting(monkeypatch: pytest.MonkeyPatch) -> threading.Event:
    """Set once a Listener's ``wait()`` has begun: the waiter has read the run, found it open
    and sleeps, so a close committed after this can end its wait only by a notification."""
    started = threading.Event()
    real_wait = notify.Listener.wait

    def wait(self: notify.Listener, timeout: float | None) -> list[tuple[str, str]]:
        started.set()
        return real_wait(self, timeout)

    monkeypatch.setattr(notify.Listener, "wait", wait)
    return started


@pytest.fixture
def in_another_thread(
    transactional_db: None, waiting: threading.Event
) -> Iterator[Callable[[Callable[[], None]], None]]:
    """``later(action)``: run ``action`` in another thread and connection: on PostgreSQL once
    somebody waits on a Listener, on SQLite at once."""
    threads: list[threading.Thread] = []
    errors: list[BaseException] = []

    def later(action: Callable[[], None]) -> None:
        def run() -> None:
            try:
                if ON_POSTGRES:
                    assert waiting.wait(30), "nobody waited on a Listener"
                action()
            except BaseException as exc:
                errors.append(exc)
            finally:
                connection.close()

        thread = threading.Thread(target=run)
        threads.append(thread)
        thread.start()

    yield later
    for thread in threads:
        thread.join(60)
    assert not errors, errors


@pytest.fixture
def close_in_another_thread(
    in_another_thread: Callable[[Callable[[], None]], None],
) -> Callable[[durable.WorkflowHandle], None]:
    """``close(handle)``: terminate the run through the store (which announces the close) in
    another thread, while the caller waits; another run's close first, which must not end the wait."""

    def close(handle: durable.WorkflowHandle) -> None:
        decoy = greet(f"{handle.workflow_id}-decoy")

        def terminate() -> None:
            store.terminate(decoy.workflow_id, decoy.run_id, "another run")
            store.terminate(handle.workflow_id, handle.run_id, "closed by the test")

        in_another_thread(terminate)

    return close


# -- the Listener alone on PostgreSQL: notifications sent by hand ----------------------------


@postgres_only
def test_postgresql_is_supported(db):
    assert notify.supported()


@postgres_only
def test_listener_alone_hears_committed_notifications_not_rolled_back_ones(transactional_db):
    with notify.Listener([notify.WORK_CHANNEL]) as listener:
        notify_in_transaction("rolled-back", rollback=True)
        notify_in_transaction("first", "first", "second")  # identical ones in a transaction arrive once
        notify_in_transaction("third")
        received = receive_until(listener, (notify.WORK_CHANNEL, "third"))
    # Delivery follows commit order, so the rolled-back one would have come first.
    assert received == [(notify.WORK_CHANNEL, "first"), (notify.WORK_CHANNEL, "second"), (notify.WORK_CHANNEL, "third")]


@postgres_only
def test_listener_alone_notify_is_one_query_in_the_callers_transaction(transactional_db, django_assert_num_queries):
    with notify.Listener([notify.WORK_CHANNEL, notify.CLOSED_CHANNEL]) as listener:
        with transaction.atomic():
            with django_assert_num_queries(1):
                notify.notify_closed("run-1")
            assert listener.wait(0) == []  # not before the commit
        assert receive_until(listener, (notify.CLOSED_CHANNEL, "run-1")) == [(notify.CLOSED_CHANNEL, "run-1")]


@postgres_only
def test_listener_alone_hears_only_its_channels(transactional_db):
    with notify.Listener([notify.CLOSED_CHANNEL]) as listener:
        notify_in_transaction("a-queue")
        with transaction.atomic():
            notify.notify_closed("run-2")
        assert receive_until(listener, (notify.CLOSED_CHANNEL, "run-2")) == [(notify.CLOSED_CHANNEL, "run-2")]


@postgres_only
def test_listener_alone_reconnects_when_its_backend_is_terminated(transactional_db, caplog):
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
def test_listener_alone_that_cannot_connect_polls_and_retries(transactional_db, caplog):
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


def test_listener_alone_interrupt_from_another_thread_ends_a_wait(transactional_db):
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
def test_result_wakes_on_the_close_store_terminate_announces(close_in_another_thread):
    handle = greet("woken")
    with no_fallback_poll():
        close_in_another_thread(handle)
        started = time.monotonic()
        with pytest.raises(durable.WorkflowFailed) as failed:
            handle.result(timeout=50)
    assert time.monotonic() - started < WOKEN_WELL_BEFORE_THE_FALLBACK
    assert failed.value.status == WorkflowStatus.TERMINATED
    wait_for(lambda: not listening_backends(), what="result() to close its Listener")


def test_result_wakes_on_the_close_the_completing_workflow_task_announces(in_another_thread):
    handle = greet("completed")

    def run_it() -> None:
        worker = Worker(queues=["default"])
        while worker.run_inline_once():  # the workflow task, its activity, the task that completes the run
            pass

    with no_fallback_poll() if ON_POSTGRES else override_settings():
        in_another_thread(run_it)
        started = time.monotonic()
        assert handle.result(timeout=50) == {"greeting": "hello ada!", "total": 3}
    assert time.monotonic() - started < WOKEN_WELL_BEFORE_THE_FALLBACK
    if ON_POSTGRES:
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


# -- an idle worker process ------------------------------------------------------------------------

IDLE_WORKER = "django_durable idle worker"
IDLE_WORKER_POLL = 60.0
FIRST_CLAIM_WITHIN = datetime.timedelta(seconds=5)


def idle_worker_polled() -> bool:
    """Whether the worker's loop has been round once and found nothing: its main connection
    is idle after the activity claim, the last statement of a round (the one before the
    statements in pg_stat_activity carry their values: the claim's kind is a literal)."""
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND application_name = %s AND state = 'idle' AND query LIKE %s",
            [IDLE_WORKER, "%kind = 'activity'%"],
        )
        (count,) = cursor.fetchone()
    return count > 0


@postgres_only
@pytest.mark.workers
def test_an_idle_worker_claims_new_work_at_once_woken_by_its_notification(start_worker):
    """Its poll interval a minute, a worker that has polled once sleeps for a minute: a
    workflow started meanwhile is claimed within seconds only if start_workflow's
    notification woke it."""
    worker = start_worker(
        env={
            "DURABLE_TEST_POLL_INTERVAL": str(IDLE_WORKER_POLL),
            "DURABLE_TEST_DB_SETTINGS": json.dumps({"OPTIONS": {"application_name": IDLE_WORKER}}),
        }
    )
    wait_for(idle_worker_polled, timeout=60, what="the worker's first, empty, round")
    assert worker.proc.poll() is None, worker.log()

    handle = greet("wake-up")
    run = WorkflowInstance.objects.get(run_id=handle.run_id)
    claimed = wait_for(
        lambda: HistoryEvent.objects.filter(instance=run, kind=EventKind.WORKFLOW_TASK_STARTED).first(),
        timeout=WOKEN_WELL_BEFORE_THE_FALLBACK,
        what="the worker to claim the workflow task",
    )
    assert isinstance(claimed, HistoryEvent)
    # Both the database's clock: the start's commit and the claim.
    assert claimed.timestamp - run.created_at < FIRST_CLAIM_WITHIN, worker.log()


# -- without LISTEN/NOTIFY ------------------------------------------------------------------------


@without_notify
def test_without_listen_notify_nothing_is_sent_but_waits_and_results_work(
    close_in_another_thread, django_assert_num_queries
):
    """SQLite and MariaDB: no notification costs a query, and waits end by polling."""
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
