import importlib.util

from django.apps import AppConfig
from django.utils.module_loading import autodiscover_modules


class DurableConfig(AppConfig):
    name = "django_durable"
    label = "django_durable"
    verbose_name = "Durable workflows"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import (
            checks,  # noqa: F401  (registers the system checks)
            tasks,  # noqa: F401  (the django_durable.run_task workflow and check W020)
        )
        from .api import checks as api_checks  # noqa: F401  (no REST framework import)
        from .conf import durable_settings

        if durable_settings.ACTIVITY_EXECUTOR == "celery" and importlib.util.find_spec("celery") is not None:
            # Registers the shared task on the project's own Celery app (its workers read the
            # same settings): no CELERY_IMPORTS needed. Without Celery, check E031 says so.
            from .executors import celery  # noqa: F401

        autodiscover_modules("workflows")
