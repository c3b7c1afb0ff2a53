"""The admin debugger end to end in a real browser: headless Chromium, driven by
Playwright, against a live server. It logs in through the login form, finds a
finished run, steps through its history in time-travel, runs an action with its
confirmation, and keeps a screenshot of every page (checked to be real PNGs).

Chromium is the system's (Debian's ``chromium``), never Playwright's download:
``DURABLE_CHROMIUM`` names it, else it is looked up on PATH. Without one the test
is skipped, unless ``DURABLE_REQUIRE_BROWSER=1`` (``dev.py test --require-browser``,
which CI uses) makes that a failure. Screenshots go to ``<DURABLE_ARTIFACTS>/browser/<db>/``.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from django_durable.models import WorkflowInstance
from django_durable.testing import WorkflowEnvironment
from tests.testapp import browser_workflows as bw

pytestmark = pytest.mark.browser

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
VIEWPORT = {"width": 1280, "height": 900}
PASSWORD = "browser-test-password"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
APPROVAL = {"by": "browser-admin", "note": "looks right to me"}


def chromium_or_skip() -> str:
    """The Chromium binary to drive; skips (or fails, when required) without one or without Playwright."""
    required = os.environ.get("DURABLE_REQUIRE_BROWSER", "").lower() in ("1", "true", "yes")

    def missing(reason: str) -> None:
        if required:
            pytest.fail(f"{reason}; DURABLE_REQUIRE_BROWSER is set, so this fails instead of skipping")
        pytest.skip(f"{reason} (CI runs it: dev.py test --require-browser)")

    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        missing("Playwright for Python is not installed (pip install -e .[dev])")
    named = os.environ.get("DURABLE_CHROMIUM")
    if named:
        if not (os.path.isfile(named) and os.access(named, os.X_OK)):
            missing(f"DURABLE_CHROMIUM={named} is not an executable file")
        return named
    found = next((path for name in BROWSERS if (path := shutil.which(name))), None)
    if found is None:
        missing(f"no Chromium found (looked for {', '.join(BROWSERS)} on PATH and DURABLE_CHROMIUM)")
    return found  # type: ignore[return-value]


@pytest.fixture
def chromium() -> str:
    return chromium_or_skip()


@pytest.fixture
def shots() -> Path:
    """A fresh screenshot directory per database pass, kept for CI's artifacts."""
    directory = Path(settings.ARTIFACTS) / "browser" / connection.vendor
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


@contextlib.contextmanager
def browser_page(executable: str, shots: Path) -> Iterator[Any]:
    """A page of a fresh headless Chromium. On a failure it keeps ``failure.png`` of where it stood.

    Playwright's sync API runs an event loop in this thread, so Django's ORM refuses to run
    (SynchronousOnlyOperation) while it is open: database work happens before and after."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page(viewport=VIEWPORT)
            page.set_default_timeout(20_000)
            try:
                yield page
            except BaseException:
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(shots / "failure.png"), full_page=True)
                raise
        finally:
            browser.close()


def png_chunks(data: bytes) -> Iterator[tuple[bytes, bytes]]:
    pos = len(PNG_SIGNATURE)
    while pos + 8 <= len(data):
        length, kind = struct.unpack(">I4s", data[pos : pos + 8])
        yield kind, data[pos + 8 : pos + 8 + length]
        pos += 12 + length


def assert_real_png(path: Path, min_height: int = VIEWPORT["height"]) -> None:
    """A PNG of the viewport's width, at least ``min_height`` tall, whose pixels are not one flat colour."""
    assert path.is_file(), f"no screenshot {path}"
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE), f"{path.name} is not a PNG: starts {data[:8]!r}"
    assert len(data) > 5_000, f"{path.name} is only {len(data)} bytes"
    chunks = list(png_chunks(data))
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND", f"{path.name}: broken chunk list"
    width, height, depth, colour_type = struct.unpack(">IIBB", chunks[0][1][:10])
    assert width == VIEWPORT["width"] and height >= min_height, f"{path.name} is {width}x{height}"
    channels = {2: 3, 6: 4}[colour_type]  # Chromium writes 8-bit RGB or RGBA
    assert depth == 8
    raw = zlib.decompress(b"".join(body for kind, body in chunks if kind == b"IDAT"))
    assert len(raw) == height * (1 + width * channels), f"{path.name}: pixel data of the wrong size"
    # A blank or single-colour page filters down to a handful of byte values; a rendered one has many.
    distinct = len(set(raw))
    assert distinct > 32, f"{path.name} looks like a flat image ({distinct} distinct byte values)"


def success_message(page: Any) -> list[str]:
    return page.locator("ul.messagelist li.success").all_inner_texts()


def status_badge(page: Any) -> str:
    return page.locator("#content-main .durable-status").first.inner_text().strip()


def shown_vars(page: Any) -> dict[str, Any]:
    return json.loads(page.locator("pre.durable-tt-vars-json").inner_text())


def test_admin_in_a_real_browser(live_server: Any, chromium: str, shots: Path) -> None:
    # -- data, all committed before the browser opens (the live server reads it from its own thread)
    get_user_model().objects.create_superuser("browser-admin", "browser@example.com", PASSWORD)
    start = datetime.datetime.now(datetime.timezone.utc) - datetime.timedelta(hours=1)
    with WorkflowEnvironment(start_time=start) as env:
        finished = env.start(bw.br_steps, 3)
        assert env.result(finished) == 6
        waiting = env.start(bw.br_awaits_approval)
        env.run_until_idle()
    assert waiting.status() == "running"
    history = finished.history()
    kinds = [event.kind for event in history]
    # Time travel goes from the second ActivityCompleted (the task after it set total=3)
    # to the second TimerFired (the task after it set step=3), three events later.
    second_done = [n for n, kind in enumerate(kinds, start=1) if kind == "ActivityCompleted"][1]
    second_fired = [n for n, kind in enumerate(kinds, start=1) if kind == "TimerFired"][1]
    assert second_fired - second_done == 3, kinds
    finished_pk = WorkflowInstance.objects.get(workflow_id=finished.workflow_id).pk
    waiting_pk = WorkflowInstance.objects.get(workflow_id=waiting.workflow_id).pk
    changelist = f"{live_server.url}/admin/django_durable/workflowinstance/"

    with browser_page(chromium, shots) as page:
        # -- log in through the real form
        page.goto(f"{live_server.url}/admin/")
        assert "/admin/login/" in page.url
        page.fill("#id_username", "browser-admin")
        page.fill("#id_password", PASSWORD)
        page.screenshot(path=str(shots / "01-login.png"))
        page.click("form#login-form [type=submit]")
        page.wait_for_url(f"{live_server.url}/admin/")
        assert page.locator("#user-tools").inner_text().upper().startswith("WELCOME")
        # The admin's stylesheet is served and applied: pages look like the admin, not bare HTML.
        header = page.locator("#header").evaluate("el => getComputedStyle(el).backgroundColor")
        assert header not in ("rgba(0, 0, 0, 0)", "transparent"), header

        # -- the run list, searched by workflow id
        page.goto(changelist)
        assert page.locator("#result_list tbody tr").count() == 2
        page.fill("#searchbar", finished.workflow_id)
        page.press("#searchbar", "Enter")
        page.wait_for_url(re.compile(r"\?q="))
        rows = page.locator("#result_list tbody tr")
        assert rows.count() == 1
        assert "br_steps" in rows.inner_text() and "completed" in rows.inner_text().lower()
        page.screenshot(path=str(shots / "02-changelist.png"))

        # -- the finished run's page: history timeline and the SVG picture
        rows.locator(f"a:text-is('{finished.workflow_id}')").click()
        page.wait_for_url(re.compile(rf"/workflowinstance/{finished_pk}/change/(\?|$)"))
        content = page.locator("#content-main")
        for kind in ("ExecutionStarted", "ActivityCompleted", "TimerFired", "WorkflowCompleted"):
            assert content.get_by_text(kind, exact=True).first.is_visible(), kind
        picture = page.locator("#content-main svg.durable-timeline").first
        picture.scroll_into_view_if_needed()
        assert picture.is_visible()
        box = picture.bounding_box()
        assert box is not None and box["width"] > 300 and box["height"] > 50, box
        assert picture.locator("rect").count() >= 6  # 3 activities and 3 timers at least
        assert "br_add" in (picture.text_content() or "")
        page.screenshot(path=str(shots / "03-change.png"), full_page=True)

        # -- time travel from a history event, then step forward and back
        at = f"/workflowinstance/{finished_pk}/at/"
        page.locator(f"#content-main a[href$='{at}{second_done}/']").first.click()
        page.wait_for_url(f"**{at}{second_done}/")
        assert shown_vars(page) == {"step": 2, "total": 3}
        page.screenshot(path=str(shots / "04-timetravel.png"))
        for seq in range(second_done + 1, second_fired + 1):
            page.click("a[rel=next]")
            page.wait_for_url(f"**{at}{seq}/")
        assert shown_vars(page) == {"step": 3, "total": 3}
        assert page.locator("tr.changed[data-var=step]").is_visible()
        page.screenshot(path=str(shots / "05-timetravel-forward.png"))
        for seq in range(second_fired - 1, second_done - 1, -1):
            page.click("a[rel=prev]")
            page.wait_for_url(f"**{at}{seq}/")
        assert shown_vars(page) == {"step": 2, "total": 3}

        # -- actions with their confirmation forms on the waiting run: a signal with a JSON
        # payload (a malformed one is refused first, nothing sent), then suspend
        change = re.compile(rf"/workflowinstance/{waiting_pk}/change/$")
        page.goto(f"{changelist}{waiting_pk}/change/")
        page.locator("#content-main a[href$='/actions/signal/']").click()
        page.wait_for_url(f"**/workflowinstance/{waiting_pk}/actions/signal/")
        form = page.locator("#content-main form[method=post]")
        form.locator("input[name=name]").fill("approve")
        form.locator("textarea[name=payload]").fill('{"by": "browser-admin",')
        form.locator("[type=submit]").click()
        page.wait_for_load_state()
        assert page.locator(".errornote").is_visible()
        assert "Not valid JSON" in form.locator(".field-payload").inner_text()
        form.locator("textarea[name=payload]").fill(json.dumps(APPROVAL))
        page.screenshot(path=str(shots / "06-action-confirm.png"))
        form.locator("[type=submit]").click()
        page.wait_for_url(change)
        assert success_message(page) == [
            f"Sent the event 'approve' to workflow '{waiting.workflow_id}' (run {waiting.run_id})."
        ]
        # The event waits in the run's inbox for a workflow task, now pending (no worker runs here).
        assert "Workflow task" in page.locator("#pending-work").inner_text()
        assert status_badge(page) == "Running"
        page.screenshot(path=str(shots / "07-after-signal.png"), full_page=True)

        page.locator("#content-main a[href$='/actions/suspend/']").click()
        page.wait_for_url(f"**/workflowinstance/{waiting_pk}/actions/suspend/")
        page.screenshot(path=str(shots / "08-suspend-confirm.png"))
        page.locator("#content-main form[method=post] [type=submit]").click()
        page.wait_for_url(change)
        assert success_message(page) == [f"Suspended workflow '{waiting.workflow_id}' (run {waiting.run_id})."]
        assert status_badge(page) == "Suspended"
        offered = page.locator("#content-main .durable-actions a").all_inner_texts()
        assert "Resume" in offered and "Suspend" not in offered, offered
        page.screenshot(path=str(shots / "09-after-suspend.png"), full_page=True)

    # -- the actions really happened: the run is suspended, and once resumed its code gets the
    # payload typed in the browser; the finished run is untouched
    assert waiting.status() == "suspended"
    assert waiting.history()[-1].kind == "ExecutionSuspended"
    waiting.resume()
    with WorkflowEnvironment() as env:
        assert env.result(waiting) == {"approved_by": APPROVAL}
    raised = [event for event in waiting.history() if event.kind == "EventRaised"]
    assert [(event.name, event.payload) for event in raised] == [("approve", {"payload": APPROVAL})]
    assert finished.status() == "completed" and len(finished.history()) == len(history)
    for name in (
        "01-login",
        "02-changelist",
        "04-timetravel",
        "05-timetravel-forward",
        "06-action-confirm",
        "08-suspend-confirm",
    ):
        assert_real_png(shots / f"{name}.png")
    for name in ("03-change", "07-after-signal", "09-after-suspend"):
        assert_real_png(shots / f"{name}.png", min_height=VIEWPORT["height"] + 1)  # whole pages, taller than the window
    assert not (shots / "failure.png").exists()
