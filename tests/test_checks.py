"""System checks: ids, messages and hints."""

import pytest
from django.core import checks
from django.test import override_settings

from django_durable.checks import check_settings, check_sqlite

pytestmark = pytest.mark.engine


def ids(messages):
    return [message.id for message in messages]


def test_default_settings_pass():
    assert check_settings() == []


@override_settings(DURABLE={"LEASE_SECOND": 5})
def test_unknown_setting_is_an_error_with_the_valid_keys_as_hint():
    (error,) = check_settings()
    assert error.id == "django_durable.E002"
    assert "LEASE_SECOND" in error.msg
    assert "LEASE_SECONDS" in error.hint


@override_settings(DURABLE=["not", "a", "dict"])
def test_settings_must_be_a_dict():
    assert ids(check_settings()) == ["django_durable.E001"]


@override_settings(DURABLE={"DATA_CONVERTER": "nowhere.Converter"})
def test_unimportable_data_converter():
    assert ids(check_settings()) == ["django_durable.E003"]


@override_settings(DURABLE={"LEASE_SECONDS": 0})
def test_lease_must_be_positive():
    assert ids(check_settings()) == ["django_durable.E004"]


def test_sqlite_without_wal_is_warned_about_and_transaction_mode_is_not_needed():
    from django.db import connections

    connection = connections["default"]
    if connection.vendor != "sqlite":
        assert check_sqlite(databases=["default"]) == []
        return
    assert check_sqlite(databases=["default"]) == []
    original = connection.settings_dict["OPTIONS"]
    try:
        # The store takes the write lock itself: WAL and a timeout suffice.
        connection.settings_dict["OPTIONS"] = {"timeout": 20, "init_command": "PRAGMA journal_mode = wal"}
        assert check_sqlite(databases=["default"]) == []
        connection.settings_dict["OPTIONS"] = {}  # as startproject writes it
        (warning,) = check_sqlite(databases=["default"])
    finally:
        connection.settings_dict["OPTIONS"] = original
    assert warning.id == "django_durable.W001"
    assert warning.level == checks.WARNING
    assert "WAL" in warning.msg and "journal_mode=WAL" in warning.hint


def test_sqlite_with_autocommit_off_is_an_error():
    from django.db import connections

    connection = connections["default"]
    if connection.vendor != "sqlite":
        return
    connection.settings_dict["AUTOCOMMIT"] = False
    try:
        (error,) = check_sqlite(databases=["default"])
    finally:
        connection.settings_dict["AUTOCOMMIT"] = True
    assert error.id == "django_durable.E009"
    assert error.level == checks.ERROR
    assert "AUTOCOMMIT" in error.msg and "AUTOCOMMIT" in error.hint


def test_postgres_isolation_level_other_than_read_committed_is_an_error():
    from django.db import connections

    from django_durable.checks import check_isolation_level

    connection = connections["default"]
    if connection.vendor != "postgresql":
        assert check_isolation_level(databases=["default"]) == []
        return
    import psycopg

    assert check_isolation_level(databases=["default"]) == []
    options = connection.settings_dict["OPTIONS"]
    options["isolation_level"] = psycopg.IsolationLevel.REPEATABLE_READ
    try:
        (error,) = check_isolation_level(databases=["default"])
    finally:
        del options["isolation_level"]
    assert error.id == "django_durable.E005"
    options["isolation_level"] = psycopg.IsolationLevel.READ_COMMITTED
    try:
        assert check_isolation_level(databases=["default"]) == []
    finally:
        del options["isolation_level"]


@override_settings(DURABLE={"SCHEDULES": {"nightly": {"workflow": "sc_tick", "cron": "61 3 * * *"}}})
def test_a_declared_schedule_that_cannot_be_built_is_an_error_naming_it():
    from django_durable.checks import check_schedules

    (error,) = check_schedules()
    assert error.id == "django_durable.E050"
    assert "nightly" in error.msg and "cron" in error.msg


@override_settings(
    DURABLE={"SCHEDULES": {"nightly": {"workflow": "sc_tick", "args": ["k"], "cron": "0 3 * * *", "overlap": "skip"}}}
)
def test_a_valid_declared_schedule_passes():
    from django_durable.checks import check_schedules

    assert check_schedules() == []


@override_settings(DURABLE={"SCHEDULES": {"nightly": {"workflow": "not.registered", "every": 60}}})
def test_a_declared_schedule_of_an_unknown_workflow_is_an_error():
    from django_durable.checks import check_schedules

    assert ids(check_schedules()) == ["django_durable.E050"]


@override_settings(DURABLE={"QUEUES": {"payments": {"concurrency": 5}, "emails": {"rate_limit": {"limit": 0}}}})
def test_queue_limits_that_cannot_be_read_are_an_error_naming_the_queue():
    from django_durable.checks import check_queue_limits

    (error,) = check_queue_limits()
    assert error.id == "django_durable.E060"
    assert "emails" in error.msg and "rate_limit" in error.msg


@override_settings(
    DURABLE={"QUEUES": {"payments": {"concurrency": 5, "worker_concurrency": 1, "key_concurrency": 1}, "free": {}}}
)
def test_valid_queue_limits_pass():
    from django_durable.checks import check_queue_limits

    assert check_queue_limits() == []
