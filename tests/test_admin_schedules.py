"""The schedules' admin: the list, the form (validated as create_schedule validates, saved
through the store, previewing fire times), the actions, the permissions, the run page's link
to its schedule and the dashboard's schedules. Time is the test clock of a WorkflowEnvironment."""

from __future__ import annotations

import contextlib
import datetime
import html
import re
from collections.abc import Iterator
from typing import Any

import pytest
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.contrib.messages import get_messages
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext

from django_durable import store
from django_durable.admin.schedule_forms import field_named_in, startable_workflows
from django_durable.models import HistoryEvent, Schedule, WorkflowInstance
from django_durable.schedules.client import create_schedule, get_schedule
from django_durable.store import schedules as schedule_store
from django_durable.testing import WorkflowEnvironment
from tests.testapp.schedule_workflows import sc_tick, sc_until_released

pytestmark = [pytest.mark.django_db, pytest.mark.database]

# A Sunday in winter: Europe/Paris is UTC+1 (CET) until 2026-03-29.
START = datetime.datetime(2026, 3, 1, 9, 0, tzinfo=datetime.timezone.utc)
ADMIN = "/admin/django_durable/schedule/"
RUNS = "/admin/django_durable/workflowinstance/"
DASHBOARD = f"{RUNS}dashboard/"
NIGHTLY_TICKS = [
    ("Mon 2026-03-02 03:00:00 CET", "02:00:00 UTC"),
    ("Tue 2026-03-03 03:00:00 CET", "02:00:00 UTC"),
    ("Wed 2026-03-04 03:00:00 CET", "02:00:00 UTC"),
    ("Thu 2026-03-05 03:00:00 CET", "02:00:00 UTC"),
    ("Fri 2026-03-06 03:00:00 CET", "02:00:00 UTC"),
]
# What each operation needs, as django_durable.permissions says.
VIEWER = ("view_schedule",)
CHANGER = ("view_schedule", "change_schedule")
STARTER = ("view_schedule", "change_schedule", "add_workflowinstance", "view_workflowinstance")
CREATOR = ("view_schedule", "add_schedule", "add_workflowinstance")


@pytest.fixture
def env(db: None) -> Iterator[WorkflowEnvironment]:
    with WorkflowEnvironment(start_time=START) as environment:
        yield environment


def client_with(*codenames: str, username: str = "staff") -> Client:
    user = get_user_model().objects.create_user(username, password="pw", is_staff=True)
    user.user_permissions.add(
        *Permission.objects.filter(content_type__app_label="django_durable", codename__in=codenames)
    )
    client = Client()
    client.force_login(user)
    return client


@contextlib.contextmanager
def clock_at(moment: datetime.datetime) -> Iterator[None]:
    """The store's clock at ``moment``, without running what falls due (as no worker would)."""
    saved = store.clock_override
    store.clock_override = lambda: moment
    try:
        yield
    finally:
        store.clock_override = saved


def notes(response: Any) -> list[tuple[str, str]]:
    """The messages the request left, as text; read once."""
    found = [
        (m.level_tag, html.unescape(re.sub(r"<[^>]+>", "", str(m.message))))
        for m in get_messages(response.wsgi_request)
    ]
    response.client.cookies.pop("messages", None)
    return found


def text(response: Any) -> str:
    return html.unescape(re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", response.content.decode())))


def pk(schedule_id: str) -> int:
    return Schedule.objects.values_list("pk", flat=True).get(schedule_id=schedule_id)


def change_url(schedule_id: str) -> str:
    return f"{ADMIN}{pk(schedule_id)}/change/"


def action_url(schedule_id: str, verb: str) -> str:
    return f"{ADMIN}{pk(schedule_id)}/actions/{verb}/"


def nightly(schedule_id: str = "nightly", **options: Any) -> str:
    create_schedule(schedule_id, sc_tick, args=["k"], cron="0 3 * * *", timezone="Europe/Paris", **options)
    return schedule_id


def every_five_minutes(schedule_id: str = "often", **options: Any) -> str:
    create_schedule(schedule_id, sc_tick, args=["k"], every=300, **options)
    return schedule_id


def form_data(**changes: Any) -> dict[str, Any]:
    """The add form as a user fills it: a nightly report at 03:00 Paris time."""
    data = {
        "schedule_id": "report",
        "workflow_name": "sc_tick",
        "input_args": '["k"]',
        "input_kwargs": "",
        "queue": "",
        "cron": "0 3 * * *",
        "every": "",
        "timezone": "Europe/Paris",
        "start_at_0": "",
        "start_at_1": "",
        "end_at_0": "",
        "end_at_1": "",
        "jitter": "",
        "overlap": "skip",
        "catchup_window": "01:00:00",
        "note": "",
        "_save": "Save",
    }
    data.update(changes)
    return {key: value for key, value in data.items() if value is not None}


def change_data(schedule_id: str, **changes: Any) -> dict[str, Any]:
    """The change form of ``schedule_id`` as the page fills it in."""
    data = form_data(**changes)
    data.pop("schedule_id")
    return data


def form_errors(response: Any) -> dict[str, list[str]]:
    assert response.status_code == 200, response.status_code
    return {name: list(errors) for name, errors in response.context["adminform"].form.errors.items()}


# -- the list ---------------------------------------------------------------------------------


def test_the_list_shows_the_spec_next_fire_last_run_with_its_status_paused_note_and_counts(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    nightly()
    every_five_minutes("often", paused=True, note="migrating")
    run = schedule_store.trigger("nightly")
    assert run is not None
    response = admin_client.get(ADMIN)
    assert response.status_code == 200
    page = text(response)
    assert "cron 0 3 * * * (Europe/Paris)" in page
    assert "every 300 s (5m)" in page
    assert "2026-03-02 02:00:00" in page  # nightly's next fire, in TIME_ZONE (UTC)
    assert "paused migrating" in page
    assert "1 started, 0 skipped, 0 missed" in page
    content = response.content.decode()
    assert f'href="{RUNS}{run.pk}/change/"' in content and run.workflow_id in page
    assert "nightly-20260301T090000.000Z Pending" in page


def test_a_late_schedule_is_marked_late(env: WorkflowEnvironment, admin_client: Client) -> None:
    every_five_minutes()
    assert 'class="durable-late"' not in admin_client.get(ADMIN).content.decode()
    with clock_at(START + datetime.timedelta(minutes=10)):  # no worker fired 09:05
        page = admin_client.get(ADMIN).content.decode()
    assert 'class="durable-late"' in page


def test_filters_and_search(env: WorkflowEnvironment, admin_client: Client) -> None:
    nightly()
    every_five_minutes("often", paused=True)
    create_schedule("crowd", sc_until_released, args=["k"], every=60, overlap="allow_all")

    def listed(query: str) -> list[str]:
        response = admin_client.get(ADMIN + query)
        assert response.status_code == 200
        return [row.schedule_id for row in response.context["cl"].result_list]

    assert listed("") == ["crowd", "nightly", "often"]
    assert listed("?paused__exact=1") == ["often"]
    assert listed("?paused__exact=0") == ["crowd", "nightly"]
    assert listed("?overlap__exact=allow_all") == ["crowd"]
    assert listed("?workflow_name=sc_until_released") == ["crowd"]
    assert listed("?q=nigh") == ["nightly"]
    assert listed("?q=until") == ["crowd"]


def test_the_list_reads_the_same_queries_for_3_and_30_schedules(env: WorkflowEnvironment, admin_client: Client) -> None:
    def scene(count: int) -> int:
        Schedule.objects.all().delete()
        for n in range(count):
            every_five_minutes(f"s{count}-{n}", paused=n % 2 == 0, note="n")
            schedule_store.trigger(f"s{count}-{n}")
        with CaptureQueriesContext(connection) as queries:
            response = admin_client.get(ADMIN)
        assert response.status_code == 200 and len(response.context["cl"].result_list) == count
        assert response.content.decode().count('class="durable-status"') == count  # each last run's status
        return len(queries)

    assert scene(3) == scene(30)


# -- the form ---------------------------------------------------------------------------------


def test_adding_creates_the_schedule_through_the_store(env: WorkflowEnvironment, admin_client: Client) -> None:
    response = admin_client.post(f"{ADMIN}add/", form_data(input_kwargs='{"n": 1}', note="nightly numbers"))
    assert response.status_code == 302, form_errors(response)
    schedule = Schedule.objects.get(schedule_id="report")
    assert response["Location"] == ADMIN
    assert schedule.workflow_name == "sc_tick"
    assert schedule.input == {"args": ["k"], "kwargs": {"n": 1}}
    assert schedule.queue == "default"
    assert (schedule.cron, schedule.every, schedule.timezone) == ("0 3 * * *", None, "Europe/Paris")
    # Planned by the store, as create_schedule() plans it.
    assert (
        schedule.next_tick_at == schedule.next_fire_at == datetime.datetime(2026, 3, 2, 2, tzinfo=datetime.timezone.utc)
    )
    assert schedule.created_at == START
    assert notes(response)[0][0] == "success"


def test_the_workflow_choices_are_the_startable_workflows(env: WorkflowEnvironment, admin_client: Client) -> None:
    names = startable_workflows()
    assert "sc_tick" in names and not any(name.startswith("django_durable.") for name in names)
    response = admin_client.get(f"{ADMIN}add/")
    choices = [value for value, _ in response.context["adminform"].form.fields["workflow_name"].choices]
    assert choices == ["", *names]
    with override_settings(DURABLE={**settings.DURABLE, "API_STARTABLE_WORKFLOWS": ["sc_until_released"]}):
        assert startable_workflows() == ["sc_until_released"]
        errors = form_errors(admin_client.post(f"{ADMIN}add/", form_data()))
        assert list(errors) == ["workflow_name"]
    errors = form_errors(admin_client.post(f"{ADMIN}add/", form_data(workflow_name="django_durable.run_task")))
    assert list(errors) == ["workflow_name"]
    assert not Schedule.objects.exists()


@pytest.mark.parametrize(
    ("changes", "field", "says"),
    [
        ({"cron": "61 * * * *"}, "cron", "invalid cron '61 * * * *'"),
        ({"cron": "@reboot"}, "cron", "'@reboot' is not supported"),
        ({"cron": "0 0 3 * * *"}, "cron", "six fields"),
        ({"cron": "", "every": ""}, "cron", "exactly one of cron"),
        ({"every": "60"}, "cron", "got both"),
        ({"cron": "", "every": "0"}, "every", "every must be whole seconds, at least 1"),
        ({"timezone": "Mars/Olympus"}, "timezone", "unknown timezone 'Mars/Olympus'"),
        ({"jitter": "-1"}, "jitter", "jitter must be seconds >= 0"),
        ({"catchup_window": "-1 00:00:00"}, "catchup_window", "catchup_window must be at least 10 seconds"),
        (
            {"start_at_0": "2026-04-01", "start_at_1": "00:00", "end_at_0": "2026-03-01", "end_at_1": "00:00"},
            "end_at",
            "must be after start_at",
        ),
        ({"input_args": '{"a": 1}'}, "input_args", "A JSON array"),
        ({"input_args": "[1,"}, "input_args", "Not valid JSON"),
        ({"input_kwargs": "[1]"}, "input_kwargs", "A JSON object"),
        ({"schedule_id": " "}, "schedule_id", "required"),
        ({"schedule_id": "x" * 201}, "schedule_id", "at most 200 characters"),
        ({"overlap": "sometimes"}, "overlap", "valid choice"),
    ],
)
def test_an_invalid_add_form_says_what_is_wrong_next_to_the_field(
    env: WorkflowEnvironment, admin_client: Client, changes: dict[str, str], field: str, says: str
) -> None:
    errors = form_errors(admin_client.post(f"{ADMIN}add/", form_data(**changes)))
    assert list(errors) == [field], errors
    assert says in " ".join(errors[field])
    assert not Schedule.objects.exists()


def test_a_taken_schedule_id_is_an_error_on_the_id(env: WorkflowEnvironment, admin_client: Client) -> None:
    nightly("report")
    errors = form_errors(admin_client.post(f"{ADMIN}add/", form_data()))
    assert list(errors) == ["schedule_id"]
    assert Schedule.objects.count() == 1


def test_the_messages_of_schedule_values_go_to_the_field_they_name_first() -> None:
    assert field_named_in("a schedule id is a non-empty string of at most 200 characters") == "schedule_id"
    assert field_named_in("a schedule needs exactly one of cron (e.g. '30 2 * * *') and every") == "cron"
    assert field_named_in("end_at (2026-03-01) must be after start_at (2026-04-01)") == "end_at"
    assert field_named_in("args must be a list; got {'kwargs': 1}") == "input_args"
    assert field_named_in("the kwargs are too large") == "input_kwargs"
    assert field_named_in("something else") is None


def test_preview_on_the_add_form_shows_the_next_five_fire_times_and_saves_nothing(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    response = admin_client.post(f"{ADMIN}add/", {**form_data(), "_preview": "Preview fire times"})
    assert response.status_code == 200
    assert not Schedule.objects.exists()
    assert not response.context["adminform"].form.errors
    page = text(response)
    assert "Please correct" not in page
    assert "Next fire times, as in this form" in page
    shown = re.findall(r"(\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CET) \((\d\d:\d\d:\d\d UTC)\)", page)
    assert shown == NIGHTLY_TICKS
    # The values typed stay in the form, and saving it now creates the schedule.
    assert 'value="0 3 * * *"' in response.content.decode()
    assert admin_client.post(f"{ADMIN}add/", form_data()).status_code == 302
    assert Schedule.objects.get().next_tick_at == datetime.datetime(2026, 3, 2, 2, tzinfo=datetime.timezone.utc)


def test_an_interval_preview_is_aligned_to_the_epoch_and_starts_at_start_at(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    data = form_data(cron="", every="300", timezone="UTC", start_at_0="2026-03-01", start_at_1="10:00:00")
    page = text(admin_client.post(f"{ADMIN}add/", {**data, "_preview": "1"}))
    shown = re.findall(r"\w{3} 2026-03-01 (\d\d:\d\d:\d\d) UTC", page)
    assert shown == ["10:00:00", "10:05:00", "10:10:00", "10:15:00", "10:20:00"]


def test_an_invalid_save_still_previews_a_valid_spec(env: WorkflowEnvironment, admin_client: Client) -> None:
    response = admin_client.post(f"{ADMIN}add/", form_data(input_args="not json"))
    assert list(form_errors(response)) == ["input_args"]
    assert re.findall(r"\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CET", text(response)) == [t for t, _ in NIGHTLY_TICKS]
    response = admin_client.post(f"{ADMIN}add/", form_data(cron="nope"))
    assert "Next fire times, as in this form" in text(response)
    assert "CET" not in text(response)


def test_the_change_page_shows_the_next_five_fire_times_its_state_recent_runs_and_actions(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    nightly()
    run = schedule_store.trigger("nightly")
    assert run is not None
    response = admin_client.get(change_url("nightly"))
    assert response.status_code == 200
    page = text(response)
    assert re.findall(r"(\w{3} \d{4}-\d\d-\d\d \d\d:\d\d:\d\d CET) \((\d\d:\d\d:\d\d UTC)\)", page) == NIGHTLY_TICKS
    assert "cron 0 3 * * * (Europe/Paris)" in page and "1 started, 0 skipped, 0 missed" in page
    content = response.content.decode()
    assert f'href="{RUNS}{run.pk}/change/"' in content  # the recent run, linked
    assert f"{RUNS}?workflow_id__startswith=nightly-" in content
    for verb in ("pause", "trigger", "backfill"):
        assert f'href="{action_url("nightly", verb)}"' in content
    assert action_url("nightly", "unpause") not in content
    assert 'name="_preview"' in content
    assert 'name="schedule_id"' not in content  # the id is fixed once created


def test_changing_the_spec_replans_the_next_tick_through_the_store(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    nightly()
    response = admin_client.post(change_url("nightly"), change_data("nightly", cron="30 4 * * *", note="later"))
    assert response.status_code == 302, form_errors(response)
    schedule = Schedule.objects.get(schedule_id="nightly")
    assert (schedule.cron, schedule.note) == ("30 4 * * *", "later")
    assert schedule.next_tick_at == datetime.datetime(2026, 3, 2, 3, 30, tzinfo=datetime.timezone.utc)
    assert schedule.next_fire_at == schedule.next_tick_at
    assert schedule.input == {"args": ["k"], "kwargs": {}}


def test_saving_unchanged_arguments_keeps_the_stored_input_as_it_is(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    """The page shows the stored (encoded) input; saving it untouched must not encode it again."""
    create_schedule("tagged", sc_tick, args=[{"__dict__": "looks like a tag"}], cron="0 3 * * *")
    stored = Schedule.objects.get(schedule_id="tagged").input
    shown = admin_client.get(change_url("tagged")).context["adminform"].form.initial["input_args"]
    response = admin_client.post(change_url("tagged"), change_data("tagged", input_args=shown, note="edited"))
    assert response.status_code == 302, form_errors(response)
    assert Schedule.objects.get(schedule_id="tagged").input == stored


def test_a_change_preview_shows_the_new_times_and_changes_nothing(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    nightly()
    before = Schedule.objects.values().get(schedule_id="nightly")
    data = {**change_data("nightly", cron="0 5 * * *"), "_preview": "1"}
    page = text(admin_client.post(change_url("nightly"), data))
    assert re.findall(r"\w{3} 2026-03-0\d (\d\d:\d\d):00 CET", page) == ["05:00"] * 5
    assert Schedule.objects.values().get(schedule_id="nightly") == before


# -- permissions ------------------------------------------------------------------------------


def test_a_viewer_sees_a_read_only_page_and_no_actions(env: WorkflowEnvironment) -> None:
    nightly()
    client = client_with(*VIEWER)
    listing = client.get(ADMIN)
    assert listing.status_code == 200
    assert 'name="action"' not in listing.content.decode()  # no actions to choose from
    assert f"{ADMIN}add/" not in listing.content.decode()
    page = client.get(change_url("nightly"))
    assert page.status_code == 200
    content = page.content.decode()
    assert 'name="cron"' not in content and 'name="_save"' not in content and 'name="_preview"' not in content
    assert "/actions/" not in content
    assert "0 3 * * *" in content and "&quot;k&quot;" in content  # the values, read-only
    assert len(re.findall(r"\w{3} \d{4}-\d\d-\d\d 03:00:00 CET", text(page))) == 5
    before = Schedule.objects.values().get(schedule_id="nightly")
    assert client.post(change_url("nightly"), change_data("nightly", cron="0 4 * * *")).status_code == 403
    for verb in ("pause", "unpause", "trigger", "backfill"):
        assert client.get(action_url("nightly", verb)).status_code == 403
        assert client.post(action_url("nightly", verb), {"note": "x"}).status_code == 403
    assert client.get(f"{ADMIN}add/").status_code == 403
    assert client.post(f"{ADMIN}{pk('nightly')}/delete/", {"post": "yes"}).status_code == 403
    assert Schedule.objects.values().get(schedule_id="nightly") == before


def test_adding_needs_add_schedule_and_add_workflowinstance(env: WorkflowEnvironment) -> None:
    without = client_with("view_schedule", "add_schedule", username="half")
    assert without.get(f"{ADMIN}add/").status_code == 403
    assert without.post(f"{ADMIN}add/", form_data()).status_code == 403
    assert f"{ADMIN}add/" not in without.get(ADMIN).content.decode()
    creator = client_with(*CREATOR, username="creator")
    assert creator.get(f"{ADMIN}add/").status_code == 200
    assert creator.post(f"{ADMIN}add/", form_data()).status_code == 302
    assert Schedule.objects.filter(schedule_id="report").exists()


def test_change_without_add_workflowinstance_locks_the_workflow_and_its_arguments(env: WorkflowEnvironment) -> None:
    nightly()
    client = client_with(*CHANGER)
    form = client.get(change_url("nightly")).context["adminform"].form
    assert all(form.fields[name].disabled for name in ("workflow_name", "input_args", "input_kwargs"))
    data = change_data("nightly", workflow_name="sc_until_released", input_args='["other"]', cron="0 4 * * *")
    assert client.post(change_url("nightly"), data).status_code == 302
    schedule = Schedule.objects.get(schedule_id="nightly")
    assert (schedule.workflow_name, schedule.input["args"], schedule.cron) == ("sc_tick", ["k"], "0 4 * * *")
    # With it, they can be changed.
    starter = client_with(*STARTER, username="starter")
    assert not starter.get(change_url("nightly")).context["adminform"].form.fields["workflow_name"].disabled
    assert starter.post(change_url("nightly"), data).status_code == 302
    schedule.refresh_from_db()
    assert (schedule.workflow_name, schedule.input["args"]) == ("sc_until_released", ["other"])


def test_changing_to_a_workflow_that_may_not_be_started_is_refused(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    nightly()
    with override_settings(DURABLE={**settings.DURABLE, "API_STARTABLE_WORKFLOWS": ["sc_tick"]}):
        errors = form_errors(
            admin_client.post(change_url("nightly"), change_data("nightly", workflow_name="sc_until_released"))
        )
        assert list(errors) == ["workflow_name"]
        # Other changes to a schedule whose workflow is allowed go through.
        assert admin_client.post(change_url("nightly"), change_data("nightly", note="ok")).status_code == 302
    assert Schedule.objects.get(schedule_id="nightly").workflow_name == "sc_tick"


def test_the_actions_offered_follow_the_permissions(env: WorkflowEnvironment) -> None:
    nightly()

    def offered(client: Client) -> tuple[list[str], list[str]]:
        listing = client.get(ADMIN).content.decode()
        bulk = re.findall(r'<option value="(\w+)_selected"', listing)
        page = client.get(change_url("nightly")).content.decode()
        buttons = re.findall(r"/actions/(\w+)/", page)
        return bulk, buttons

    assert offered(client_with(*VIEWER, username="v")) == ([], [])
    assert offered(client_with(*CHANGER, username="c")) == (["pause", "unpause"], ["pause"])
    assert offered(client_with(*STARTER, username="s")) == (
        ["pause", "unpause", "trigger", "backfill"],
        ["pause", "trigger", "backfill"],
    )
    deleter = client_with("view_schedule", "delete_schedule", username="d")
    assert offered(deleter) == (["delete"], [])


def test_a_changer_without_add_workflowinstance_cannot_trigger_or_backfill(env: WorkflowEnvironment) -> None:
    nightly()
    client = client_with(*CHANGER)
    for verb in ("trigger", "backfill"):
        assert client.get(action_url("nightly", verb)).status_code == 403
        assert client.post(action_url("nightly", verb), backfill_data()).status_code == 403
        selected = {"action": f"{verb}_selected", "_selected_action": [pk("nightly")], "post": "yes", **backfill_data()}
        response = client.post(ADMIN, selected)
        assert response.status_code == 302  # Django: no such action for this user
        assert notes(response)[0][0] == "warning"
    assert not WorkflowInstance.objects.exists()


def test_delete_needs_delete_schedule_and_goes_through_the_store(env: WorkflowEnvironment) -> None:
    nightly()
    run = schedule_store.trigger("nightly")
    url = f"{ADMIN}{pk('nightly')}/delete/"
    assert client_with(*STARTER, username="s").post(url, {"post": "yes"}).status_code == 403
    deleter = client_with("view_schedule", "delete_schedule", username="d")
    assert deleter.post(url, {"post": "yes"}).status_code == 302
    assert not Schedule.objects.exists()
    assert WorkflowInstance.objects.filter(pk=run.pk).exists()  # its runs go on
    every_five_minutes("a")
    every_five_minutes("b")
    selected = {"action": "delete_selected", "_selected_action": [pk("a"), pk("b")], "post": "yes"}
    assert deleter.post(ADMIN, selected).status_code == 302
    assert not Schedule.objects.exists()


# -- the actions on one schedule -----------------------------------------------------------------


def backfill_data(start: str = "2026-02-26T00:00:00", end: str = "2026-03-01T00:00:00") -> dict[str, str]:
    return {"start": start, "end": end}


def test_pause_with_a_note_then_unpause(env: WorkflowEnvironment) -> None:
    nightly()
    client = client_with(*CHANGER)
    page = client.get(action_url("nightly", "pause"))
    assert page.status_code == 200 and 'name="note"' in page.content.decode()
    assert Schedule.objects.get(schedule_id="nightly").paused is False  # a GET changes nothing
    response = client.post(action_url("nightly", "pause"), {"note": "migrating"})
    assert response.status_code == 302 and response["Location"] == change_url("nightly")
    assert notes(response) == [("success", "Paused schedule 'nightly'.")]
    schedule = Schedule.objects.get(schedule_id="nightly")
    assert (schedule.paused, schedule.note, schedule.next_fire_at) == (True, "migrating", None)
    # Pausing again is not legal: refused, nothing changes.
    response = client.post(action_url("nightly", "pause"), {"note": "again"})
    assert notes(response) == [("error", "Cannot pause schedule 'nightly': it is already paused.")]
    assert Schedule.objects.get(schedule_id="nightly").note == "migrating"
    page = client.get(change_url("nightly")).content.decode()
    assert action_url("nightly", "unpause") in page and action_url("nightly", "pause") not in page
    assert "Paused: these ticks are dropped" in page

    response = client.post(action_url("nightly", "unpause"), {"note": ""})
    assert notes(response)[0][0] == "success"
    schedule.refresh_from_db()
    assert (schedule.paused, schedule.note) == (False, "migrating")  # an empty note keeps it
    assert schedule.next_fire_at == datetime.datetime(2026, 3, 2, 2, tzinfo=datetime.timezone.utc)
    response = client.post(action_url("nightly", "unpause"), {"note": ""})
    assert notes(response) == [("error", "Cannot unpause schedule 'nightly': it is not paused.")]


def test_trigger_starts_a_run_now_and_links_it(env: WorkflowEnvironment) -> None:
    nightly(paused=True)
    client = client_with(*STARTER)
    assert client.get(action_url("nightly", "trigger")).status_code == 200
    assert not WorkflowInstance.objects.exists()
    response = client.post(action_url("nightly", "trigger"))
    run = WorkflowInstance.objects.get()
    assert run.workflow_id == "nightly-20260301T090000.000Z" and run.workflow_name == "sc_tick"
    assert notes(response) == [("success", f"Triggered schedule 'nightly': started run {run.workflow_id}.")]
    started = HistoryEvent.objects.get(instance=run, seq=1)
    assert started.payload["schedule"] == {
        "schedule_id": "nightly",
        "tick": "2026-03-01T09:00:00+00:00",
        "reason": "trigger",
    }
    # A second trigger while that run is open: the overlap policy (skip) drops it, and says so.
    with clock_at(START + datetime.timedelta(seconds=1)):
        response = client.post(action_url("nightly", "trigger"))
    assert notes(response) == [
        (
            "success",
            "Triggered schedule 'nightly': its overlap policy (skip) skipped the run: the previous run is still open.",
        )
    ]
    assert WorkflowInstance.objects.count() == 1


def test_trigger_and_backfill_refuse_a_workflow_that_may_not_be_started(env: WorkflowEnvironment) -> None:
    nightly()
    client = client_with(*STARTER)
    with override_settings(DURABLE={**settings.DURABLE, "API_STARTABLE_WORKFLOWS": ["sc_until_released"]}):
        assert "/actions/trigger/" not in client.get(change_url("nightly")).content.decode()
        for verb in ("trigger", "backfill"):
            response = client.post(action_url("nightly", verb), backfill_data())
            assert response.status_code == 302
            [(level, message)] = notes(response)
            assert level == "error" and "its workflow cannot be started from here" in message
    assert not WorkflowInstance.objects.exists()


def test_backfill_asks_for_the_interval_and_starts_the_ticks_in_it(env: WorkflowEnvironment) -> None:
    nightly(overlap="allow_all")
    client = client_with(*STARTER)
    page = client.get(action_url("nightly", "backfill")).content.decode()
    assert 'name="start"' in page and 'name="end"' in page and 'type="datetime-local"' in page
    response = client.post(
        action_url("nightly", "backfill"), backfill_data("2026-03-01T00:00:00", "2026-02-26T00:00:00")
    )
    assert response.status_code == 200 and "The end is before the start." in text(response)
    response = client.post(action_url("nightly", "backfill"), backfill_data())
    assert response.status_code == 302
    ids = sorted(WorkflowInstance.objects.values_list("workflow_id", flat=True))
    assert ids == [f"nightly-202602{day}T020000Z" for day in ("26", "27", "28")]
    [(level, message)] = notes(response)
    assert (
        level == "success" and "started 3 run(s), buffered 0, skipped 0 by the overlap policy, 0 already run" in message
    )
    # Again: those ticks have run already.
    response = client.post(action_url("nightly", "backfill"), backfill_data())
    assert "started 0 run(s), buffered 0, skipped 0 by the overlap policy, 3 already run" in notes(response)[0][1]


def test_a_backfill_of_too_many_ticks_is_a_form_error(env: WorkflowEnvironment, admin_client: Client) -> None:
    create_schedule("fast", sc_tick, args=["k"], every=1)
    response = admin_client.post(
        action_url("fast", "backfill"), backfill_data("2026-03-01T08:00:00", "2026-03-01T09:00:00")
    )
    assert response.status_code == 200
    assert "more than 1000 ticks" in text(response)
    assert not WorkflowInstance.objects.exists()


def test_an_unknown_action_or_schedule_is_404(env: WorkflowEnvironment, admin_client: Client) -> None:
    nightly()
    assert admin_client.get(action_url("nightly", "explode")).status_code == 404
    assert admin_client.get(f"{ADMIN}99999/actions/pause/").status_code == 404


# -- the changelist's actions -----------------------------------------------------------------------


def bulk(client: Client, action: str, *schedule_ids: str, confirm: bool, **data: str) -> Any:
    posted: dict[str, Any] = {"action": action, "_selected_action": [pk(s) for s in schedule_ids], **data}
    if confirm:
        posted["post"] = "yes"
    return client.post(ADMIN, posted)


def test_pause_selected_confirms_then_pauses_only_the_unpaused(env: WorkflowEnvironment) -> None:
    for name in ("a", "b"):
        every_five_minutes(name)
    every_five_minutes("c", paused=True, note="earlier")
    client = client_with(*CHANGER)
    page = bulk(client, "pause_selected", "a", "b", "c", confirm=False)
    assert page.status_code == 200
    assert "Pause these 2 schedules?" in text(
        page
    ) and "1 other selected schedule is skipped (it is already paused)" in text(page)
    assert not Schedule.objects.filter(schedule_id__in=["a", "b"], paused=True).exists()
    response = bulk(client, "pause_selected", "a", "b", "c", confirm=True, note="maintenance")
    assert response.status_code == 302
    assert notes(response) == [
        ("success", "Paused 2 schedule(s). Paused schedule 'a'. Paused schedule 'b'."),
        ("warning", "Skipped 1 schedule(s): it is already paused."),
    ]
    assert dict(Schedule.objects.values_list("schedule_id", "note")) == {
        "a": "maintenance",
        "b": "maintenance",
        "c": "earlier",
    }
    assert Schedule.objects.filter(paused=True).count() == 3
    response = bulk(client, "pause_selected", "a", confirm=False)
    assert notes(response) == [
        ("warning", "Pause: none of the 1 selected schedule(s) qualifies (it is already paused); nothing was done.")
    ]


def test_unpause_and_trigger_selected(env: WorkflowEnvironment) -> None:
    every_five_minutes("a", paused=True)
    every_five_minutes("b")
    client = client_with(*STARTER)
    response = bulk(client, "unpause_selected", "a", "b", confirm=True)
    assert notes(response)[0] == (
        "success",
        "Unpaused 1 schedule(s). Unpaused schedule 'a': it fires from its next tick after now.",
    )
    assert not Schedule.objects.filter(paused=True).exists()
    assert "Trigger now these 2 schedules?" in text(bulk(client, "trigger_selected", "a", "b", confirm=False))
    assert not WorkflowInstance.objects.exists()
    response = bulk(client, "trigger_selected", "a", "b", confirm=True)
    assert sorted(WorkflowInstance.objects.values_list("workflow_id", flat=True)) == [
        "a-20260301T090000.000Z",
        "b-20260301T090000.000Z",
    ]
    assert notes(response)[0][1].startswith("Triggered 2 schedule(s). Triggered schedule 'a': started run a-2026")


def test_backfill_selected_asks_for_the_interval(env: WorkflowEnvironment) -> None:
    nightly("n1")
    nightly("n2")
    client = client_with(*STARTER)
    page = bulk(client, "backfill_selected", "n1", "n2", confirm=False)
    assert 'name="start"' in page.content.decode()
    page = bulk(client, "backfill_selected", "n1", "n2", confirm=True, start="2026-03-01T00:00:00", end="")
    assert page.status_code == 200 and "This field is required." in text(page)
    assert not WorkflowInstance.objects.exists()
    response = bulk(
        client,
        "backfill_selected",
        "n1",
        "n2",
        confirm=True,
        **backfill_data("2026-02-28T00:00:00", "2026-03-01T00:00:00"),
    )
    assert response.status_code == 302
    assert sorted(WorkflowInstance.objects.values_list("workflow_id", flat=True)) == [
        "n1-20260228T020000Z",
        "n2-20260228T020000Z",
    ]
    assert notes(response)[0][1].startswith("Backfilled 2 schedule(s).")


# -- the run's page and the dashboard -------------------------------------------------------------


def test_a_run_started_by_a_schedule_links_to_it(env: WorkflowEnvironment, admin_client: Client) -> None:
    nightly()
    run = schedule_store.trigger("nightly")
    page = admin_client.get(f"{RUNS}{run.pk}/change/")
    assert page.status_code == 200
    content = page.content.decode()
    assert f'<a href="{change_url("nightly")}" class="durable-schedule-link">nightly</a>' in content
    assert "trigger, tick 2026-03-01 09:00:00 UTC" in text(page)
    # Without the permission to see schedules: the id, no link.
    viewer = client_with("view_workflowinstance")
    content = viewer.get(f"{RUNS}{run.pk}/change/").content.decode()
    assert 'id="started-by-schedule"' in content and "durable-schedule-link" not in content
    # Once the schedule is deleted, the run still names it.
    get_schedule("nightly").delete()
    assert "nightly (deleted)" in text(admin_client.get(f"{RUNS}{run.pk}/change/"))


def test_the_schedule_link_costs_the_run_page_one_query_and_the_run_list_none(
    env: WorkflowEnvironment, admin_client: Client
) -> None:
    nightly(overlap="allow_all")
    scheduled = schedule_store.trigger("nightly")
    plain = env.start(sc_tick, "k", workflow_id="by-hand")
    assert scheduled is not None

    def queries(url: str) -> int:
        with CaptureQueriesContext(connection) as captured:
            assert admin_client.get(url).status_code == 200
        return len(captured)

    plain_pk = WorkflowInstance.objects.get(workflow_id=plain.workflow_id).pk
    assert queries(f"{RUNS}{scheduled.pk}/change/") == queries(f"{RUNS}{plain_pk}/change/")
    few = queries(RUNS)
    for n in range(1, 11):
        with clock_at(START + datetime.timedelta(seconds=n)):
            schedule_store.trigger("nightly")
    assert WorkflowInstance.objects.count() == 12
    assert queries(RUNS) == few


def test_the_dashboard_lists_the_next_and_the_late_schedules(env: WorkflowEnvironment, admin_client: Client) -> None:
    nightly()
    every_five_minutes("often")
    every_five_minutes("stopped", paused=True)
    with clock_at(START + datetime.timedelta(minutes=10)):  # 09:05 was due 5 minutes ago
        response = admin_client.get(DASHBOARD)
    assert response.status_code == 200
    content = response.content.decode()
    late = re.search(r'<tbody id="late-schedules">(.*?)</tbody>', content, re.S).group(1)
    upcoming = re.search(r'<tbody id="next-schedules">(.*?)</tbody>', content, re.S).group(1)
    assert f'href="{change_url("often")}"' in late and "late: due 5m ago" in html.unescape(late)
    assert f'href="{change_url("nightly")}"' in upcoming and "in 16h50m" in upcoming
    assert "stopped" not in late + upcoming
    assert "Schedules : 3, 1 paused" in text(response)
    # Only for users who may see schedules.
    runs_only = client_with("view_workflowinstance")
    assert 'id="schedules"' not in runs_only.get(DASHBOARD).content.decode()
