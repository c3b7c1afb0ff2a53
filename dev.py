#!/usr/bin/env python3
"""Developer entry point for django-durable. Needs only a Python >= 3.10.

    python3 dev.py demo [--port 8000] [--exit]   run the demo: worker, admin, a workflow
    python3 dev.py test [--db sqlite|postgres|mariadb] [--django 5.2|6.0] [--require-postgres]
                        [--require-mariadb] [--require-browser] [pytest args...]
    python3 dev.py test --fast [pytest args...]  the inner loop: the engine and database tiers on SQLite
    python3 dev.py lint                          ruff check, ruff format --check, mypy: fails on any finding
    python3 dev.py docs [--serve]                build the documentation site (site/), warnings as errors

Both create .venv (if missing) and install the project into it with
`pip install -e .[dev,drf]`; the install is skipped while .venv/.durable-installed
matches setup.cfg + pyproject.toml (delete that file to force a reinstall).
With --django, the tests run in .venv-django<series> instead, on that Django series
and the first Python found (python3.N on PATH, then pyenv's) that it supports.

PostgreSQL for the tests: DURABLE_PG_HOST (127.0.0.1), DURABLE_PG_PORT (5432),
DURABLE_PG_USER (postgres), DURABLE_PG_PASSWORD (empty), DURABLE_PG_NAME (test).
MariaDB: DURABLE_MARIADB_HOST (127.0.0.1), DURABLE_MARIADB_PORT (3306), DURABLE_MARIADB_USER
(root), DURABLE_MARIADB_PASSWORD (empty), DURABLE_MARIADB_NAME (test); its pass installs
mysqlclient (and, as root on Debian, the libmariadb-dev and pkg-config it builds with).

The browser test drives a headless Chromium: DURABLE_CHROMIUM (its path), else
chromium, chromium-browser or google-chrome on PATH. Without one it is skipped;
with --require-browser a missing one is installed (Debian, as root) or fails.

The PostgreSQL pass's fault scenarios start a private PostgreSQL cluster (the
server binaries, initdb and pg_ctl) and preload Debian's libfaketime into a worker.
With --require-postgres (or CI=true) a missing faketime is installed (Debian, as
root) and a scenario that cannot run fails instead of skipping.
"""

from __future__ import annotations

import argparse
import glob
import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
VENV_PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
STAMP = VENV / ".durable-installed"
MANAGE = str(ROOT / "manage.py")
BASE_PYTHON = sys.executable
DJANGO = ""  # a requirement pinning Django's series (--django), or the newest pip picks
# --django SERIES: a venv of its own, on a Python that series supports.
DJANGO_SERIES = {"5.2": ("Django>=5.2,<5.3", (3, 10)), "6.0": ("Django>=6.0,<6.1", (3, 12))}

if sys.version_info < (3, 10):  # noqa: UP036 - dev.py runs on any python3
    sys.exit("dev.py needs Python >= 3.10")


def say(msg: str) -> None:
    print(f"\n==> {msg}", flush=True)


def loud(msg: str) -> None:
    bar = "!" * 78
    print(f"\n{bar}\n!! {msg}\n{bar}\n", file=sys.stderr, flush=True)


def run(cmd: list[str], env: dict[str, str] | None = None) -> int:
    return subprocess.call(cmd, cwd=ROOT, env=env)


def bootstrap() -> None:
    """Create the venv and install the project into it, unless already up to date."""
    if not VENV_PY.exists():
        say(f"creating {VENV} with {BASE_PYTHON}")
        if run([BASE_PYTHON, "-m", "venv", str(VENV)]) != 0:
            sys.exit(f"could not create {VENV} (on Debian/Ubuntu: apt-get install python3-venv)")
    digest = hashlib.sha256(DJANGO.encode())
    for name in ("setup.cfg", "pyproject.toml"):
        path = ROOT / name
        digest.update(path.read_bytes() if path.exists() else b"")
    wanted = digest.hexdigest()
    if STAMP.exists() and STAMP.read_text().strip() == wanted:
        return
    install = [".[dev,drf]", *([DJANGO] if DJANGO else [])]
    say(f"installing the project into {VENV.name}: pip install -e {' '.join(install)}")
    if run([str(VENV_PY), "-m", "pip", "install", "-e", *install]) != 0:
        sys.exit("pip install failed")
    STAMP.write_text(wanted + "\n")


def use_django(series: str) -> None:
    """Test on Django ``series``: .venv-django<series>, on the first Python found that supports it."""
    global VENV, VENV_PY, STAMP, BASE_PYTHON, DJANGO
    DJANGO, minimum = DJANGO_SERIES[series]
    python = find_python(minimum)
    if python is None:
        sys.exit(
            f"Django {series} needs Python >= {'.'.join(map(str, minimum))}: none found on PATH or under "
            "pyenv (~/.pyenv/versions)"
        )
    BASE_PYTHON = python
    VENV = ROOT / f".venv-django{series}"
    VENV_PY = VENV / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    STAMP = VENV / ".durable-installed"


def find_python(minimum: tuple[int, int]) -> str | None:
    if sys.version_info >= minimum:
        return sys.executable
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    candidates = [shutil.which(f"python3.{minor}") for minor in range(20, minimum[1] - 1, -1)]
    candidates += sorted(glob.glob(str(pyenv / "3.*" / "bin" / "python3")), reverse=True)
    for candidate in filter(None, candidates):
        probe = subprocess.run(
            [candidate, "-c", "import sys; print(*sys.version_info[:2])"], capture_output=True, text=True, check=False
        )
        if probe.returncode == 0 and tuple(map(int, probe.stdout.split())) >= minimum:
            return candidate
    return None


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra)
    return env


def manage(*args: str) -> list[str]:
    return [str(VENV_PY), MANAGE, *args]


# --------------------------------------------------------------------------- demo


def start(cmd: list[str], env: dict[str, str]) -> subprocess.Popen[bytes]:
    # Own session: a Ctrl-C in the terminal reaches only dev.py, which then sends
    # each service exactly one SIGTERM (the worker's graceful first stage).
    return subprocess.Popen(cmd, cwd=ROOT, env=env, start_new_session=os.name == "posix")


def stop(procs: list[subprocess.Popen[bytes]], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.terminate()
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            print(f"pid {p.pid} did not stop in {grace:.0f}s: killing it", file=sys.stderr)
            p.kill()
            p.wait()


def dead(services: dict[str, subprocess.Popen[bytes]]) -> str | None:
    for name, p in services.items():
        if p.poll() is not None:
            return f"the {name} exited unexpectedly (exit code {p.returncode})"
    return None


def listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def wait_for_port(port: int, services: dict[str, subprocess.Popen[bytes]]) -> str | None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if problem := dead(services):
            return problem
        if listening(port):
            return None
        time.sleep(0.3)
    return f"nothing is listening on 127.0.0.1:{port} after 30s"


DEMO_STEPS = [
    ("the subscription workflow", ["demo_subscription"]),
    ("the approval workflow, approved over HTTP by task token", ["demo_approval", "--approve"]),
]


def demo(port: int, exit_after: bool) -> int:
    env = child_env(DJANGO_SETTINGS_MODULE="demo_project.settings", DEMO_BASE_URL=f"http://127.0.0.1:{port}")
    say("migrating the demo database")
    if run(manage("migrate", "--noinput"), env) != 0:
        return 1
    create_admin = (
        "from django.contrib.auth import get_user_model\n"
        "User = get_user_model()\n"
        "if not User.objects.filter(username='admin').exists():\n"
        "    User.objects.create_superuser('admin', 'admin@example.com', 'admin')\n"
        "    print('created superuser admin/admin')\n"
    )
    if run(manage("shell", "--verbosity", "0", "-c", create_admin), env) != 0:
        return 1

    if listening(port):
        print(f"error: 127.0.0.1:{port} is in use; pick another with --port", file=sys.stderr)
        return 1
    say(f"starting the worker and the web server on 127.0.0.1:{port}")
    services = {
        "worker": start(manage("durable_worker"), env),
        "web server": start(manage("runserver", f"127.0.0.1:{port}", "--noreload"), env),
    }
    running = list(services.values())
    code: int | None = None
    try:
        if problem := wait_for_port(port, services):
            print(f"error: {problem}", file=sys.stderr)
            return 1
        for title, command in DEMO_STEPS:
            say(f"running {title}: manage.py {' '.join(command)}")
            demo_proc = subprocess.Popen(manage(*command), cwd=ROOT, env=env)
            running.insert(0, demo_proc)
            while (code := demo_proc.poll()) is None:
                if problem := dead(services):
                    print(f"error: {problem} while the demo ran", file=sys.stderr)
                    return 1
                time.sleep(0.2)
            if code != 0:
                break
        say("demo " + ("finished" if code == 0 else f"FAILED (exit code {code})"))
        print(
            f"  admin (the debugger):  http://127.0.0.1:{port}/admin/django_durable/workflowinstance/   "
            "login admin / admin\n"
            f"  the dashboard:         http://127.0.0.1:{port}/admin/django_durable/workflowinstance/dashboard/\n"
            f"  the HTTP API:          http://127.0.0.1:{port}/durable/api/workflows/ (browsable, same login)\n"
            "  a workflow's variables, with the id printed above:\n"
            "      .venv/bin/python manage.py shell\n"
            '      >>> import django_durable as durable; durable.get_workflow("<id>").vars()'
        )
        if exit_after or not sys.stdin.isatty():
            return code
        say("worker and web server keep running; press Ctrl-C to stop them")
        while not (problem := dead(services)):
            time.sleep(0.5)
        print(f"error: {problem}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("\nstopping...", flush=True)
        return 130 if code is None else code
    finally:
        stop(running)


# --------------------------------------------------------------------------- test


def pg_settings() -> dict[str, str]:
    e = os.environ.get
    return {
        "host": e("DURABLE_PG_HOST", "127.0.0.1"),
        "port": e("DURABLE_PG_PORT", "5432"),
        "user": e("DURABLE_PG_USER", "postgres"),
        "password": e("DURABLE_PG_PASSWORD", ""),
        "dbname": e("DURABLE_PG_NAME", "test"),
    }


def postgres_reachable() -> tuple[bool, str]:
    """Connect with the venv's psycopg; return (ok, what was tried and why it failed)."""
    pg = pg_settings()
    where = f"{pg['user']}@{pg['host']}:{pg['port']}/{pg['dbname']}"
    code = (
        "import json, sys\n"
        "kw = json.loads(sys.argv[1]); kw['password'] = kw['password'] or None\n"
        "try:\n"
        "    import psycopg; psycopg.connect(connect_timeout=5, **kw).close()\n"
        "except Exception as e:\n"
        "    sys.exit(type(e).__name__ + ': ' + ' '.join(str(e).split()))\n"
    )
    cmd = [str(VENV_PY), "-c", code, json.dumps(pg)]
    proc = subprocess.run(cmd, check=False, capture_output=True, text=True, cwd=ROOT)
    return proc.returncode == 0, f"{where}: {proc.stderr.strip() or 'ok'}"


def mariadb_settings() -> dict[str, str]:
    e = os.environ.get
    return {
        "host": e("DURABLE_MARIADB_HOST", "127.0.0.1"),
        "port": e("DURABLE_MARIADB_PORT", "3306"),
        "user": e("DURABLE_MARIADB_USER", "root"),
        "password": e("DURABLE_MARIADB_PASSWORD", ""),
        "database": e("DURABLE_MARIADB_NAME", "test"),
    }


def mariadb_reachable() -> tuple[bool, str]:
    """Connect with the venv's mysqlclient; return (ok, what was tried and why it failed)."""
    my = mariadb_settings()
    where = f"{my['user']}@{my['host']}:{my['port']}/{my['database']}"
    code = (
        "import json, sys\n"
        "kw = json.loads(sys.argv[1]); kw['port'] = int(kw['port'])\n"
        "try:\n"
        "    import MySQLdb; MySQLdb.connect(connect_timeout=5, **kw).close()\n"
        "except Exception as e:\n"
        "    sys.exit(type(e).__name__ + ': ' + ' '.join(str(e).split()))\n"
    )
    proc = subprocess.run([str(VENV_PY), "-c", code, json.dumps(my)], check=False, capture_output=True, text=True)
    return proc.returncode == 0, f"{where}: {proc.stderr.strip() or 'ok'}"


def install_mysqlclient() -> bool:
    """``pip install -e .[mysql]`` into the venv, unless mysqlclient is there; it builds against the
    MariaDB client headers, which Debian's libmariadb-dev and pkg-config give (installed as root)."""
    probe = [str(VENV_PY), "-c", "import MySQLdb"]
    if subprocess.run(probe, check=False, capture_output=True).returncode == 0:
        return True
    headers = shutil.which("pkg-config") and any(
        subprocess.run(["pkg-config", "--exists", name], check=False).returncode == 0
        for name in ("libmariadb", "mysqlclient")
    )
    if not headers:
        if not shutil.which("apt-get") or getattr(os, "geteuid", lambda: -1)() != 0:
            loud(
                "mysqlclient needs the MariaDB client headers, and only root with apt-get installs them here:"
                " install libmariadb-dev and pkg-config"
            )
            return False
        say("installing Debian's libmariadb-dev and pkg-config for mysqlclient (apt-get)")
        env = child_env(DEBIAN_FRONTEND="noninteractive")
        install = ["apt-get", "install", "-y", "--no-install-recommends", "libmariadb-dev", "pkg-config"]
        if run(["apt-get", "update"], env) != 0 or run(install, env) != 0:
            loud("apt-get install libmariadb-dev pkg-config failed")
            return False
    say(f"installing mysqlclient into {VENV.name}: pip install -e .[mysql]")
    return run([str(VENV_PY), "-m", "pip", "install", "-e", ".[mysql]", *([DJANGO] if DJANGO else [])]) == 0


BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def find_browser() -> str | None:
    """The Chromium the browser test drives: DURABLE_CHROMIUM, else the first one on PATH."""
    named = os.environ.get("DURABLE_CHROMIUM")
    if named:
        return named if os.path.isfile(named) and os.access(named, os.X_OK) else None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def install_browser() -> str | None:
    """Install Debian's chromium (CI runs as root on Debian); the browser, or None after saying why."""
    if os.environ.get("DURABLE_CHROMIUM"):
        loud(f"DURABLE_CHROMIUM={os.environ['DURABLE_CHROMIUM']} is not an executable file")
        return None
    if not shutil.which("apt-get") or getattr(os, "geteuid", lambda: -1)() != 0:
        loud(
            "no Chromium found, and only root with apt-get installs one here: install chromium"
            " (or set DURABLE_CHROMIUM to a Chromium or Chrome binary)"
        )
        return None
    say("installing Debian's chromium for the browser test (apt-get)")
    env = child_env(DEBIAN_FRONTEND="noninteractive")
    # fonts-liberation is only recommended, and without any font the pages render without text.
    install = ["apt-get", "install", "-y", "--no-install-recommends", "chromium", "fonts-liberation"]
    if run(["apt-get", "update"], env) != 0 or run(install, env) != 0:
        loud("apt-get install chromium failed")
        return None
    return find_browser()


def find_faketime() -> str | None:
    """libfaketime (Debian's faketime), which the clock-skew fault scenario preloads."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketimeMT.so.1"))
    return found[0] if found else None


def install_faketime() -> str | None:
    """Install Debian's faketime (as root, like chromium); libfaketime's path, or None after saying why."""
    if not shutil.which("apt-get") or getattr(os, "geteuid", lambda: -1)() != 0:
        loud("no libfaketime found, and only root with apt-get installs it here: install faketime")
        return None
    say("installing Debian's faketime for the clock-skew fault scenario (apt-get)")
    env = child_env(DEBIAN_FRONTEND="noninteractive")
    install = ["apt-get", "install", "-y", "--no-install-recommends", "faketime"]
    if run(["apt-get", "update"], env) != 0 or run(install, env) != 0:
        loud("apt-get install faketime failed")
        return None
    return find_faketime()


DATABASES = ("sqlite", "postgres", "mariadb")
# The passes `dev.py test` runs without --db.
DEFAULT_DATABASES = ("sqlite", "postgres", "mariadb")
# The tiers `--fast` runs: in-process, no worker subprocess, live server or browser (see setup.cfg's markers).
FAST_TIERS = "engine or database"


def test(
    dbs: list[str],
    require_pg: bool,
    require_browser: bool,
    pytest_args: list[str],
    fast: bool = False,
    require_mariadb: bool = False,
) -> int:
    results: dict[str, str] = {}  # step -> "passed" | "FAILED ..." | "SKIPPED ..."
    if fast:
        pytest_args = ["-m", FAST_TIERS, *pytest_args]
    browser = None if fast else find_browser()
    if browser is None and require_browser:
        browser = install_browser()
        if browser is None:
            loud("no Chromium for the browser test and it is required: failing")
            return 1
    browser_env = {"DURABLE_REQUIRE_BROWSER": "1"} if require_browser else {}
    if browser is not None:
        browser_env["DURABLE_CHROMIUM"] = browser
    if "postgres" in dbs:
        ok, where = postgres_reachable()
        if not ok and require_pg:
            loud(f"PostgreSQL not reachable ({where}) and it is required: failing")
            return 1
        if not ok:
            loud(f"PostgreSQL not reachable: the PostgreSQL pass was SKIPPED ({where})")
            results["postgres"] = "SKIPPED (PostgreSQL not reachable)"
    if "mariadb" in dbs:
        ok, where = (True, "") if install_mysqlclient() else (False, "mysqlclient could not be installed")
        if ok:
            ok, where = mariadb_reachable()
        if not ok and require_mariadb:
            loud(f"MariaDB not reachable ({where}) and it is required: failing")
            return 1
        if not ok:
            loud(f"MariaDB not reachable: the MariaDB pass was SKIPPED ({where})")
            results["mariadb"] = "SKIPPED (MariaDB not reachable)"
    # The PostgreSQL pass runs a worker with its clock hours off (tests/faults/test_scenarios.py).
    faketime = find_faketime() if "postgres" in dbs and "postgres" not in results else "not needed"
    if faketime is None and require_pg:
        faketime = install_faketime()
        if faketime is None:
            loud("no libfaketime for the clock-skew fault scenario and PostgreSQL is required: failing")
            return 1
    # With PostgreSQL required, its scenarios that lack a tool (a private cluster, faketime) fail, never skip.
    require_env = {"DURABLE_REQUIRE_POSTGRES": "1"} if require_pg else {}

    def outcome(code: int) -> str:
        return "passed" if code == 0 else f"FAILED (exit code {code})"

    say("checking that models and migrations agree: makemigrations --check --dry-run")
    env = child_env(DJANGO_SETTINGS_MODULE="tests.settings", DURABLE_TEST_DB="sqlite")
    results["migrations"] = outcome(run(manage("makemigrations", "--check", "--dry-run"), env))

    for db in dbs:
        if db in results:  # skipped
            continue
        say(f"pytest on {db}")
        env = child_env(DJANGO_SETTINGS_MODULE="tests.settings", DURABLE_TEST_DB=db, **browser_env, **require_env)
        results[db] = outcome(run([str(VENV_PY), "-m", "pytest", *pytest_args], env))

    say("summary")
    for step in ("migrations", "sqlite", "postgres", "mariadb"):
        if step in results:
            print(f"  {step:<11} {results[step]}")
    if results.get("postgres", "").startswith("SKIPPED"):
        loud("PostgreSQL not reachable: the PostgreSQL pass was SKIPPED")
    if results.get("mariadb", "").startswith("SKIPPED"):
        loud("MariaDB not reachable: the MariaDB pass was SKIPPED")
    if browser is None and not fast:
        loud("no Chromium found: the browser test (tests/test_admin_browser.py) skips")
    if faketime is None:
        loud("no libfaketime (apt-get install faketime): the clock-skew fault scenario skips")
    return 1 if any(r.startswith("FAILED") for r in results.values()) else 0


# --------------------------------------------------------------------------- lint, docs


def needs_python_311(command: str) -> int | None:
    if sys.version_info >= (3, 11):
        return None
    print(
        f"error: dev.py {command} needs Python >= 3.11 (the pinned django-stubs and mkdocs-material do)",
        file=sys.stderr,
    )
    return 2


def lint() -> int:
    """The gates CI runs before the tests; the versions are pinned in setup.cfg's dev extra."""
    if (refused := needs_python_311("lint")) is not None:
        return refused
    steps = {
        "ruff check": [str(VENV_PY), "-m", "ruff", "check", "."],
        "ruff format": [str(VENV_PY), "-m", "ruff", "format", "--check", "."],
        "mypy": [str(VENV_PY), "-m", "mypy"],
    }
    results = {}
    for name, cmd in steps.items():
        say(f"{name}: {' '.join(cmd[1:])}")
        results[name] = run(cmd)
    say("summary")
    for name, code in results.items():
        print(f"  {name:<12} {'passed' if code == 0 else f'FAILED (exit code {code})'}")
    return 1 if any(results.values()) else 0


def docs(serve: bool) -> int:
    if (refused := needs_python_311("docs")) is not None:
        return refused
    cmd = [str(VENV_PY), "-m", "mkdocs", "serve" if serve else "build", "--strict"]
    say(" ".join(cmd[2:]))
    # NO_MKDOCS_2_WARNING: Material's end-of-life banner on every build (the pin is deliberate).
    env = child_env(DJANGO_SETTINGS_MODULE="tests.settings", DURABLE_TEST_DB="sqlite", NO_MKDOCS_2_WARNING="1")
    return run(cmd, env)


# --------------------------------------------------------------------------- main


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="dev.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="run the demo (worker + admin + a subscription workflow)")
    p_demo.add_argument("--port", type=int, default=8000, help="web server port (default 8000)")
    p_demo.add_argument("--exit", action="store_true", help="stop everything after the demo")
    p_test = sub.add_parser(
        "test",
        allow_abbrev=False,
        help="run the test suite on SQLite and PostgreSQL",
        epilog="Any other arguments are passed to pytest.",
    )
    p_test.add_argument("--db", choices=DATABASES, help="run only this pass")
    p_test.add_argument(
        "--fast",
        action="store_true",
        help=f"the inner loop: only the tiers {FAST_TIERS!r} (pytest -m), on SQLite only",
    )
    p_test.add_argument(
        "--django",
        choices=sorted(DJANGO_SERIES),
        help="on this Django series, in a venv of its own (.venv-django<series>) on a Python that supports it",
    )
    p_test.add_argument(
        "--require-postgres",
        action="store_true",
        help="fail when PostgreSQL is unreachable (also when CI=true or with --db postgres)",
    )
    p_test.add_argument(
        "--require-mariadb",
        action="store_true",
        help="fail when MariaDB is unreachable (also when CI=true or with --db mariadb)",
    )
    p_test.add_argument(
        "--require-browser",
        action="store_true",
        help="fail the browser test when no Chromium is found (as root on Debian, apt-get installs one first)",
    )
    sub.add_parser("lint", help="ruff check, ruff format --check and mypy, as CI runs them")
    p_docs = sub.add_parser("docs", help="build the documentation site into site/ (warnings are errors)")
    p_docs.add_argument("--serve", action="store_true", help="serve it on 127.0.0.1:8000, rebuilding on change")
    args, extra = parser.parse_known_args(argv)
    if args.command in ("demo", "lint", "docs") and extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    if (
        args.command == "test"
        and args.fast
        and (args.db not in (None, "sqlite") or args.require_postgres or args.require_mariadb or args.require_browser)
    ):
        parser.error("--fast runs on SQLite only, without the browser tier")

    # Turn SIGTERM/SIGHUP into a normal exit so the `finally` blocks stop child processes.
    for sig in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, sig):
            signal.signal(getattr(signal, sig), lambda signum, _: sys.exit(128 + signum))
    if args.command == "test" and args.django:
        use_django(args.django)
    bootstrap()
    if args.command == "demo":
        return demo(args.port, args.exit)
    if args.command == "lint":
        return lint()
    if args.command == "docs":
        return docs(args.serve)
    if "--" in extra:  # `dev.py test -- -x`: the separator is dev.py's, not pytest's
        extra.remove("--")
    dbs = ["sqlite"] if args.fast else [args.db] if args.db else list(DEFAULT_DATABASES)
    ci = os.environ.get("CI", "").lower() in ("true", "1")
    require_pg = args.require_postgres or args.db == "postgres" or ci
    require_mariadb = args.require_mariadb or args.db == "mariadb" or (ci and "mariadb" in dbs)
    return test(dbs, require_pg, args.require_browser, extra, fast=args.fast, require_mariadb=require_mariadb)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
