"""The HTTP API (django_durable.api) through DRF's test client: shapes, errors, permissions, limits.

Tests that need a live activity attempt (a real worker) are in test_api_activities.py.
"""

from __future__ import annotations

import io
import json
import uuid
from typing import Any

import pytest
from django.core import signing
from django.core.handlers.asgi import ASGIRequest
from django.test import override_settings
from django.urls import resolve
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from rest_framework.test import APIClient

import django_durable as durable
from django_durable.api import checks as api_checks
from django_durable.converter import JSONDataConverter
from django_durable.exceptions import SerializationError
from django_durable.jsontext import MAX_JSON_DEPTH
from django_durable.models import HistoryEvent, InboxEvent, WorkflowInstance, WorkItem
from django_durable.tokens import make_task_token
from tests.conftest import grant
from tests.testapp.workflows import api_greet

pytestmark = pytest.mark.database

API = "/durable/api/"
COMPLETE, FAIL, HEARTBEAT = (f"{API}activities/{name}/" for name in ("complete", "fail", "heartbeat"))
WORKFLOWS = f"{API}workflows/"
SCHEMA = f"{API}schema/"
ACTIVITY_URLS = [COMPLETE, FAIL, HEARTBEAT]


def detail(workflow_id: str, suffix: str = "") -> str:
    return f"{WORKFLOWS}{workflow_id}/{suffix}"


def snapshot() -> tuple:
    """Everything a request could change (rows and the mutable columns of work items and runs)."""
    return (
        list(
            WorkflowInstance.objects.order_by("pk").values_list(
                "pk",
                "status",
                "history_length",
                "error",
                "cancel_requested_at",
                "parent_id",
            )
        ),
        list(HistoryEvent.objects.order_by("pk").values_list("pk", flat=True)),
        list(
            WorkItem.objects.order_by("pk").values_list(
                "pk",
                "attempt",
                "lease_owner",
                "heartbeat_details",
                "parked_at",
            )
        ),
        list(InboxEvent.objects.order_by("pk").values_list("pk", flat=True)),
    )


def assert_error(response: Any, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, (response.status_code, getattr(response, "content", b"")[:500])
    assert response["Content-Type"].startswith("application/json"), response["Content-Type"]
    body = json.loads(response.content)
    assert set(body) == {"code", "detail"}, body
    assert isinstance(body["code"], str)
    if code is not None:
        assert body["code"] == code, body
    return body


def post_json(client: APIClient, url: str, data: Any, **extra: Any) -> Any:
    return client.generic("POST", url, json.dumps(data), content_type="application/json", **extra)


def unused_token() -> str:
    """Correctly signed, but naming no activity attempt."""
    return make_task_token(item_id=999_999, run_id=str(uuid.uuid4()), task_id=1, attempt=1)


@pytest.fixture
def api() -> APIClient:
    return APIClient()


@pytest.fixture
def staff(db, django_user_model) -> Any:
    """Staff with the four model permissions the workflow endpoints check (staff alone grants nothing)."""
    return grant(django_user_model.objects.create_user("staff", password="pw", is_staff=True))


@pytest.fixture
def admin_api(staff) -> APIClient:
    client = APIClient()
    client.force_authenticate(staff)
    return client


@pytest.fixture
def started(db) -> durable.WorkflowHandle:
    return durable.start_workflow(api_greet, "ada", workflow_id="greet-ada")


# -- the OpenAPI schema ----------------------------------------------------------------


def test_schema_lists_every_endpoint(api, db):
    response = api.get(SCHEMA)
    assert response.status_code == 200
    assert response["Content-Type"].startswith("application/vnd.oai.openapi+json")
    schema = json.loads(response.content)
    assert schema["openapi"].startswith("3.")
    assert set(schema["paths"]) == {
        f"{API}activities/complete/",
        f"{API}activities/fail/",
        f"{API}activities/heartbeat/",
        f"{API}workflows/",
        f"{API}workflows/{{workflow_id}}/",
        f"{API}workflows/{{workflow_id}}/history/",
        *(
            f"{API}workflows/{{workflow_id}}/{verb}/"
            for verb in ("signal", "cancel", "suspend", "resume", "terminate", "rerun")
        ),
        f"{API}schedules/",
        f"{API}schedules/{{schedule_id}}/",
        *(f"{API}schedules/{{schedule_id}}/{verb}/" for verb in ("pause", "unpause", "trigger", "backfill")),
    }
    paths = schema["paths"]
    assert set(paths[f"{API}workflows/"]) == {"get", "post"}
    assert set(paths[f"{API}workflows/{{workflow_id}}/"]) == {"get", "delete"}
    assert "201" in paths[f"{API}workflows/"]["post"]["responses"]
    assert "201" in paths[f"{API}workflows/{{workflow_id}}/rerun/"]["post"]["responses"]
    assert "204" in paths[f"{API}workflows/{{workflow_id}}/"]["delete"]["responses"]
    for verb in ("signal", "cancel", "suspend", "resume", "terminate"):
        assert "202" in paths[f"{API}workflows/{{workflow_id}}/{verb}/"]["post"]["responses"]
    assert "200" in paths[f"{API}activities/complete/"]["post"]["responses"]
    operation_ids = [op["operationId"] for ops in paths.values() for op in ops.values()]
    assert len(operation_ids) == len(set(operation_ids))
    components = schema["components"]["schemas"]
    assert components["CompleteActivityRequest"]["properties"]["task_token"]["type"] == "string"
    assert components["StartWorkflow"]["properties"]["args"]["type"] == "array"


# -- activity endpoints without a live attempt -------------------------------------------------


@pytest.mark.parametrize("url", ACTIVITY_URLS)
@pytest.mark.parametrize(
    "token",
    [
        "",
        "garbage",
        "a" * 5000,
        "x:y:z",
        signing.dumps({"i": 1, "r": str(uuid.uuid4()), "t": 1, "a": 1}, salt="another-salt"),
        signing.dumps(
            {"i": 1, "r": str(uuid.uuid4()), "t": 1, "a": 1}, key="another-secret-key", salt="django_durable.task_token"
        ),
    ],
    ids=["empty", "garbled", "oversized", "colons", "wrong-salt", "wrong-key"],
)
def test_invalid_tokens_are_400_invalid_token(api, db, url, token, django_assert_num_queries):
    body = {"task_token": token, "error": {"message": "x"}}
    with django_assert_num_queries(0):  # rejected before any database access
        response = post_json(api, url, body)
    assert_error(response, 400, "invalid_token")


@pytest.mark.parametrize("url", ACTIVITY_URLS)
def test_tampered_token_is_400(api, db, url):
    token = unused_token()
    payload, _, signature = token.rpartition(":")
    forged = payload + ":" + ("A" if signature[0] != "A" else "B") + signature[1:]
    assert_error(post_json(api, url, {"task_token": forged, "error": {"message": "x"}}), 400, "invalid_token")
    # A payload edited under the old signature: also caught.
    other = unused_token()
    assert_error(
        post_json(api, url, {"task_token": other.rpartition(":")[0] + ":" + signature, "error": {"message": "x"}}),
        400,
        "invalid_token",
    )


@pytest.mark.parametrize("url", ACTIVITY_URLS)
def test_signed_token_of_no_attempt_is_409(api, db, url):
    body = assert_error(
        post_json(api, url, {"task_token": unused_token(), "error": {"message": "x"}}), 409, "activity_not_pending"
    )
    assert "no longer pending" in body["detail"]


@pytest.mark.parametrize("url", ACTIVITY_URLS)
def test_missing_token_is_a_field_error(api, db, url):
    body = assert_error(post_json(api, url, {"error": {"message": "x"}}), 400, "invalid")
    assert "task_token" in body["detail"]
    body = assert_error(api.post(url, content_type="application/json"), 400, "invalid")  # empty body
    assert "task_token" in body["detail"]


@pytest.mark.parametrize("url", ACTIVITY_URLS)
@pytest.mark.parametrize("value", [42, None, True, ["a"], {"a": 1}])
def test_token_must_be_a_string(api, db, url, value):
    body = assert_error(post_json(api, url, {"task_token": value, "error": {"message": "x"}}), 400, "invalid")
    assert list(body["detail"]) == ["task_token"]


@pytest.mark.parametrize("url", ACTIVITY_URLS)
def test_token_in_header(api, db, url):
    # Only in the header: used.
    response = post_json(api, url, {"error": {"message": "x"}}, HTTP_X_DURABLE_TASK_TOKEN=unused_token())
    assert_error(response, 409, "activity_not_pending")
    response = post_json(api, url, {"error": {"message": "x"}}, HTTP_X_DURABLE_TASK_TOKEN="garbage")
    assert_error(response, 400, "invalid_token")
    # In both, the same: fine. In both, different: refused.
    token = unused_token()
    response = post_json(api, url, {"task_token": token, "error": {"message": "x"}}, HTTP_X_DURABLE_TASK_TOKEN=token)
    assert_error(response, 409, "activity_not_pending")
    response = post_json(
        api, url, {"task_token": token, "error": {"message": "x"}}, HTTP_X_DURABLE_TASK_TOKEN=unused_token()
    )
    body = assert_error(response, 400, "invalid")
    assert "task_token" in body["detail"]


def test_fail_needs_an_error_object(api, db):
    token = unused_token()
    body = assert_error(post_json(api, FAIL, {"task_token": token}), 400, "invalid")
    assert list(body["detail"]) == ["error"]
    body = assert_error(post_json(api, FAIL, {"task_token": token, "error": "boom"}), 400, "invalid")
    assert list(body["detail"]) == ["error"]
    body = assert_error(post_json(api, FAIL, {"task_token": token, "error": {"type": "X"}}), 400, "invalid")
    assert body["detail"] == {"error": {"message": ["This field is required."]}}
    body = assert_error(
        post_json(api, FAIL, {"task_token": token, "error": {"message": "m", "type": "T" * 300}}), 400, "invalid"
    )
    assert "type" in body["detail"]["error"]
    body = assert_error(post_json(api, FAIL, {"task_token": token, "error": {"message": "m" * 10_001}}), 400, "invalid")
    assert "message" in body["detail"]["error"]
    # Well-formed: reaches the token check.
    assert_error(
        post_json(api, FAIL, {"task_token": token, "error": {"message": "m", "type": "T", "details": [1]}}),
        409,
        "activity_not_pending",
    )


@pytest.mark.parametrize("url", ACTIVITY_URLS)
def test_activity_endpoints_only_take_post(api, db, url):
    assert_error(api.get(url), 405, "method_not_allowed")
    assert_error(api.put(url, {}, format="json"), 405, "method_not_allowed")


@pytest.mark.parametrize("url", ACTIVITY_URLS)
def test_activity_endpoints_answer_json_whatever_is_accepted(api, db, url):
    response = post_json(api, url, {"task_token": "garbage", "error": {"message": "m"}}, HTTP_ACCEPT="text/html")
    assert_error(response, 400, "invalid_token")


@pytest.mark.parametrize("url", ACTIVITY_URLS)
def test_activity_endpoints_need_no_login_and_no_csrf_token(db, staff, url):
    client = APIClient(enforce_csrf_checks=True)
    client.login(username="staff", password="pw")  # a session cookie, but no CSRF token
    response = post_json(client, url, {"task_token": unused_token(), "error": {"message": "x"}})
    assert_error(response, 409, "activity_not_pending")  # got to the engine: not a CSRF 403


# -- malformed, mistyped and oversized bodies ------------------------------------------------


CONTROL_URLS = [
    detail("greet-ada", f"{verb}/") for verb in ("terminate", "signal", "cancel", "suspend", "resume", "rerun")
]
ALL_POST_URLS = ACTIVITY_URLS + [WORKFLOWS, *CONTROL_URLS]


@pytest.mark.parametrize("url", ALL_POST_URLS)
@pytest.mark.parametrize(
    "body",
    [
        b"{",
        b'{"task_token": }',
        b"\xff\xfe",
        b'{"a": NaN}',
        b'{"a": Infinity}',
        b'{"a": 1e999}',
        b"   ",
        b'{"a": "\\ud800"}',
        b"[" * (MAX_JSON_DEPTH + 5) + b"]" * (MAX_JSON_DEPTH + 5),
        b"[" * 100_000,
    ],
    ids=[
        "truncated",
        "bad-value",
        "not-utf8",
        "nan",
        "infinity",
        "overflow",
        "whitespace",
        "lone-surrogate",
        "too-deep",
        "recursion-bomb",
    ],
)
def test_malformed_json_is_400(admin_api, started, url, body):
    before = snapshot()
    response = admin_api.generic("POST", url, body, content_type="application/json")
    assert_error(response, 400, "parse_error")
    assert snapshot() == before


@pytest.mark.parametrize("url", ALL_POST_URLS)
@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x", "application/xml", ""],
)
def test_wrong_content_type_is_415(admin_api, started, url, content_type):
    before = snapshot()
    response = admin_api.generic("POST", url, json.dumps({"task_token": "x"}), content_type=content_type)
    assert_error(response, 415, "unsupported_media_type")
    assert snapshot() == before


def test_charset_parameter_is_honoured(api, db):
    body = json.dumps({"task_token": "garbage"}).encode("utf-16")
    response = api.generic("POST", COMPLETE, body, content_type="application/json; charset=utf-16")
    assert_error(response, 400, "invalid_token")


@pytest.mark.parametrize("url", ALL_POST_URLS)
def test_oversized_body_with_content_length_is_413(admin_api, started, url):
    before = snapshot()
    big = json.dumps({"task_token": "x", "result": "a" * (300 * 1024)})
    response = admin_api.generic("POST", url, big, content_type="application/json")
    body = assert_error(response, 413, "payload_too_large")
    assert "262144" in body["detail"]
    assert snapshot() == before


@override_settings(DURABLE={"API_MAX_BODY_SIZE": 100})
def test_body_size_limit_is_a_setting_and_inclusive(api, db):
    body = json.dumps({"task_token": "garbage", "result": ""})
    body = body[:-2] + "x" * (100 - len(body)) + body[-2:]
    assert len(body) == 100
    assert_error(api.generic("POST", COMPLETE, body, content_type="application/json"), 400, "invalid_token")
    body = body[:-2] + "x" + body[-2:]
    assert_error(api.generic("POST", COMPLETE, body, content_type="application/json"), 413, "payload_too_large")


@override_settings(DATA_UPLOAD_MAX_MEMORY_SIZE=50)
def test_djangos_upload_limit_applies_too(api, db):
    body = json.dumps({"task_token": "garbage", "result": "x" * 60})
    assert_error(api.generic("POST", COMPLETE, body, content_type="application/json"), 413, "payload_too_large")


class CountingStream(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.bytes_read = 0

    def read(self, size: int | None = -1) -> bytes:
        chunk = super().read(size)
        self.bytes_read += len(chunk)
        return chunk


def asgi_post(path: str, body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[Any, CountingStream]:
    """A request as an ASGI server hands it over: the body is there with no Content-Length (chunked)."""
    scope = {
        "type": "http",
        "method": "POST",
        "path": path,
        "query_string": b"",
        "headers": headers,
        "client": ("127.0.0.1", 1234),
        "server": ("testserver", 80),
        "scheme": "http",
    }
    stream = CountingStream(body)
    return ASGIRequest(scope, stream), stream


@pytest.mark.parametrize("url", ACTIVITY_URLS)
def test_oversized_body_without_content_length_is_413_and_read_no_further(db, url):
    big = json.dumps({"task_token": "x", "result": "a" * (5 * 1024 * 1024)}).encode()
    request, stream = asgi_post(url, big, [(b"content-type", b"application/json")])
    assert "CONTENT_LENGTH" not in request.META
    before = snapshot()
    response = resolve(url).func(request)
    response.render()
    assert_error(response, 413, "payload_too_large")
    assert stream.bytes_read <= 256 * 1024 + 1
    assert snapshot() == before


def test_body_without_content_length_is_parsed(db):
    body = json.dumps({"task_token": "garbage"}).encode()
    request, _ = asgi_post(COMPLETE, body, [(b"content-type", b"application/json")])
    response = resolve(COMPLETE).func(request)
    response.render()
    assert_error(response, 400, "invalid_token")


def test_raw_wsgi_request_without_content_length(db):
    """Under WSGI, Django shows no body without a Content-Length: an empty request, not a 500."""
    from django.core.handlers.wsgi import WSGIHandler

    big = b'{"task_token": "' + b"a" * (1024 * 1024) + b'"}'
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": COMPLETE,
        "SCRIPT_NAME": "",
        "QUERY_STRING": "",
        "SERVER_NAME": "testserver",
        "SERVER_PORT": "80",
        "SERVER_PROTOCOL": "HTTP/1.1",
        "CONTENT_TYPE": "application/json",
        "HTTP_TRANSFER_ENCODING": "chunked",
        "wsgi.input": io.BytesIO(big),
        "wsgi.url_scheme": "http",
        "wsgi.errors": io.StringIO(),
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "wsgi.version": (1, 0),
    }
    statuses = []
    chunks = WSGIHandler()(environ, lambda status, headers: statuses.append(status))
    body = json.loads(b"".join(chunks))
    assert statuses[0].startswith("400") and body["code"] == "invalid"  # task_token: required


# -- workflow endpoints: permissions --------------------------------------------------------


WORKFLOW_REQUESTS = [
    ("get", WORKFLOWS, None),
    ("post", WORKFLOWS, {"workflow": "api_greet", "args": ["bob"]}),
    ("get", detail("greet-ada"), None),
    ("get", detail("greet-ada", "history/"), None),
    ("post", detail("greet-ada", "terminate/"), {"reason": "test"}),
]
WORKFLOW_REQUEST_IDS = ["list", "start", "describe", "history", "terminate"]


def send(client: APIClient, method: str, url: str, data: Any) -> Any:
    if method == "get":
        return client.get(url)
    return post_json(client, url, data)


@pytest.mark.parametrize(("method", "url", "data"), WORKFLOW_REQUESTS, ids=WORKFLOW_REQUEST_IDS)
def test_anonymous_users_are_refused(api, started, method, url, data):
    before = snapshot()
    body = assert_error(send(api, method, url, data), 403, "not_authenticated")
    assert "credentials" in body["detail"]
    assert snapshot() == before


@pytest.mark.parametrize(("method", "url", "data"), WORKFLOW_REQUESTS, ids=WORKFLOW_REQUEST_IDS)
def test_authenticated_non_staff_users_are_forbidden(api, started, django_user_model, method, url, data):
    api.force_authenticate(django_user_model.objects.create_user("user", password="pw"))
    before = snapshot()
    assert_error(send(api, method, url, data), 403, "permission_denied")
    assert snapshot() == before


@pytest.mark.parametrize(("method", "url", "data"), WORKFLOW_REQUESTS, ids=WORKFLOW_REQUEST_IDS)
def test_users_with_the_permissions_may(admin_api, started, method, url, data):
    response = send(admin_api, method, url, data)
    assert response.status_code in (200, 201, 202), response.content


def test_basic_auth_and_sessions_are_the_default_authentication(db, staff, started):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION="Basic " + __import__("base64").b64encode(b"staff:pw").decode())
    assert client.get(WORKFLOWS).status_code == 200
    client.credentials(HTTP_AUTHORIZATION="Basic " + __import__("base64").b64encode(b"staff:wrong").decode())
    # Session authentication comes first, and it names no WWW-Authenticate scheme: 403, not 401.
    assert_error(client.get(WORKFLOWS), 403, "authentication_failed")

    client = APIClient(enforce_csrf_checks=True)
    client.login(username="staff", password="pw")
    assert client.get(WORKFLOWS).status_code == 200
    before = snapshot()
    # A session-authenticated write without the CSRF token is refused.
    response = post_json(client, detail("greet-ada", "terminate/"), {})
    body = assert_error(response, 403, "permission_denied")
    assert "CSRF" in body["detail"]
    assert snapshot() == before


def test_permission_and_authentication_classes_are_settings(api, started):
    assert_error(api.get(WORKFLOWS), 403, "not_authenticated")
    with override_settings(DURABLE={"API_PERMISSION_CLASSES": ["rest_framework.permissions.AllowAny"]}):
        assert api.get(WORKFLOWS).status_code == 200
    with override_settings(
        DURABLE={
            "API_AUTHENTICATION_CLASSES": ["rest_framework.authentication.BasicAuthentication"],
        }
    ):
        response = api.get(WORKFLOWS)
        assert_error(response, 401, "not_authenticated")
        assert response["WWW-Authenticate"].startswith("Basic")
    with override_settings(
        DURABLE={
            "ACTIVITY_API_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
        }
    ):
        assert_error(post_json(api, COMPLETE, {"task_token": "x"}), 403, "permission_denied")


# -- workflow endpoints: behaviour -----------------------------------------------------------


def test_start_a_workflow(admin_api, db):
    response = post_json(
        admin_api,
        WORKFLOWS,
        {
            "workflow": "api_greet",
            "args": ["bob"],
            "kwargs": {"punctuation": "?"},
            "workflow_id": "greet-bob",
            "queue": "special",
        },
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body == {"workflow_id": "greet-bob", "run_id": body["run_id"], "status": "pending"}
    assert response["Location"].endswith(detail("greet-bob"))
    instance = WorkflowInstance.objects.get(run_id=body["run_id"])
    assert instance.workflow_name == "api_greet" and instance.queue == "special"
    assert instance.input == {"args": ["bob"], "kwargs": {"punctuation": "?"}}

    response = post_json(admin_api, WORKFLOWS, {"workflow": "api_greet", "args": ["eve"]})
    assert response.status_code == 201
    assert len(response.json()["workflow_id"]) == 32  # generated


def test_unusual_json_values_round_trip(admin_api, db):
    values = [2**70, -(2**63), 1.5e10, 1e-7, 0.5, "ü😀\u2028", {"": [None, True, {}]}, [], "x" * 1000]
    response = post_json(
        admin_api,
        WORKFLOWS,
        {
            "workflow": "api_greet",
            "args": [values],
            "workflow_id": "unusual",
        },
    )
    assert response.status_code == 201, response.content
    assert admin_api.get(detail("unusual")).json()["args"] == [values]


def test_start_at(admin_api, db):
    response = post_json(
        admin_api,
        WORKFLOWS,
        {
            "workflow": "api_greet",
            "args": ["later"],
            "start_at": "2099-01-01T00:00:00Z",
        },
    )
    assert response.status_code == 201
    instance = WorkflowInstance.objects.get(run_id=response.json()["run_id"])
    assert instance.scheduled_start_at.year == 2099


def test_start_with_an_id_in_use_is_409(admin_api, started):
    before = snapshot()
    response = post_json(admin_api, WORKFLOWS, {"workflow": "api_greet", "args": ["x"], "workflow_id": "greet-ada"})
    assert_error(response, 409, "workflow_already_exists")
    assert snapshot() == before
    # Once the run has closed, the id may be used again.
    durable.get_workflow("greet-ada").terminate()
    response = post_json(admin_api, WORKFLOWS, {"workflow": "api_greet", "args": ["x"], "workflow_id": "greet-ada"})
    assert response.status_code == 201


@pytest.mark.parametrize(
    ("data", "code", "field"),
    [
        ({"workflow": "no_such_workflow"}, "not_registered", None),
        ({}, "invalid", "workflow"),
        ({"workflow": ""}, "invalid", "workflow"),
        ({"workflow": 7}, "not_registered", None),
        ({"workflow": ["api_greet"]}, "invalid", "workflow"),
        ({"workflow": "w" * 256}, "invalid", "workflow"),
        ({"workflow": "api_greet", "args": "bob"}, "invalid", "args"),
        ({"workflow": "api_greet", "args": {"name": "bob"}}, "invalid", "args"),
        ({"workflow": "api_greet", "kwargs": ["bob"]}, "invalid", "kwargs"),
        ({"workflow": "api_greet", "args": []}, "invalid", "args"),  # missing 'name'
        ({"workflow": "api_greet", "args": ["a", "b", "c"]}, "invalid", "args"),
        ({"workflow": "api_greet", "args": ["a"], "kwargs": {"nope": 1}}, "invalid", "args"),
        ({"workflow": "api_greet", "args": ["a"], "kwargs": {"queue": "q"}}, "invalid", "kwargs"),
        ({"workflow": "api_greet", "args": ["a"], "kwargs": {"priority": 1}}, "invalid", "kwargs"),
        ({"workflow": "api_greet", "args": ["a"], "kwargs": {"concurrency_key": "k"}}, "invalid", "kwargs"),
        ({"workflow": "api_greet", "args": ["a\x00b"]}, "invalid", "args"),
        ({"workflow": "api_greet", "kwargs": {"name\x00": 1}}, "invalid", "kwargs"),
        ({"workflow": "api_greet", "args": ["a"], "workflow_id": "a/b"}, "invalid", "workflow_id"),
        ({"workflow": "api_greet", "args": ["a"], "workflow_id": "i" * 256}, "invalid", "workflow_id"),
        ({"workflow": "api_greet", "args": ["a"], "workflow_id": ""}, "invalid", "workflow_id"),
        ({"workflow": "api_greet", "args": ["a"], "workflow_id": ["x"]}, "invalid", "workflow_id"),
        ({"workflow": "api_greet", "args": ["a"], "queue": ""}, "invalid", "queue"),
        ({"workflow": "api_greet", "args": ["a"], "start_at": "tomorrow"}, "invalid", "start_at"),
    ],
)
def test_start_validation(admin_api, started, data, code, field):
    before = snapshot()
    body = assert_error(post_json(admin_api, WORKFLOWS, data), 400, code)
    if field is not None:
        assert field in body["detail"], body
    assert snapshot() == before


@pytest.mark.parametrize("data", [[], ["api_greet"], "api_greet", 1, None, True])
def test_start_body_must_be_an_object(admin_api, started, data):
    body = assert_error(post_json(admin_api, WORKFLOWS, data), 400, "invalid")
    assert "non_field_errors" in body["detail"]


class PickyConverter(JSONDataConverter):
    """Refuses the string 'unserialisable' (the HTTP API hands the engine plain JSON only)."""

    def to_json(self, value: Any) -> Any:
        if "unserialisable" in json.dumps(value):
            raise SerializationError("'unserialisable' cannot be stored")
        return super().to_json(value)


def test_arguments_the_converter_refuses_are_400(admin_api, db):
    with override_settings(DURABLE={"DATA_CONVERTER": f"{__name__}.PickyConverter"}):
        before = snapshot()
        response = post_json(admin_api, WORKFLOWS, {"workflow": "api_greet", "args": ["unserialisable"]})
        body = assert_error(response, 400, "not_serializable")
        assert "unserialisable" in body["detail"]
        assert snapshot() == before


def test_list_filter_and_paginate(admin_api, db):
    for i in range(5):
        durable.start_workflow(api_greet, f"n{i}", workflow_id=f"greet-{i}")
    durable.start_workflow("ac_approval", "/nowhere", workflow_id="approval-1")
    durable.get_workflow("greet-0").terminate("stop")

    response = admin_api.get(WORKFLOWS)
    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 6 and len(page["results"]) == 6
    assert page["results"][0]["workflow_id"] == "approval-1"  # newest first
    assert set(page["results"][0]) == {
        "workflow_id",
        "run_id",
        "workflow_name",
        "status",
        "queue",
        "waiting_on",
        "created_at",
        "scheduled_start_at",
        "started_at",
        "closed_at",
    }

    def ids(response):
        return [row["workflow_id"] for row in response.json()["results"]]

    assert ids(admin_api.get(WORKFLOWS, {"status": "terminated"})) == ["greet-0"]
    assert len(ids(admin_api.get(WORKFLOWS, {"status": "pending"}))) == 5
    assert ids(admin_api.get(WORKFLOWS, {"workflow_name": "ac_approval"})) == ["approval-1"]
    assert ids(admin_api.get(WORKFLOWS, {"workflow_name": "api_greet", "status": "terminated"})) == ["greet-0"]
    assert ids(admin_api.get(WORKFLOWS, {"workflow_id": "greet-3"})) == ["greet-3"]
    assert ids(admin_api.get(WORKFLOWS, {"workflow_name": "nothing"})) == []

    first = admin_api.get(WORKFLOWS, {"limit": 2}).json()
    assert first["count"] == 6 and len(first["results"]) == 2 and first["previous"] is None
    second = admin_api.get(first["next"]).json()
    assert len(second["results"]) == 2
    assert not {r["run_id"] for r in first["results"]} & {r["run_id"] for r in second["results"]}
    assert admin_api.get(WORKFLOWS, {"offset": 10**30}).json()["results"] == []
    assert admin_api.get(WORKFLOWS, {"limit": "junk"}).status_code == 400

    with override_settings(DURABLE={"API_PAGE_SIZE": 4}):
        assert len(admin_api.get(WORKFLOWS).json()["results"]) == 4


@pytest.mark.parametrize(
    "params",
    [{"status": "sleeping"}, {"status": ""}, {"workflow_name": "n" * 256}, {"workflow_name": "a\x00"}],
)
def test_list_filters_are_validated(admin_api, db, params):
    body = assert_error(admin_api.get(WORKFLOWS, params), 400, "invalid")
    assert set(body["detail"]) == set(params)


def test_describe(admin_api, started):
    response = admin_api.get(detail("greet-ada"))
    assert response.status_code == 200
    body = response.json()
    assert body["workflow_id"] == "greet-ada" and body["run_id"] == started.run_id
    assert body["workflow_name"] == "api_greet" and body["status"] == "pending"
    assert body["args"] == ["ada"] and body["kwargs"] == {}
    assert body["result"] is None and body["error"] is None and body["vars"] == {}
    assert body["history_length"] == 1
    assert [work["kind"] for work in body["pending_work"]] == ["workflow"]
    for key in ("created_at", "updated_at", "started_at", "closed_at", "scheduled_start_at", "task_error"):
        assert key in body


def test_describe_a_particular_run(admin_api, started):
    started.terminate()
    second = durable.start_workflow(api_greet, "again", workflow_id="greet-ada")
    assert admin_api.get(detail("greet-ada")).json()["run_id"] == second.run_id
    old = admin_api.get(detail("greet-ada"), {"run_id": started.run_id}).json()
    assert old["run_id"] == started.run_id and old["status"] == "terminated"
    assert old["error"]["type"] == "django_durable.Terminated"
    assert_error(admin_api.get(detail("greet-ada"), {"run_id": str(uuid.uuid4())}), 404, "workflow_not_found")
    body = assert_error(admin_api.get(detail("greet-ada"), {"run_id": "not-a-uuid"}), 400, "invalid")
    assert "run_id" in body["detail"]


@pytest.mark.parametrize("workflow_id", ["nope", "n" * 300, "a%00b", "%F0%9F%98%80", "a.json", "%2e%2e", "spa%20ce"])
def test_unknown_workflow_is_404(admin_api, db, workflow_id):
    for suffix in ("", "history/"):
        assert_error(admin_api.get(detail(workflow_id, suffix)), 404, "workflow_not_found")
    before = snapshot()
    assert_error(post_json(admin_api, detail(workflow_id, "terminate/"), {}), 404, "workflow_not_found")
    assert snapshot() == before


def test_odd_workflow_ids_are_addressable(admin_api, db):
    for workflow_id in ("order.42", "über id", "a:b@c+d", "..."):
        durable.start_workflow(api_greet, "x", workflow_id=workflow_id)
        from urllib.parse import quote

        body = admin_api.get(detail(quote(workflow_id))).json()
        assert body["workflow_id"] == workflow_id


def test_history_is_paginated(admin_api, started):
    started.terminate("enough")
    response = admin_api.get(detail("greet-ada", "history/"))
    assert response.status_code == 200
    page = response.json()
    assert page["count"] == 2
    assert [(e["seq"], e["kind"]) for e in page["results"]] == [(1, "ExecutionStarted"), (2, "WorkflowTerminated")]
    assert set(page["results"][0]) == {"seq", "kind", "name", "task_id", "payload", "timestamp"}
    assert page["results"][0]["payload"]["args"] == ["ada"]
    page = admin_api.get(detail("greet-ada", "history/"), {"limit": 1, "offset": 1}).json()
    assert [e["seq"] for e in page["results"]] == [2] and page["next"] is None


def test_terminate(admin_api, started):
    response = post_json(admin_api, detail("greet-ada", "terminate/"), {"reason": "customer left"})
    assert response.status_code == 202, response.content
    assert response.json() == {"workflow_id": "greet-ada", "run_id": started.run_id, "status": "terminated"}
    instance = WorkflowInstance.objects.get(run_id=started.run_id)
    assert instance.status == "terminated" and instance.error["message"] == "customer left"
    assert not WorkItem.objects.filter(instance=instance).exists()

    before = snapshot()
    assert_error(post_json(admin_api, detail("greet-ada", "terminate/"), {}), 409, "workflow_not_open")
    assert snapshot() == before


def test_terminate_without_a_body(admin_api, started):
    response = admin_api.post(detail("greet-ada", "terminate/"))
    assert response.status_code == 202
    assert WorkflowInstance.objects.get(run_id=started.run_id).error["message"] == "terminated"


@pytest.mark.parametrize("data", [{"reason": "r" * 10_001}, {"reason": ["list"]}, [], "reason"])
def test_terminate_validation(admin_api, started, data):
    before = snapshot()
    assert_error(post_json(admin_api, detail("greet-ada", "terminate/"), data), 400, "invalid")
    assert snapshot() == before


def test_unsupported_methods_are_405(admin_api, started):
    before = snapshot()
    assert_error(admin_api.put(detail("greet-ada"), {}, format="json"), 405, "method_not_allowed")
    assert_error(admin_api.patch(detail("greet-ada"), {}, format="json"), 405, "method_not_allowed")
    assert_error(post_json(admin_api, detail("greet-ada"), {}), 405, "method_not_allowed")
    assert_error(admin_api.delete(WORKFLOWS), 405, "method_not_allowed")
    for url in CONTROL_URLS:
        assert_error(admin_api.get(url), 405, "method_not_allowed")
        assert_error(admin_api.delete(url), 405, "method_not_allowed")
    assert_error(post_json(admin_api, detail("greet-ada", "history/"), {}), 405, "method_not_allowed")
    assert_error(admin_api.delete(detail("greet-ada", "history/")), 405, "method_not_allowed")
    assert snapshot() == before


@pytest.mark.parametrize(("method", "url", "data"), WORKFLOW_REQUESTS, ids=WORKFLOW_REQUEST_IDS)
def test_options_describe_each_route(admin_api, api, started, method, url, data):
    response = admin_api.options(url)
    assert response.status_code == 200
    body = response.json()
    if method == "post":
        expected = {"start": "workflow", "terminate": "reason"}["start" if url == WORKFLOWS else "terminate"]
        assert expected in body["actions"]["POST"]
    assert_error(api.options(url), 403, "not_authenticated")


def test_browsable_api(admin_api, started):
    for url in (WORKFLOWS, detail("greet-ada"), detail("greet-ada", "history/")):
        response = admin_api.get(url, HTTP_ACCEPT="text/html")
        assert response.status_code == 200
        assert response["Content-Type"].startswith("text/html")
        assert b"greet-ada" in response.content
    # A rejected form post renders too.
    response = admin_api.generic("POST", WORKFLOWS, "[1]", content_type="application/json", HTTP_ACCEPT="text/html")
    assert response.status_code == 400 and response["Content-Type"].startswith("text/html")
    response = admin_api.generic("POST", WORKFLOWS, "{", content_type="application/json", HTTP_ACCEPT="text/html")
    assert response.status_code == 400
    response = APIClient().get(WORKFLOWS, HTTP_ACCEPT="text/html")
    assert response.status_code == 403


# -- system checks ------------------------------------------------------------------------


@pytest.mark.engine
def test_api_checks_pass_with_a_fixed_rest_framework():
    assert api_checks.api_in_use()
    assert api_checks.check_rest_framework() == []


@pytest.mark.engine
def test_outdated_rest_framework_is_an_error(monkeypatch):
    monkeypatch.setattr(api_checks, "installed_drf_version", lambda: (3, 17, 1))
    (error,) = api_checks.check_rest_framework()
    assert error.id == "django_durable.E010"
    assert "3.17.1" in error.msg and "djangorestframework>=3.17.2" in error.hint
    monkeypatch.setattr(api_checks, "installed_drf_version", lambda: (3, 17, 2))
    assert api_checks.check_rest_framework() == []


@pytest.mark.engine
def test_rest_framework_must_be_installed_as_an_app(settings):
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "rest_framework"]
    assert [e.id for e in api_checks.check_rest_framework()] == ["django_durable.E011"]


@pytest.mark.engine
def test_api_checks_are_silent_when_the_api_is_not_mounted(monkeypatch, settings):
    monkeypatch.setattr(api_checks, "api_in_use", lambda: False)
    monkeypatch.setattr(api_checks, "installed_drf_version", lambda: (3, 0, 0))
    settings.INSTALLED_APPS = [app for app in settings.INSTALLED_APPS if app != "rest_framework"]
    assert api_checks.check_rest_framework() == []


@pytest.mark.engine
def test_version_parsing():
    assert api_checks._parse_version("3.17.2") == (3, 17, 2)
    assert api_checks._parse_version("3.18.0rc1") == (3, 18, 0)
    assert api_checks._parse_version("3.17") == (3, 17)
    assert api_checks.installed_drf_version() >= (3, 17, 2)


def test_manage_py_check_runs_the_api_checks(db):
    from django.core import checks
    from django.core.management import call_command

    assert api_checks.check_rest_framework in checks.registry.registry.get_checks()
    call_command("check")


@pytest.mark.workers
def test_manage_py_check_reports_a_missing_rest_framework_app(tmp_path):
    import os
    import subprocess
    import sys

    from tests.conftest import REPO

    (tmp_path / "no_drf_settings.py").write_text(
        "from tests.settings import *  # noqa\n"
        "INSTALLED_APPS = [app for app in INSTALLED_APPS if app != 'rest_framework']\n"
    )
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"}
    done = subprocess.run(
        [sys.executable, "-m", "django", "check", "--settings", "no_drf_settings"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode != 0 and "django_durable.E011" in done.stderr + done.stdout, done.stderr


# -- fuzzing ------------------------------------------------------------------------------


def json_values(max_leaves: int = 12) -> st.SearchStrategy:
    scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
        max_leaves=max_leaves,
    )


def schema_strategy(schema: dict, components: dict) -> st.SearchStrategy:
    """Values shaped by an OpenAPI schema, often bent: each part is sometimes any JSON value."""
    if "$ref" in schema:
        return schema_strategy(components[schema["$ref"].rsplit("/", 1)[1]], components)
    kind = schema.get("type")
    if kind == "object" and "properties" in schema:
        required = set(schema.get("required", []))
        fields = {
            name: schema_strategy(sub, components)
            for name, sub in schema["properties"].items()
            if not sub.get("readOnly")
        }
        shaped = st.fixed_dictionaries(
            {k: v for k, v in fields.items() if k in required},
            optional={k: v for k, v in fields.items() if k not in required},
        )
    elif kind == "object":
        shaped = st.dictionaries(st.text(max_size=10), json_values(6), max_size=4)
    elif kind == "array":
        shaped = st.lists(json_values(6), max_size=4)
    elif kind == "string":
        if "enum" in schema:
            shaped = st.sampled_from(schema["enum"]) | st.text()
        elif schema.get("format") == "date-time":
            shaped = st.datetimes().map(lambda d: d.isoformat()) | st.text(max_size=30)
        else:
            shaped = st.text(max_size=schema.get("maxLength", 300) + 5) | st.sampled_from(["api_greet", "greet-ada"])
    elif kind == "boolean":
        shaped = st.booleans()
    elif kind == "integer":
        shaped = st.integers()
    else:
        shaped = json_values(6)
    return shaped | json_values(4)


@pytest.fixture(scope="module")
def openapi(django_db_blocker) -> dict:
    with django_db_blocker.unblock():
        return json.loads(APIClient().get(SCHEMA).content)


FUZZ = hsettings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)


def check_fuzzed(response: Any, before: tuple) -> None:
    assert response.status_code < 500, response.content[:500]
    if response.status_code >= 400:
        assert_error(response, response.status_code)
        assert snapshot() == before


def operations(openapi: dict) -> list[tuple[str, str, dict]]:
    return [(path, method, op) for path, ops in openapi["paths"].items() for method, op in ops.items()]


OPERATION_COUNT = 23  # 14 on runs and activities, 9 on schedules


@pytest.mark.engine
def test_fuzz_covers_every_operation(openapi):
    assert len(operations(openapi)) == OPERATION_COUNT


@pytest.mark.parametrize("index", range(OPERATION_COUNT))
@FUZZ
@given(data=st.data())
def test_fuzz_every_operation_from_the_schema(admin_api, started, openapi, index, data):
    path, method, op = operations(openapi)[index]
    components = openapi["components"]["schemas"]
    workflow_id = data.draw(
        st.sampled_from(["greet-ada", "nope"])
        | st.text(min_size=1, max_size=20).filter(
            lambda s: "/" not in s and "?" not in s and "#" not in s and "%" not in s
        )
    )
    from urllib.parse import quote

    url = path.replace("{workflow_id}", quote(workflow_id, safe=""))
    before = snapshot()
    if method in ("get", "delete"):
        params = data.draw(
            st.dictionaries(
                st.sampled_from(["status", "workflow_name", "workflow_id", "limit", "offset", "run_id"]),
                st.text(max_size=40) | st.integers().map(str) | st.uuids().map(str),
                max_size=4,
            )
        )
        if method == "get":
            response = admin_api.get(url, params)
        else:
            from urllib.parse import urlencode

            response = admin_api.delete(url, QUERY_STRING=urlencode(params))
    else:
        schema = op.get("requestBody", {}).get("content", {}).get("application/json", {}).get("schema", {})
        body = data.draw(schema_strategy(schema, components) if schema else json_values())
        headers = {}
        if "activities" in path and data.draw(st.booleans()):
            headers["HTTP_X_DURABLE_TASK_TOKEN"] = data.draw(
                st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=60)
            )
        response = post_json(admin_api, url, body, **headers)
    check_fuzzed(response, before)


@pytest.mark.parametrize("url", ACTIVITY_URLS)
@FUZZ
@given(token=st.text(max_size=2000) | st.binary(max_size=200).map(lambda b: b.decode("latin-1")), payload=json_values())
def test_fuzz_activity_tokens(api, db, url, token, payload):
    before = snapshot()
    response = post_json(
        api,
        url,
        {"task_token": token, "result": payload, "details": payload, "error": {"message": "m", "details": payload}},
    )
    check_fuzzed(response, before)
    assert response.status_code in (400, 409)


@pytest.mark.parametrize("url", ALL_POST_URLS)
@FUZZ
@given(body=json_values(20))
def test_fuzz_arbitrary_json_bodies(admin_api, started, url, body):
    before = snapshot()
    check_fuzzed(post_json(admin_api, url, body), before)


@pytest.mark.parametrize("url", ACTIVITY_URLS + [WORKFLOWS])
@FUZZ
@given(body=st.binary(max_size=300))
def test_fuzz_arbitrary_bytes(admin_api, started, url, body):
    before = snapshot()
    check_fuzzed(admin_api.generic("POST", url, body, content_type="application/json"), before)
