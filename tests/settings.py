"""Settings for the test suite. ``DURABLE_TEST_DB`` picks sqlite (default) or postgres.

Worker subprocesses started by the tests use these settings too, with
``DURABLE_DB_NAME`` naming the test database the suite created.
"""

import faulthandler
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
ARTIFACTS = Path(os.environ.get("DURABLE_ARTIFACTS", BASE_DIR / "test-artifacts"))
ARTIFACTS.mkdir(exist_ok=True)

SECRET_KEY = "tests-only-not-secret"
# Django's default PBKDF2 takes about 0.3 s a password here, and hundreds of fixtures create a user
# (and Basic auth checks the password on every request).
PASSWORD_HASHERS = ["django.contrib.auth.hashers.MD5PasswordHasher"]
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS = ["*"]
ROOT_URLCONF = "tests.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# The live server (pytest-django live_server) and the browsable API need one.
STATIC_URL = "static/"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",  # the live server serves the admin's CSS (browser test)
    "rest_framework",
    "django_durable",
    "tests.testapp",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

if os.environ.get("DURABLE_TEST_DB", "sqlite") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("DURABLE_DB_NAME", os.environ.get("DURABLE_PG_NAME", "test")),
            "USER": os.environ.get("DURABLE_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("DURABLE_PG_PASSWORD", ""),
            "HOST": os.environ.get("DURABLE_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("DURABLE_PG_PORT", "5432"),
            "TEST": {"NAME": os.environ.get("DURABLE_TEST_DB_NAME", "test_django_durable")},
        }
    }
elif os.environ.get("DURABLE_TEST_DB") == "mariadb":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": os.environ.get("DURABLE_DB_NAME", os.environ.get("DURABLE_MARIADB_NAME", "test")),
            "USER": os.environ.get("DURABLE_MARIADB_USER", "root"),
            "PASSWORD": os.environ.get("DURABLE_MARIADB_PASSWORD", ""),
            "HOST": os.environ.get("DURABLE_MARIADB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("DURABLE_MARIADB_PORT", "3306"),
            "OPTIONS": {"charset": "utf8mb4"},
            "TEST": {
                "NAME": os.environ.get("DURABLE_TEST_DB_NAME", "test_django_durable"),
                "CHARSET": "utf8mb4",
                "COLLATION": "utf8mb4_bin",
            },
        }
    }
else:
    _path = str(ARTIFACTS / "test-durable.sqlite3")
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("DURABLE_DB_NAME", _path),
            # A file, not memory: worker subprocesses share it with the suite.
            "TEST": {"NAME": _path},
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }

# A worker started with start_worker(env={"DURABLE_TEST_DB_SETTINGS": json}) runs with these keys of
# DATABASES["default"] replaced: e.g. OPTIONS as a new project's startproject writes them.
DATABASES["default"].update(json.loads(os.environ.get("DURABLE_TEST_DB_SETTINGS", "{}")))

# A worker subprocess that will not stop dumps its threads' stacks on SIGUSR1 (tests/conftest.py
# sends it when a wait for its exit times out).
if hasattr(signal, "SIGUSR1") and sys.__stderr__ is not None:
    faulthandler.register(signal.SIGUSR1, file=sys.__stderr__, all_threads=True)

# Short leases and polls so crash recovery happens in seconds, not minutes.
DURABLE: dict[str, Any] = {
    "LEASE_SECONDS": float(os.environ.get("DURABLE_TEST_LEASE_SECONDS", "2.0")),
    # A worker started with a long one (start_worker(env={...})) shows that NOTIFY, not polling, wakes it.
    "POLL_INTERVAL": float(os.environ.get("DURABLE_TEST_POLL_INTERVAL", "0.05")),
    "REAP_INTERVAL": 0.5,
    "WORKFLOW_TASK_RETRY_INITIAL": 0.1,
    "WORKFLOW_TASK_RETRY_MAXIMUM": 1.0,
    "RESULT_POLL_INTERVAL": 0.1,
    "WORKFLOW_TASK_TIMEOUT": float(os.environ.get("DURABLE_TEST_WORKFLOW_TASK_TIMEOUT", "15")),
    "WORKFLOW_TASK_MAX_FAILURES": int(os.environ.get("DURABLE_TEST_MAX_FAILURES", "10")),
    # A worker started with small limits (start_worker(env={...})) shows the history size checks.
    "HISTORY_WARN_EVENTS": int(os.environ.get("DURABLE_TEST_HISTORY_WARN_EVENTS", "10000")),
    "HISTORY_MAX_EVENTS": int(os.environ.get("DURABLE_TEST_HISTORY_MAX_EVENTS", "50000")),
    # Flow control (tests/test_queue_limit_workers.py): workers started with limits as JSON.
    "QUEUES": json.loads(os.environ.get("DURABLE_TEST_QUEUES", "{}")),
    "QUEUE_LIMITS_REFRESH": 0.2,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"console": {"class": "logging.StreamHandler"}},
    "loggers": {"django_durable": {"handlers": ["console"], "level": "INFO"}},
}

# Celery (tests/test_celery.py): durable_worker subprocesses started with
# DURABLE_TEST_ACTIVITY_EXECUTOR=celery send activities to Celery workers of tests.celery_app.
DURABLE["DISPATCH_TIMEOUT"] = float(os.environ.get("DURABLE_TEST_DISPATCH_TIMEOUT", "5"))
if os.environ.get("DURABLE_TEST_ACTIVITY_EXECUTOR"):
    DURABLE["ACTIVITY_EXECUTOR"] = os.environ["DURABLE_TEST_ACTIVITY_EXECUTOR"]
    DURABLE["CELERY_APP"] = "tests.celery_app.app"
    DURABLE["CELERY_WORKFLOW_TASKS"] = os.environ.get("DURABLE_TEST_CELERY_WORKFLOW_TASKS") == "1"
CELERY_BROKER_URL = os.environ.get("DURABLE_TEST_CELERY_BROKER", "redis://127.0.0.1:6379/15")

# Django's Tasks API (tests/test_django_tasks.py): the suite configures TASKS with
# override_settings; its worker subprocesses, started with DURABLE_TEST_TASKS=1, with this.
if os.environ.get("DURABLE_TEST_TASKS") == "1":
    TASKS = {
        "default": {
            "BACKEND": "django_durable.tasks.DurableTaskBackend",
            "QUEUES": ["default", "reports", "elsewhere"],
        }
    }
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
