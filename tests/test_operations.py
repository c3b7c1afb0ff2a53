"""Operations: ``manage.py durable_prune`` and ``manage.py durable_healthcheck``.

Runs are made by really running workflows (``WorkflowEnvironment``, its clock set weeks back
so that they closed then); the commands run in-process through ``call_command`` on the test
database, and as ``manage.py`` subprocesses where the exit status or a real worker matters.
"""

from __future__ import annotations

import datetime
import io
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.db.migrations.loader import MigrationLoader
from django.db.migrations.recorder import MigrationRecorder
from django.test.utils import CaptureQueriesContext

import django_durable as durable
from django_durable import operations, store
from django_durable.models import (
    HistoryEvent,
    InboxEvent,
    WorkerHeartbeat,
    WorkflowInstance,
    WorkItem,
)
from django_durable.testing import WorkflowEnvironment
from tests.conftest import REPO, has_row_locks, wait_for
from tests.testapp.workflows import fan_out, sleeper

pytestmark = pytest.mark.database

TIMEOUT = 30.0
DAY = datetime.timedelta(days=1)


# -- workflows (run in this process only, by WorkflowEnvironment) -------------------------------


@durable.activity
def ops_double(x: int) -> int:
    return 2 * x


@durable.workflow
def ops_done(ctx: durable.WorkflowContext, x: int) -> int:
    return ctx.call_activity(ops_double, x).result()


@durable.workflow
def ops_fails(ctx: durable.WorkflowContext) -> None:
    ctx.call_activity(ops_double, 1).result()
    raise ValueError("ops_fails fails")


@durable.workflow
def ops_waits(ctx: durable.WorkflowContext) -> Any:
    return ctx.wait_for_event("go")


@durable.workflow
def ops_abandons_child(ctx: durable.WorkflowContext, child_id: str) -> str:
    ctx.call_workflow(ops_waits, workflow_id=child_id, parent_close_policy="abandon")
    return "left it running"


@durable.workflow
def ops_awaits_child(ctx: durable.WorkflowContext, child_id: str) -> Any:
    answer = ctx.call_workflow(ops_done, 21, workflow_id=child_id).result()
    ctx.wait_for_event("go")
    return answer


@durable.workflow
def ops_chain(ctx: durable.WorkflowContext, links: int) -> Any:
    if links:
        ctx.continue_as_new(links - 1)
    return ctx.wait_for_event("go")


# -- helpers -------------------------------------------------------------------------------------


def weeks_ago(days: float) -> WorkflowEnvironment:
    """An environment whose clock stands ``days`` back: what it runs closes then."""
    return WorkflowEnvironment(start_time=datetime.datetime.now(datetime.timezone.utc) - days * DAY)


def run(workflow_id: str) -> WorkflowInstance:
    return store.get_instance(workflow_id)


def runs_of(workflow_id: str) -> list[WorkflowInstance]:
    return list(WorkflowInstance.objects.filter(workflow_id=workflow_id).order_by("pk"))


def rows_of(instance_ids: list[int]) -> dict[str, int]:
    return {
        "runs": WorkflowInstance.objects.filter(pk__in=instance_ids).count(),
        "history_events": HistoryEvent.objects.filter(instance_id__in=instance_ids).count(),
        "inbox_events": InboxEvent.objects.filter(instance_id__in=instance_ids).count(),
        "work_items": WorkItem.objects.filter(instance_id__in=instance_ids).count(),
    }


def snapshot() -> dict[str, list[tuple]]:
    """Every row of the durable tables, to prove that something changed nothing."""
    return {
        "runs": list(
            WorkflowInstance.objects.order_by("pk").values_list(
                "pk", "status", "parent_id", "continued_from_id", "rerun_of_id", "history_length", "closed_at"
            )
        ),
        "history": list(HistoryEvent.objects.order_by("pk").values_list("pk", "instance_id", "seq")),
        "inbox": list(InboxEvent.objects.order_by("pk").values_list("pk", "instance_id")),
        "work": list(WorkItem.objects.order_by("pk").values_list("pk", "instance_id", "due_at", "lease_owner")),
        "workers": list(WorkerHeartbeat.objects.order_by("pk").values_list("pk", "last_seen_at", "stopped_at")),
    }


def command(name: str, *args: str) -> tuple[int, str]:
    """``call_command``: (exit status, stdout)."""
    out = io.StringIO()
    try:
        call_command(name, *args, stdout=out, stderr=io.StringIO())
    except SystemExit as exit:
        return int(exit.code or 0), out.getvalue()
    return 0, out.getvalue()


def prune(*args: str) -> dict[str, Any]:
    code, out = command("durable_prune", "--json", *args)
    assert code == 0, out
    return json.loads(out)


def health(*args: str) -> tuple[int, dict[str, Any]]:
    """The healthcheck's exit status and JSON report, asserting it wrote nothing."""
    with CaptureQueriesContext(connection) as queries:
        code, out = command("durable_healthcheck", "--json", *args)
    writes = [
        q["sql"]
        for q in queries.captured_queries
        if q["sql"].lstrip().split()[0].upper() in ("INSERT", "UPDATE", "DELETE", "CREATE", "DROP", "ALTER")
    ]
    assert writes == [], writes
    report = json.loads(out)
    assert code == (0 if report["healthy"] else 1), (code, report)
    return code, report


def statuses(report: dict[str, Any]) -> dict[str, str]:
    return {name: check["status"] for name, check in report["checks"].items()}


def manage(*args: str, env: dict[str, str] | None = None, db_name: str | None = None) -> subprocess.CompletedProcess:
    """``python -m django <args>`` with the suite's settings, on the test database (or ``db_name``)."""
    return subprocess.run(
        [sys.executable, "-m", "django", *args, "--settings", "tests.settings"],
        cwd=REPO,
        env={
            **os.environ,
            "PYTHONPATH": str(REPO),
            "DURABLE_DB_NAME": db_name or str(connection.settings_dict["NAME"]),
            **(env or {}),
        },
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )


@pytest.fixture
def closed_weeks_ago(db: None) -> dict[str, WorkflowInstance]:
    """Runs that closed 40 days ago, one per way of closing, plus a run started then that is still
    open, and a run that closed 10 days ago."""
    with weeks_ago(40) as env:
        for workflow_id in ("done-1", "done-2"):
            assert env.result(env.start(ops_done, 5, workflow_id=workflow_id)) == 10
        with pytest.raises(durable.WorkflowFailed):
            env.result(env.start(ops_fails, workflow_id="failed"))
        terminated = env.start(ops_waits, workflow_id="terminated")
        canceled = env.start(ops_waits, workflow_id="canceled")
        env.start(ops_waits, workflow_id="old-open")
        env.run_until_idle()
        terminated.terminate("no longer needed")
        canceled.cancel()
        env.run_until_idle()
    with weeks_ago(10) as env:
        env.result(env.start(ops_done, 1, workflow_id="recent"))
    # No worker runs now: the event waits in the open run's inbox, with a workflow task.
    durable.get_workflow("old-open").signal("unrelated", {"kept": "in the inbox"})
    runs = {
        workflow_id: run(workflow_id)
        for workflow_id in ("done-1", "done-2", "failed", "terminated", "canceled", "old-open", "recent")
    }
    assert {workflow_id: instance.status for workflow_id, instance in runs.items()} == {
        "done-1": "completed",
        "done-2": "completed",
        "failed": "failed",
        "terminated": "terminated",
        "canceled": "canceled",
        "old-open": "running",
        "recent": "completed",
    }
    return runs


# -- durable_prune --------------------------------------------------------------------------------


def test_prune_deletes_runs_closed_before_the_retention_with_their_rows(closed_weeks_ago):
    old = [closed_weeks_ago[w].pk for w in ("done-1", "done-2", "failed", "terminated", "canceled")]
    kept = [closed_weeks_ago[w].pk for w in ("old-open", "recent")]
    doomed = rows_of(old)
    assert doomed["history_events"] > 5 * 3
    kept_before = snapshot()

    report = prune("--older-than", "30d")

    assert {key: report[key] for key in doomed} == doomed
    assert (report["batches"], report["kept"], report["dry_run"]) == (1, 0, False)
    assert rows_of(old) == dict.fromkeys(doomed, 0)
    after = snapshot()
    for table, rows in kept_before.items():
        column = 0 if table == "runs" else 1
        assert after[table] == [row for row in rows if table == "workers" or row[column] in kept], table
    # The open run kept its unconsumed event and its workflow task.
    assert rows_of([closed_weeks_ago["old-open"].pk])["inbox_events"] == 1
    assert rows_of([closed_weeks_ago["old-open"].pk])["work_items"] == 1
    assert run("old-open").status == "running"

    assert prune("--older-than", "30d")["runs"] == 0
    assert prune("--older-than", "5d")["runs"] == 1  # "recent"
    assert list(WorkflowInstance.objects.values_list("workflow_id", flat=True)) == ["old-open"]


def test_prune_keeps_closed_runs_that_open_runs_refer_to(db):
    with weeks_ago(40) as env:
        env.result(env.start(ops_abandons_child, "abandoned-child", workflow_id="gone-parent"))
        env.start(ops_awaits_child, "finished-child", workflow_id="open-parent")
        env.start(ops_chain, 2, workflow_id="chain")
        env.result(env.start(ops_done, 3, workflow_id="rerun-source"))
        env.run_until_idle()
    rerun = durable.get_workflow("rerun-source").rerun(2, workflow_id="rerun")
    chain = runs_of("chain")
    assert [r.status for r in chain] == ["continued_as_new", "continued_as_new", "running"]
    assert run("abandoned-child").status == "running" and run("gone-parent").status == "completed"
    assert run("finished-child").status == "completed" and run("open-parent").status == "running"
    open_before = {
        r.pk: (r.status, r.history_length, r.parent_id, r.continued_from_id, r.rerun_of_id, r.updated_at)
        for r in WorkflowInstance.objects.filter(status__in=("pending", "running"))
    }

    report = prune("--older-than", "30d")

    # The closed child of an open parent goes (its result is in the parent's history); the first
    # link of the chain goes, the link an open run continued from stays and forgets its predecessor.
    assert (report["runs"], report["kept"]) == (2, 3), report
    assert not WorkflowInstance.objects.filter(workflow_id="finished-child").exists()
    assert [r.pk for r in runs_of("chain")] == [chain[1].pk, chain[2].pk]
    assert run("chain").continued_from_id == chain[1].pk
    assert WorkflowInstance.objects.get(pk=chain[1].pk).continued_from_id is None
    assert run("gone-parent").status == "completed"  # an open child points at it
    assert run("rerun-source").status == "completed"  # an open rerun points at it
    assert {
        r.pk: (r.status, r.history_length, r.parent_id, r.continued_from_id, r.rerun_of_id, r.updated_at)
        for r in WorkflowInstance.objects.filter(status__in=("pending", "running"))
    } == open_before

    # Once those runs close (now), what pointed at them is past the retention and goes; the
    # recent runs stay, pointing at nothing.
    durable.get_workflow("abandoned-child").terminate()
    durable.get_workflow("chain").terminate()
    durable.get_workflow(rerun.workflow_id).terminate()
    assert prune("--older-than", "30d")["runs"] == 3
    assert set(WorkflowInstance.objects.values_list("workflow_id", flat=True)) == {
        "abandoned-child",
        "chain",
        "rerun",
        "open-parent",
    }
    assert run("abandoned-child").parent_id is None
    assert run("rerun").rerun_of_id is None
    assert run("chain").continued_from_id is None


def test_dry_run_counts_what_prune_deletes_and_changes_nothing(closed_weeks_ago):
    before = snapshot()
    code, out = command("durable_prune", "--older-than", "30d", "--dry-run")
    assert code == 0
    assert out.startswith("Would delete 5 run(s) closed before "), out
    assert snapshot() == before

    dry = prune("--older-than", "30d", "--dry-run")
    assert snapshot() == before
    wet = prune("--older-than", "30d")
    assert dry["dry_run"] and not wet["dry_run"]
    for key in ("runs", "history_events", "inbox_events", "work_items", "kept"):
        assert dry[key] == wet[key], key
    assert wet["runs"] == 5


def test_prune_goes_in_batches_of_one_statement_per_table(db):
    with weeks_ago(40) as env:
        for i in range(7):
            env.result(env.start(ops_done, i, workflow_id=f"batch-{i}"))
    code, out = command("durable_prune", "--older-than", "30d", "--batch-size", "3", "-v", "2")
    assert code == 0
    lines = out.splitlines()
    assert [line.split(",")[0] for line in lines[:-1]] == [
        "Batch 1: deleted 3 run(s)",
        "Batch 2: deleted 3 run(s)",
        "Batch 3: deleted 1 run(s)",
    ]
    assert " in 3 batch(es)." in lines[-1]
    assert not WorkflowInstance.objects.exists()

    with weeks_ago(40) as env:
        for i in range(5):
            env.result(env.start(ops_done, i, workflow_id=f"counted-{i}"))
    cutoff = store.db_now() - 30 * DAY
    for size in (1, 4):
        with CaptureQueriesContext(connection) as queries:
            counts = store.prune_batch(closed_before=cutoff, batch_size=size)
        assert counts["runs"] == size and counts["history_events"] > size
        deletes = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("DELETE")]
        tables = [sql.split()[2].strip('"`') for sql in deletes]
        assert sorted(tables) == sorted(
            model._meta.db_table for model in (HistoryEvent, InboxEvent, WorkItem, WorkflowInstance)
        ), deletes
        selects = [q["sql"] for q in queries.captured_queries if q["sql"].startswith("SELECT")]
        assert len(selects) == 1, selects  # the batch's ids, locked; no run is loaded
    assert WorkflowInstance.objects.count() == 0


@pytest.mark.skipif(not has_row_locks(), reason="SQLite has no row locks")
def test_prune_skips_runs_another_transaction_holds_instead_of_waiting(transactional_db):
    with weeks_ago(40) as env:
        for i in range(4):
            env.result(env.start(ops_done, i, workflow_id=f"held-{i}"))
    # A purge's lock; a rerun's insert, whose foreign key to its source shares a lock on it.
    shared = "FOR KEY SHARE" if connection.vendor == "postgresql" else "LOCK IN SHARE MODE"
    held = {run("held-1").pk: "FOR UPDATE", run("held-2").pk: shared}
    locked, release = threading.Event(), threading.Event()

    def hold() -> None:
        try:
            with transaction.atomic(), connection.cursor() as cursor:
                for pk, lock in held.items():
                    cursor.execute(f"SELECT id FROM {WorkflowInstance._meta.db_table} WHERE id = %s {lock}", [pk])
                locked.set()
                release.wait(TIMEOUT)
        finally:
            connection.close()

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert locked.wait(TIMEOUT)
        report = prune("--older-than", "30d")
        assert holder.is_alive()  # the locks are still held: it did not wait for them
    finally:
        release.set()
        holder.join(TIMEOUT)
    assert report["runs"] == 2
    assert sorted(WorkflowInstance.objects.values_list("pk", flat=True)) == sorted(held)
    assert prune("--older-than", "30d")["runs"] == 2


def test_prune_by_workflow_name(closed_weeks_ago):
    report = prune("--older-than", "30d", "--workflow-name", "ops_fails", "--workflow-name", "ops_waits")
    assert report["runs"] == 3  # failed, terminated, canceled; not the open ops_waits run
    assert set(WorkflowInstance.objects.values_list("workflow_id", flat=True)) == {
        "done-1",
        "done-2",
        "old-open",
        "recent",
    }


def test_prune_rejects_bad_input_and_changes_nothing(closed_weeks_ago, settings):
    before = snapshot()
    for args, message in [
        (["--older-than", "soon"], "--older-than: 'soon' is not a duration"),
        (["--older-than", "30x"], "--older-than: '30x' is not a duration"),
        (["--batch-size", "0"], "--batch-size must be a whole number of at least 1"),
    ]:
        with pytest.raises(CommandError, match=message) as error:
            call_command("durable_prune", *args, stdout=io.StringIO())
        assert error.value.returncode == 2
    settings.DURABLE = {**settings.DURABLE, "PRUNE_RETENTION": -5}
    with pytest.raises(CommandError, match=r"DURABLE\['PRUNE_RETENTION'\]: -5 is negative") as error:
        call_command("durable_prune", stdout=io.StringIO())
    assert error.value.returncode == 2
    assert snapshot() == before

    # The default retention comes from the settings.
    settings.DURABLE = {**settings.DURABLE, "PRUNE_RETENTION": "20d", "PRUNE_BATCH_SIZE": 2}
    report = prune()
    assert (report["runs"], report["batches"]) == (5, 3)


@pytest.mark.workers
def test_prune_and_healthcheck_exit_status_from_the_command_line(db):
    bad = manage("durable_prune", "--older-than", "a while")
    assert bad.returncode == 2 and "is not a duration" in bad.stderr, bad
    assert manage("durable_prune", "--batch-size", "many").returncode == 2
    assert manage("durable_healthcheck", "--overdue-after", "soon").returncode == 2
    assert manage("durable_healthcheck", "--skip", "database").returncode == 2


@pytest.mark.engine
@pytest.mark.parametrize(
    "value, seconds",
    [
        ("90", 90),
        ("90s", 90),
        ("15m", 900),
        ("12h", 43200),
        ("30d", 2592000),
        ("2w", 1209600),
        ("1h30m", 5400),
        ("1.5h", 5400),
        (" 7D ", 604800),
        (45, 45),
        (datetime.timedelta(minutes=2), 120),
        ("0", 0),
    ],
)
def test_parse_duration(value, seconds):
    assert operations.parse_duration(value) == datetime.timedelta(seconds=seconds)


@pytest.mark.engine
@pytest.mark.parametrize("value", ["", "soon", "-5d", "5 days", "d", "1h 30m", "5y", True, None, -1])
def test_parse_duration_refuses(value):
    with pytest.raises(ValueError, match="duration|negative"):
        operations.parse_duration(value)


# -- durable_healthcheck --------------------------------------------------------------------------


def beat(name: str, *, queues: tuple[str, ...] = ("default",), silent: datetime.timedelta | None = None) -> None:
    store.record_worker_heartbeat(name, "host-" + name, 1234, list(queues), 4, starting=True)
    if silent is not None:
        WorkerHeartbeat.objects.filter(name=name).update(last_seen_at=store.db_now() - silent)


def test_healthcheck_reports_missing_stale_and_stopped_workers(db):
    code, report = health()
    assert statuses(report) == {
        "database": "ok",
        "migrations": "ok",
        "workers": "fail",
        "overdue": "ok",
        "schedules": "ok",
    }
    assert report["checks"]["workers"]["detail"] == "0 alive, 1 needed"
    assert report["checks"]["database"]["vendor"] == connection.vendor

    beat("w-stale", silent=datetime.timedelta(minutes=10))
    code, report = health()
    workers = report["checks"]["workers"]
    assert (code, workers["status"]) == (1, "fail")
    assert "w-stale (last seen 10m ago)" in workers["detail"], workers
    assert [w["name"] for w in workers["stale"]] == ["w-stale"] and workers["alive"] == []
    assert health("--stale-after", "15m")[0] == 0

    beat("w-alive")
    code, report = health()
    assert (code, statuses(report)["workers"]) == (0, "ok")
    assert report["checks"]["workers"]["detail"].startswith("1 alive; stale")
    assert health("--min-workers", "2")[0] == 1
    assert health("--queues", "mail,sms")[0] == 1  # w-alive serves only "default"
    assert health("--queues", "mail,default")[0] == 0
    assert health("--hostname", "host-w-alive")[0] == 0
    assert health("--hostname", "host-w-stale")[0] == 1

    store.worker_stopped("w-alive")  # a clean stop: not alive, not stale either
    code, report = health()
    assert code == 1 and report["checks"]["workers"]["detail"].startswith("0 alive, 1 needed; stale")
    assert health("--min-workers", "0")[0] == 0
    assert health("--skip", "workers")[0] == 0

    code, out = command("durable_healthcheck", "--min-workers", "2")
    assert code == 1
    assert out.splitlines()[2].split()[:2] == ["FAIL", "workers"]
    assert out.splitlines()[-1] == "Unhealthy: workers."


def test_healthcheck_reports_overdue_work_and_unreaped_leases(db):
    beat("w-alive")
    handle = durable.start_workflow(ops_waits, workflow_id="waiting")
    code, report = health()
    overdue = report["checks"]["overdue"]
    assert (code, overdue["status"], overdue["oldest_due"]["workflow_id"]) == (0, "ok", "waiting")
    assert overdue["detail"].startswith("oldest due item waiting ")

    task = WorkItem.objects.get(instance__workflow_id="waiting")
    WorkItem.objects.filter(pk=task.pk).update(due_at=store.db_now() - datetime.timedelta(minutes=5))
    code, report = health()
    overdue = report["checks"]["overdue"]
    assert (code, overdue["status"], overdue["overdue"]) == (1, "fail", 1)
    assert (
        "1 item(s) due for over 1m and unclaimed; oldest: workflow ops_waits of workflow 'waiting'" in overdue["detail"]
    )
    assert "due 5m ago" in overdue["detail"]
    assert overdue["oldest_due"]["run_id"] == handle.run_id
    assert health("--overdue-after", "10m")[0] == 0
    assert health("--queues", "elsewhere", "--min-workers", "0")[0] == 0

    # Parked work waits for a person, not for a worker.
    WorkItem.objects.filter(pk=task.pk).update(parked_at=store.db_now())
    code, report = health()
    assert code == 0 and report["checks"]["overdue"]["detail"].endswith("; 1 parked (waiting for a person)")
    WorkItem.objects.filter(pk=task.pk).update(parked_at=None)

    # Claimed by a worker that died: once its lease is long expired and nobody reaped it, overdue.
    [claim] = store.claim(owner="dead-worker", kind="workflow", queues=["default"], limit=1, lease_seconds=30)
    assert health()[0] == 0
    WorkItem.objects.filter(pk=claim.id).update(lease_expires_at=store.db_now() - datetime.timedelta(minutes=3))
    code, report = health()
    overdue = report["checks"]["overdue"]
    assert (code, overdue["lease_expired"], overdue["overdue"]) == (1, 1, 0)
    assert "1 lease(s) expired over 1m ago and not reaped" in overdue["detail"]
    assert "held by dead-worker, expired 3m ago" in overdue["detail"]
    assert health("--overdue-after", "5m")[0] == 0


def latest_migrations() -> tuple[str, str]:
    """The app's latest migration and the one before it."""
    graph = MigrationLoader(None, ignore_no_migrations=True).graph
    [(_, latest)] = graph.leaf_nodes("django_durable")
    [parent] = graph.node_map[("django_durable", latest)].parents
    return latest, parent.key[1]


def test_healthcheck_reports_unapplied_migrations(db):
    beat("w-alive")
    assert health()[0] == 0
    latest, _ = latest_migrations()
    MigrationRecorder(connection).record_unapplied("django_durable", latest)
    code, report = health()
    migrations = report["checks"]["migrations"]
    assert (code, migrations["status"]) == (1, "fail")
    assert migrations["unapplied"] == [f"django_durable.{latest}"]
    assert migrations["detail"] == f"1 not applied: django_durable.{latest}"
    # The schedules' table may be what is missing: that check waits for the migrations.
    assert statuses(report) == {
        "database": "ok",
        "migrations": "fail",
        "workers": "ok",
        "overdue": "ok",
        "schedules": "skipped",
    }


@pytest.fixture
def database_of_its_own(transactional_db: None, tmp_path: Any) -> Iterator[str]:
    """The name of an empty database beside the test database: an SQLite file, or one on the
    server (created outside any transaction: transactional_db leaves the connection in autocommit)."""
    if connection.vendor == "sqlite":
        yield str(tmp_path / "migrated-back.sqlite3")
        return
    name = f"{connection.settings_dict['NAME']}_migrated_back"
    quoted = connection.ops.quote_name(name)
    with connection.cursor() as cursor:
        cursor.execute(f"DROP DATABASE IF EXISTS {quoted}")
        cursor.execute(f"CREATE DATABASE {quoted}")
    try:
        yield name
    finally:
        with connection.cursor() as cursor:
            cursor.execute(f"DROP DATABASE IF EXISTS {quoted}")


@pytest.mark.workers
def test_healthcheck_on_a_database_migrated_back(database_of_its_own):
    database = database_of_its_own
    migrated = manage("migrate", "-v", "0", db_name=database)
    assert migrated.returncode == 0, migrated
    latest, previous = latest_migrations()
    back = manage("migrate", "django_durable", previous, "-v", "0", db_name=database)
    assert back.returncode == 0, back

    behind = manage("durable_healthcheck", "--min-workers", "0", db_name=database)
    assert behind.returncode == 1, behind
    lines = behind.stdout.splitlines()
    assert lines[1].split()[:5] == ["FAIL", "migrations", "1", "not", "applied:"]
    assert lines[1].endswith(f"django_durable.{latest}"), lines
    assert [line.split()[0] for line in lines[:4]] == ["OK", "FAIL", "OK", "OK"], lines
    assert lines[-1] == "Unhealthy: migrations."

    assert manage("migrate", "-v", "0", db_name=database).returncode == 0
    assert manage("durable_healthcheck", "--min-workers", "0", db_name=database).returncode == 0


@pytest.mark.workers
def test_healthcheck_when_the_database_is_unreachable(db, tmp_path):
    if connection.vendor == "sqlite":
        unreachable = manage("durable_healthcheck", "--json", db_name=str(tmp_path / "no-such-dir" / "db.sqlite3"))
    else:
        unreachable = manage("durable_healthcheck", "--json", env={"DURABLE_PG_PORT": "1", "DURABLE_MARIADB_PORT": "1"})
    assert unreachable.returncode == 1, unreachable
    report = json.loads(unreachable.stdout)
    assert statuses(report) == {
        "database": "fail",
        "migrations": "skipped",
        "workers": "skipped",
        "overdue": "skipped",
        "schedules": "skipped",
    }
    assert report["checks"]["database"]["detail"].startswith("could not check: OperationalError: ")


@pytest.fixture
def worker(start_worker) -> Iterator[Any]:
    process = start_worker()
    wait_for(lambda: WorkerHeartbeat.objects.filter(pid=process.pid).exists(), TIMEOUT, what="the worker's heartbeat")
    yield process


@pytest.mark.workers
def test_healthcheck_is_healthy_with_a_real_worker_and_writes_nothing(worker):
    handle = durable.start_workflow(fan_out, 3)
    assert handle.result(timeout=TIMEOUT) == [0, 2, 4]

    env = {}
    if connection.vendor == "postgresql":
        # Every transaction of the probe's connection is read-only: a write would fail it.
        env["PGOPTIONS"] = "-c default_transaction_read_only=on"
    probe = manage("durable_healthcheck", "--json", env=env)
    assert probe.returncode == 0, probe
    report = json.loads(probe.stdout)
    assert set(statuses(report).values()) == {"ok"}, report
    [alive] = report["checks"]["workers"]["alive"]
    assert alive["pid"] == worker.pid and alive["queues"] == ["default"]
    assert report["checks"]["overdue"]["detail"].startswith("nothing due")

    # Prune with the worker running: the run that just closed goes, the sleeping one stays with its timer.
    sleeping = durable.start_workflow(sleeper, 3600)
    wait_for(
        lambda: WorkItem.objects.filter(instance__run_id=sleeping.run_id, kind="timer").exists(),
        TIMEOUT,
        what="the sleeper's timer",
    )
    pruned = manage("durable_prune", "--older-than", "0")
    assert pruned.returncode == 0 and pruned.stdout.startswith("Deleted 1 run(s) closed before "), pruned
    assert list(WorkflowInstance.objects.values_list("workflow_id", flat=True)) == [sleeping.workflow_id]
    assert sleeping.status() == "running"

    worker.signal(signal.SIGTERM)
    assert worker.wait(TIMEOUT) == 0
    stopped = manage("durable_healthcheck")
    assert stopped.returncode == 1, stopped
    assert "FAIL    workers     0 alive, 1 needed" in stopped.stdout, stopped.stdout


def test_healthcheck_rejects_bad_thresholds(db, settings):
    with pytest.raises(CommandError, match="--min-workers cannot be negative") as error:
        call_command("durable_healthcheck", "--min-workers", "-1", stdout=io.StringIO())
    assert error.value.returncode == 2
    with pytest.raises(CommandError, match="--stale-after: '5 minutes' is not a duration") as error:
        call_command("durable_healthcheck", "--stale-after", "5 minutes", stdout=io.StringIO())
    assert error.value.returncode == 2
    settings.DURABLE = {**settings.DURABLE, "HEALTH_OVERDUE_AFTER": "often"}
    with pytest.raises(CommandError, match=r"DURABLE\['HEALTH_OVERDUE_AFTER'\]: 'often' is not a duration"):
        call_command("durable_healthcheck", stdout=io.StringIO())
    # The option overrides the broken setting; the setting is read when no option says otherwise.
    assert command("durable_healthcheck", "--overdue-after", "2m", "--min-workers", "0")[0] == 0
    settings.DURABLE = {**settings.DURABLE, "HEALTH_OVERDUE_AFTER": "5m", "HEALTH_WORKER_STALE_AFTER": 3600}
    beat("w-quiet", silent=datetime.timedelta(minutes=30))
    code, report = health()
    assert code == 0 and report["checks"]["workers"]["stale_after_seconds"] == 3600
    assert report["checks"]["overdue"]["overdue_after_seconds"] == 300


@pytest.mark.engine
def test_format_duration():
    assert [operations.format_duration(s) for s in (0.0004, 0.85, 12, 200, 14400, 2592000 + 7200 + 5)] == [
        "0ms",
        "850ms",
        "12s",
        "3m20s",
        "4h",
        "30d2h",
    ]
