"""Settings for the chaos soak's driver and its ``durable_worker`` subprocesses.

``benchmarks/chaos.py`` sets, for itself and its workers:

    CHAOS_DB_NAME         the database (on the soak's private PostgreSQL cluster)
    CHAOS_PG_HOST/PORT    that cluster (127.0.0.1 and the port it picked)
    CHAOS_LEASE_SECONDS   DURABLE["LEASE_SECONDS"] (default 2: crashes recover in seconds)
"""

import os

SECRET_KEY = "chaos-soak-only-not-secret"
DEBUG = False
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_durable",
    "benchmarks.chaos_app",
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": os.environ.get("CHAOS_DB_NAME", "durable_chaos"),
        "USER": os.environ.get("CHAOS_PG_USER", "postgres"),
        "HOST": os.environ.get("CHAOS_PG_HOST", "127.0.0.1"),
        "PORT": os.environ.get("CHAOS_PG_PORT", "5432"),
        # The driver tells its own connections from the workers' (it terminates only theirs).
        "OPTIONS": {"connect_timeout": 5, "application_name": os.environ.get("CHAOS_APP_NAME", "chaos")},
    }
}

DURABLE = {
    "LEASE_SECONDS": float(os.environ.get("CHAOS_LEASE_SECONDS", "2")),
    "POLL_INTERVAL": 0.2,
    "REAP_INTERVAL": 0.5,
    "WORKFLOW_TASK_RETRY_INITIAL": 0.1,
    "WORKFLOW_TASK_RETRY_MAXIMUM": 1.0,
    # Every lease a killed worker leaves behind counts as a failure of its workflow task:
    # parking after a few would be the chaos winning by attrition, not a finding.
    "WORKFLOW_TASK_MAX_FAILURES": 50,
    "RESULT_POLL_INTERVAL": 0.1,
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"django_durable": {"handlers": ["console"], "level": "INFO"}},
}
