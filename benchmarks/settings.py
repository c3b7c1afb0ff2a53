"""Django settings for the benchmark harness (``benchmarks/run.py`` and its workers).

Everything that varies between runs comes from environment variables that
run.py sets for itself and for the ``durable_worker`` subprocesses it starts:

    BENCH_DB              sqlite (default), postgres or mariadb
    BENCH_DB_NAME         database name (postgres, mariadb: default durable_bench) or SQLite file path
    BENCH_PG_HOST/PORT/USER/PASSWORD   PostgreSQL server (127.0.0.1, 5432, postgres, empty)
    BENCH_MARIADB_HOST/PORT/USER/PASSWORD   MariaDB server (127.0.0.1, 3306, root, empty)
    BENCH_POLL_INTERVAL   DURABLE["POLL_INTERVAL"] (default 0.01)
    BENCH_LEASE_SECONDS   DURABLE["LEASE_SECONDS"] (default 30)
    BENCH_CONN_MAX_AGE    the database's CONN_MAX_AGE: seconds, or "none" for persistent
                          connections (default 0, Django's default: a connection per request/task)
    BENCH_PREPARED        "1": PostgreSQL OPTIONS server_side_binding and prepare_threshold 5
                          (psycopg prepares a statement run 5 times; Django's default is neither)
    BENCH_QUEUES          DURABLE["QUEUES"] as JSON (flow control, benchmarks/flow_control.py);
                          unset: no QUEUES setting, every queue unlimited
"""

import json
import os
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
BASE_DIR = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

SECRET_KEY = "benchmarks-only-not-secret"
DEBUG = False  # DEBUG would keep every query in memory
USE_TZ = True
TIME_ZONE = "UTC"
ALLOWED_HOSTS: list[str] = []
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django_durable",
    "benchmarks",
]

DB = os.environ.get("BENCH_DB", "sqlite")
_max_age = os.environ.get("BENCH_CONN_MAX_AGE", "0").lower()
CONN_MAX_AGE = None if _max_age in ("none", "persistent") else int(_max_age)

if DB == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("BENCH_DB_NAME", "durable_bench"),
            "USER": os.environ.get("BENCH_PG_USER", "postgres"),
            "PASSWORD": os.environ.get("BENCH_PG_PASSWORD", ""),
            "HOST": os.environ.get("BENCH_PG_HOST", "127.0.0.1"),
            "PORT": os.environ.get("BENCH_PG_PORT", "5432"),
            "CONN_MAX_AGE": CONN_MAX_AGE,
            "OPTIONS": (
                {"server_side_binding": True, "prepare_threshold": 5} if os.environ.get("BENCH_PREPARED") == "1" else {}
            ),
        }
    }
elif DB == "mariadb":
    # No isolation_level in OPTIONS: Django's MySQL backend then asks for READ COMMITTED,
    # which the product requires (check E005).
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.mysql",
            "NAME": os.environ.get("BENCH_DB_NAME", "durable_bench"),
            "USER": os.environ.get("BENCH_MARIADB_USER", "root"),
            "PASSWORD": os.environ.get("BENCH_MARIADB_PASSWORD", ""),
            "HOST": os.environ.get("BENCH_MARIADB_HOST", "127.0.0.1"),
            "PORT": os.environ.get("BENCH_MARIADB_PORT", "3306"),
            "CONN_MAX_AGE": CONN_MAX_AGE,
            "OPTIONS": {"charset": "utf8mb4"},
        }
    }
elif DB == "sqlite":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("BENCH_DB_NAME", str(RESULTS_DIR / "bench.sqlite3")),
            "CONN_MAX_AGE": CONN_MAX_AGE,
            "OPTIONS": {
                "transaction_mode": "IMMEDIATE",
                "timeout": 30,
                "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
            },
        }
    }
else:
    raise RuntimeError(f"BENCH_DB must be 'sqlite', 'postgres' or 'mariadb', not {DB!r}")

DURABLE: dict[str, Any] = {
    "POLL_INTERVAL": float(os.environ.get("BENCH_POLL_INTERVAL", "0.01")),
    "LEASE_SECONDS": float(os.environ.get("BENCH_LEASE_SECONDS", "30")),
}
if os.environ.get("BENCH_QUEUES"):
    DURABLE["QUEUES"] = json.loads(os.environ["BENCH_QUEUES"])
