"""The schedules' admin in a real browser (headless Chromium, as tests/test_admin_browser.py
runs it): create a schedule through the add form after previewing its fire times, trigger
it, and follow the run it started back to the schedule. Screenshots go to
``<DURABLE_ARTIFACTS>/browser-schedules/<db>/``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection

from django_durable.models import HistoryEvent, Schedule, WorkflowInstance
from tests.test_admin_browser import PASSWORD, assert_real_png, browser_page, chromium_or_skip, success_message

pytestmark = pytest.mark.browser

# Preview rows read like "Mon 2026-03-02 03:00:00 UTC".
FIRE_TIME = re.compile(r"^\w{3} \d{4}-\d\d-\d\d 03:00:00 UTC$")


@pytest.fixture
def shots() -> Path:
    directory = Path(settings.ARTIFACTS) / "browser-schedules" / connection.vendor
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def test_create_preview_and_trigger_a_schedule_in_a_real_browser(live_server: Any, shots: Path) -> None:
    chromium = chromium_or_skip()
    get_user_model().objects.create_superuser("browser-admin", "browser@example.com", PASSWORD)
    schedules = f"{live_server.url}/admin/django_durable/schedule/"

    with browser_page(chromium, shots) as page:
        page.goto(f"{live_server.url}/admin/login/?next=/admin/django_durable/schedule/add/")
        page.fill("#id_username", "browser-admin")
        page.fill("#id_password", PASSWORD)
        page.click("form#login-form [type=submit]")
        page.wait_for_url(f"{schedules}add/")

        # -- fill the form, preview: five fire times, nothing saved, the values kept
        page.fill("#id_schedule_id", "browser-nightly")
        page.select_option("#id_workflow_name", "sc_tick")
        page.fill("#id_input_args", '["from-the-browser"]')
        page.fill("#id_cron", "0 3 * * *")
        page.fill("#id_timezone", "UTC")
        page.click("input[name=_preview]")
        page.wait_for_load_state()
        assert page.url == f"{schedules}add/"
        assert page.locator(".errornote").count() == 0
        times = page.locator("#fire-times ol.durable-fire-times li").all_inner_texts()
        assert len(times) == 5 and all(FIRE_TIME.match(shown.strip()) for shown in times), times
        assert page.input_value("#id_cron") == "0 3 * * *"
        page.screenshot(path=str(shots / "01-add-preview.png"), full_page=True)

        # -- a mistake is shown next to its field; fixed, the form saves
        page.fill("#id_cron", "0 3 * *")
        page.click("input[name=_save]")
        page.wait_for_load_state()
        assert "has 4 fields" in page.locator(".field-cron .errorlist").inner_text()
        page.fill("#id_cron", "0 3 * * *")
        page.click("input[name=_save]")
        page.wait_for_url(schedules)
        assert len(success_message(page)) == 1
        row = page.locator("#result_list tbody tr", has_text="browser-nightly")
        assert "cron 0 3 * * * (UTC)" in row.inner_text()
        page.screenshot(path=str(shots / "02-changelist.png"))

        # -- its page: trigger now, with its confirmation
        row.locator("a", has_text="browser-nightly").first.click()
        page.wait_for_url(re.compile(r"/schedule/\d+/change/$"))
        assert page.locator("#fire-times li").count() == 5
        page.screenshot(path=str(shots / "03-change.png"), full_page=True)
        page.locator("#content-main .durable-actions a.durable-action-trigger").click()
        page.wait_for_url(re.compile(r"/schedule/\d+/actions/trigger/$"))
        page.locator("#content-main form[method=post] [type=submit]").click()
        page.wait_for_url(re.compile(r"/schedule/\d+/change/$"))
        [message] = success_message(page)
        assert message.startswith("Triggered schedule 'browser-nightly': started run browser-nightly-"), message
        assert page.locator("#recent-runs tbody tr").count() == 1

        # -- the run's page links back to the schedule
        page.locator("ul.messagelist li.success a").click()
        page.wait_for_url(re.compile(r"/workflowinstance/\d+/change/$"))
        link = page.locator("#started-by-schedule a.durable-schedule-link")
        assert link.inner_text() == "browser-nightly"
        page.screenshot(path=str(shots / "04-run.png"), full_page=True)
        link.click()
        page.wait_for_url(re.compile(r"/schedule/\d+/change/$"))

    schedule = Schedule.objects.get(schedule_id="browser-nightly")
    assert schedule.input == {"args": ["from-the-browser"], "kwargs": {}}
    assert schedule.next_tick_at is not None and schedule.next_tick_at.hour == 3 and schedule.runs_started == 1
    run = WorkflowInstance.objects.get()
    assert run.workflow_id.startswith("browser-nightly-") and run.workflow_name == "sc_tick"
    assert HistoryEvent.objects.get(instance=run, seq=1).payload["schedule"]["reason"] == "trigger"
    assert_real_png(shots / "02-changelist.png")
    for name in ("01-add-preview", "03-change", "04-run"):
        assert_real_png(shots / f"{name}.png")
    assert not (shots / "failure.png").exists()
