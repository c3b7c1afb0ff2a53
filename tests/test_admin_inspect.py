"""The admin as the debugger: finding runs (the list) and inspecting one (its page).

Runs are driven by ``WorkflowEnvironment`` into every state a page has to show,
then read through the Django test client like a staff user would.
"""

from __future__ import annotations

import datetime
import re
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from urllib.parse import quote

import pytest
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

import django_durable as durable
from django_durable import store
from django_durable.admin import actions
from django_durable.admin.instances import HISTORY_EDGE, HISTORY_PAGE, STATUS_COLOURS
from django_durable.models import PAYLOAD_COLUMNS, WorkflowInstance, WorkItem
from django_durable.testing import WorkflowEnvironment
from django_durable.tokens import make_task_token
from tests.testapp import inspect_workflows as iw
from tests.testapp import testing_workflows as tw
from tests.testapp.workflows import fan_out, tw_explodes

pytestmark = [pytest.mark.django_db, pytest.mark.database]

LIST = reverse("admin:django_durable_workflowinstance_changelist")
# In the past, so that the real clock the pages use runs after every event.
START = (timezone.now() - datetime.timedelta(days=3)).replace(microsecond=0)
SVG = "{http://www.w3.org/2000/svg}"


@pytest.fixture
def env() -> Iterator[WorkflowEnvironment]:
    with WorkflowEnvironment(start_time=START) as environment:
        yield environment


def run_of(handle: durable.WorkflowHandle) -> WorkflowInstance:
    return WorkflowInstance.objects.get(run_id=handle.run_id)


def change_url(run: WorkflowInstance) -> str:
    return reverse("admin:django_durable_workflowinstance_change", args=[run.pk])


def at_url(run: WorkflowInstance, seq: int) -> str:
    return reverse("admin:django_durable_workflowinstance_at", args=[run.pk, seq])


def page(client, url: str) -> str:
    response = client.get(url)
    assert response.status_code == 200, response
    return response.content.decode()


def listed(client, query: str = "") -> list[str]:
    response = client.get(LIST + query)
    assert response.status_code == 200
    return sorted(run.workflow_id for run in response.context["cl"].result_list)


def timeline_of(html: str) -> ET.Element:
    match = re.search(r'<svg xmlns="http://www.w3.org/2000/svg" class="durable-timeline".*?</svg>', html, re.DOTALL)
    assert match, "no timeline on the page"
    return ET.fromstring(match.group(0))


def bar_kinds(root: ET.Element) -> list[str]:
    classes = [(rect.get("class") or "").split() for rect in root.iter(f"{SVG}rect")]
    return [names[1] for names in classes if names[:1] == ["bar"]]


def run_link(run: WorkflowInstance, rel: str) -> str:
    return f'<a href="{change_url(run)}" class="durable-run-link" data-rel="{rel}">'


# -- find: the list ---------------------------------------------------------------------


@pytest.fixture
def three_runs(env: WorkflowEnvironment) -> dict[str, WorkflowInstance]:
    done = env.start(fan_out, 1, workflow_id="find-done")
    env.result(done)
    failed = env.start(tw_explodes, "k", workflow_id="find-failed")
    with pytest.raises(durable.WorkflowFailed):
        env.result(failed)
    env.advance(days=1)
    sleeping = env.start(tw.th_long_sleep, 30, workflow_id="find-sleeping")
    env.run_until_idle()
    return {"done": run_of(done), "failed": run_of(failed), "sleeping": run_of(sleeping)}


def test_the_list_shows_names_ids_coloured_status_times_and_duration_and_links_the_dashboard(admin_client, three_runs):
    html = page(admin_client, LIST)
    for run in three_runs.values():
        assert run.workflow_id in html and run.workflow_name in html
        assert f'<code title="{run.run_id}">{str(run.run_id)[:8]}</code>' in html
        assert change_url(run) in html
    assert f'<span class="durable-status" style="background:{STATUS_COLOURS["failed"]}">Failed</span>' in html
    assert f'<span class="durable-status" style="background:{STATUS_COLOURS["running"]}">Running</span>' in html
    done = three_runs["done"]
    assert timezone.localtime(done.created_at).strftime("%Y-%m-%d %H:%M:%S") in html
    assert timezone.localtime(done.closed_at).strftime("%Y-%m-%d %H:%M:%S") in html
    for column in ("workflow name", "workflow id", "run id", "status", "created", "updated", "closed", "duration"):
        assert f">{column.capitalize()}<" in html or f">{column}<" in html.lower()
    assert "so far</i>" in html  # the open run's duration runs on
    assert f'href="{reverse("admin:django_durable_workflowinstance_dashboard")}"' in html


def test_quick_links_open_the_failed_and_running_views(admin_client, three_runs):
    html = page(admin_client, LIST)
    for query in ("?status__exact=failed", "?status__exact=running", "?task=failing"):
        assert f'href="{query}"' in html
    assert listed(admin_client, "?status__exact=failed") == ["find-failed"]
    assert listed(admin_client, "?status__exact=running") == ["find-sleeping"]
    assert 'href="?status__exact=failed" class="active"' in page(admin_client, LIST + "?status__exact=failed")


def test_filters_by_status_workflow_name_and_date(admin_client, three_runs):
    assert listed(admin_client, "?status__exact=completed") == ["find-done"]
    assert listed(admin_client, "?workflow_name=tw_explodes") == ["find-failed"]
    assert listed(admin_client) == ["find-done", "find-failed", "find-sleeping"]
    day_one, day_two = START, START + datetime.timedelta(days=1)
    for day, expected in ((day_one, ["find-done", "find-failed"]), (day_two, ["find-sleeping"])):
        local = timezone.localtime(day)
        midnight = local.replace(hour=0, minute=0, second=0, microsecond=0)
        assert (
            listed(
                admin_client,
                f"?created_at__gte={quote(str(midnight))}"
                f"&created_at__lt={quote(str(midnight + datetime.timedelta(days=1)))}",
            )
            == expected
        )
    html = page(admin_client, LIST)
    assert 'id="changelist-filter"' in html
    for title in ("status", "workflow task", "workflow name", "created at", "closed at"):
        assert f"By {title}" in html


def test_search_finds_runs_by_workflow_id_or_part_of_it_and_by_run_id_or_its_first_characters(admin_client, three_runs):
    failed = three_runs["failed"]
    assert listed(admin_client, "?q=find-failed") == ["find-failed"]
    assert listed(admin_client, "?q=find") == ["find-done", "find-failed", "find-sleeping"]
    assert listed(admin_client, f"?q={failed.run_id}") == ["find-failed"]
    assert listed(admin_client, f"?q={str(failed.run_id).upper()}") == ["find-failed"]
    assert listed(admin_client, f"?q={str(failed.run_id)[:8]}") == ["find-failed"]
    assert listed(admin_client, "?q=nothing-like-this") == []


def test_the_list_reads_the_same_queries_for_5_and_50_runs_and_never_the_big_json_columns(
    admin_client, django_assert_num_queries, env
):
    def start(count: int, offset: int) -> None:
        for index in range(offset, offset + count):
            durable.start_workflow(fan_out, 1, workflow_id=f"many-{index}")

    start(3, 0)
    env.start(fan_out, 2, workflow_id="many-done")
    env.start(iw.in_changes_its_code, workflow_id="many-stuck")
    env.run_until_idle()
    iw.INSPECT_CODE["version"] = 2
    try:
        durable.get_workflow("many-stuck").signal("go")
        env.run_until_idle()
    finally:
        iw.INSPECT_CODE["version"] = 1
    assert WorkflowInstance.objects.count() == 5
    page(admin_client, LIST)  # warms the process's caches (content types), which would count once
    with CaptureQueriesContext(connection) as five:
        html = page(admin_client, LIST)
    assert "⚠ task failing" in html  # read without reading the error itself
    start(45, 3)
    with django_assert_num_queries(len(five.captured_queries)):
        assert len(listed(admin_client)) == 50

    # MySQL quotes names with backticks, the others with double quotes.
    (rows,) = [sql for q in five.captured_queries if '"task_failing"' in (sql := q["sql"].replace("`", '"'))]
    selected = rows.split(" FROM ")[0]
    for column in set(PAYLOAD_COLUMNS) - {"task_error"}:
        assert f'."{column}"' not in selected, column
    # Only whether it is set (MySQL's JSON_UNQUOTE(...) IS NOT NULL reads no more to the client).
    assert selected.count('."task_error"') == 1
    assert re.search(r'\."task_error"\)? IS NOT NULL', selected)


# -- inspect: one run --------------------------------------------------------------------


def test_a_completed_run_shows_input_result_variables_history_with_time_travel_links_and_its_picture(admin_client, env):
    handle = env.start(iw.in_everything, 3, workflow_id="inspect-everything")
    env.advance(seconds=200)
    handle.signal("approve", {"by": "ann"})
    env.result(handle)
    run = run_of(handle)
    html = page(admin_client, change_url(run))

    assert "<pre>[\n  3\n]</pre>" in html  # args, pretty-printed
    assert "&quot;decision&quot;: {\n    &quot;by&quot;: &quot;ann&quot;\n  }" in html  # the result
    assert "<code>stage</code></th><td><pre>&quot;done&quot;</pre>" in html
    for seq in range(1, run.history_length + 1):
        assert f'<a href="{at_url(run, seq)}"' in html
    for kind in (
        "ExecutionStarted",
        "ActivityScheduled",
        "ActivityCompleted",
        "TimerFired",
        "EventRaised",
        "ChildWorkflowCompleted",
        "WorkflowCompleted",
    ):
        assert f"<td>{kind}</td>" in html
    # The retried activity's attempt, from its completion's payload, has a column of its own.
    completed = run.history.get(kind="ActivityCompleted", name="in_twice")
    row = rf">{completed.seq}</a></td>.*?<td>ActivityCompleted</td>\s*<td>in_twice</td>\s*<td>1</td>\s*<td>2</td>"
    assert re.search(row, html, re.DOTALL)
    # Long payloads are cut, with the whole of it a click away.
    scheduled = run.history.get(kind="ActivityScheduled", name="in_twice")
    assert "maximum_attempts" in str(scheduled.payload)
    assert re.search(
        r'<details><summary><code class="preview">\{&quot;args&quot;: \[3\].*?…</code></summary>\s*'
        r"<pre>\{\n  &quot;args&quot;: \[\n    3\n  \],",
        html,
    )
    # Names are escaped everywhere, the picture included.
    assert "in_odd<name>&co" not in html and "<td>in_odd&lt;name&gt;&amp;co</td>" in html
    kinds = bar_kinds(timeline_of(html))
    assert kinds.count("activity") == 2 and kinds.count("timer") == 2 and kinds.count("child") == 1
    assert kinds.count("wait") == 1 and kinds.count("wait-timeout") == 1
    assert "Nothing pending." in html
    assert 'name="_save"' not in html and "<h1>View workflow instance</h1>" in html
    # Whatever actions the run offers now are buttons.
    offered = actions.object_actions(admin_client.get(change_url(run)).wsgi_request, run)
    for action in offered:
        assert f'href="{action["url"]}"' in html


def test_a_failed_run_shows_its_error_and_traceback(admin_client, env):
    handle = env.start(tw_explodes, "lost-key", workflow_id="inspect-failed")
    with pytest.raises(durable.WorkflowFailed):
        env.result(handle)
    html = page(admin_client, change_url(run_of(handle)))
    assert '<div class="module durable-section durable-problem" id="error">' in html
    assert "Error: LookupError</h2>" in html and "<p>lost-key: nothing found after 3</p>" in html
    assert re.search(
        r'<pre class="traceback">Traceback \(most recent call last\):.*in tw_explodes.*LookupError: '
        r"lost-key: nothing found after 3\s*</pre>",
        html,
        re.DOTALL,
    )
    assert '<tr class="event-WorkflowFailed bad">' in html


def test_a_running_run_shows_pending_work_with_lease_attempt_last_error_and_the_token_of_an_awaiting_attempt(
    admin_client, env
):
    retrying = env.start(iw.in_everything, 1, workflow_id="inspect-retrying")
    awaiting = env.start(tw.th_awaits_external, "order-1", workflow_id="inspect-awaiting")
    env.run_until_idle()  # in_twice failed its first attempt; th_external awaits completion

    (item,) = WorkItem.objects.filter(instance=run_of(awaiting))
    # Signed at render time with a timestamp in seconds: one of these two is the page's.
    tokens = [make_task_token(item_id=item.pk, run_id=awaiting.run_id, task_id=item.task_id, attempt=item.attempt)]
    html = page(admin_client, change_url(run_of(awaiting)))
    tokens.append(make_task_token(item_id=item.pk, run_id=awaiting.run_id, task_id=item.task_id, attempt=item.attempt))
    assert any(f'<code class="durable-token">{token}</code>' in html for token in tokens)
    assert "<td>durable-testing</td>" in html and "<td>th_external</td>" in html

    # The retry falls due (the environment's clock stood still; the real one has moved on): a worker takes it.
    env.__exit__(None, None, None)
    (claim,) = store.claim(owner="worker-7", kind="activity", queues=["default"], limit=1, lease_seconds=300)
    assert claim.name == "in_twice" and claim.attempt == 2
    html = page(admin_client, change_url(run_of(retrying)))
    row = re.search(r"<tr>\s*<td>Activity task</td>\s*<td>in_twice</td>.*?</tr>", html, re.DOTALL).group(0)
    cells = re.findall(r"<td>(.*?)</td>", row, re.DOTALL)
    assert cells[5] == "2" and cells[6] == "worker-7"
    assert timezone.localtime(claim.lease_expires_at).strftime("%Y-%m-%d %H:%M:%S") in cells[7]
    assert "ConnectionError: first attempt &lt;always&gt; fails &amp; retries" in cells[10]
    (open_bar,) = [r for r in timeline_of(html).iter(f"{SVG}rect") if r.get("class") == "bar activity-open"]
    assert "leased by worker-7" in open_bar.find(f"{SVG}title").text
    assert "activity &#x27;in_twice&#x27;" in html  # what it waits on


def test_a_suspended_run_shows_its_status_and_the_suspension_in_history(admin_client, env):
    handle = env.start(tw.th_long_sleep, 30, workflow_id="inspect-suspended")
    env.run_until_idle()
    handle.suspend("maintenance window")
    run = run_of(handle)
    html = page(admin_client, change_url(run))
    assert f'style="background:{STATUS_COLOURS["suspended"]}">Suspended</span>' in html
    assert "<td>ExecutionSuspended</td>" in html and "maintenance window" in html
    assert "<code>sleeping</code></th><td><pre>true</pre>" in html
    markers = [
        line.find(f"{SVG}title").text
        for line in timeline_of(html).iter(f"{SVG}line")
        if line.find(f"{SVG}title") is not None
    ]
    assert any(text.startswith("ExecutionSuspended") for text in markers)
    assert "<td>Timer</td>" in html  # its timer still pending, parked while suspended


def test_a_failing_workflow_task_is_shown_first_with_its_traceback(admin_client, env):
    handle = env.start(iw.in_changes_its_code, workflow_id="inspect-nondeterminism")
    env.run_until_idle()
    iw.INSPECT_CODE["version"] = 2  # a deploy that changed the code under a running workflow
    try:
        handle.signal("go")
        env.run_until_idle()
    finally:
        iw.INSPECT_CODE["version"] = 1
    run = run_of(handle)
    assert run.task_error["type"].endswith("NonDeterminismError")
    html = page(admin_client, change_url(run))
    problem = html.index('id="task-error"')
    assert problem < html.index("fieldset")  # above everything else
    assert "The workflow task is failing: django_durable.exceptions.NonDeterminismError</h2>" in html
    assert "history recorded activity &#x27;in_steps&#x27;, the code asked for timer" in html
    assert "1 failure so far." in html
    # Raised by the engine, not by the code: its "traceback" is the exception alone.
    assert re.search(
        r"<details open><summary>Traceback</summary><pre>django_durable.exceptions.NonDeterminismError: "
        r"Workflow code does not match its history",
        html,
    )
    assert listed(admin_client, "?task=failing") == ["inspect-nondeterminism"]

    tw.TASK_CRASHES["left"] = 1
    try:
        crashing = env.start(tw.th_task_crashes_then_works, workflow_id="inspect-crash")
        env.run_until_idle()
    finally:
        tw.TASK_CRASHES["left"] = 0
    html = page(admin_client, change_url(run_of(crashing)))
    traceback = (
        r"<details open><summary>Traceback</summary><pre>Traceback \(most recent call last\):.*"
        r"in th_task_crashes_then_works.*SystemExit: simulated crash of the workflow task"
    )
    assert re.search(traceback, html, re.DOTALL)


def test_parent_and_children_link_to_each_other(admin_client, env):
    handle = env.start(tw.th_parent, 2, workflow_id="inspect-parent")
    env.result(handle)
    parent = run_of(handle)
    children = list(parent.children.order_by("created_at"))
    assert len(children) == 3
    html = page(admin_client, change_url(parent))
    for child in children:
        assert run_link(child, "child") in html
    child_html = page(admin_client, change_url(children[0]))
    assert run_link(parent, "parent") in child_html
    assert f"(call #{children[0].parent_task_id}, on parent close: terminate)" in child_html
    assert f'style="background:{STATUS_COLOURS["failed"]}">Failed</span>' in html  # the failing child's badge
    assert listed(admin_client, f"?parent__exact={parent.pk}") == sorted(c.workflow_id for c in children)


def test_continue_as_new_runs_link_back_and_forth_and_reruns_link_to_their_source(admin_client, env):
    handle = env.start(tw.th_counter, 0, 2, workflow_id="inspect-counter")
    env.result(handle)
    first, middle, last = WorkflowInstance.objects.filter(workflow_id="inspect-counter").order_by("created_at")
    html = page(admin_client, change_url(middle))
    assert run_link(first, "continued-from") in html and run_link(last, "continued-as") in html
    assert f'style="background:{STATUS_COLOURS["continued_as_new"]}">Continued as new</span>' in html
    assert f'href="{LIST}?workflow_id=inspect-counter"' in html
    assert listed(admin_client, "?workflow_id=inspect-counter") == ["inspect-counter"] * 3

    failed = env.start(tw_explodes, "k", workflow_id="inspect-rerun")
    with pytest.raises(durable.WorkflowFailed):
        env.result(failed)
    source = run_of(failed)
    rerun = run_of(durable.get_workflow("inspect-rerun", source.run_id).rerun(2))
    html = page(admin_client, change_url(rerun))
    assert run_link(source, "rerun-of") in html and "(from event 2)" in html
    assert run_link(rerun, "rerun") in page(admin_client, change_url(source))


def test_a_long_history_opens_on_its_first_and_last_events_and_pages_through_the_rest(admin_client, env):
    handle = env.start(fan_out, 110, workflow_id="inspect-long")
    env.result(handle)
    run = run_of(handle)
    total = run.history_length
    assert total > 2 * HISTORY_PAGE

    html = page(admin_client, change_url(run))
    shown = {int(seq) for seq in re.findall(rf'<a href="{LIST}{run.pk}/at/(\d+)/" title=', html)}
    assert shown == set(range(1, HISTORY_EDGE + 1)) | set(range(total - HISTORY_EDGE + 1, total + 1))
    assert f"… {total - 2 * HISTORY_EDGE} events not shown ({HISTORY_EDGE + 1}–{total - HISTORY_EDGE})" in html

    html = page(admin_client, change_url(run) + "?history_page=2")
    shown = {int(seq) for seq in re.findall(rf'<a href="{LIST}{run.pk}/at/(\d+)/" title=', html)}
    assert shown == set(range(HISTORY_PAGE + 1, 2 * HISTORY_PAGE + 1))
    assert 'href="?history_page=1#history" rel="prev"' in html and 'href="?history_page=3#history" rel="next"' in html
    # The picture still covers the whole run.
    assert bar_kinds(timeline_of(html)).count("activity") == 110


@pytest.mark.parametrize("larger", [50, 110], ids=["100-events", "paged-history"])
def test_the_run_page_reads_the_same_queries_for_5_and_100_events(admin_client, django_assert_num_queries, env, larger):
    small = env.start(fan_out, 1, workflow_id="count-small")
    big = env.start(fan_out, larger, workflow_id="count-big")
    env.result(small)
    env.result(big)
    assert run_of(small).history_length <= 6 and run_of(big).history_length >= 100
    page(admin_client, change_url(run_of(small)))  # warms the process's caches (content types)
    with CaptureQueriesContext(connection) as baseline:
        page(admin_client, change_url(run_of(small)))
    with django_assert_num_queries(len(baseline.captured_queries)):
        page(admin_client, change_url(run_of(big)))


def test_the_run_page_reads_the_same_queries_for_2_and_12_children(admin_client, django_assert_num_queries, env):
    counts = []
    for n in (1, 11):  # n sleepy children and one failing child
        handle = env.start(tw.th_parent, n, workflow_id=f"count-parent-{n}")
        env.result(handle)
        page(admin_client, change_url(run_of(handle)))  # warms the process's caches (content types)
        with CaptureQueriesContext(connection) as queries:
            html = page(admin_client, change_url(run_of(handle)))
        assert html.count('data-rel="child"') == n + 1
        counts.append(len(queries.captured_queries))
    assert counts[0] == counts[1]


# -- who may look ---------------------------------------------------------------------------


def test_only_staff_with_the_view_permission_see_the_pages_and_nobody_can_edit(client, env):
    handle = env.start(fan_out, 1, workflow_id="perm-run")
    env.result(handle)
    run = run_of(handle)
    users = get_user_model().objects
    login = reverse("admin:login")

    assert client.get(LIST)["Location"].startswith(f"{login}?next=")
    client.force_login(users.create_user("visitor", is_staff=False))
    for url in (LIST, change_url(run)):
        response = client.get(url)
        assert response.status_code == 302 and response["Location"].startswith(f"{login}?next=")

    client.force_login(users.create_user("staff-no-perms", is_staff=True))
    assert client.get(LIST).status_code == 403
    assert client.get(change_url(run)).status_code == 403

    viewer = users.create_user("viewer", is_staff=True)
    viewer.user_permissions.add(Permission.objects.get(codename="view_workflowinstance"))
    client.force_login(viewer)
    assert listed(client) == ["perm-run"]
    html = page(client, change_url(run))
    assert "<h1>View workflow instance</h1>" in html and 'name="_save"' not in html
    assert "<td>ActivityCompleted</td>" in html and timeline_of(html) is not None
    before = run.history_length
    assert client.post(change_url(run), {"workflow_id": "edited"}).status_code == 403
    assert client.post(reverse("admin:django_durable_workflowinstance_delete", args=[run.pk])).status_code == 403
    run.refresh_from_db()
    assert run.workflow_id == "perm-run" and run.history.count() == before
