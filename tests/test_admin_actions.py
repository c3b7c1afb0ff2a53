"""The admin's actions on a run: offered where legal, to operators only, confirmed, done
through the client API and reported with message_user."""

from __future__ import annotations

import datetime
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client, RequestFactory
from django.test.utils import CaptureQueriesContext

import django_durable as durable
from django_durable.admin import forms as action_forms
from django_durable.admin.actions import object_actions
from django_durable.client import WorkflowHandle
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem
from django_durable.testing import WorkflowEnvironment
from tests.conftest import WORKFLOW_PERMISSIONS
from tests.testapp import actions_workflows as aw

pytestmark = [pytest.mark.django_db, pytest.mark.database]

START = datetime.datetime(2026, 3, 1, 9, 0, tzinfo=datetime.timezone.utc)
ADMIN = "/admin/django_durable/workflowinstance/"
ALL_VERBS = ["signal", "cancel", "terminate", "suspend", "resume", "retry", "rerun", "purge", "complete", "fail"]


# -- users ------------------------------------------------------------------------------------


def _staff_client(username: str, *codenames: str, is_staff: bool = True) -> Client:
    user = get_user_model().objects.create_user(username, password="pw", is_staff=is_staff)
    granted = Permission.objects.filter(content_type__app_label="django_durable", codename__in=codenames)
    user.user_permissions.add(*granted)
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def operator_client(db: None) -> Client:
    return _staff_client("operator", *WORKFLOW_PERMISSIONS)


@pytest.fixture
def viewer_client(db: None) -> Client:
    return _staff_client("viewer", "view_workflowinstance")


@pytest.fixture
def nonstaff_client(db: None) -> Client:
    return _staff_client("outsider", *WORKFLOW_PERMISSIONS, is_staff=False)


@pytest.fixture(params=["superuser", "operator"])
def actor(request: pytest.FixtureRequest) -> Client:
    """Each action works for a superuser and for staff with the view permission and those the
    actions need (add_ for rerun, delete_ for purge, operate_ for the rest)."""
    return request.getfixturevalue("admin_client" if request.param == "superuser" else "operator_client")


@pytest.fixture
def env(db: None) -> Iterator[WorkflowEnvironment]:
    with WorkflowEnvironment(start_time=START) as environment:
        yield environment
    aw.ACT_TASK_CRASHES["on"] = False
    aw.ACT_CODE_BUG["on"] = False


# -- runs in every state ------------------------------------------------------------------------


def waiting(env: WorkflowEnvironment, workflow_id: str = "act-wait") -> WorkflowHandle:
    handle = env.start(aw.act_waits, workflow_id=workflow_id)
    env.run_until_idle()
    assert handle.status() == "running"
    return handle


def suspended(env: WorkflowEnvironment, workflow_id: str = "act-suspended") -> WorkflowHandle:
    handle = waiting(env, workflow_id)
    handle.suspend("before the test")
    return handle


def completed(env: WorkflowEnvironment, workflow_id: str = "act-done") -> WorkflowHandle:
    handle = waiting(env, workflow_id)
    handle.signal("go", 1)
    assert env.result(handle) == {"payload": 1}
    return handle


def failed_task(env: WorkflowEnvironment, workflow_id: str = "act-crash") -> WorkflowHandle:
    aw.ACT_TASK_CRASHES["on"] = True
    handle = env.start(aw.act_task_crashes, workflow_id=workflow_id)
    env.run_until_idle()
    assert handle.describe().task_error["message"] == "simulated crash of the workflow task"
    return handle


def awaiting(env: WorkflowEnvironment, workflow_id: str = "act-external") -> tuple[WorkflowHandle, int]:
    handle = env.start(aw.act_awaits_external, "order-1", workflow_id=workflow_id)
    env.run_until_idle()
    item = WorkItem.objects.get(instance__run_id=handle.run_id, kind="activity")
    assert item.awaiting_completion
    return handle, item.task_id


def run_for(env: WorkflowEnvironment, verb: str) -> tuple[WorkflowHandle, str]:
    """A run where ``verb`` is legal, and the URL of its action."""
    if verb in ("complete", "fail"):
        handle, task_id = awaiting(env)
        return handle, action_url(handle, verb, task_id)
    handle = {
        "resume": suspended,
        "retry": failed_task,
        "rerun": completed,
        "purge": completed,
    }.get(verb, waiting)(env)
    return handle, action_url(handle, verb)


def pk(handle: WorkflowHandle) -> int:
    return WorkflowInstance.objects.values_list("pk", flat=True).get(run_id=handle.run_id)


def change_url(handle: WorkflowHandle) -> str:
    return f"{ADMIN}{pk(handle)}/change/"


def action_url(handle: WorkflowHandle, verb: str, activity: int | None = None) -> str:
    return f"{ADMIN}{pk(handle)}/actions/{verb}/" + (f"?activity={activity}" if activity is not None else "")


VALID_POST = {
    "signal": {"name": "go", "payload": '{"n": 1}'},
    "terminate": {"reason": "by hand"},
    "suspend": {"reason": "maintenance"},
    "complete": {"result": '"done"'},
    "fail": {"message": "nope", "type": "Refused", "details": ""},
}


def valid_post(verb: str, handle: WorkflowHandle) -> dict[str, str]:
    if verb == "rerun":
        return {"from_event": str(handle.describe().history_length), "workflow_id": ""}
    return VALID_POST.get(verb, {})


def snapshot(handle: WorkflowHandle) -> tuple[Any, ...]:
    """Everything an action could change about a run."""
    row = (
        WorkflowInstance.objects.filter(run_id=handle.run_id)
        .values("status", "history_length", "cancel_requested_at", "task_error", "result", "error")
        .first()
    )
    return (
        row,
        list(HistoryEvent.objects.filter(instance__run_id=handle.run_id).values_list("seq", "kind", "payload")),
        list(InboxEvent.objects.filter(instance__run_id=handle.run_id).values_list("kind", "name", "payload")),
        list(
            WorkItem.objects.filter(instance__run_id=handle.run_id).values_list(
                "kind", "task_id", "due_at", "attempt", "lease_owner", "failures", "parked_at", "awaiting_completion"
            )
        ),
        WorkflowInstance.objects.count(),
    )


def notes(response: Any) -> list[tuple[str, str]]:
    """The messages the request left; read once (later requests start without them)."""
    found = [(message.level_tag, message.message) for message in get_messages(response.wsgi_request)]
    response.client.cookies.pop("messages", None)
    return found


def verbs_offered(user: Any, handle: WorkflowHandle) -> list[str]:
    request = RequestFactory().get("/")
    request.user = user
    return [action["verb"] for action in object_actions(request, WorkflowInstance.objects.get(run_id=handle.run_id))]


# -- what is offered -------------------------------------------------------------------------


def test_the_actions_offered_follow_the_run_state(env: WorkflowEnvironment, admin_user: Any) -> None:
    pending = env.start(aw.act_waits, workflow_id="act-pending")
    assert pending.status() == "pending"
    assert verbs_offered(admin_user, pending) == ["signal", "cancel", "terminate", "suspend"]

    running = waiting(env)
    assert verbs_offered(admin_user, running) == ["signal", "cancel", "terminate", "suspend"]
    running.cancel()
    assert verbs_offered(admin_user, running) == ["signal", "terminate", "suspend"]

    assert verbs_offered(admin_user, suspended(env)) == ["signal", "cancel", "terminate", "resume"]
    assert verbs_offered(admin_user, failed_task(env)) == ["signal", "cancel", "terminate", "suspend", "retry"]
    assert verbs_offered(admin_user, completed(env)) == ["rerun", "purge"]

    handle, task_id = awaiting(env)
    request = RequestFactory().get("/")
    request.user = admin_user
    offered = object_actions(request, WorkflowInstance.objects.get(run_id=handle.run_id))
    assert [action["verb"] for action in offered] == ["signal", "cancel", "terminate", "suspend", "complete", "fail"]
    assert offered[-2] == {
        "verb": "complete",
        "label": f"Complete activity {task_id} (act_external)",
        "url": action_url(handle, "complete", task_id),
    }
    assert offered[0]["url"] == action_url(handle, "signal")


def test_a_user_without_the_operate_permission_is_offered_nothing(env: WorkflowEnvironment) -> None:
    viewer = get_user_model().objects.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflowinstance"))
    for handle in (waiting(env), suspended(env), failed_task(env), completed(env), awaiting(env)[0]):
        assert verbs_offered(viewer, handle) == []


def test_offering_actions_takes_one_query_for_an_open_run_and_none_for_a_closed_one(
    env: WorkflowEnvironment, admin_user: Any, django_assert_num_queries: Any
) -> None:
    handle, _ = awaiting(env)
    done = completed(env)
    request = RequestFactory().get("/")
    request.user = admin_user
    open_run, closed_run = (WorkflowInstance.objects.get(run_id=h.run_id) for h in (handle, done))
    with django_assert_num_queries(1):
        assert len(object_actions(request, open_run)) == 6
    with django_assert_num_queries(0):
        assert len(object_actions(request, closed_run)) == 2


# -- the permission matrix -----------------------------------------------------------------------


@pytest.mark.parametrize("verb", ALL_VERBS)
def test_a_viewer_gets_403_and_nothing_changes(env: WorkflowEnvironment, viewer_client: Client, verb: str) -> None:
    handle, url = run_for(env, verb)
    before = snapshot(handle)
    assert viewer_client.get(url).status_code == 403
    assert viewer_client.post(url, valid_post(verb, handle)).status_code == 403
    assert snapshot(handle) == before
    assert viewer_client.get(change_url(handle)).status_code == 200  # they may still look


@pytest.mark.parametrize("who", ["nonstaff", "anonymous"])
@pytest.mark.parametrize("verb", ALL_VERBS)
def test_a_non_staff_user_is_sent_to_the_login_page(
    env: WorkflowEnvironment, nonstaff_client: Client, verb: str, who: str
) -> None:
    client = nonstaff_client if who == "nonstaff" else Client()
    handle, url = run_for(env, verb)
    before = snapshot(handle)
    for response in (client.get(url), client.post(url, valid_post(verb, handle))):
        assert response.status_code == 302
        assert response["Location"].startswith("/admin/login/?next=")
    assert snapshot(handle) == before


@pytest.mark.parametrize("verb", ALL_VERBS)
def test_an_operator_gets_a_confirmation_page_and_a_get_changes_nothing(
    env: WorkflowEnvironment, actor: Client, verb: str
) -> None:
    handle, url = run_for(env, verb)
    before = snapshot(handle)
    response = actor.get(url)
    assert response.status_code == 200
    assert "admin/django_durable/workflowinstance/action_form.html" in [t.name for t in response.templates]
    page = response.content.decode()
    assert 'name="csrfmiddlewaretoken"' in page and 'method="post"' in page
    assert 'type="submit"' in page and f'href="{change_url(handle)}"' in page
    assert handle.workflow_id in page and handle.run_id in page
    for field in valid_post(verb, handle):
        assert f'name="{field}"' in page
    assert snapshot(handle) == before


def test_an_unknown_verb_or_run_is_404(env: WorkflowEnvironment, admin_client: Client) -> None:
    handle = waiting(env)
    assert admin_client.get(action_url(handle, "explode")).status_code == 404
    assert admin_client.post(action_url(handle, "explode")).status_code == 404
    assert admin_client.get(f"{ADMIN}999999/actions/cancel/").status_code == 404


def test_a_post_without_the_csrf_token_is_refused(env: WorkflowEnvironment, admin_user: Any) -> None:
    handle = waiting(env)
    client = Client(enforce_csrf_checks=True)
    client.force_login(admin_user)
    url = action_url(handle, "terminate")
    before = snapshot(handle)
    assert client.post(url, {"reason": "no token"}).status_code == 403
    assert snapshot(handle) == before
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', client.get(url).content.decode()).group(1)
    assert client.post(url, {"reason": "with token", "csrfmiddlewaretoken": token}).status_code == 302
    assert handle.status() == "terminated"


# -- each action's effect ---------------------------------------------------------------------


def test_signal_sends_the_json_payload(env: WorkflowEnvironment, actor: Client) -> None:
    handle = waiting(env)
    response = actor.post(action_url(handle, "signal"), {"name": "go", "payload": '{"n": [1, 2], "ok": true}'})
    assert response.status_code == 302 and response["Location"] == change_url(handle)
    assert notes(response) == [("success", f"Sent the event 'go' to workflow 'act-wait' (run {handle.run_id}).")]
    assert env.result(handle) == {"payload": {"n": [1, 2], "ok": True}}
    assert "EventRaised" in env.history_kinds(handle)


def test_signal_with_an_empty_payload_sends_null(env: WorkflowEnvironment, admin_client: Client) -> None:
    handle = waiting(env)
    assert admin_client.post(action_url(handle, "signal"), {"name": "go", "payload": ""}).status_code == 302
    assert env.result(handle) == {"payload": None}


@pytest.mark.parametrize("payload", ['{"n": ', "{'single': 'quotes'}", "NaN", "[1, 2,]"])
def test_malformed_json_in_a_signal_is_rejected_and_the_form_shown_again(
    env: WorkflowEnvironment, admin_client: Client, payload: str
) -> None:
    handle = waiting(env)
    before = snapshot(handle)
    response = admin_client.post(action_url(handle, "signal"), {"name": "go", "payload": payload})
    assert response.status_code == 200
    assert "Not valid JSON" in response.content.decode()
    assert response.context["form"].data["payload"] == payload  # what was typed comes back to be fixed
    assert 'value="go"' in response.content.decode()
    assert snapshot(handle) == before
    assert notes(response) == []


@pytest.mark.parametrize(
    ("payload", "error"),
    [
        ("[" * 100_000 + "]" * 100_000, "nested deeper than 100 levels"),
        ("[" * 101 + "]" * 101, "nested deeper than 100 levels"),
        ('{"a": "\\ud800"}', "a string contains an unpaired surrogate (\\ud800-\\udfff)"),
        ("[1e999]", "number 1e999 is out of range"),
    ],
    ids=["recursion-bomb", "too-deep", "lone-surrogate", "overflow"],
)
def test_json_the_api_would_refuse_is_a_form_error_too(
    env: WorkflowEnvironment, admin_client: Client, payload: str, error: str
) -> None:
    handle = waiting(env)
    before = snapshot(handle)
    response = admin_client.post(action_url(handle, "signal"), {"name": "go", "payload": payload})
    assert response.status_code == 200
    assert response.context["form"].errors["payload"] == [f"Not valid JSON: {error}."]
    assert snapshot(handle) == before
    assert notes(response) == []


def test_a_signal_needs_an_event_name(env: WorkflowEnvironment, admin_client: Client) -> None:
    handle = waiting(env)
    before = snapshot(handle)
    response = admin_client.post(action_url(handle, "signal"), {"name": "", "payload": "1"})
    assert response.status_code == 200 and "name" in response.context["form"].errors
    assert snapshot(handle) == before


def test_cancel_asks_the_run_to_cancel(env: WorkflowEnvironment, actor: Client) -> None:
    handle = waiting(env)
    response = actor.post(action_url(handle, "cancel"))
    assert response.status_code == 302 and notes(response) == [
        ("success", f"Asked workflow 'act-wait' (run {handle.run_id}) to cancel.")
    ]
    env.run_until_idle()
    assert handle.status() == "canceled"
    kinds = env.history_kinds(handle)
    assert "CancelRequested" in kinds and kinds[-1] == "WorkflowCanceled"


def test_terminate_records_the_reason(env: WorkflowEnvironment, actor: Client) -> None:
    handle = waiting(env)
    page = actor.get(action_url(handle, "terminate")).content.decode()
    assert "Terminated from the admin by " in page  # a default reason naming who did it
    response = actor.post(action_url(handle, "terminate"), {"reason": "bad input data"})
    assert response.status_code == 302 and notes(response)[0][0] == "success"
    description = handle.describe()
    assert description.status == "terminated" and description.error["message"] == "bad input data"
    last = handle.history()[-1]
    assert (last.kind, last.payload) == ("WorkflowTerminated", {"reason": "bad input data"})


def test_terminate_needs_a_reason(env: WorkflowEnvironment, admin_client: Client) -> None:
    handle = waiting(env)
    before = snapshot(handle)
    response = admin_client.post(action_url(handle, "terminate"), {"reason": ""})
    assert response.status_code == 200 and "reason" in response.context["form"].errors
    assert snapshot(handle) == before


def test_suspend_then_resume(env: WorkflowEnvironment, actor: Client) -> None:
    handle = waiting(env)
    response = actor.post(action_url(handle, "suspend"), {"reason": "maintenance"})
    assert response.status_code == 302 and notes(response)[0][0] == "success"
    assert handle.status() == "suspended"
    last = handle.history()[-1]
    assert (last.kind, last.payload) == ("ExecutionSuspended", {"reason": "maintenance"})

    handle.signal("go", "while suspended")
    env.run_until_idle()
    assert handle.status() == "suspended"  # no workflow code runs until it is resumed

    response = actor.post(action_url(handle, "resume"))
    assert response.status_code == 302 and notes(response)[0][0] == "success"
    assert env.history_kinds(handle)[-1] == "ExecutionResumed"
    assert env.result(handle) == {"payload": "while suspended"}


def test_retry_runs_a_parked_workflow_task_again_after_the_fix(env: WorkflowEnvironment, actor: Client) -> None:
    handle = failed_task(env)
    env.advance(minutes=5)  # backs off and fails until it is parked
    task = WorkItem.objects.get(instance__run_id=handle.run_id, kind="workflow")
    assert task.parked_at is not None and task.failures > 1
    aw.ACT_TASK_CRASHES["on"] = False  # the deploy with the fix
    env.advance(hours=1)
    assert handle.status() == "pending"  # parked: nothing runs it by itself

    page = actor.get(action_url(handle, "retry")).content.decode()
    assert "simulated crash of the workflow task" in page and "<pre>" in page
    response = actor.post(action_url(handle, "retry"))
    assert response.status_code == 302
    assert notes(response) == [
        ("success", f"The workflow task of workflow 'act-crash' (run {handle.run_id}) is due again now.")
    ]
    env.run_until_idle()  # the clock does not move: only the retry made it due
    assert handle.status() == "completed" and handle.describe().task_error is None
    assert env.result(handle) == "fixed"


def test_rerun_from_the_default_event_goes_on_under_the_fixed_code(env: WorkflowEnvironment, actor: Client) -> None:
    aw.ACT_CODE_BUG["on"] = True
    handle = env.start(aw.act_fails_after_a_step, workflow_id="act-rerun")
    with pytest.raises(durable.WorkflowFailed, match="bug after the step"):
        env.result(handle)
    aw.ACT_CODE_BUG["on"] = False
    history = handle.history()
    page = actor.get(action_url(handle, "rerun"))
    form = page.context["form"]
    assert [choice for choice, _ in form.fields["from_event"].choices] == list(range(2, len(history) + 1))
    assert form.fields["from_event"].initial == len(history)  # no failed activity: from the close
    assert history[-1].kind == "WorkflowFailed"

    response = actor.post(action_url(handle, "rerun"), {"from_event": str(len(history)), "workflow_id": ""})
    new = WorkflowInstance.objects.get(rerun_of__run_id=handle.run_id)
    assert response.status_code == 302 and response["Location"] == f"{ADMIN}{new.pk}/change/"
    assert notes(response)[0][0] == "success" and str(new.run_id) in notes(response)[0][1]
    rerun = WorkflowHandle(new.workflow_id, str(new.run_id))
    assert new.workflow_id == "act-rerun" and new.rerun_from_seq == len(history)
    assert env.result(rerun) == 42
    assert handle.status() == "failed"  # the original stays as it was
    assert env.history_kinds(rerun).count("ActivityScheduled") == 1  # the step's result was kept


def test_rerun_under_a_new_workflow_id_and_refusals(env: WorkflowEnvironment, admin_client: Client) -> None:
    handle = completed(env, "act-rerun-src")
    blocker = waiting(env, "act-busy")
    url = action_url(handle, "rerun")
    before = snapshot(handle)
    for bad in ("1", "999", "x"):
        response = admin_client.post(url, {"from_event": bad})
        assert response.status_code == 200 and "from_event" in response.context["form"].errors
    assert snapshot(handle) == before

    response = admin_client.post(url, {"from_event": "2", "workflow_id": "act-busy"})
    assert response.status_code == 302 and response["Location"] == change_url(handle)
    refusal = f"Cannot rerun workflow 'act-rerun-src' (run {handle.run_id}): Workflow 'act-busy' is already running."
    assert notes(response) == [("error", refusal)]
    assert snapshot(handle) == before and blocker.status() == "running"

    response = admin_client.post(url, {"from_event": "2", "workflow_id": "act-copy"})
    copy = WorkflowInstance.objects.get(workflow_id="act-copy")
    assert response["Location"] == f"{ADMIN}{copy.pk}/change/" and str(copy.rerun_of.run_id) == handle.run_id


def test_a_run_failed_by_an_activity_is_rerun_from_that_failure(env: WorkflowEnvironment, admin_client: Client) -> None:
    handle = env.start(aw.act_needs_external, "order-2", workflow_id="act-needs")
    env.run_until_idle()
    (task_id,) = WorkItem.objects.filter(instance__run_id=handle.run_id).values_list("task_id", flat=True)
    admin_client.post(action_url(handle, "fail", task_id), {"message": "warehouse closed", "type": "", "details": ""})
    with pytest.raises(durable.WorkflowFailed, match="warehouse closed"):
        env.result(handle)
    failure = next(event for event in handle.history() if event.kind == "ActivityFailed")
    assert failure.payload["error"]["type"] == "ActivityFailure"  # the default type

    form = admin_client.get(action_url(handle, "rerun")).context["form"]
    assert form.fields["from_event"].initial == failure.seq  # the failed call is made again
    response = admin_client.post(action_url(handle, "rerun"), {"from_event": str(failure.seq), "workflow_id": ""})
    new = WorkflowInstance.objects.get(rerun_of__run_id=handle.run_id)
    rerun = WorkflowHandle(new.workflow_id, str(new.run_id))
    env.run_until_idle()
    (again,) = WorkItem.objects.filter(instance=new, awaiting_completion=True).values_list("task_id", flat=True)
    assert again == task_id and response["Location"] == change_url(rerun)
    admin_client.post(action_url(rerun, "complete", again), {"result": '"shipped"'})
    assert env.result(rerun) == {"answer": "shipped"}


def test_a_long_history_is_rerun_from_an_event_number(
    env: WorkflowEnvironment, admin_client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(action_forms, "RERUN_CHOICES_MAX", 3)
    handle = completed(env)
    length = handle.describe().history_length
    url = action_url(handle, "rerun")
    page = admin_client.get(url)
    assert 'type="number"' in page.content.decode() and "<option" not in page.content.decode()
    assert page.context["form"].fields["from_event"].initial == length
    before = snapshot(handle)
    for bad in ("1", str(length + 1), "x"):
        assert "from_event" in admin_client.post(url, {"from_event": bad}).context["form"].errors
    assert snapshot(handle) == before
    assert admin_client.post(url, {"from_event": "3"}).status_code == 302
    assert WorkflowInstance.objects.get(rerun_of__run_id=handle.run_id).rerun_from_seq == 3


def test_purge_deletes_a_closed_run_with_its_history(env: WorkflowEnvironment, actor: Client) -> None:
    handle = completed(env)
    other = completed(env, "act-done-too")
    response = actor.post(action_url(handle, "purge"))
    assert response.status_code == 302 and response["Location"] == ADMIN
    assert notes(response) == [("success", f"Purged workflow 'act-done' (run {handle.run_id}) with its history.")]
    assert not WorkflowInstance.objects.filter(run_id=handle.run_id).exists()
    assert not HistoryEvent.objects.filter(instance__workflow_id="act-done").exists()
    assert other.status() == "completed"


def test_complete_an_awaiting_activity_by_hand(env: WorkflowEnvironment, actor: Client) -> None:
    handle, task_id = awaiting(env)
    page = actor.get(action_url(handle, "complete", task_id)).content.decode()
    assert "act_external" in page and "attempt 1" in page
    response = actor.post(action_url(handle, "complete", task_id), {"result": '{"ok": true, "by": "ops"}'})
    assert response.status_code == 302 and response["Location"] == change_url(handle)
    assert notes(response) == [
        ("success", f"Completed activity {task_id} (act_external) of workflow 'act-external' (run {handle.run_id}).")
    ]
    assert env.result(handle) == {"answer": {"ok": True, "by": "ops"}}
    assert "ActivityCompleted" in env.history_kinds(handle)


def test_fail_an_awaiting_activity_by_hand(env: WorkflowEnvironment, actor: Client) -> None:
    handle, task_id = awaiting(env)
    response = actor.post(
        action_url(handle, "fail", task_id), {"message": "declined", "type": "CardDeclined", "details": '{"code": 7}'}
    )
    assert response.status_code == 302 and notes(response)[0][0] == "success"
    assert env.result(handle) == {"error": {"type": "CardDeclined", "message": "declined", "details": {"code": 7}}}
    assert "ActivityFailed" in env.history_kinds(handle)


def test_malformed_json_when_completing_an_activity_changes_nothing(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    handle, task_id = awaiting(env)
    before = snapshot(handle)
    for verb, data in (("complete", {"result": "{ok: true}"}), ("fail", {"message": "m", "details": "[1"})):
        response = admin_client.post(action_url(handle, verb, task_id), data)
        assert response.status_code == 200 and "Not valid JSON" in response.content.decode()
    assert snapshot(handle) == before
    assert WorkItem.objects.get(instance__run_id=handle.run_id, kind="activity").awaiting_completion


# -- actions that are not legal now -------------------------------------------------------------


ILLEGAL = [
    ("resume", waiting, "not suspended"),
    ("suspend", suspended, "the run is suspended"),
    ("retry", waiting, "no failed workflow task is waiting"),
    ("retry", suspended, "the run is suspended"),
    ("purge", waiting, "still running"),
    ("rerun", waiting, "still running"),
    ("signal", completed, "the run is completed"),
    ("cancel", completed, "the run is completed"),
    ("terminate", completed, "the run is completed"),
    ("complete", waiting, "not awaiting completion"),
    ("fail", completed, "not awaiting completion"),
]


@pytest.mark.parametrize(("verb", "make", "why"), ILLEGAL, ids=[f"{v}-{m.__name__}" for v, m, _ in ILLEGAL])
def test_an_action_not_legal_in_the_runs_state_is_refused(
    env: WorkflowEnvironment, admin_client: Client, verb: str, make: Any, why: str
) -> None:
    handle = make(env)
    url = action_url(handle, verb, 1 if verb in ("complete", "fail") else None)
    before = snapshot(handle)
    for send in (lambda: admin_client.get(url), lambda: admin_client.post(url, valid_post(verb, handle))):
        response = send()
        assert response.status_code == 302 and response["Location"] == change_url(handle)
        ((level, message),) = notes(response)
        assert level == "error" and message.startswith("Cannot ") and why in message
    assert snapshot(handle) == before


def test_cancel_is_refused_once_asked(env: WorkflowEnvironment, admin_client: Client) -> None:
    handle = waiting(env)
    assert notes(admin_client.post(action_url(handle, "cancel")))[0][0] == "success"
    before = snapshot(handle)
    response = admin_client.post(action_url(handle, "cancel"))
    refusal = f"Cannot ask to cancel workflow 'act-wait' (run {handle.run_id}): cancellation was already requested."
    assert notes(response) == [("error", refusal)]
    assert snapshot(handle) == before


def test_completing_an_activity_twice_is_refused(env: WorkflowEnvironment, admin_client: Client) -> None:
    handle, task_id = awaiting(env)
    url = action_url(handle, "complete", task_id)
    assert notes(admin_client.post(url, {"result": "1"}))[0][0] == "success"
    before = snapshot(handle)
    response = admin_client.post(url, {"result": "2"})
    assert response.status_code == 302 and "not awaiting completion" in notes(response)[0][1]
    assert snapshot(handle) == before
    assert env.result(handle) == {"answer": 1}


# -- changelist bulk actions ----------------------------------------------------------------------

BULK = ADMIN


def mixed_runs(env: WorkflowEnvironment) -> tuple[list[WorkflowHandle], list[WorkflowHandle]]:
    return [waiting(env, "act-open-1"), suspended(env, "act-open-2")], [completed(env, "act-closed-1")]


def select(action: str, handles: list[WorkflowHandle], **extra: str) -> dict[str, Any]:
    return {"action": action, "_selected_action": [str(pk(h)) for h in handles], **extra}


def test_bulk_actions_are_offered_to_operators_only(
    env: WorkflowEnvironment, operator_client: Client, viewer_client: Client
) -> None:
    open_runs, closed_runs = mixed_runs(env)
    page = operator_client.get(BULK).content.decode()
    assert all(name in page for name in ("cancel_selected", "terminate_selected", "purge_selected"))
    page = viewer_client.get(BULK).content.decode()
    assert "terminate_selected" not in page and "act-open-1" in page

    before = [snapshot(h) for h in open_runs + closed_runs]
    for action in ("terminate_selected", "purge_selected", "cancel_selected"):
        viewer_client.post(BULK, select(action, open_runs + closed_runs, index="0"))
        viewer_client.post(BULK, select(action, open_runs + closed_runs, post="yes", reason="x"))
    assert [snapshot(h) for h in open_runs + closed_runs] == before


def test_bulk_terminate_confirms_then_skips_closed_runs(env: WorkflowEnvironment, operator_client: Client) -> None:
    open_runs, closed_runs = mixed_runs(env)
    selected = open_runs + closed_runs
    before = [snapshot(h) for h in selected]
    confirm = operator_client.post(BULK, select("terminate_selected", selected, index="0"))
    assert confirm.status_code == 200
    assert "admin/django_durable/workflowinstance/action_bulk_confirm.html" in [t.name for t in confirm.templates]
    page = confirm.content.decode()
    assert "act-open-1" in page and "act-open-2" in page and "act-closed-1</a>" not in page
    assert "1 other selected run is skipped (already closed)" in page
    assert [snapshot(h) for h in selected] == before  # nothing yet

    again = operator_client.post(BULK, select("terminate_selected", selected, post="yes", reason=""))
    assert again.status_code == 200 and "reason" in again.context["form"].errors
    assert [snapshot(h) for h in selected] == before

    done = operator_client.post(BULK, select("terminate_selected", selected, post="yes", reason="cleanup"))
    assert done.status_code == 302
    assert notes(done) == [("success", "Terminated 2 run(s)."), ("warning", "Skipped 1 run(s): already closed.")]
    assert [h.status() for h in selected] == ["terminated", "terminated", "completed"]
    assert open_runs[0].describe().error["message"] == "cleanup"


def test_bulk_purge_deletes_only_closed_runs(env: WorkflowEnvironment, operator_client: Client) -> None:
    open_runs, closed_runs = mixed_runs(env)
    closed_runs.append(completed(env, "act-closed-2"))
    selected = open_runs + closed_runs
    confirm = operator_client.post(BULK, select("purge_selected", selected, index="0"))
    assert confirm.status_code == 200 and "cannot be undone" in confirm.content.decode()
    assert WorkflowInstance.objects.count() == 4
    done = operator_client.post(BULK, select("purge_selected", selected, post="yes"))
    assert notes(done) == [
        ("success", "Purged 2 run(s) with their history."),
        ("warning", "Skipped 2 run(s): still open."),
    ]
    assert sorted(WorkflowInstance.objects.values_list("workflow_id", flat=True)) == ["act-open-1", "act-open-2"]


def test_bulk_cancel_skips_runs_already_asked(env: WorkflowEnvironment, admin_client: Client) -> None:
    open_runs, closed_runs = mixed_runs(env)
    open_runs[1].cancel()
    done = admin_client.post(BULK, select("cancel_selected", open_runs + closed_runs, post="yes"))
    assert notes(done) == [
        ("success", "Asked 1 run(s) to cancel."),
        ("warning", "Skipped 2 run(s): closed or already asked to cancel."),
    ]
    env.run_until_idle()
    assert open_runs[0].status() == "canceled"


def test_a_bulk_action_with_nothing_legal_asks_nothing_and_does_nothing(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    open_runs, _ = mixed_runs(env)
    before = [snapshot(h) for h in open_runs]
    response = admin_client.post(BULK, select("purge_selected", open_runs, index="0"))
    assert response.status_code == 302
    assert notes(response) == [
        ("warning", "Purge: none of the 2 selected run(s) qualifies (still open); nothing was done.")
    ]
    assert [snapshot(h) for h in open_runs] == before


def test_the_bulk_confirmation_page_does_not_query_per_row(env: WorkflowEnvironment, admin_client: Client) -> None:
    def confirmation_queries(handles: list[WorkflowHandle]) -> int:
        data = select("terminate_selected", handles, index="0")
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.post(BULK, data)
        assert response.status_code == 200 and handles[-1].workflow_id in response.content.decode()
        return len(queries)

    few = [waiting(env, f"act-few-{n}") for n in range(2)]
    many = [waiting(env, f"act-many-{n}") for n in range(12)]
    assert confirmation_queries(many) == confirmation_queries(few)
