"""The admin's run page keeps the token of an awaiting attempt; the timeline picture
(django_durable.admin.timeline) as a pure function: well-formed SVG, a bar per call."""

from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET

import pytest

import django_durable as durable
from django_durable.admin import timeline
from django_durable.engine.events import Event
from django_durable.exceptions import InvalidTaskToken
from django_durable.models import WorkflowInstance, WorkItem
from django_durable.tokens import TaskToken, read_task_token
from tests.testapp.workflows import fan_out

pytestmark = pytest.mark.engine

SVG = "{http://www.w3.org/2000/svg}"
T0 = datetime.datetime(2030, 1, 1, tzinfo=datetime.timezone.utc)
SIGNED = re.compile(r"\.?[\w-]+:[0-9A-Za-z]+:[\w-]+")  # django.core.signing.dumps: payload:timestamp:signature


@pytest.mark.database
@pytest.mark.django_db
def test_change_page_shows_history_work_and_the_token_of_an_awaiting_attempt(admin_client):
    handle = durable.start_workflow(fan_out, 2, workflow_id="admin-1")
    instance = WorkflowInstance.objects.get(run_id=handle.run_id)
    item = WorkItem.objects.create(
        kind="activity",
        instance=instance,
        queue="default",
        name="add",
        task_id=1,
        due_at=instance.created_at,
        attempt=1,
        lease_owner="worker",
        awaiting_completion=True,
    )
    WorkItem.objects.create(
        kind="activity",
        instance=instance,
        queue="default",
        name="add",
        task_id=2,
        due_at=instance.created_at,
    )
    response = admin_client.get(f"/admin/django_durable/workflowinstance/{instance.pk}/change/")
    assert response.status_code == 200
    page = response.content.decode()
    assert {(token.item_id, token.attempt) for token in task_tokens_in(page)} == {(item.pk, 1)}
    assert "ExecutionStarted" in page

    listing = admin_client.get("/admin/django_durable/workflowinstance/?q=admin-1")
    assert listing.status_code == 200 and "admin-1" in listing.content.decode()


# -- the timeline picture ---------------------------------------------------------------


@pytest.mark.database
@pytest.mark.django_db
def test_a_view_only_user_does_not_see_task_tokens(client, django_user_model):
    from django.contrib.auth.models import Permission

    handle = durable.start_workflow(fan_out, 1, workflow_id="admin-token-viewer")
    instance = WorkflowInstance.objects.get(run_id=handle.run_id)
    item = WorkItem.objects.create(
        kind="activity",
        instance=instance,
        queue="default",
        name="add",
        task_id=1,
        due_at=instance.created_at,
        attempt=1,
        lease_owner="worker",
        awaiting_completion=True,
    )
    viewer = django_user_model.objects.create_user("viewer", password="pw", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflowinstance"))
    client.force_login(viewer)
    page = client.get(f"/admin/django_durable/workflowinstance/{instance.pk}/change/").content.decode()
    # The token is a capability for the activity API: a viewer must not be able to copy it.
    assert task_tokens_in(page) == []
    assert "ExecutionStarted" in page and f"<td>{item.name}</td>" in page  # the awaiting attempt, without its token


def task_tokens_in(page: str) -> list[TaskToken]:
    """Every string in the page that the activity API would accept as a task token."""
    found = []
    for candidate in set(SIGNED.findall(page)):
        try:
            found.append(read_task_token(candidate))
        except InvalidTaskToken:
            pass
    return found


def ev(seq: int, kind: str, seconds: float, name: str = "", task_id: int | None = None, **payload) -> dict:
    return {
        "seq": seq,
        "kind": kind,
        "name": name,
        "task_id": task_id,
        "payload": payload,
        "timestamp": T0 + datetime.timedelta(seconds=seconds),
    }


def parse(svg: str) -> ET.Element:
    root = ET.fromstring(svg)  # well-formed XML, or this raises
    assert root.tag == f"{SVG}svg"
    return root


def bars(root: ET.Element) -> dict[str, list[ET.Element]]:
    """The bars by kind (their CSS class), without the run's own bar."""
    found: dict[str, list[ET.Element]] = {}
    for rect in root.iter(f"{SVG}rect"):
        classes = (rect.get("class") or "").split()
        if classes[:1] == ["bar"] and classes[1] != "run":
            found.setdefault(classes[1], []).append(rect)
    return found


def span(rect: ET.Element) -> tuple[float, float]:
    return float(rect.get("x")), float(rect.get("x")) + float(rect.get("width"))


def title(element: ET.Element) -> str:
    return element.find(f"{SVG}title").text


def texts(root: ET.Element) -> list[str]:
    """What each <text> shows (its hover <title> left out)."""
    return ["".join([text.text or "", *(child.tail or "" for child in text)]) for text in root.iter(f"{SVG}text")]


PLOT_LEFT, PLOT_RIGHT = timeline.LABEL_WIDTH, timeline.WIDTH - timeline.RIGHT_PAD


def test_an_empty_history_and_a_one_event_history_are_well_formed_pictures_without_bars():
    empty = parse(timeline.render_timeline([], now=T0))
    assert bars(empty) == {} and "No history yet." in texts(empty)

    one = parse(timeline.render_timeline([ev(1, "ExecutionStarted", 0, "wf", args=[1])], now=T0))
    assert bars(one) == {}
    run_bar = next(r for r in one.iter(f"{SVG}rect") if r.get("class") == "bar run")
    assert span(run_bar)[1] > span(run_bar)[0]


def test_each_activity_and_timer_is_a_bar_from_its_start_to_its_answer_failed_ones_in_red():
    events = [
        ev(1, "ExecutionStarted", 0, "wf"),
        ev(2, "WorkflowTaskStarted", 0),
        ev(3, "ActivityScheduled", 0, "charge", 1),
        ev(4, "ActivityScheduled", 0, "ship", 2),
        ev(5, "TimerStarted", 0, "", 3, fire_at=(T0 + datetime.timedelta(seconds=100)).isoformat()),
        ev(6, "ActivityCompleted", 20, "charge", 1, result="r", attempt=3),
        ev(7, "ActivityFailed", 40, "ship", 2, attempt=1, error={"type": "ValueError", "message": "no stock"}),
        ev(8, "WorkflowTaskStarted", 40),
        ev(9, "TimerStarted", 40, "", 4),
        ev(10, "TimerCanceled", 50, "", 4),
        ev(11, "TimerFired", 100, "", 3),
        ev(12, "WorkflowTaskStarted", 100),
        ev(13, "WorkflowCompleted", 100, result=None),
    ]
    root = parse(timeline.render_timeline(events, now=T0 + datetime.timedelta(days=9)))
    found = bars(root)
    assert len(found["activity"]) == 1 and len(found["activity-failed"]) == 1
    assert len(found["timer"]) == 1 and len(found["timer-canceled"]) == 1
    (charge,), (ship,) = found["activity"], found["activity-failed"]
    assert ship.get("fill") == timeline.COLOURS["activity-failed"] != charge.get("fill")
    assert "3 attempts" in title(charge) and "charge #1 ×3" in texts(root)
    assert "ValueError: no stock" in title(ship)
    # A closed run's axis ends where it closed (not at ``now``): 100s over the plot's width.
    scale = (PLOT_RIGHT - PLOT_LEFT) / 100
    assert span(charge) == pytest.approx((PLOT_LEFT, PLOT_LEFT + 20 * scale), abs=0.1)
    assert span(ship) == pytest.approx((PLOT_LEFT, PLOT_LEFT + 40 * scale), abs=0.1)
    assert span(found["timer"][0]) == pytest.approx((PLOT_LEFT, PLOT_RIGHT), abs=0.1)
    assert span(found["timer-canceled"][0]) == pytest.approx((PLOT_LEFT + 40 * scale, PLOT_LEFT + 50 * scale), abs=0.1)
    # Workflow tasks are ticks on the run's row.
    marks = [title(line) for line in root.iter(f"{SVG}line") if line.find(f"{SVG}title") is not None]
    ticks = [mark for mark in marks if mark.startswith("workflow task")]
    assert len(ticks) == 3


def test_open_calls_run_to_now_in_an_open_run_and_to_the_close_in_a_closed_one():
    started = [
        ev(1, "ExecutionStarted", 0, "wf"),
        ev(2, "ActivityScheduled", 0, "slow", 1),
        ev(3, "ActivityScheduled", 10, "done", 2),
        ev(4, "ActivityCompleted", 20, "done", 2, attempt=1),
    ]
    now = T0 + datetime.timedelta(seconds=200)
    pending = [
        {
            "kind": "activity",
            "task_id": 1,
            "attempt": 2,
            "lease_owner": "worker-7",
            "due_at": T0,
            "last_error": {"type": "ConnectionError", "message": "down"},
        }
    ]
    root = parse(timeline.render_timeline(started, pending, now=now))
    (open_bar,) = bars(root)["activity-open"]
    assert span(open_bar) == pytest.approx((PLOT_LEFT, PLOT_RIGHT), abs=0.1)
    assert "attempt 2" in title(open_bar) and "leased by worker-7" in title(open_bar)
    assert "ConnectionError: down" in title(open_bar) and "still open" in title(open_bar)
    assert open_bar.get("stroke-dasharray")

    terminated = [*started, ev(5, "WorkflowTerminated", 50, reason="stop")]
    root = parse(timeline.render_timeline(terminated, now=now))
    (open_bar,) = bars(root)["activity-open"]
    assert span(open_bar) == pytest.approx((PLOT_LEFT, PLOT_RIGHT), abs=0.1)  # the axis ends at 50s
    (done,) = bars(root)["activity"]
    scale = (PLOT_RIGHT - PLOT_LEFT) / 50
    assert span(done) == pytest.approx((PLOT_LEFT + 10 * scale, PLOT_LEFT + 20 * scale), abs=0.1)
    assert "never answered" in title(open_bar)


def test_waits_end_at_the_event_that_answered_them_or_their_timeout_and_children_at_their_close():
    events = [
        ev(1, "ExecutionStarted", 0, "wf"),
        ev(2, "EventRaised", 5, "early", payload=1),  # sent before anyone waited: kept
        ev(3, "EventWaitStarted", 10, "approve", 1),
        ev(4, "EventWaitStarted", 10, "early", 2),
        ev(5, "EventWaitStarted", 10, "maybe", 3),
        ev(6, "TimerStarted", 10, "", 4),  # wait_for_event("maybe", timeout=...): its timer
        ev(7, "TimerFired", 40, "", 4),
        ev(8, "EventRaised", 60, "approve", payload={"by": "ann"}),
        ev(9, "ChildWorkflowScheduled", 60, "child_wf", 5, workflow_id="c-1"),
        ev(10, "ChildWorkflowScheduled", 60, "child_wf", 6, workflow_id="c-2"),
        ev(11, "ChildWorkflowCompleted", 80, "child_wf", 5, result=1),
        ev(12, "ChildWorkflowFailed", 90, "child_wf", 6, status="failed", error={"type": "E", "message": "m"}),
        ev(13, "WorkflowCompleted", 100),
    ]
    root = parse(timeline.render_timeline(events, now=T0))
    found = bars(root)
    scale = (PLOT_RIGHT - PLOT_LEFT) / 100
    approve, early = found["wait"]
    assert span(approve) == pytest.approx((PLOT_LEFT + 10 * scale, PLOT_LEFT + 60 * scale), abs=0.1)
    assert span(early)[1] - span(early)[0] == timeline.MIN_BAR  # answered at once
    (timed_out,) = found["wait-timeout"]
    assert span(timed_out) == pytest.approx((PLOT_LEFT + 10 * scale, PLOT_LEFT + 40 * scale), abs=0.1)
    (child,), (failed_child,) = found["child"], found["child-failed"]
    assert span(child) == pytest.approx((PLOT_LEFT + 60 * scale, PLOT_LEFT + 80 * scale), abs=0.1)
    assert "c-1" in title(child) and "failed: E: m" in title(failed_child)


def test_names_are_escaped_and_engine_events_are_read_too():
    odd = "x<y>&\"z'"
    events = [
        Event(kind="ExecutionStarted", timestamp=T0, name=odd, seq=1),
        Event(kind="ActivityScheduled", timestamp=T0, name=odd, task_id=1, seq=2),
        Event(
            kind="ActivityFailed",
            timestamp=T0 + datetime.timedelta(seconds=1),
            name=odd,
            task_id=1,
            seq=3,
            payload={"error": {"type": "<Err>", "message": "a & b"}, "attempt": 1},
        ),
        Event(kind="EventWaitStarted", timestamp=T0, name=odd, task_id=2, seq=4),
    ]
    svg = timeline.render_timeline(events, now=T0 + datetime.timedelta(seconds=5))
    assert odd not in svg and "<Err>" not in svg
    root = parse(svg)
    (failed,) = bars(root)["activity-failed"]
    assert "<Err>: a & b" in title(failed)  # the parser gives back the text as it was
    assert f"{odd} #1" in texts(root)


def test_a_long_run_draws_at_most_max_rows_calls_and_says_how_many_it_left_out():
    events = [ev(1, "ExecutionStarted", 0, "wf")]
    for task_id in range(1, 31):
        events.append(ev(len(events) + 1, "ActivityScheduled", task_id, "step", task_id))
        events.append(ev(len(events) + 1, "ActivityCompleted", task_id + 0.5, "step", task_id, attempt=1))
    root = parse(timeline.render_timeline(events, now=T0, max_rows=10))
    assert len(bars(root)["activity"]) == 10
    assert "… 20 more calls not drawn" in texts(root)


def test_the_time_axis_has_tick_labels_in_units_that_fit_the_span():
    for seconds, label in ((2, "+1s"), (600, "+2m"), (30 * 86400, "+7d")):
        events = [ev(1, "ExecutionStarted", 0, "wf"), ev(2, "WorkflowCompleted", seconds)]
        labels = texts(parse(timeline.render_timeline(events, now=T0)))
        assert "0" in labels and label in labels, labels
        assert len([text for text in labels if text.startswith("+")]) <= timeline.MAX_TICKS


def test_format_duration():
    assert [timeline.format_duration(s) for s in (0.25, 12, 200, 7200, 90000, 30 * 86400)] == [
        "250ms",
        "12s",
        "3m20s",
        "2h",
        "1d1h",
        "30d",
    ]
