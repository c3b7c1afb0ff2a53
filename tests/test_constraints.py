"""The two constraints the store's correctness rests on, on every database: at most one open run
per workflow id (a start race ends in WorkflowAlreadyExists), at most one workflow task per run
(delivery inserts one and leaves an existing one alone). Django creates them as partial unique
indexes where the database has those; MySQL and MariaDB get an equivalent from
``Dialect.schema_extras`` (migration 0007)."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import IntegrityError, close_old_connections, connection, transaction

import django_durable as durable
from django_durable.models import WorkflowInstance, WorkflowStatus, WorkItem, WorkItemKind
from django_durable.store import runs
from tests.testapp.workflows import fan_out

pytestmark = pytest.mark.database

CONSTRAINTS = {
    WorkflowInstance: "durable_one_open_run_per_workflow_id",
    WorkItem: "durable_one_workflow_task_per_run",
}


@pytest.mark.django_db
@pytest.mark.parametrize(("model", "name"), CONSTRAINTS.items(), ids=CONSTRAINTS.values())
def test_the_database_has_the_constraint_as_a_unique_index(model: Any, name: str) -> None:
    with connection.cursor() as cursor:
        constraints = connection.introspection.get_constraints(cursor, model._meta.db_table)
    assert name in constraints, sorted(constraints)
    assert constraints[name]["unique"]


@pytest.mark.django_db
def test_a_second_open_run_of_an_id_is_refused_and_closed_runs_are_not_counted() -> None:
    first = durable.start_workflow(fan_out, 1, workflow_id="constraint-open")
    row = WorkflowInstance.objects.get(run_id=first.run_id)
    with pytest.raises(IntegrityError), transaction.atomic():
        WorkflowInstance.objects.create(workflow_id=row.workflow_id, workflow_name=row.workflow_name, queue="default")
    WorkflowInstance.objects.filter(pk=row.pk).update(status=WorkflowStatus.COMPLETED)
    for _ in range(2):
        WorkflowInstance.objects.create(
            workflow_id=row.workflow_id,
            workflow_name=row.workflow_name,
            queue="default",
            status=WorkflowStatus.FAILED,
        )
    assert WorkflowInstance.objects.filter(workflow_id="constraint-open").count() == 3


@pytest.mark.django_db
def test_a_run_has_at_most_one_workflow_task_however_many_events_arrive() -> None:
    handle = durable.start_workflow(fan_out, 1, workflow_id="constraint-task")
    for n in range(3):
        handle.signal("poke", n)
    run = WorkflowInstance.objects.get(run_id=handle.run_id)
    assert WorkItem.objects.filter(instance=run, kind=WorkItemKind.WORKFLOW).count() == 1
    with pytest.raises(IntegrityError), transaction.atomic():
        WorkItem.objects.create(instance=run, kind=WorkItemKind.WORKFLOW, queue="default", due_at=run.created_at)
    for _ in range(2):  # activities and timers are not limited
        WorkItem.objects.create(instance=run, kind=WorkItemKind.ACTIVITY, queue="default", due_at=run.created_at)
    assert WorkItem.objects.filter(instance=run).count() == 3


@pytest.mark.django_db(transaction=True)
def test_two_starts_racing_past_the_check_end_in_one_run_and_workflow_already_exists(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    if connection.vendor == "sqlite":
        pytest.skip("SQLite serialises writers at BEGIN: two starts cannot both pass the check")
    both_checked = threading.Barrier(2, timeout=30)
    check: Callable[..., None] = runs._apply_id_reuse_policy

    def check_then_wait(*args: Any, **kwargs: Any) -> None:
        check(*args, **kwargs)
        both_checked.wait()  # neither has inserted: both found no open run

    monkeypatch.setattr(runs, "_apply_id_reuse_policy", check_then_wait)
    outcomes: list[str] = []

    def start() -> None:
        try:
            durable.start_workflow(fan_out, 1, workflow_id="constraint-race")
            outcomes.append("started")
        except durable.WorkflowAlreadyExists:
            outcomes.append("already exists")
        finally:
            close_old_connections()
            connection.close()

    threads = [threading.Thread(target=start) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert sorted(outcomes) == ["already exists", "started"]
    assert WorkflowInstance.objects.filter(workflow_id="constraint-race").count() == 1
