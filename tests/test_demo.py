"""The demo project runs end to end: worker, web server, both demo workflows."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time

import pytest

from tests.conftest import REPO

pytestmark = pytest.mark.http


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def demo_env(tmp_path):
    port = free_port()
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "demo_project.settings",
        "DEMO_DB": str(tmp_path / "demo.sqlite3"),
        "DEMO_BASE_URL": f"http://127.0.0.1:{port}",
        "PYTHONPATH": str(REPO),
    }
    subprocess.run([sys.executable, "manage.py", "migrate", "-v0"], cwd=REPO, env=env, check=True)
    processes = [
        subprocess.Popen([sys.executable, "manage.py", "durable_worker", "-v0"], cwd=REPO, env=env),
        subprocess.Popen(
            [sys.executable, "manage.py", "runserver", f"127.0.0.1:{port}", "--noreload"],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        ),
    ]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.1)
    yield env
    for process in processes:
        process.terminate()
    for process in processes:
        process.wait(30)


def demo(env: dict[str, str], *args: str) -> str:
    done = subprocess.run(
        [sys.executable, "manage.py", *args], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_demo_workflows_run_end_to_end(demo_env):
    subscription = demo(demo_env, "demo_subscription", "--cycles", "2", "--cycle-seconds", "0.2")
    assert "Result: {" in subscription and '"current_cycle": 2' in subscription

    approval = demo(demo_env, "demo_approval", "--approve")
    assert "-> 200" in approval
    assert 'Result: {"published": true' in approval
