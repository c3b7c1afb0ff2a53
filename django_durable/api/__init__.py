"""The HTTP API (Django REST framework, the ``[drf]`` extra).

Mount it with ``path("durable/api/", include("django_durable.api.urls"))`` and add
``"rest_framework"`` to ``INSTALLED_APPS``.

- ``activities/complete/``, ``activities/fail/``, ``activities/heartbeat/``: finish or
  report on an activity attempt by task token (authorised by the token alone).
- ``workflows/``: list and start workflows; ``workflows/<id>/`` describe (GET) and
  purge (DELETE), ``workflows/<id>/history/``, and the verbs ``signal/``, ``cancel/``,
  ``suspend/``, ``resume/``, ``terminate/`` and ``rerun/`` (each needs the model
  permission of ``WorkflowInstance`` the admin needs for it: ``api.permissions``).
- ``schedules/``: list and create schedules; ``schedules/<id>/`` describe, update
  (PATCH) and delete, and the verbs ``pause/``, ``unpause/``, ``trigger/`` and
  ``backfill/`` (each needs the ``Schedule`` permissions of ``permissions.SCHEDULE_PERMISSIONS``).
- ``schema/``: the OpenAPI document.

Importing this package does not import Django REST framework; its system checks
(``django_durable.E010``/``E011``) say what is missing when the API is mounted.
"""

from . import checks  # noqa: F401  (registers the API's system checks)
