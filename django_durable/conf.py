"""``durable_settings``: the one ``DURABLE = {...}`` settings dict, read lazily.

Modelled on Django REST framework's ``api_settings``: defaults here (each with
its description, from which the docs build the settings reference), user
overrides in ``settings.DURABLE``, import strings resolved on access, and the
cache dropped when a test changes the setting.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

DEFAULT_PAYLOAD_MAX_BYTES = 2 * 1024 * 1024


@dataclass(frozen=True)
class Setting:
    """One setting: its default and the paragraph the settings reference (``docs/settings.md``) shows.

    The docs build renders that page from ``SETTINGS`` and fails when a description is missing
    or names a setting that does not exist (``docs/hooks/settings_reference.py``).
    """

    default: Any
    doc: str


SETTINGS: dict[str, Setting] = {
    "DEFAULT_QUEUE": Setting(
        "default",
        "The queue of a workflow or activity when neither its decorator (`queue=`) nor the caller names one, "
        "and the queue `durable_worker` serves when it is started without `--queues`.",
    ),
    "LEASE_SECONDS": Setting(
        30.0,
        "How long a claim is valid without renewal (seconds). A worker renews the leases of the work it holds; "
        "a dead worker's work is reclaimed this long after its last renewal. `manage.py check` requires a "
        "positive number (`django_durable.E004`).",
    ),
    "POLL_INTERVAL": Setting(
        1.0,
        "How often an idle worker looks for due work (seconds). On PostgreSQL, LISTEN/NOTIFY wakes idle "
        "workers as soon as work arrives. A positive number (`django_durable.E004`).",
    ),
    "REAP_INTERVAL": Setting(
        5.0,
        "How often a worker looks for expired leases and takes them back (seconds). Each `durable_worker` "
        "also writes its `WorkerHeartbeat` row (the dashboard, `durable_healthcheck`) at this interval. "
        "A positive number (`django_durable.E004`).",
    ),
    "CLAIM_BATCH_SIZE": Setting(
        8,
        "Items claimed per transaction. The workflow tasks a worker's main loop claims together run together: "
        "their inputs are read with one statement and all their decisions are committed in one transaction.",
    ),
    "ACTIVITY_CONCURRENCY": Setting(
        16,
        "Activity threads per worker (`durable_worker --concurrency` overrides), started as needed. A worker "
        "takes an attempt only when a thread is idle, and records finished attempts together (one transaction "
        "for as many as have gathered): more threads also mean larger, cheaper commits. Each activity thread "
        "that uses the ORM opens its own connection: size `max_connections` for threads × workers.",
    ),
    "WORKFLOW_TASK_MAX_FAILURES": Setting(
        10,
        "A workflow task that fails at engine level (a crash, a `NonDeterminismError`, a database query from "
        "workflow code, a `WORKFLOW_TASK_TIMEOUT`) is retried with exponential backoff and parked after this "
        "many failures; `handle.retry()` (or the admin's retry) runs it again.",
    ),
    "WORKFLOW_TASK_RETRY_INITIAL": Setting(
        1.0,
        "The backoff (seconds) after a workflow task's first failure; it doubles with each further failure, "
        "up to `WORKFLOW_TASK_RETRY_MAXIMUM`.",
    ),
    "WORKFLOW_TASK_RETRY_MAXIMUM": Setting(
        300.0,
        "The longest backoff (seconds) between the retries of a failing workflow task.",
    ),
    "HISTORY_WARN_EVENTS": Setting(
        10_000,
        "A warning is logged once when a run's history reaches this many events. `manage.py check` warns "
        "(`django_durable.W002`) when it is not below `HISTORY_MAX_EVENTS`.",
    ),
    "HISTORY_MAX_EVENTS": Setting(
        50_000,
        "A history that would reach this many events fails its run with `HistoryTooLarge` (the worker and "
        "other runs carry on); long-lived workflows should call `ctx.continue_as_new()` now and then. "
        "A positive integer, or `None` for no limit (`django_durable.E006`).",
    ),
    "HISTORY_WARN_BYTES": Setting(
        10 * 1024 * 1024,
        "A warning is logged once when the JSON of a run's event payloads outgrows this many bytes. "
        "`manage.py check` warns (`django_durable.W002`) when it is not below `HISTORY_MAX_BYTES`.",
    ),
    "HISTORY_MAX_BYTES": Setting(
        50 * 1024 * 1024,
        "A history whose event payloads would outgrow this many bytes of JSON fails its run with "
        "`HistoryTooLarge`. A positive integer, or `None` for no limit (`django_durable.E006`).",
    ),
    "PAYLOAD_MAX_BYTES": Setting(
        DEFAULT_PAYLOAD_MAX_BYTES,
        "The largest value (bytes of compact UTF-8 JSON, after the data converter) that may cross the durable "
        "boundary: a number for every kind of value, `None` for no limit, or a dict by kind (`workflow_input`, "
        "`workflow_result`, `activity_input`, `activity_result`, `signal`, `heartbeat`, `variable`) where kinds "
        "left out keep 2 MiB. A larger value raises `PayloadTooLarge` where it is passed, before anything is "
        "written (over HTTP: 413). `manage.py check` reports anything else, unknown kinds included "
        "(`django_durable.E007`).",
    ),
    "WORKFLOW_CACHE_SIZE": Setting(
        500,
        "Runs whose code a worker keeps parked between workflow tasks, so that the next task resumes it "
        "instead of replaying its history (0: always replay).",
    ),
    "WORKFLOW_TASK_TIMEOUT": Setting(
        60.0,
        "Workflow code that runs this long (seconds) without reaching a durable call fails its workflow task "
        "(it loops, or blocks on I/O it should leave to activities); the error shows where it was. The admin's "
        "time travel stops its replay at the same limit.",
    ),
    "RESULT_POLL_INTERVAL": Setting(
        0.5,
        "`WorkflowHandle.result()` waits for the run to close: on PostgreSQL it sleeps on LISTEN/NOTIFY and "
        "reads the run again at least this often (seconds), in case an announcement was missed; elsewhere it "
        "polls with backoff up to this interval.",
    ),
    "DATA_CONVERTER": Setting(
        "django_durable.converter.JSONDataConverter",
        "The dotted path of the class that turns values crossing the durable boundary into JSON and back. "
        "The default uses Django's encoder (dates, decimals, UUIDs and durations become strings) and brings "
        "dataclasses and Pydantic-style models back as themselves. `manage.py check` reports a path that "
        "cannot be imported (`django_durable.E003`).",
    ),
    "WORKER_CONN_MAX_AGE": Setting(
        None,
        "`CONN_MAX_AGE` for the worker's own database connections. `None` keeps them open (with "
        "`CONN_HEALTH_CHECKS`) instead of reconnecting every loop, which is what Django's request-scoped "
        "default of 0 would do in a long-lived worker. A number applies Django's usual `CONN_MAX_AGE` "
        "semantics instead.",
    ),
    "API_AUTHENTICATION_CLASSES": Setting(
        [
            "rest_framework.authentication.SessionAuthentication",
            "rest_framework.authentication.BasicAuthentication",
        ],
        "The Django REST framework authentication classes (dotted paths) of the HTTP API's workflow endpoints.",
    ),
    "API_PERMISSION_CLASSES": Setting(
        ["django_durable.api.permissions.WorkflowPermissions"],
        "The permission classes (dotted paths) of the workflow and schedule endpoints. The default asks for "
        "the model permission of `WorkflowInstance` that the admin needs for the same action (`view_`, `add_`, "
        "`operate_`, `delete_`), and on the schedule endpoints the permissions of `Schedule` (plus `add_` of "
        "`WorkflowInstance` where they start runs). To keep the old rule, any staff user may do everything, set it to "
        '`["rest_framework.permissions.IsAdminUser"]`.',
    ),
    "API_STARTABLE_WORKFLOWS": Setting(
        None,
        "The workflows `POST workflows/` may start (registered names); `None`: every workflow the project "
        "registered. The app's own `django_durable.*` workflows are never startable there. A refused name gets "
        "400 `not_registered`. `manage.py check` requires `None` or a list of names (`django_durable.E008`).",
    ),
    "ACTIVITY_API_AUTHENTICATION_CLASSES": Setting(
        [],
        "The authentication classes of the activity endpoints (complete, fail, heartbeat). None by default: "
        "they are authorised by the task token alone (no session, so no CSRF).",
    ),
    "ACTIVITY_API_PERMISSION_CLASSES": Setting(
        ["rest_framework.permissions.AllowAny"],
        "The permission classes of the activity endpoints; the task token is their authorisation.",
    ),
    "API_PAGE_SIZE": Setting(
        50,
        "The default `?limit=` of the HTTP API's paginated answers (the workflow list, a run's history). "
        "A larger `?limit=` is cut to 1,000, or to this setting if it is larger.",
    ),
    "API_MAX_BODY_SIZE": Setting(
        256 * 1024,
        "HTTP API request bodies larger than this (bytes) are rejected with 413. A positive integer "
        "(`django_durable.E006`).",
    ),
    "ACTIVITY_EXECUTOR": Setting(
        "threads",
        'Where activities run: `"threads"` (in `durable_worker`\'s thread pool), `"celery"` (`durable_worker` '
        "sends each due activity to Celery as a task) or the dotted path of an `ActivityExecutor` class "
        "(`django_durable.executors`). `manage.py check` reports one that cannot be imported "
        "(`django_durable.E031`).",
    ),
    "DISPATCH_TIMEOUT": Setting(
        60.0,
        "An activity sent to a remote executor but not claimed within this many seconds is sent again (the "
        "message was lost). A positive number (`django_durable.E030`).",
    ),
    "CELERY_APP": Setting(
        None,
        'The Celery app to send with (dotted path, e.g. `"proj.celery.app"`); `None`: Celery\'s current app, '
        "which is the project's when it follows Celery's Django guide.",
    ),
    "CELERY_QUEUES": Setting(
        {},
        "Durable queue name → Celery queue name; a queue not listed keeps its name.",
    ),
    "CELERY_WORKFLOW_TASKS": Setting(
        False,
        'With `ACTIVITY_EXECUTOR` `"celery"`: send due workflow tasks to Celery as well '
        "(`django_durable.run_workflow_task`); `durable_worker` keeps firing timers, reaping expired leases "
        "and applying parent-close policies, so keep one running.",
    ),
    "TASK_TOKEN_SALT": Setting(
        "django_durable.task_token",
        "The salt of the signed task tokens (Django's signing, keyed by `SECRET_KEY`).",
    ),
    "TASK_TOKEN_MAX_AGE": Setting(
        None,
        "Seconds a task token stays valid after it was made; `None`: as long as its attempt is pending. An "
        "older token is refused with `InvalidTaskToken` (over HTTP, 400 `invalid_token`) and changes nothing. "
        "Set it when tokens leave your systems, longer than the wait you expect for the answer: the token is "
        "made when the attempt starts and heartbeats do not renew it. `manage.py check` reports any other "
        "value than `None` or a positive number (`django_durable.E040`).",
    ),
    "TIME_TRAVEL_MAX_EVENTS": Setting(
        2_000,
        "The admin's time-travel page replays the run's code in the web process (under the worker's guards); "
        "it does not replay a run whose history has more than this many events (its events still step, and "
        "the page names the setting to raise). `None`: no limit.",
    ),
    "TIME_TRAVEL_MAX_BYTES": Setting(
        2 * 1024 * 1024,
        "The same for a run whose payloads are larger than this many bytes of JSON, as the database stores "
        "them. `None`: no limit.",
    ),
    "API_MAX_WAIT": Setting(
        60.0,
        "The longest `GET workflows/<id>/?wait=<seconds>` may hold a request open waiting for the run to "
        "close; a larger `wait` is refused with 400.",
    ),
    "PRUNE_RETENTION": Setting(
        30 * 86400.0,
        "`durable_prune` deletes runs closed longer ago than this (seconds, a `timedelta` or a duration such "
        'as `"30d"`); `--older-than` overrides.',
    ),
    "PRUNE_BATCH_SIZE": Setting(
        500,
        "Runs `durable_prune` deletes per transaction (at most 999 on SQLite); `--batch-size` overrides.",
    ),
    "HEALTH_WORKER_STALE_AFTER": Setting(
        None,
        "`durable_healthcheck`: a worker silent for this long is stale (`None`: the dashboard's rule, three "
        'heartbeat intervals and at least 60s). Seconds, a `timedelta` or a duration such as `"5m"`; '
        "`--stale-after` overrides.",
    ),
    "HEALTH_OVERDUE_AFTER": Setting(
        60.0,
        "`durable_healthcheck`: unclaimed work due (or a lease expired) for longer than this is overdue. "
        'Seconds, a `timedelta` or a duration such as `"5m"`; `--overdue-after` overrides.',
    ),
    "HEALTH_SCHEDULE_LATE_AFTER": Setting(
        60.0,
        "`durable_healthcheck` and the dashboard: a schedule whose next tick has been due for longer than "
        'this is late (no worker is firing it). Seconds, a `timedelta` or a duration such as `"5m"`; '
        "`--schedule-late-after` overrides.",
    ),
    "SCHEDULES": Setting(
        {},
        'Schedules declared in code: `{schedule id: {"workflow": name, "cron": ... or "every": ..., '
        "other options of `create_schedule()`}}`. Each `durable_worker` creates or updates them when it "
        "starts (never twice); one removed from this setting is paused, with a note saying why. Schedules "
        "created at run time are left alone. See [Schedules](schedules.md).",
    ),
    "QUEUES": Setting(
        {},
        "Flow control: `{queue: limits}` for the activity attempts of a queue, across every worker and "
        'executor: `"concurrency"` (attempts leased at once), `"worker_concurrency"` (per worker process), '
        '`"rate_limit": {"limit": starts, "period": seconds}` (a sliding window) and `"key_concurrency"` '
        "(per `call_activity(concurrency_key=)`). Unlisted queues are unlimited. `manage.py check` validates "
        "it (`django_durable.E060`); the admin's Queues page overrides it at run time. See "
        "[Flow control](flow-control.md).",
    ),
    "QUEUE_LIMITS_REFRESH": Setting(
        5.0,
        "How often a worker (or Celery process) rereads which queues an operator's override limits (seconds): "
        "the delay before a queue newly limited in the admin is held to it. A change to a queue that is "
        "already limited applies at once.",
    ),
}

DEFAULTS: dict[str, Any] = {name: setting.default for name, setting in SETTINGS.items()}

IMPORT_STRINGS = {
    "DATA_CONVERTER",
    "API_AUTHENTICATION_CLASSES",
    "API_PERMISSION_CLASSES",
    "ACTIVITY_API_AUTHENTICATION_CLASSES",
    "ACTIVITY_API_PERMISSION_CLASSES",
}


class DurableSettings:
    def __init__(self, defaults: dict[str, Any] | None = None) -> None:
        self.defaults = defaults or DEFAULTS
        self._cached: set[str] = set()

    @property
    def user_settings(self) -> dict[str, Any]:
        if not hasattr(self, "_user_settings"):
            self._user_settings = getattr(settings, "DURABLE", {}) or {}
        return self._user_settings

    def __getattr__(self, attr: str) -> Any:
        if attr not in self.defaults:
            raise AttributeError(f"Invalid django-durable setting: {attr!r}")
        value = self.user_settings.get(attr, self.defaults[attr])
        if attr in IMPORT_STRINGS:
            if isinstance(value, str):
                value = import_string(value)
            elif isinstance(value, (list, tuple)):
                value = [import_string(item) if isinstance(item, str) else item for item in value]
        self._cached.add(attr)
        setattr(self, attr, value)
        return value

    def reload(self) -> None:
        for attr in self._cached:
            delattr(self, attr)
        self._cached.clear()
        if hasattr(self, "_user_settings"):
            delattr(self, "_user_settings")


durable_settings = DurableSettings(DEFAULTS)


def _reload(*, setting: str, **kwargs: Any) -> None:
    if setting == "DURABLE":
        durable_settings.reload()


setting_changed.connect(_reload)
