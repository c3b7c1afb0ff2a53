"""System checks (``manage.py check``), ids ``django_durable.E0xx`` / ``W0xx``."""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core import checks
from django.db import connections
from django.utils.module_loading import import_string

from .conf import DEFAULTS
from .engine.events import PAYLOAD_KINDS
from .store.dialects import dialect_for


@checks.register()
def check_settings(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    user = getattr(settings, "DURABLE", {})
    if not isinstance(user, dict):
        return [checks.Error("DURABLE must be a dict.", hint="DURABLE = {...}", id="django_durable.E001")]
    for key in sorted(set(user) - set(DEFAULTS)):
        errors.append(
            checks.Error(
                f"Unknown django-durable setting DURABLE[{key!r}].",
                hint="Valid keys: " + ", ".join(sorted(DEFAULTS)),
                id="django_durable.E002",
            )
        )
    converter = user.get("DATA_CONVERTER", DEFAULTS["DATA_CONVERTER"])
    if isinstance(converter, str):
        try:
            import_string(converter)
        except ImportError as exc:
            errors.append(
                checks.Error(
                    f"DURABLE['DATA_CONVERTER'] cannot be imported: {exc}",
                    hint="Give the dotted path of a DataConverter subclass.",
                    id="django_durable.E003",
                )
            )
    for key in ("LEASE_SECONDS", "POLL_INTERVAL", "REAP_INTERVAL"):
        value = user.get(key, DEFAULTS[key])
        if not isinstance(value, (int, float)) or value <= 0:
            errors.append(
                checks.Error(f"DURABLE[{key!r}] must be a positive number of seconds.", id="django_durable.E004")
            )
    return errors + _check_limits(user)


def _is_limit(value: Any) -> bool:
    """A size or count limit: a positive integer, or None for no limit."""
    return value is None or (isinstance(value, int) and not isinstance(value, bool) and value > 0)


def _check_limits(user: dict[str, Any]) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for key in (
        "HISTORY_WARN_EVENTS",
        "HISTORY_MAX_EVENTS",
        "HISTORY_WARN_BYTES",
        "HISTORY_MAX_BYTES",
        "TIME_TRAVEL_MAX_EVENTS",
        "TIME_TRAVEL_MAX_BYTES",
        "API_MAX_BODY_SIZE",
    ):
        value = user.get(key, DEFAULTS[key])
        if not _is_limit(value) or (value is None and key == "API_MAX_BODY_SIZE"):
            errors.append(
                checks.Error(
                    f"DURABLE[{key!r}] must be a positive integer"
                    + (", or None for no limit." if key != "API_MAX_BODY_SIZE" else "."),
                    id="django_durable.E006",
                )
            )
    for unit in ("EVENTS", "BYTES"):
        warn, limit = (user.get(f"HISTORY_{k}_{unit}", DEFAULTS[f"HISTORY_{k}_{unit}"]) for k in ("WARN", "MAX"))
        if _is_limit(warn) and _is_limit(limit) and warn is not None and limit is not None and warn >= limit:
            errors.append(
                checks.Warning(
                    f"DURABLE['HISTORY_WARN_{unit}'] ({warn}) is not below DURABLE['HISTORY_MAX_{unit}'] "
                    f"({limit}): runs fail before the warning is logged.",
                    hint=f"Set HISTORY_WARN_{unit} to a fraction of HISTORY_MAX_{unit}.",
                    id="django_durable.W002",
                )
            )
    payload = user.get("PAYLOAD_MAX_BYTES", DEFAULTS["PAYLOAD_MAX_BYTES"])
    hint = (
        "PAYLOAD_MAX_BYTES is a positive integer (bytes of JSON), None (no limit), or a dict of those "
        "by kind: " + ", ".join(PAYLOAD_KINDS) + "."
    )
    if isinstance(payload, dict):
        for kind in sorted(set(payload) - set(PAYLOAD_KINDS), key=str):
            errors.append(
                checks.Error(
                    f"DURABLE['PAYLOAD_MAX_BYTES'] names an unknown kind of value: {kind!r}.",
                    hint=hint,
                    id="django_durable.E007",
                )
            )
        for kind in PAYLOAD_KINDS:
            if kind in payload and not _is_limit(payload[kind]):
                errors.append(
                    checks.Error(
                        f"DURABLE['PAYLOAD_MAX_BYTES'][{kind!r}] must be a positive integer or None.",
                        hint=hint,
                        id="django_durable.E007",
                    )
                )
    elif not _is_limit(payload):
        errors.append(
            checks.Error(
                "DURABLE['PAYLOAD_MAX_BYTES'] must be a positive integer, None or a dict.",
                hint=hint,
                id="django_durable.E007",
            )
        )
    return errors


@checks.register(checks.Tags.database)
def check_sqlite(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The store takes SQLite's write lock at the start of each transaction itself (see
    ``store.write_transaction``), whatever ``transaction_mode`` says; it cannot when Django
    leaves transactions to the sqlite3 module (AUTOCOMMIT off). WAL and a busy timeout
    are for throughput: without WAL every reader waits for the writer, and the writer
    for every reader."""
    messages: list[checks.CheckMessage] = []
    for alias in databases or []:
        connection = connections[alias]
        dialect = dialect_for(connection)
        if dialect.needs_autocommit and not connection.settings_dict.get("AUTOCOMMIT", True):
            messages.append(
                checks.Error(
                    f"SQLite database {alias!r} has AUTOCOMMIT off: its transactions begin as the sqlite3 module "
                    "decides, not with the write lock django-durable takes, and concurrent workers could run an "
                    "activity twice. durable_worker refuses to start.",
                    hint=f"Remove DATABASES[{alias!r}]['AUTOCOMMIT'] (Django's default is True).",
                    id="django_durable.E009",
                )
            )
        options = connection.settings_dict.get("OPTIONS", {})
        init_command = str(options.get("init_command", "")).lower().replace(" ", "")
        if dialect.wants_wal and "journal_mode=wal" not in init_command:
            messages.append(
                checks.Warning(
                    f"SQLite database {alias!r} does not ask for WAL mode: without it readers and the writer "
                    "block each other, and workers and web requests spend their time waiting for the lock.",
                    hint='Add OPTIONS = {"timeout": 20, "init_command": "PRAGMA journal_mode=WAL; '
                    'PRAGMA synchronous=NORMAL;"} to that database.',
                    id="django_durable.W001",
                )
            )
    return messages


@checks.register(checks.Tags.database)
def check_isolation_level(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    errors: list[checks.CheckMessage] = []
    for alias in databases or []:
        connection = connections[alias]
        if not dialect_for(connection).needs_read_committed:
            continue
        level = connection.settings_dict.get("OPTIONS", {}).get("isolation_level")
        if level is not None and getattr(level, "name", str(level)).upper().replace(" ", "_") != "READ_COMMITTED":
            errors.append(
                checks.Error(
                    f"Database {alias!r} uses isolation level {level}: django-durable relies on "
                    "READ COMMITTED (a statement after a row lock sees what committed while it waited).",
                    hint="Remove OPTIONS['isolation_level'] or set it to READ COMMITTED.",
                    id="django_durable.E005",
                )
            )
    return errors


@checks.register(checks.Tags.database)
def check_database_server(app_configs: Any = None, databases: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """The server's own settings, read from it: what OPTIONS cannot show."""
    errors: list[checks.CheckMessage] = []
    for alias in databases or []:
        for problem in dialect_for(connections[alias]).server_problems():
            if problem.setting == "isolation":
                errors.append(
                    checks.Error(
                        f"Database {alias!r} runs its transactions at isolation level {problem.value}: "
                        "django-durable relies on READ COMMITTED (a statement after a row lock sees what "
                        "committed while it waited). durable_worker refuses to start.",
                        hint=problem.hint,
                        id="django_durable.E005",
                    )
                )
            else:
                errors.append(
                    checks.Error(
                        f"Database {alias!r} logs statements to its binary log (binlog_format {problem.value}), "
                        "which makes SKIP LOCKED unsafe: the server refuses the claims (MariaDB error 4175) or "
                        "replicas replay them differently. durable_worker refuses to start.",
                        hint=problem.hint,
                        id="django_durable.E041",
                    )
                )
    return errors


@checks.register()
def check_activity_executor(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    from .executors import BUILTIN_EXECUTORS

    user = getattr(settings, "DURABLE", {})
    if not isinstance(user, dict):
        return []
    errors: list[checks.CheckMessage] = []
    executor = user.get("ACTIVITY_EXECUTOR", DEFAULTS["ACTIVITY_EXECUTOR"])
    timeout = user.get("DISPATCH_TIMEOUT", DEFAULTS["DISPATCH_TIMEOUT"])
    if not isinstance(timeout, (int, float)) or timeout <= 0:
        errors.append(
            checks.Error("DURABLE['DISPATCH_TIMEOUT'] must be a positive number of seconds.", id="django_durable.E030")
        )
    if executor == "threads":
        return errors
    paths = [BUILTIN_EXECUTORS.get(executor, executor)] if isinstance(executor, str) else []
    if executor == "celery" and user.get("CELERY_APP"):
        paths.append(user["CELERY_APP"])
    if not paths:
        paths = [repr(executor)]
    for path in paths:
        try:
            import_string(path)
        except ImportError as exc:
            errors.append(
                checks.Error(
                    f"DURABLE['ACTIVITY_EXECUTOR'] = {executor!r}: cannot import {path} ({exc}).",
                    hint='Use "threads", "celery" (pip install django-durable[celery]) or the dotted path '
                    "of an ActivityExecutor class; CELERY_APP must be the dotted path of a Celery app.",
                    id="django_durable.E031",
                )
            )
    return errors


@checks.register()
def check_task_token_max_age(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    user = getattr(settings, "DURABLE", {})
    value = user.get("TASK_TOKEN_MAX_AGE", DEFAULTS["TASK_TOKEN_MAX_AGE"]) if isinstance(user, dict) else None
    if value is None or (isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0):
        return []
    return [
        checks.Error(
            f"DURABLE['TASK_TOKEN_MAX_AGE'] must be None or a positive number of seconds, not {value!r}.",
            hint="None keeps a token valid for as long as its attempt is pending; otherwise set it longer "
            "than the wait you expect for an outside answer.",
            id="django_durable.E040",
        )
    ]


@checks.register()
def check_api_startable_workflows(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    user = getattr(settings, "DURABLE", {})
    value = user.get("API_STARTABLE_WORKFLOWS") if isinstance(user, dict) else None
    if value is None or (isinstance(value, (list, tuple)) and all(isinstance(name, str) for name in value)):
        return []
    return [
        checks.Error(
            f"DURABLE['API_STARTABLE_WORKFLOWS'] must be None or a list of workflow names, not {value!r}.",
            hint="None lets POST workflows/ start every workflow the project registered (never the internal "
            "django_durable.* ones); a list limits it to the names listed.",
            id="django_durable.E008",
        )
    ]


@checks.register()
def check_schedules(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``DURABLE["SCHEDULES"]`` is validated here as the workers' sync would (the workflows
    are registered by now: apps' ``workflows`` modules are imported in ``ready()``)."""
    from django.core.exceptions import ImproperlyConfigured

    from .schedules.sync import declared_schedules

    user = getattr(settings, "DURABLE", {})
    if not isinstance(user, dict) or not user.get("SCHEDULES"):
        return []
    try:
        declared_schedules(user["SCHEDULES"])
    except ImproperlyConfigured as error:
        return [
            checks.Error(
                str(error),
                hint='Each entry is {"workflow": a registered name, "cron": ... or "every": seconds, and any other '
                "option of durable.create_schedule()}; durable_worker refuses to start until it is fixed.",
                id="django_durable.E050",
            )
        ]
    return []


@checks.register()
def check_queue_limits(app_configs: Any = None, **kwargs: Any) -> list[checks.CheckMessage]:
    """``DURABLE["QUEUES"]``, the queues' limits, as the workers read them."""
    from django.core.exceptions import ImproperlyConfigured

    from .queues import configured_limits

    user = getattr(settings, "DURABLE", {})
    if not isinstance(user, dict) or "QUEUES" not in user:
        return []
    try:
        configured_limits(user["QUEUES"])
    except ImproperlyConfigured as error:
        return [
            checks.Error(
                str(error),
                hint='For example {"payments": {"concurrency": 5}, "emails": {"rate_limit": {"limit": 50, '
                '"period": 30}}}; see the flow control docs.',
                id="django_durable.E060",
            )
        ]
    return []
