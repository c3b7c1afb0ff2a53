"""The permission table (docs/http-api.md, "Permissions"): each operation needs one model permission of
WorkflowInstance, in the HTTP API and in the admin alike. Staff status alone grants nothing."""

from __future__ import annotations

import importlib
import json
from collections.abc import Iterator
from typing import Any

import pytest
import requests
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Permission
from django.db import connection
from django.test import Client
from rest_framework.decorators import action
from rest_framework.response import Response
from rest_framework.test import APIClient, APIRequestFactory, force_authenticate

import django_durable as durable
from django_durable.api.views import WorkflowViewSet
from django_durable.models import WorkflowInstance
from django_durable.testing import WorkflowEnvironment
from tests.conftest import WORKFLOW_PERMISSIONS, grant
from tests.test_admin_actions import (
    ADMIN,
    START,
    change_url,
    mixed_runs,
    run_for,
    select,
    valid_post,
)
from tests.test_admin_actions import snapshot as run_snapshot
from tests.test_api import WORKFLOWS, detail, snapshot
from tests.testapp import actions_workflows as aw
from tests.testapp.workflows import api_greet

pytestmark = pytest.mark.database

VIEW, ADD, OPERATE, DELETE = WORKFLOW_PERMISSIONS
DENIED = {"code": "permission_denied", "detail": "You do not have permission to perform this action."}


def make_user(username: str, *codenames: str, staff: bool = True, superuser: bool = False) -> Any:
    users = get_user_model().objects
    if superuser:
        return users.create_superuser(username, f"{username}@example.com", "pw")
    user = users.create_user(username, password="pw", is_staff=staff)
    if codenames:
        grant(user, *codenames)
    return user


def all_but(codename: str) -> tuple[str, ...]:
    return tuple(other for other in WORKFLOW_PERMISSIONS if other != codename)


# -- the HTTP API, over real HTTP ----------------------------------------------------------------


def make_runs() -> None:
    durable.start_workflow(api_greet, "ada", workflow_id="open-run")
    durable.start_workflow(api_greet, "bob", workflow_id="suspended-run").suspend("for the test")
    durable.start_workflow(api_greet, "eve", workflow_id="closed-run").terminate("for the test")


# operation, the permission it needs, method, path, body, the status of success
API_ROWS = [
    ("list", VIEW, "GET", WORKFLOWS, None, 200),
    ("retrieve", VIEW, "GET", detail("open-run"), None, 200),
    ("history", VIEW, "GET", detail("open-run", "history/"), None, 200),
    ("start", ADD, "POST", WORKFLOWS, {"workflow": "api_greet", "args": ["zoe"], "workflow_id": "new-run"}, 201),
    ("rerun", ADD, "POST", detail("closed-run", "rerun/"), {"from_event": 2}, 201),
    ("signal", OPERATE, "POST", detail("open-run", "signal/"), {"name": "go", "payload": 1}, 202),
    ("cancel", OPERATE, "POST", detail("open-run", "cancel/"), {}, 202),
    ("terminate", OPERATE, "POST", detail("open-run", "terminate/"), {"reason": "done"}, 202),
    ("suspend", OPERATE, "POST", detail("open-run", "suspend/"), {"reason": "wait"}, 202),
    ("resume", OPERATE, "POST", detail("suspended-run", "resume/"), {}, 202),
    ("purge", DELETE, "DELETE", detail("closed-run"), None, 204),
]
API_ROW_IDS = [row[0] for row in API_ROWS]
WRITES = {"POST", "DELETE"}


@pytest.fixture
def live(live_server: Any, settings: Any) -> str:
    make_runs()
    return live_server.url


def over_http(base: str, username: str, method: str, path: str, body: Any) -> requests.Response:
    return requests.request(method, base + path, json=body, auth=(username, "pw"), timeout=30)


@pytest.mark.http
@pytest.mark.parametrize(("operation", "permission", "method", "path", "body", "success"), API_ROWS, ids=API_ROW_IDS)
def test_each_api_operation_needs_its_permission(
    live: str, operation: str, permission: str, method: str, path: str, body: Any, success: int
) -> None:
    make_user("staff-only")
    make_user("all-but", *all_but(permission))
    make_user("holder", permission, staff=False)  # the permission is enough: the API asks for no staff status
    before = snapshot()
    for username in ("staff-only", "all-but"):
        response = over_http(live, username, method, path, body)
        assert (response.status_code, response.json()) == (403, DENIED), username
    assert snapshot() == before

    response = over_http(live, "holder", method, path, body)
    assert response.status_code == success, response.content
    if method in WRITES:
        assert snapshot() != before


@pytest.mark.parametrize(("operation", "permission", "method", "path", "body", "success"), API_ROWS, ids=API_ROW_IDS)
def test_a_superuser_may_do_everything(
    db: None, operation: str, permission: str, method: str, path: str, body: Any, success: int
) -> None:
    make_runs()
    api = APIClient()
    api.force_authenticate(make_user("root", superuser=True))
    response = api.generic(method, path, "" if body is None else json.dumps(body), content_type="application/json")
    assert response.status_code == success, response.content


def test_an_inactive_user_gets_nothing(db: None) -> None:
    make_runs()
    user = make_user("gone", *WORKFLOW_PERMISSIONS)
    user.is_active = False
    user.save()
    api = APIClient()
    api.force_authenticate(user)
    assert api.get(WORKFLOWS).status_code == 403


def test_options_needs_view_and_describes_only_what_the_user_may_do(db: None) -> None:
    make_runs()
    api = APIClient()
    api.force_authenticate(make_user("starter", ADD))
    assert (api.options(WORKFLOWS).status_code, api.options(WORKFLOWS).json()) == (403, DENIED)

    api.force_authenticate(make_user("viewer", VIEW))
    described = api.options(WORKFLOWS)
    assert described.status_code == 200 and "actions" not in described.json()

    api.force_authenticate(make_user("viewer-starter", VIEW, ADD))
    described = api.options(WORKFLOWS)
    assert described.status_code == 200 and "workflow" in described.json()["actions"]["POST"]


def test_a_method_no_route_takes_is_405_for_users_and_403_for_anonymous(db: None) -> None:
    make_runs()
    api = APIClient()
    assert api.put(detail("open-run"), {}, format="json").status_code == 403
    api.force_authenticate(make_user("staff-only"))
    response = api.put(detail("open-run"), {}, format="json")
    assert (response.status_code, response.json()["code"]) == (405, "method_not_allowed")


class ExtendedViewSet(WorkflowViewSet):
    @action(detail=False, methods=["post"])
    def explode(self, request: Any) -> Response:
        raise AssertionError("an action missing from the permission table ran")


def test_an_action_missing_from_the_table_is_refused_even_to_superusers(db: None) -> None:
    request = APIRequestFactory().post(WORKFLOWS + "explode/", {}, format="json")
    force_authenticate(request, make_user("root", superuser=True))
    response = ExtendedViewSet.as_view({"post": "explode"})(request)
    assert response.status_code == 403 and response.data["code"] == "permission_denied"


def test_projects_that_set_the_permission_classes_keep_them(db: None, settings: Any) -> None:
    make_runs()
    settings.DURABLE = {**settings.DURABLE, "API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAdminUser"]}
    api = APIClient()
    api.force_authenticate(make_user("staff-only"))
    assert api.get(WORKFLOWS).status_code == 200
    assert api.delete(detail("closed-run")).status_code == 204


def test_the_activity_endpoints_and_the_schema_ask_for_no_permission(db: None) -> None:
    api = APIClient()
    assert api.get("/durable/api/schema/").status_code == 200
    answer = api.post("/durable/api/activities/complete/", {"task_token": "forged"}, format="json")
    assert answer.json()["code"] == "invalid_token"  # the token decides, not the user


# -- the admin's actions, through the admin --------------------------------------------------------


@pytest.fixture
def env(db: None) -> Iterator[WorkflowEnvironment]:
    with WorkflowEnvironment(start_time=START) as environment:
        yield environment
    aw.ACT_TASK_CRASHES["on"] = False


# verb, the permission it needs
ADMIN_ROWS = [
    ("signal", OPERATE),
    ("cancel", OPERATE),
    ("terminate", OPERATE),
    ("suspend", OPERATE),
    ("resume", OPERATE),
    ("retry", OPERATE),
    ("rerun", ADD),
    ("purge", DELETE),
    ("complete", OPERATE),
    ("fail", OPERATE),
]


def admin_client(username: str, *codenames: str) -> Client:
    client = Client()
    client.force_login(make_user(username, *codenames))
    return client


@pytest.mark.parametrize(("verb", "permission"), ADMIN_ROWS, ids=[row[0] for row in ADMIN_ROWS])
def test_each_admin_action_needs_its_permission(env: WorkflowEnvironment, verb: str, permission: str) -> None:
    handle, url = run_for(env, verb)
    before = run_snapshot(handle)
    staff_only = admin_client("staff-only")
    without = admin_client("all-but", *all_but(permission))
    holder = admin_client("holder", VIEW, permission)

    assert url not in without.get(change_url(handle)).content.decode()
    for client in (staff_only, without):
        assert client.get(url).status_code == 403
        assert client.post(url, valid_post(verb, handle)).status_code == 403
    assert run_snapshot(handle) == before

    assert url in holder.get(change_url(handle)).content.decode()
    assert holder.get(url).status_code == 200
    response = holder.post(url, valid_post(verb, handle))
    assert response.status_code == 302 and response["Location"].startswith(ADMIN)
    assert run_snapshot(handle) != before


# bulk action, the permission it needs
BULK_ROWS = [("cancel_selected", OPERATE), ("terminate_selected", OPERATE), ("purge_selected", DELETE)]


@pytest.mark.parametrize(("bulk", "permission"), BULK_ROWS, ids=[row[0] for row in BULK_ROWS])
def test_each_bulk_action_needs_its_permission(env: WorkflowEnvironment, bulk: str, permission: str) -> None:
    open_runs, closed_runs = mixed_runs(env)
    selected = open_runs + closed_runs
    before = [run_snapshot(handle) for handle in selected]
    without = admin_client("all-but", *all_but(permission))
    holder = admin_client("holder", VIEW, permission)

    assert f'value="{bulk}"' not in without.get(ADMIN).content.decode()
    without.post(ADMIN, select(bulk, selected, post="yes", reason="x"))
    assert [run_snapshot(handle) for handle in selected] == before

    assert f'value="{bulk}"' in holder.get(ADMIN).content.decode()
    done = holder.post(ADMIN, select(bulk, selected, post="yes", reason="x"))
    assert done.status_code == 302
    assert [run_snapshot(handle) for handle in selected] != before


def test_djangos_own_add_and_delete_never_appear(env: WorkflowEnvironment, admin_client: Client) -> None:
    mixed_runs(env)
    page = admin_client.get(ADMIN).content.decode()
    assert 'value="delete_selected"' not in page and f'href="{ADMIN}add/"' not in page
    assert admin_client.get(f"{ADMIN}add/").status_code == 403
    run = WorkflowInstance.objects.first()
    assert admin_client.get(f"{ADMIN}{run.pk}/delete/").status_code == 403


def test_task_tokens_are_shown_to_operators_only(env: WorkflowEnvironment) -> None:
    handle, _ = run_for(env, "complete")
    page = change_url(handle)
    assert 'class="durable-token"' not in admin_client("viewer", VIEW, ADD, DELETE).get(page).content.decode()
    assert 'class="durable-token"' in admin_client("operator", VIEW, OPERATE).get(page).content.decode()


# -- the permission's description ------------------------------------------------------------------


def test_the_migration_renames_the_operate_permission_of_an_existing_database(db: None) -> None:
    migration = importlib.import_module("django_durable.migrations.0006_operate_permission_description")
    permission = Permission.objects.get(codename="operate_workflowinstance")
    assert permission.name == migration.NEW_NAME  # as created for a new database
    Permission.objects.filter(pk=permission.pk).update(name=migration.OLD_NAME)

    class Editor:
        connection = connection

    from django.apps import apps

    migration.describe_new(apps, Editor())
    permission.refresh_from_db()
    assert permission.name == migration.NEW_NAME
    migration.describe_old(apps, Editor())
    permission.refresh_from_db()
    assert permission.name == migration.OLD_NAME
