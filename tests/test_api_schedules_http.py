"""The schedule endpoints over real HTTP, on a live server: the verbs and their refusals, and
schemathesis fuzzing every schedule operation of the OpenAPI document for a user who holds
the permissions (tests/test_hostile_api.py fuzzes them for one who does not)."""

from __future__ import annotations

import base64
from collections.abc import Callable
from typing import Any

import pytest
import requests
import schemathesis
from django.contrib.auth.models import Permission
from hypothesis import given
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from tests.test_api import SCHEMA
from tests.test_api_control import http
from tests.test_api_schedules import (
    EVERY_PERMISSION,
    KNOWN,
    NEW,
    SCHEDULE_OPERATION_IDS,
    SCHEDULES,
    ensure_known,
    past_hours,
    snapshot,
)
from tests.test_hostile_api import check_error_shape, fuzz_settings

pytestmark = pytest.mark.http


def test_schedules_over_real_http(live_server, django_user_model):
    operator = django_user_model.objects.create_user("operator", password="pw")
    operator.user_permissions.add(*Permission.objects.filter(codename__in=EVERY_PERMISSION))
    viewer = django_user_model.objects.create_user("viewer", password="pw")
    viewer.user_permissions.add(*Permission.objects.filter(codename="view_schedule"))
    auth, base = ("operator", "pw"), live_server.url + SCHEDULES

    assert http("POST", base, NEW)[0] == 403
    assert http("POST", base, NEW, auth=("viewer", "pw")) == (
        403,
        {"code": "permission_denied", "detail": "You do not have permission to perform this action."},
    )
    status, body = http("POST", base, NEW, auth=auth)
    assert (status, body["schedule_id"], body["every"]) == (201, "new-one", 60)
    assert http("POST", base, NEW, auth=auth) == (
        409,
        {"code": "schedule_already_exists", "detail": "A schedule with id 'new-one' already exists."},
    )
    status, body = http("POST", base, {**NEW, "schedule_id": "other", "cron": "@often", "every": None}, auth=auth)
    assert (status, body["code"]) == (400, "invalid_schedule") and "@often" in body["detail"]
    status, body = http("GET", base, auth=("viewer", "pw"))
    assert (status, [row["schedule_id"] for row in body["results"]]) == (200, ["new-one"])
    status, body = http("PATCH", f"{base}new-one/", {"cron": "0 3 * * *", "note": "nightly"}, auth=auth)
    assert (status, body["cron"], body["every"], body["note"]) == (200, "0 3 * * *", None, "nightly")
    status, body = http("POST", f"{base}new-one/trigger/", {}, auth=auth)
    assert (status, body["started"]) == (201, True)
    status, body = http("POST", f"{base}new-one/trigger/", {}, auth=auth)
    assert (status, body["started"], body["overlap"]) == (200, False, "skip")
    status, body = http("POST", f"{base}new-one/backfill/", past_hours(1), auth=auth)
    assert status == 200 and body["started_count"] + body["skipped"] + body["already_run"] <= 1
    status, body = http("POST", f"{base}new-one/pause/", {"note": "stop"}, auth=auth)
    assert (status, body["paused"], body["note"]) == (200, True, "stop")
    assert http("DELETE", f"{base}new-one/", auth=("viewer", "pw"))[0] == 403
    assert http("DELETE", f"{base}new-one/", auth=auth) == (204, None)
    assert http("GET", f"{base}new-one/", auth=auth) == (
        404,
        {"code": "schedule_not_found", "detail": "No schedule with id 'new-one'."},
    )


# Refusals of schema-valid requests that no schema can foresee: a workflow nobody may start, a
# specification that makes no schedule, arguments that do not fit the workflow, an interval
# whose end is before its start or that holds too many ticks, NUL inside JSON values, and a
# datetime before the year 1000 (OpenAPI 3.0 has no bound for dates; the document says it in words).
SEMANTIC_CODES = {"not_registered", "invalid_schedule", "schedule_already_exists"}
SEMANTIC_MESSAGES = (
    "do not match workflow",
    "before its start",
    "ticks; backfill a shorter one",
    "NUL",
    "from the year 1000",
)


def semantic_refusal(body: dict[str, Any]) -> bool:
    if body["code"] in SEMANTIC_CODES:
        return True
    detail = body["detail"]
    if body["code"] != "invalid" or not isinstance(detail, dict):
        return False
    return all(
        any(m in str(problem) for m in SEMANTIC_MESSAGES) for problems in detail.values() for problem in problems
    )


@pytest.fixture
def live_schedules(live_server, django_user_model) -> requests.Session:
    user = django_user_model.objects.create_user("fuzzer", password="pw")
    user.user_permissions.add(*Permission.objects.filter(codename__in=EVERY_PERMISSION))
    ensure_known()
    session = requests.Session()
    session.headers["Authorization"] = "Basic " + base64.b64encode(b"fuzzer:pw").decode()
    return session


# The fuzzer cannot name a registered workflow, so creating never succeeds.
NEVER_ACCEPTED = {"createSchedule"}


@pytest.mark.parametrize("operation_id", SCHEDULE_OPERATION_IDS)
def test_schemathesis_fuzzes_every_schedule_operation(live_server, live_schedules, operation_id):
    document = schemathesis.openapi.from_url(live_server.url + SCHEMA)
    (operation,) = [
        result.ok()
        for result in document.get_all_operations()
        if result.ok().definition.raw["operationId"] == operation_id
    ]
    raw = operation.definition.raw
    checks = [
        openapi_checks.status_code_conformance,
        openapi_checks.content_type_conformance,
        openapi_checks.response_schema_conformance,
        openapi_checks.negative_data_rejection,
    ]
    accepted = [0]

    def fuzz(strategy: Any, max_examples: int) -> None:
        @fuzz_settings(max_examples)
        @given(case=strategy)
        def run(case: Any) -> None:
            ensure_known()
            before = snapshot()
            response = case.call(base_url=live_server.url, session=live_schedules, timeout=30)
            what = f"{operation.label}: {case.as_curl_command()}"
            assert response.status_code < 500, f"{what}\n{response.status_code} {response.text[:1000]}"
            if response.status_code >= 400:
                check_error_shape(response, what)
            if response.status_code >= 400 or case.method == "GET":
                assert snapshot() == before, f"{what}\n{response.status_code}: the database changed"
            case.validate_response(response, checks=checks)
            mode = case.meta.generation.mode if case.meta is not None else None
            if mode == GenerationMode.POSITIVE and response.status_code == 400:
                assert semantic_refusal(response.json()), f"{what}\nvalid by the document, refused: {response.text}"
            accepted[0] += response.status_code < 300

        run()

    known: Callable[[GenerationMode], Any] = lambda mode: st.sampled_from(KNOWN).flatmap(  # noqa: E731
        lambda schedule_id: operation.as_strategy(generation_mode=mode, path_parameters={"schedule_id": schedule_id})
    )
    # Without a body or a query, a request has nothing to make invalid but its path, which any text fits.
    negatable = "requestBody" in raw or any(p["in"] != "path" for p in raw.get("parameters", []))
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if negatable else (GenerationMode.POSITIVE,):
        fuzz(operation.as_strategy(generation_mode=mode), 15)
        if "{schedule_id}" in operation.path:  # on schedules that exist
            fuzz(known(mode), 15)
    assert (accepted[0] > 0) == (operation_id not in NEVER_ACCEPTED), accepted
