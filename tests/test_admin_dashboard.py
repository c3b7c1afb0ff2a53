"""The operator's dashboard (admin): its numbers, its page, who may see it, and the
worker heartbeat rows it lists, written by real worker processes."""

from __future__ import annotations

import datetime
import html
import re
import signal
import socket
import uuid

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext

import django_durable as durable
from django_durable import store
from django_durable.models import WorkerHeartbeat, WorkflowInstance, WorkItem
from django_durable.testing import WorkflowEnvironment
from tests.conftest import wait_for
from tests.testapp import dashboard_workflows as dw
from tests.testapp.orchestration_workflows import ow_returns_at_once

pytestmark = pytest.mark.database

START = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
URL = "/admin/django_durable/workflowinstance/dashboard/"
CHANGELIST = "/admin/django_durable/workflowinstance/"


def run_of(handle: durable.WorkflowHandle) -> WorkflowInstance:
    return WorkflowInstance.objects.get(run_id=handle.run_id)


def add_item(run: WorkflowInstance, kind: str = "activity", **fields: object) -> WorkItem:
    return WorkItem.objects.create(kind=kind, instance=run, queue="default", name=f"{kind}-item", **fields)


def add_worker(name: str, last_seen_at: datetime.datetime, stopped_at: datetime.datetime | None = None) -> None:
    WorkerHeartbeat.objects.create(
        name=name,
        hostname="host-a",
        pid=4242,
        queues=["default", "mail"],
        concurrency=4,
        started_at=last_seen_at - datetime.timedelta(hours=1),
        last_seen_at=last_seen_at,
        stopped_at=stopped_at,
    )


def build_scene(env: WorkflowEnvironment) -> dict[str, WorkflowInstance]:
    """Runs in every state, work in every condition and workers alive, stale and stopped.
    The environment serves only the default queue: a run on "nobody" stays pending."""
    old_failure = env.start(dw.dash_fails, workflow_id="dash-old-failure")
    stuck = durable.start_workflow(dw.dash_waits, workflow_id="dash-stuck", queue="nobody")
    env.run_until_idle()
    env.advance(hours=2)  # the old failure falls out of the last hour; the stuck task waits on

    completed = env.start(dw.dash_returns, workflow_id="dash-completed")
    waiting = [env.start(dw.dash_waits, workflow_id=f"dash-waiting-{i}") for i in range(2)]
    suspended = env.start(dw.dash_waits, workflow_id="dash-suspended")
    terminated = env.start(dw.dash_waits, workflow_id="dash-terminated")
    failed = env.start(dw.dash_fails, workflow_id="dash-failed")
    parked = env.start(dw.dash_crashes, workflow_id="dash-parked")
    env.run_until_idle()
    suspended.suspend("maintenance")
    terminated.terminate("enough")
    env.advance(seconds=30)  # the crashing task fails again and again, then is parked
    retrying = env.start(dw.dash_crashes, workflow_id="dash-retrying")
    env.run_until_idle()  # one failure, backing off

    now = env.now
    running = run_of(waiting[0])
    add_item(running, due_at=now - datetime.timedelta(seconds=10))  # due, not overdue
    add_item(running, due_at=now - datetime.timedelta(minutes=5))  # overdue
    add_item(running, "timer", due_at=now + datetime.timedelta(hours=1))  # scheduled
    leased = {"due_at": now - datetime.timedelta(minutes=10), "attempt": 1, "lease_owner": "w1"}
    add_item(running, lease_expires_at=now - datetime.timedelta(seconds=1), **leased)  # lease expired
    add_item(running, lease_expires_at=now + datetime.timedelta(seconds=10), **leased)  # running
    add_item(running, awaiting_completion=True, **leased)  # awaiting completion, no deadline

    add_worker("alive-worker", now - datetime.timedelta(seconds=5))
    add_worker("stale-worker", now - datetime.timedelta(minutes=10))
    add_worker("stopped-worker", now - datetime.timedelta(minutes=5), stopped_at=now - datetime.timedelta(minutes=5))
    add_worker("ancient-worker", now - datetime.timedelta(hours=3))
    return {
        "old_failure": run_of(old_failure),
        "stuck": run_of(stuck),
        "completed": run_of(completed),
        "suspended": run_of(suspended),
        "terminated": run_of(terminated),
        "failed": run_of(failed),
        "parked": run_of(parked),
        "retrying": run_of(retrying),
        "running": running,
    }


def test_the_stats_count_runs_work_failures_and_workers_as_of_the_store_clock(db: None) -> None:
    with WorkflowEnvironment(start_time=START, queues=["default"]) as env:
        runs = build_scene(env)
        stats = store.dashboard_stats()
    now = START + datetime.timedelta(hours=2, seconds=30)
    assert stats["now"] == now and stats["since"] == now - datetime.timedelta(hours=1)

    counts = {status: row["count"] for status, row in stats["runs"]["by_status"].items()}
    assert counts == {
        "pending": 3,
        "running": 2,
        "suspended": 1,
        "completed": 1,
        "failed": 2,
        "canceled": 0,
        "terminated": 1,
        "continued_as_new": 0,
    }
    assert stats["runs"]["total"] == 10 and stats["runs"]["open"] == 6

    zero = dict.fromkeys(stats["work"]["by_kind"]["timer"], 0)
    assert stats["work"]["by_kind"] == {
        "workflow": {
            **zero,
            "due": 1,
            "overdue": 1,
            "scheduled": 1,
            "parked": 1,
            "failing": 1,
            "parked_failing": 1,
            "total": 3,
        },
        "activity": {
            **zero,
            "due": 2,
            "overdue": 1,
            "running": 1,
            "lease_expired": 1,
            "awaiting_completion": 1,
            "total": 5,
        },
        "timer": {**zero, "scheduled": 1, "total": 1},
    }
    assert stats["work"]["total"]["total"] == 9

    oldest = stats["oldest_pending"]
    assert (oldest["kind"], oldest["workflow_id"], oldest["instance_id"]) == (
        "workflow",
        "dash-stuck",
        runs["stuck"].pk,
    )
    assert oldest["waited"] == datetime.timedelta(hours=2, seconds=30)

    assert stats["failures"] == {"failed": 1, "terminated": 1, "workflow_tasks_failing": 1, "workflow_tasks_parked": 1}
    parked, retrying = stats["failing_tasks"]
    assert parked["instance_id"] == runs["parked"].pk and parked["parked_at"] is not None
    assert parked["failures"] == 10 and parked["last_error"]["message"] == "simulated crash of the workflow task"
    assert retrying["instance_id"] == runs["retrying"].pk and retrying["parked_at"] is None
    assert retrying["failures"] == 1

    workers = stats["workers"]
    assert (workers["alive"], workers["stale"], workers["stopped"]) == (1, 1, 1)
    assert [(w["name"], w["state"]) for w in workers["list"]] == [
        ("alive-worker", "alive"),
        ("stopped-worker", "stopped"),
        ("stale-worker", "stale"),
    ]


def test_the_page_shows_the_numbers_and_links_to_the_filtered_run_list(db: None, admin_client) -> None:
    with WorkflowEnvironment(start_time=START, queues=["default"]) as env:
        runs = build_scene(env)
        response = admin_client.get(URL)
    assert response.status_code == 200
    assert response.templates[0].name == "admin/django_durable/workflowinstance/dashboard.html"
    page = html.unescape(response.content.decode())
    assert "<script" not in page.split('<div id="content-main">')[1]  # server-rendered, no scripts of its own

    assert f'<a href="{CHANGELIST}?status__exact=running">2</a>' in page
    assert f'<a href="{CHANGELIST}?status__exact=pending">3</a>' in page
    assert 'class="breadcrumbs"' in page and f'<a href="{CHANGELIST}">Workflow instances</a>' in page

    # The oldest unclaimed item names its run and how long it has waited.
    oldest = re.search(r'<p class="note" id="oldest-pending">(.*?)</p>', page, re.DOTALL).group(1)
    assert f'href="{CHANGELIST}{runs["stuck"].pk}/change/"' in oldest and "dash-stuck" in oldest
    assert "2h" in oldest

    # Failures of the last hour link to the run list, filtered to them only.
    failed_link = re.search(r'<a class="bad" href="([^"]+status__exact=failed[^"]+)">1</a>', page).group(1)
    assert "closed_at__gte=" in failed_link
    listing = admin_client.get(failed_link)
    assert listing.status_code == 200 and listing.context["cl"].result_count == 1
    assert [run.pk for run in listing.context["cl"].result_list] == [runs["failed"].pk]

    failing_link = f"{CHANGELIST}?task_error__isnull=False"
    assert f'<a class="bad" href="{failing_link}">1</a>' in page
    failing = admin_client.get(failing_link)
    assert {run.pk for run in failing.context["cl"].result_list} == {runs["parked"].pk, runs["retrying"].pk}
    tasks = re.search(r'<table id="failing-tasks">(.*?)</table>', page, re.DOTALL).group(1)
    assert f"{CHANGELIST}{runs['parked'].pk}/change/" in tasks and "parked since" in tasks
    assert "SystemExit: simulated crash of the workflow task" in tasks

    work = re.search(r'<tr class="kind-activity">(.*?)</tr>', page, re.DOTALL).group(1)
    assert re.findall(r'<td class="num[^"]*">(\d+)</td>', work) == ["2", "1", "1", "1", "1", "0", "0"]

    workers = re.search(r'<div class="module" id="workers">(.*?)</div>', page, re.DOTALL).group(1)
    assert "1 alive, 1 stale, 1 stopped" in workers
    assert re.search(r'<tr class="worker-stale">\s*<td>stale-worker</td>', workers)
    assert "ancient-worker" not in workers and "default, mail" in workers


def test_an_empty_store_renders_a_calm_page(admin_client) -> None:
    response = admin_client.get(URL)
    assert response.status_code == 200
    page = response.content.decode()
    assert "Nothing is due and unclaimed." in page and "No worker has reported" in page


def _user(username: str, *, staff: bool, perms: tuple[str, ...] = ()) -> object:
    user = get_user_model().objects.create_user(username=username, password="pw", is_staff=staff)
    user.user_permissions.set(Permission.objects.filter(codename__in=perms, content_type__app_label="django_durable"))
    return user


@pytest.mark.django_db
def test_only_staff_with_view_permission_see_it(client) -> None:
    assert client.get(URL).status_code == 302  # anonymous: to the login page

    client.force_login(_user("visitor", staff=False, perms=("view_workflowinstance",)))
    response = client.get(URL)
    assert response.status_code == 302 and "/login/" in response["Location"]

    client.force_login(_user("clerk", staff=True))
    assert client.get(URL).status_code == 403

    client.force_login(_user("operator", staff=True, perms=("operate_workflowinstance",)))
    assert client.get(URL).status_code == 403

    client.force_login(_user("viewer", staff=True, perms=("view_workflowinstance",)))
    assert client.get(URL).status_code == 200


def test_queries_do_not_grow_with_runs_work_or_workers(db: None, admin_client) -> None:
    def measure() -> tuple[int, int]:
        with CaptureQueriesContext(connection) as stats_queries:
            store.dashboard_stats()
        with CaptureQueriesContext(connection) as page_queries:
            assert admin_client.get(URL).status_code == 200
        return len(stats_queries), len(page_queries)

    def grow(n: int) -> None:
        with WorkflowEnvironment(queues=["default"]) as env:
            for _ in range(n):
                env.start(dw.dash_waits)
                durable.start_workflow(dw.dash_waits, queue="nobody")
                env.start(dw.dash_crashes)
            env.run_until_idle()
            for run in WorkflowInstance.objects.filter(workflow_name="dash_waits", queue="default"):
                add_item(run, due_at=env.now, lease_owner="w", lease_expires_at=env.now)
            for _ in range(n):
                add_worker(uuid.uuid4().hex, env.now)

    grow(1)
    small = measure()
    grow(20)
    assert measure() == small
    # The stats: the clock (PostgreSQL), runs, work, the oldest item, failing tasks, workers (2).
    # The page adds the session and the user, and the schedules: counts, the next, the late (with its clock).
    assert small[0] <= 7 and small[1] <= small[0] + 6


@pytest.mark.workers
@pytest.mark.django_db(transaction=True)
def test_a_worker_reports_while_running_and_says_when_it_stopped(start_worker, admin_client) -> None:
    worker = start_worker()
    row = wait_for(lambda: WorkerHeartbeat.objects.filter(pid=worker.pid).first(), what="the worker's heartbeat row")
    assert row.hostname == socket.gethostname() and row.queues == ["default"]
    assert row.concurrency == 4  # start_worker's --concurrency
    assert row.stopped_at is None and row.started_at <= row.last_seen_at
    first_seen = row.last_seen_at
    wait_for(
        lambda: WorkerHeartbeat.objects.get(pk=row.pk).last_seen_at > first_seen,
        what="a second heartbeat",
    )
    stats = store.dashboard_stats()
    assert [(w["name"], w["state"]) for w in stats["workers"]["list"]] == [(row.name, "alive")]

    worker.terminate()
    assert worker.wait() == 0
    row.refresh_from_db()
    assert row.stopped_at is not None and row.last_seen_at == row.stopped_at
    assert row.started_at < row.stopped_at
    page = admin_client.get(URL).content.decode()
    assert re.search(rf'<tr class="worker-stopped">\s*<td>{re.escape(row.name)}</td>', page)


@pytest.mark.workers
@pytest.mark.django_db(transaction=True)
def test_a_worker_whose_heartbeat_cannot_be_written_keeps_working(start_worker) -> None:
    table = WorkerHeartbeat._meta.db_table
    with connection.cursor() as cursor:
        cursor.execute(f"ALTER TABLE {table} RENAME TO {table}_away")
    try:
        worker = start_worker(args=["--name", "homeless-worker"])
        wait_for(lambda: "Could not record the worker's heartbeat" in worker.log(), what="the heartbeat failure")
        handle = durable.start_workflow(ow_returns_at_once)
        assert handle.result(timeout=30) is not None
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"ALTER TABLE {table}_away RENAME TO {table}")
    # Once the table is back, the next heartbeat records the worker.
    row = wait_for(lambda: WorkerHeartbeat.objects.filter(name="homeless-worker").first(), what="the row")
    assert row.pid == worker.pid and row.stopped_at is None
    worker.signal(signal.SIGTERM)
    assert worker.wait() == 0
    row.refresh_from_db()
    assert row.stopped_at is not None
    assert "Traceback" not in worker.log()
