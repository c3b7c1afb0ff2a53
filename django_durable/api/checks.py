"""System checks of the HTTP API: ``django_durable.E010`` and ``E011``.

They apply once the API is in use (its URLs are imported by the project's
URLconf). This module imports neither Django REST framework nor the API views,
so it can report a missing or outdated REST framework instead of failing.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Sequence
from typing import Any

from django.apps import AppConfig, apps
from django.core import checks

MINIMUM_DRF_VERSION = (3, 17, 2)
_API_MODULES = ("django_durable.api.urls", "django_durable.api.views")


def api_in_use() -> bool:
    """Whether the project mounts the API (the URLconf is loaded, as ``check`` does)."""
    if not any(name in sys.modules for name in _API_MODULES):
        try:  # import the URLconf, as Django's own URL checks do; their errors are theirs to report
            from django.urls import get_resolver

            get_resolver().url_patterns  # noqa: B018
        except Exception:  # noqa: BLE001, S110
            pass
    return any(name in sys.modules for name in _API_MODULES)


def installed_drf_version() -> tuple[int, ...] | None:
    """The installed djangorestframework version as a tuple, or None if it is not installed."""
    try:
        from importlib.metadata import PackageNotFoundError, version

        text = version("djangorestframework")
    except PackageNotFoundError:
        try:
            import rest_framework
        except ImportError:
            return None
        text = getattr(rest_framework, "__version__", "0")
    return _parse_version(text)


def _parse_version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split(".")[:3]:
        match = re.match(r"\d+", piece)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


@checks.register(checks.Tags.compatibility)
def check_rest_framework(app_configs: Sequence[AppConfig] | None = None, **kwargs: Any) -> list[checks.CheckMessage]:
    if not api_in_use():
        return []
    errors: list[checks.CheckMessage] = []
    found = installed_drf_version()
    wanted = ".".join(map(str, MINIMUM_DRF_VERSION))
    if found is not None and found < MINIMUM_DRF_VERSION:
        errors.append(
            checks.Error(
                f"django_durable.api needs djangorestframework>={wanted}; "
                f"{'.'.join(map(str, found))} is installed. Earlier versions let JSON request "
                "bodies bypass Django's upload size limit.",
                hint=f'Upgrade: pip install "djangorestframework>={wanted}" (or "django-durable[drf]").',
                id="django_durable.E010",
            )
        )
    if not apps.is_installed("rest_framework"):
        errors.append(
            checks.Error(
                "django_durable.api is mounted but 'rest_framework' is not in INSTALLED_APPS "
                "(the browsable API needs its templates and static files).",
                hint='Add "rest_framework" to INSTALLED_APPS.',
                id="django_durable.E011",
            )
        )
    return errors
