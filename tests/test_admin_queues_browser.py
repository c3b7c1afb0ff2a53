"""The Queues page in a real browser (headless Chromium, as tests/test_admin_browser.py runs
it): an operator with the override's permission, not a superuser, raises a queue's
concurrency through the form, the list shows it, and the next claim obeys it. Screenshots go
to ``<DURABLE_ARTIFACTS>/browser-queues/<db>/``."""

from __future__ import annotations

import re
import shutil
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import override_settings

from django_durable import store
from django_durable.models import QueueState, WorkItemKind
from tests.conftest import grant
from tests.test_admin_browser import PASSWORD, assert_real_png, browser_page, chromium_or_skip, success_message
from tests.test_admin_queues import attempts

pytestmark = pytest.mark.browser


@pytest.fixture
def shots() -> Path:
    directory = Path(settings.ARTIFACTS) / "browser-queues" / connection.vendor
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    return directory


def test_an_operator_overrides_a_queues_concurrency_in_a_real_browser(live_server: Any, shots: Path) -> None:
    chromium = chromium_or_skip()
    operator = get_user_model().objects.create_user("queue-operator", password=PASSWORD, is_staff=True)
    grant(operator, "view_queuestate", "override_queue_limits")
    queues = f"{live_server.url}/admin/django_durable/queuestate/"

    with override_settings(DURABLE={"QUEUES": {"reports": {"concurrency": 1}}, "QUEUE_LIMITS_REFRESH": 0.2}):
        attempts("reports", waiting=6)
        with browser_page(chromium, shots) as page:
            page.goto(f"{live_server.url}/admin/login/?next=/admin/django_durable/queuestate/")
            page.fill("#id_username", "queue-operator")
            page.fill("#id_password", PASSWORD)
            page.click("form#login-form [type=submit]")
            page.wait_for_url(queues)
            row = page.locator("#result_list tbody tr", has_text="reports")
            assert row.locator("td.field-waiting").inner_text().strip() == "6"
            assert row.locator("td.field-limits_text").inner_text().strip() == "concurrency 1"

            row.locator("th.field-queue a").click()
            page.wait_for_url(re.compile(r"/queuestate/\d+/change/$"))
            assert page.input_value("#id_concurrency") == "1"
            page.fill("#id_concurrency", "4")
            page.screenshot(path=str(shots / "01-change.png"), full_page=True)
            page.click("input[name=_save]")
            page.wait_for_url(queues)
            [message] = success_message(page)
            assert message.startswith("Queue 'reports' has its limits overridden: concurrency 4."), message
            row = page.locator("#result_list tbody tr", has_text="reports")
            assert row.locator("td.field-limits_text").inner_text().strip() == "concurrency 4 override"
            assert row.locator("td.field-overridden img").get_attribute("alt") == "True"
            page.screenshot(path=str(shots / "02-changelist.png"), full_page=True)

        assert QueueState.objects.get(queue="reports").limits == {"concurrency": 4}
        claimed = store.claim(
            owner="w:h:1:x", kind=WorkItemKind.ACTIVITY, queues=["reports"], limit=10, lease_seconds=60
        )
        assert len(claimed) == 4
    for name in ("01-change", "02-changelist"):
        assert_real_png(shots / f"{name}.png")
    assert not (shots / "failure.png").exists()
