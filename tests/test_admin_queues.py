"""The admin's Queues page: every known queue's activity attempts (running, awaiting
completion, waiting, the oldest waiting) and limits, in a fixed number of queries; an
operator's override of a queue's limits, which the next claim obeys, and its reset; the
form's validation; and the permissions (viewing, and overriding: a permission of its own)."""

from __future__ import annotations

import datetime
import html
import re
from typing import Any

import pytest
from django.contrib.admin.models import CHANGE, LogEntry
from django.contrib.auth import get_user_model
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from django_durable import store
from django_durable.admin.schedule_text import when
from django_durable.models import QueueState, WorkflowInstance, WorkItem, WorkItemKind
from django_durable.store import queue_views
from tests.test_admin_schedules import client_with, notes, text

pytestmark = [pytest.mark.django_db, pytest.mark.database]

ADMIN = "/admin/django_durable/queuestate/"
VIEWER = ("view_queuestate",)
OVERRIDER = ("view_queuestate", "override_queue_limits")


def queues(**limits: dict[str, Any]) -> override_settings:
    return override_settings(DURABLE={"QUEUES": limits, "QUEUE_LIMITS_REFRESH": 0.2})


def attempts(
    queue: str, *, running: int = 0, awaiting: int = 0, waiting: int = 0, later: int = 0, parked: int = 0
) -> datetime.datetime | None:
    """Activity attempts in ``queue``; the due time of the oldest waiting one. Waiting ones
    were due 1, 2, ... minutes ago; ``later`` ones are due in an hour; ``parked`` ones are due
    but parked."""
    run = WorkflowInstance.objects.create(
        workflow_id=f"queue-{queue}-{WorkflowInstance.objects.count()}", workflow_name="fan_out", queue="default"
    )
    now = store.db_now()
    minute = datetime.timedelta(minutes=1)
    leased = {"lease_owner": "worker:h:1:x", "lease_expires_at": now + minute, "claimed_at": now, "attempt": 1}
    shapes = (
        [{**leased, "due_at": now - minute}] * running
        + [{**leased, "due_at": now - minute, "awaiting_completion": True}] * awaiting
        + [{"due_at": now - minute * (i + 1)} for i in range(waiting)]
        + [{"due_at": now + 60 * minute}] * later
        + [{"due_at": now - 120 * minute, "parked_at": now}] * parked
    )
    WorkItem.objects.bulk_create(
        WorkItem(instance=run, kind=WorkItemKind.ACTIVITY, queue=queue, name="step", task_id=i, **shape)
        for i, shape in enumerate(shapes)
    )
    return now - minute * waiting if waiting else None


def claim(queue: str, owner: str = "worker:h:2:y") -> list[store.Claim]:
    return store.claim(owner=owner, kind=WorkItemKind.ACTIVITY, queues=[queue], limit=10, lease_seconds=60)


def rows(response: Any) -> dict[str, dict[str, str]]:
    """The list's rows by queue: each column's text (a boolean column as True/False)."""
    assert response.status_code == 200, response.status_code
    table = response.content.decode().split('id="result_list"', 1)[1].split("</table>", 1)[0]
    found = {}
    for row in re.findall(r"<tr[^>]*>(.*?)</tr>", table, re.S):
        cells = {
            name: html.unescape(
                re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", re.sub(r'<img [^>]*alt="(\w+)"[^>]*>', r"\1", cell)))
            ).strip()
            for name, cell in re.findall(r'<t[hd] class="field-(\w+)[^"]*"[^>]*>(.*?)</t[hd]>', row, re.S)
        }
        if "queue" in cells:
            found[cells["queue"]] = cells
    return found


def change_url(queue: str) -> str:
    return f"{ADMIN}{QueueState.objects.get(queue=queue).pk}/change/"


def override(**fields: Any) -> dict[str, Any]:
    """The override form as a user fills it: blank fields unless given."""
    data = {"concurrency": "", "worker_concurrency": "", "key_concurrency": "", "rate_limit": "", "rate_period": ""}
    data.update({name: str(value) for name, value in fields.items()})
    return {**data, "_save": "Save override"}


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code
    return {name: list(errors) for name, errors in response.context["adminform"].form.errors.items()}


def test_the_list_shows_every_known_queue_with_its_attempts_and_limits() -> None:
    with queues(reports={"concurrency": 2}, idle={"rate_limit": {"limit": 10, "period": 60}}):
        oldest = attempts("reports", running=3, awaiting=1, waiting=4, later=2, parked=1)
        attempts("mail", waiting=2)
        run = WorkflowInstance.objects.create(workflow_id="wf", workflow_name="fan_out", queue="workflows-only")
        WorkItem.objects.create(instance=run, kind=WorkItemKind.WORKFLOW, queue="workflows-only", due_at=store.db_now())
        QueueState.objects.create(queue="retired", limits={"concurrency": 5})

        listed = rows(client_with(*VIEWER).get(ADMIN))

        # Configured, with attempts or with a row: listed; a queue of workflow tasks only is not.
        assert sorted(listed) == ["idle", "mail", "reports", "retired"]
        assert set(QueueState.objects.values_list("queue", flat=True)) == {"idle", "mail", "reports", "retired"}
        reports = listed["reports"]
        assert (reports["running"], reports["awaiting"], reports["waiting"]) == ("3 of 2", "1", "4")
        assert oldest is not None and reports["oldest_waiting"].startswith(when(oldest))
        assert (reports["limits_text"], reports["overridden"]) == ("concurrency 2", "False")
        assert (listed["idle"]["waiting"], listed["idle"]["oldest_waiting"]) == ("0", "-")
        assert listed["idle"]["limits_text"] == "10 per 60s"
        assert (listed["mail"]["waiting"], listed["mail"]["limits_text"]) == ("2", "unlimited")
        assert (listed["retired"]["limits_text"], listed["retired"]["overridden"]) == ("concurrency 5 override", "True")

        [view] = queue_views.queue_overview(["reports"])
        assert (view.running, view.awaiting_completion, view.waiting) == (3, 1, 4)
        assert view.oldest_waiting == oldest and not view.overridden


def test_the_queue_page_shows_its_state_and_its_override_as_json() -> None:
    with queues(reports={"concurrency": 2}):
        attempts("reports", running=1, waiting=3)
        queue_views.set_override("reports", {"concurrency": 4, "rate_limit": {"limit": 5, "period": 30}})

        page = client_with(*OVERRIDER).get(change_url("reports"))
        assert page.status_code == 200
        shown = text(page)
        assert "Running 1 of 4" in shown and "Waiting 3" in shown
        assert "In effect concurrency 4, 5 per 30s override" in shown
        assert "The settings' concurrency 2" in shown
        override_pre = re.search(r'id="queue-override"><pre>(.*?)</pre>', page.content.decode(), re.S)
        assert override_pre is not None and '"concurrency": 4' in html.unescape(override_pre.group(1))
        form = page.context["adminform"].form
        assert form.initial["concurrency"] == 4 and form.initial["rate_limit"] == 5
        assert 'name="_save"' in page.content.decode() and 'name="_reset"' in page.content.decode()
        assert "workflowinstance/dashboard/" not in page.content.decode()  # a link this user may not follow


def test_an_override_applies_to_the_next_claim_and_a_reset_restores_the_settings() -> None:
    with queues(reports={"concurrency": 1}):
        attempts("reports", waiting=5)
        operator = client_with(*OVERRIDER, username="operator")
        operator.get(ADMIN)  # lists the queue: its row exists

        saved = operator.post(change_url("reports"), override(concurrency=3))
        assert saved.status_code == 302 and saved["Location"] == ADMIN
        assert notes(saved) == [
            ("success", "Queue 'reports' has its limits overridden: concurrency 3. Workers apply it within 200ms.")
        ]
        assert QueueState.objects.get(queue="reports").limits == {"concurrency": 3}
        assert len(claim("reports")) == 3
        entry = LogEntry.objects.get(object_id=str(QueueState.objects.get(queue="reports").pk))
        assert (entry.action_flag, entry.user.username) == (CHANGE, "operator")
        assert entry.get_change_message() == "Queue 'reports' has its limits overridden"

        # A reset reads no field (a mistake in one is no matter) and goes back to concurrency 1.
        reset = operator.post(change_url("reports"), {**override(concurrency="many"), "_reset": "Reset"})
        assert reset.status_code == 302
        assert notes(reset) == [
            (
                "success",
                "Queue 'reports' is back to the settings' limits: concurrency 1. Workers apply it within 200ms.",
            )
        ]
        assert QueueState.objects.get(queue="reports").limits is None
        assert claim("reports") == []  # 3 running, 1 allowed
        assert rows(operator.get(ADMIN))["reports"]["running"] == "3 of 1"


def test_an_override_limits_an_unlimited_queue_and_a_blank_one_lifts_the_settings() -> None:
    with queues(reports={"concurrency": 1}):
        attempts("mail", waiting=4)
        attempts("reports", waiting=3)
        operator = client_with(*OVERRIDER)
        operator.get(ADMIN)

        assert (
            operator.post(change_url("mail"), override(concurrency=2, rate_limit=3, rate_period=60)).status_code == 302
        )
        assert QueueState.objects.get(queue="mail").limits == {
            "concurrency": 2,
            "rate_limit": {"limit": 3, "period": 60.0},
        }
        assert len(claim("mail")) == 2

        # Every field blank: an override of no limits, not the settings' concurrency 1.
        assert operator.post(change_url("reports"), override()).status_code == 302
        assert QueueState.objects.get(queue="reports").limits == {}
        assert len(claim("reports")) == 3
        assert rows(operator.get(ADMIN))["reports"]["limits_text"] == "unlimited override"


@pytest.mark.parametrize(
    ("fields", "field", "error"),
    [
        ({"concurrency": 0}, "concurrency", "greater than or equal to 1"),
        ({"worker_concurrency": "many"}, "worker_concurrency", "Enter a whole number"),
        ({"key_concurrency": -2}, "key_concurrency", "greater than or equal to 1"),
        ({"rate_limit": 5}, "rate_period", "needs the period"),
        ({"rate_period": 60}, "rate_limit", "needs the number of starts"),
        ({"rate_limit": 5, "rate_period": 0}, "rate_period", "more than 0 seconds"),
        ({"rate_limit": 5, "rate_period": "soon"}, "rate_period", "Enter a number"),
    ],
)
def test_invalid_limits_are_a_form_error_and_change_nothing(fields: dict[str, Any], field: str, error: str) -> None:
    with queues(reports={"concurrency": 1}):
        before = queue_views.set_override("reports", {"concurrency": 2})
        response = client_with(*OVERRIDER).post(change_url("reports"), override(**fields))
        errors = form_errors(response)
        assert list(errors) == [field] and error in errors[field][0], errors
        after = QueueState.objects.get(queue="reports")
        assert (after.limits, after.updated_at) == ({"concurrency": 2}, before.updated_at)
        assert not LogEntry.objects.exists()


def test_without_the_view_permission_the_page_is_forbidden() -> None:
    with queues(reports={"concurrency": 1}):
        queue_views.set_override("reports", {"concurrency": 2})
        staff = client_with("change_queuestate")  # the model's change permission is not the override's
        assert staff.get(ADMIN).status_code == 403
        assert staff.get(change_url("reports")).status_code == 403
        assert staff.post(change_url("reports"), override(concurrency=9)).status_code == 403
        assert QueueState.objects.get(queue="reports").limits == {"concurrency": 2}


@pytest.mark.parametrize("codenames", [VIEWER, (*VIEWER, "change_queuestate")])
def test_viewing_without_the_override_permission_shows_no_form_and_refuses_a_post(codenames: tuple[str, ...]) -> None:
    with queues(reports={"concurrency": 1}):
        attempts("reports", waiting=2)
        viewer = client_with(*codenames)
        assert rows(viewer.get(ADMIN))["reports"]["waiting"] == "2"
        page = viewer.get(change_url("reports"))
        assert page.status_code == 200
        content = page.content.decode()
        assert "Waiting 2" in text(page) and 'name="concurrency"' not in content and 'name="_save"' not in content
        assert "needs the permission" in text(page)
        assert viewer.post(change_url("reports"), override(concurrency=9)).status_code == 403
        assert viewer.post(change_url("reports"), {"_reset": "Reset"}).status_code == 403
        assert QueueState.objects.get(queue="reports").limits is None


def test_the_override_permission_alone_may_see_and_override() -> None:
    with queues(reports={"concurrency": 1}):
        operator = client_with("override_queue_limits")
        assert "reports" in rows(operator.get(ADMIN))
        assert operator.post(change_url("reports"), override(concurrency=7)).status_code == 302
        assert QueueState.objects.get(queue="reports").limits == {"concurrency": 7}


def test_queues_are_neither_added_nor_deleted_in_the_admin() -> None:
    with queues(reports={"concurrency": 1}):
        get_user_model().objects.create_superuser("root", "root@example.com", "pw")
        root = Client()
        root.login(username="root", password="pw")
        listed = root.get(ADMIN)
        assert "<h1>Queues</h1>" in listed.content.decode()
        assert "/admin/django_durable/workflowinstance/dashboard/" in listed.content.decode()
        pk = QueueState.objects.get(queue="reports").pk
        assert root.get(f"{ADMIN}add/").status_code == 403
        assert root.get(f"{ADMIN}{pk}/delete/").status_code == 403
        assert root.post(f"{ADMIN}{pk}/delete/", {"post": "yes"}).status_code == 403
        assert QueueState.objects.filter(pk=pk).exists()


def test_the_pages_read_a_fixed_number_of_queries_however_many_queues_and_attempts() -> None:
    viewer = client_with(*OVERRIDER)

    def queries(url: str) -> int:
        viewer.get(url)  # creates the rows of queues new to the list
        with CaptureQueriesContext(connection) as captured:
            assert viewer.get(url).status_code == 200
        return len(captured)

    few = {"q0": {"concurrency": 1}}
    with queues(**few):
        attempts("q0", running=1, waiting=1)
        attempts("w0", waiting=1)
        list_few = queries(ADMIN)
        page_few = queries(change_url("q0"))
    many = {f"q{i}": {"concurrency": i + 1, "key_concurrency": 2} for i in range(12)}
    with queues(**many):
        for i in range(12):
            attempts(f"q{i}", running=2, awaiting=1, waiting=5, later=1)
            attempts(f"w{i}", waiting=3)
        QueueState.objects.filter(queue__in=["q3", "w4"]).update(limits={"concurrency": 9})
        list_many = queries(ADMIN)
        page_many = queries(change_url("q0"))
        assert len(rows(viewer.get(ADMIN))) == 24
    assert list_many == list_few, (list_few, list_many)
    assert page_many == page_few, (page_few, page_many)


def test_the_pages_refuse_to_be_framed() -> None:
    with queues(reports={"concurrency": 1}):
        operator = client_with(*OVERRIDER)
        operator.get(ADMIN)  # lists the queue: its row exists
        page = change_url("reports")
        for url in (ADMIN, page, page.replace("/change/", "/history/")):
            response = operator.get(url)
            assert response.status_code == 200 and response.get("X-Frame-Options") == "DENY", url
        refused = operator.post(change_url("reports"), override(concurrency=0))
        assert refused.status_code == 200 and refused["X-Frame-Options"] == "DENY"
