"""What the store reads from the database server itself: its clock, and on MySQL and MariaDB the
session settings under which a claim would not be exclusive (``check_database_server``)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator

import pytest
from django.db import connection

from django_durable import store
from django_durable.checks import check_database_server

pytestmark = [pytest.mark.django_db, pytest.mark.database]


def test_the_database_clock_is_aware_utc_with_microseconds() -> None:
    readings = {store.db_now() for _ in range(50)}
    for now in readings:
        assert now.utcoffset() == datetime.timedelta(0)
        assert abs(now - datetime.datetime.now(datetime.timezone.utc)) < datetime.timedelta(minutes=5)
    # Fifty readings within a second or so: with whole seconds they would nearly all be equal.
    assert any(now.microsecond for now in readings)


def test_the_orm_clock_is_the_one_db_now_reads() -> None:
    from django_durable.models import WorkflowInstance

    before = store.db_now()
    WorkflowInstance.objects.create(workflow_id="clock", workflow_name="clock", queue="default")
    stamped = WorkflowInstance.objects.filter(workflow_id="clock").values_list(store.TransactionNow(), flat=True)
    assert before - datetime.timedelta(seconds=5) <= stamped.get() <= store.db_now() + datetime.timedelta(seconds=5)


@pytest.fixture
def mysql_session() -> Iterator[None]:
    if connection.vendor != "mysql":
        pytest.skip("MySQL's and MariaDB's session settings")
    yield
    connection.close()  # the next statement reconnects with the settings' session


def ids() -> list[str]:
    return [message.id for message in check_database_server(databases=["default"])]


def test_the_configured_session_passes(mysql_session: None) -> None:
    assert ids() == []


def test_a_session_at_repeatable_read_is_an_error(mysql_session: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
    assert ids() == ["django_durable.E005"]


def test_statement_based_binary_logging_is_an_error(mysql_session: None) -> None:
    with connection.cursor() as cursor:
        cursor.execute("SET SESSION binlog_format = 'STATEMENT'")
    assert ids() == ["django_durable.E041"]
