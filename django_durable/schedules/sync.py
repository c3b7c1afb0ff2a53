"""``DURABLE["SCHEDULES"]``: the schedules declared in settings, made to exist as declared."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from django.core.exceptions import ImproperlyConfigured

from ..conf import durable_settings
from ..store import schedules as schedule_store
from .client import OPTIONS, schedule_values

logger = logging.getLogger("django_durable.schedules")


def declared_schedules(declared: object | None = None) -> dict[str, dict[str, Any]]:
    """The ``Schedule`` values of each declared schedule, validated; ImproperlyConfigured
    says which one is wrong and why."""
    declared = durable_settings.SCHEDULES if declared is None else declared
    if not isinstance(declared, Mapping):
        raise ImproperlyConfigured('DURABLE["SCHEDULES"] must be a dict of schedule id to options.')
    values = {}
    for schedule_id, options in declared.items():
        where = f'DURABLE["SCHEDULES"][{schedule_id!r}]'
        if not isinstance(options, Mapping) or "workflow" not in options:
            raise ImproperlyConfigured(
                f'{where} must be a dict with a "workflow" and the options of create_schedule().'
            )
        unknown = sorted(set(options) - {"workflow", *OPTIONS})
        if unknown:
            raise ImproperlyConfigured(
                f"{where} has unknown options {unknown}; allowed: workflow, {', '.join(OPTIONS)}"
            )
        try:
            values[schedule_id] = schedule_values(schedule_id, **options)
            for operational in ("paused", "note"):  # an operator's, unless the setting names them
                if operational not in options:
                    del values[schedule_id][operational]
        except (ValueError, LookupError, TypeError) as error:  # InvalidSchedule, NotRegistered, SerializationError
            raise ImproperlyConfigured(f"{where}: {error}") from error
    return values


def sync_schedules() -> dict[str, list[str]]:
    """Create, update and pause the declared schedules (see ``store.schedules.sync_declared``)."""
    outcome = schedule_store.sync_declared(declared_schedules())
    for schedule_id in outcome["conflicts"]:
        logger.warning(
            'Schedule %r of DURABLE["SCHEDULES"] was not created: a schedule with this id was created at run '
            "time (the admin, the API or create_schedule()). Delete it or rename one of them.",
            schedule_id,
        )
    changes = {key: ids for key, ids in outcome.items() if ids and key not in ("unchanged", "conflicts")}
    if changes:
        logger.info("Schedules from settings: %s", changes)
    return outcome
