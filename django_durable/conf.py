"""``durable_settings``: the one ``DURABLE = {...}`` settings dict, read lazily.

Modelled on Django REST framework's ``api_settings``: defaults here, user
overrides in ``settings.DURABLE``, import strings resolved on access, and the
cache dropped when a test changes the setting.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.signals import setting_changed
from django.utils.module_loading import import_string

DEFAULT_PAYLOAD_MAX_BYTES = 2 * 1024 * 1024

DEFAULTS: dict[str, Any] = {
    # Queue used when neither the workflow/activity nor the caller names one.
    "DEFAULT_QUEUE": "default",
    # How long a claim is valid without renewal; a dead worker's work is
    # reclaimed this long after its last renewal.
    "LEASE_SECONDS": 30.0,
    # Idle worker poll interval (seconds) and how often it looks for expired leases.
    "POLL_INTERVAL": 1.0,
    "REAP_INTERVAL": 5.0,
    # Items claimed per transaction.
    "CLAIM_BATCH_SIZE": 8,
    # Activity threads per worker (``durable_worker --concurrency`` overrides), started
    # as needed. A worker takes an attempt only when a thread is idle, and records
    # finished attempts together (one transaction for as many as have gathered): more
    # threads also mean larger, cheaper commits.
    "ACTIVITY_CONCURRENCY": 16,
    # A workflow task that fails at engine level (crash, non-determinism) is
    # retried with exponential backoff and parked after this many failures.
    "WORKFLOW_TASK_MAX_FAILURES": 10,
    "WORKFLOW_TASK_RETRY_INITIAL": 1.0,
    "WORKFLOW_TASK_RETRY_MAXIMUM": 300.0,
    # A run's history: a warning is logged when it reaches HISTORY_WARN_EVENTS
    # events; at HISTORY_MAX_EVENTS the run fails (use ctx.continue_as_new()).
    "HISTORY_WARN_EVENTS": 10_000,
    "HISTORY_MAX_EVENTS": 50_000,
    # The same by size: the bytes of JSON of the history's event payloads.
    "HISTORY_WARN_BYTES": 10 * 1024 * 1024,
    "HISTORY_MAX_BYTES": 50 * 1024 * 1024,
    # The largest value (bytes of JSON) that may cross the durable boundary, for every
    # kind of value (engine.events.PAYLOAD_KINDS: workflow_input, workflow_result,
    # activity_input, activity_result, signal, heartbeat, variable), or a dict
    # {kind: bytes or None} (kinds left out keep the default).
    # None: no limit. A larger value raises PayloadTooLarge where it is passed.
    "PAYLOAD_MAX_BYTES": DEFAULT_PAYLOAD_MAX_BYTES,
    # Runs whose code a worker keeps parked between workflow tasks, so that the
    # next task resumes it instead of replaying its history (0: always replay).
    "WORKFLOW_CACHE_SIZE": 500,
    # Workflow code that runs this long (seconds) without reaching a durable call
    # fails its workflow task (it loops, or blocks on I/O it should leave to activities).
    "WORKFLOW_TASK_TIMEOUT": 60.0,
    # ``WorkflowHandle.result()`` polls with backoff up to this interval.
    "RESULT_POLL_INTERVAL": 0.5,
    "DATA_CONVERTER": "django_durable.converter.JSONDataConverter",
    # CONN_MAX_AGE for the worker's own database connections. None keeps them
    # open (with CONN_HEALTH_CHECKS) instead of reconnecting every loop, which
    # is what Django's request-scoped default of 0 would do in a long-lived worker.
    # A number applies Django's usual CONN_MAX_AGE semantics instead.
    "WORKER_CONN_MAX_AGE": None,
    # The HTTP API (django_durable.api). Workflow management needs the Django model
    # permissions of WorkflowInstance that the admin needs (view_, add_, operate_,
    # delete_; see django_durable.api.permissions); the activity endpoints are
    # authorised by the task token alone.
    "API_AUTHENTICATION_CLASSES": [
        "rest_framework.authentication.SessionAuthentication",
        "rest_framework.authentication.BasicAuthentication",
    ],
    "API_PERMISSION_CLASSES": ["django_durable.api.permissions.WorkflowPermissions"],
    # The workflows ``POST workflows/`` may start (registered names); None: every workflow
    # the project registered. Internal ``django_durable.*`` workflows are never startable there.
    "API_STARTABLE_WORKFLOWS": None,
    "ACTIVITY_API_AUTHENTICATION_CLASSES": [],
    "ACTIVITY_API_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"],
    "API_PAGE_SIZE": 50,
    # Request bodies larger than this (bytes) are rejected with 413.
    "API_MAX_BODY_SIZE": 256 * 1024,
    # Where activities run: "threads" (in durable_worker's thread pool), "celery"
    # (durable_worker sends each due activity to Celery as a task) or the dotted
    # path of an ActivityExecutor class (django_durable.executors).
    "ACTIVITY_EXECUTOR": "threads",
    # An activity sent to a remote executor but not claimed within this many
    # seconds is sent again (the message was lost).
    "DISPATCH_TIMEOUT": 60.0,
    # The Celery app to send with (dotted path); None: Celery's current app, which
    # is the project's when it follows Celery's Django guide.
    "CELERY_APP": None,
    # Durable queue name -> Celery queue name; a queue not listed keeps its name.
    "CELERY_QUEUES": {},
    # With ACTIVITY_EXECUTOR "celery": send due workflow tasks to Celery as well
    # (django_durable.run_workflow_task); durable_worker keeps timers and reaping.
    "CELERY_WORKFLOW_TASKS": False,
    # Salt of the signed task tokens (django.core.signing, keyed by SECRET_KEY).
    "TASK_TOKEN_SALT": "django_durable.task_token",
    # Seconds a task token stays valid after it was made (None: as long as its attempt is
    # pending). An older token is refused with InvalidTaskToken (400 invalid_token).
    "TASK_TOKEN_MAX_AGE": None,
    # The admin's time-travel page replays the run's code in the web process (under the
    # worker's guards): it refuses runs whose history is longer than this many events, or
    # whose payloads are larger than this many bytes of JSON as the database stores them.
    # None: no limit.
    "TIME_TRAVEL_MAX_EVENTS": 2_000,
    "TIME_TRAVEL_MAX_BYTES": 2 * 1024 * 1024,
    # The longest ``GET workflows/<id>/?wait=<seconds>`` may hold a request open
    # waiting for the run to close; a larger ``wait`` is refused with 400.
    "API_MAX_WAIT": 60.0,
    # ``durable_prune``: runs closed longer ago than this (seconds, a timedelta or a
    # duration such as "30d") are deleted, this many per transaction.
    "PRUNE_RETENTION": 30 * 86400.0,
    "PRUNE_BATCH_SIZE": 500,
    # ``durable_healthcheck``: a worker silent for this long is stale (None: the
    # dashboard's rule, at least 60s), and unclaimed work due (or a lease expired)
    # for longer than HEALTH_OVERDUE_AFTER is overdue. Seconds, timedelta or "5m".
    "HEALTH_WORKER_STALE_AFTER": None,
    "HEALTH_OVERDUE_AFTER": 60.0,
}

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
