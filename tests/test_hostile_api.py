"""Hostile input over real HTTP (issue 8), against a live server.

- schemathesis fuzzes every operation of the API's own OpenAPI document, with data that fits
  it and data that does not, on made-up workflow ids and on runs that exist.
- Hypothesis makes task tokens (garbage, forged, altered, and correctly signed ones naming
  nothing real) and JSON payloads (deep, huge numbers, NUL, lone surrogates, the data
  converter's tag keys), sent next to a real attempt that awaits completion.

What must hold for every request: no 5xx; errors are JSON ``{"code", "detail"}``; a refused
request (and any GET) leaves every row of every django-durable table as it was; what is
accepted is stored exactly; the document tells the truth (schema-valid data is refused
only for what no schema can know, schema-invalid data is refused).

Reproducible: Hypothesis runs derandomized (a fixed seed per test), without its example
database, with a bounded number of examples.
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import requests
import schemathesis
from django.apps import apps
from django.core import signing
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

import django_durable as durable
from django_durable.converter import from_json
from django_durable.models import InboxEvent, WorkItem
from tests.conftest import grant, wait_for
from tests.testapp.models import ActivityRun
from tests.testapp.workflows import ac_approval, api_greet

pytestmark = pytest.mark.http

API = "/durable/api/"
ACTIVITY_ENDPOINTS = [f"{API}activities/{name}/" for name in ("complete", "fail", "heartbeat")]
OPERATION_IDS = [
    "listWorkflows",
    "startWorkflow",
    "describeWorkflow",
    "purgeWorkflow",
    "workflowHistory",
    "completeActivity",
    "failActivity",
    "heartbeatActivity",
    "cancelWorkflow",
    "rerunWorkflow",
    "resumeWorkflow",
    "signalWorkflow",
    "suspendWorkflow",
    "terminateWorkflow",
    # The schedule endpoints answer this user (no schedule permission) 403; test_api_schedules_http.py
    # fuzzes them for a user who holds the permissions.
    "listSchedules",
    "createSchedule",
    "describeSchedule",
    "updateSchedule",
    "deleteSchedule",
    "pauseSchedule",
    "unpauseSchedule",
    "triggerSchedule",
    "backfillSchedule",
]
# Runs the fuzzer addresses besides made-up ids (see ``live``).
KNOWN_IDS = ["greet-open", "greet-closed", "greet-suspended"]
# Operations whose fuzzing must get some requests accepted: the cases reach past the checks.
REACHES_SUCCESS = {
    "listWorkflows",
    "describeWorkflow",
    "workflowHistory",
    "purgeWorkflow",
    "signalWorkflow",
    "cancelWorkflow",
    "suspendWorkflow",
    "resumeWorkflow",
    "terminateWorkflow",
    "rerunWorkflow",
}


def fuzz_settings(max_examples: int) -> Any:
    return hsettings(
        max_examples=max_examples,
        derandomize=True,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: a failure is reported as found
        suppress_health_check=list(HealthCheck),
    )


def snapshot() -> list[list[dict[str, Any]]]:
    """Every row of every django-durable table, and the test activities' side effects."""
    models = [*apps.get_app_config("django_durable").get_models(), ActivityRun]
    return [list(model.objects.order_by("pk").values()) for model in models]


def content_type(response: Any) -> str:
    """Of a ``requests`` response or a schemathesis one (whose headers are lists, by lowercase name)."""
    value = response.headers.get("content-type") or response.headers.get("Content-Type") or ""
    return value[0] if isinstance(value, list) else value


def check_error_shape(response: Any, what: str) -> dict[str, Any]:
    assert content_type(response).startswith("application/json"), what
    body = response.json()
    assert isinstance(body, dict) and set(body) == {"code", "detail"} and isinstance(body["code"], str), (what, body)
    return body


def check_response(response: Any, before: list, method: str, what: str) -> None:
    """What holds for every answer: no 5xx, JSON errors, nothing changed unless accepted."""
    assert response.status_code < 500, f"{what}\n{response.status_code} {response.text[:1000]}"
    if response.status_code >= 400:
        check_error_shape(response, what)
    if response.status_code >= 400 or method == "GET":
        assert snapshot() == before, f"{what}\n{response.status_code}: the database changed"


class Live:
    """The live server, a staff session (HTTP basic auth) and the runs the fuzzer aims at."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.session = requests.Session()
        self.session.headers["Authorization"] = "Basic " + base64.b64encode(b"staff:pw").decode()

    def post(self, path: str, body: Any = None, *, raw: bytes | None = None, **kwargs: Any) -> requests.Response:
        data = raw if raw is not None else json.dumps(body).encode()
        return self.session.post(
            self.url + path,
            data=data,
            timeout=30,
            headers={"Content-Type": "application/json", **kwargs.pop("headers", {})},
            **kwargs,
        )


@pytest.fixture
def live(live_server, settings, django_user_model) -> Live:
    # Long polls (``?wait=``) of open runs are answered within this many seconds.
    settings.DURABLE = {**settings.DURABLE, "API_MAX_WAIT": 0.05}
    grant(django_user_model.objects.create_user("staff", password="pw", is_staff=True))
    durable.start_workflow(api_greet, "ada", workflow_id="greet-open")
    durable.start_workflow(api_greet, "bob", workflow_id="greet-closed").terminate("closed for the fuzzer")
    durable.start_workflow(api_greet, "eve", workflow_id="greet-suspended").suspend("for the fuzzer")
    return Live(live_server.url)


class Awaiting:
    """A run whose activity attempt awaits completion by token, made by a real worker."""

    def __init__(self, start_worker: Callable[..., Any], folder: Path) -> None:
        self.start_worker = start_worker
        self.handle = durable.start_workflow(ac_approval, str(folder), workflow_id="awaiting")
        self.run_worker()
        self.token = json.loads(Path(folder, "token-1").read_text())["token"]
        wait_for(lambda: WorkItem.objects.filter(awaiting_completion=True).exists(), what="the attempt to await")

    def run_worker(self) -> None:
        worker = self.start_worker(batch=True)
        assert worker.wait(60) == 0, worker.log()[-2000:]

    def result(self) -> Any:
        """Once completed: a worker runs the run's next step, and the run closes with its result."""
        self.run_worker()
        return self.handle.result(timeout=30)


@pytest.fixture
def awaiting(live, start_worker, tmp_path) -> Awaiting:
    return Awaiting(start_worker, tmp_path)


# -- the OpenAPI document, fuzzed by schemathesis -------------------------------------------

# Refusals of schema-valid requests that no schema can foresee (the rest are schema bugs).
SEMANTIC_CODES = {"invalid_token", "not_registered"}


def semantic_refusal(body: dict[str, Any]) -> bool:
    if body["code"] in SEMANTIC_CODES:
        return True
    detail = body["detail"]
    if body["code"] != "invalid" or not isinstance(detail, dict):
        return False
    messages = {field: " ".join(map(str, problems)) for field, problems in detail.items()}
    # The token may come in the body or the header: OpenAPI cannot say "one of the two".
    if set(messages) == {"task_token"} and "header" in messages["task_token"]:
        return True
    # Any JSON goes, except NUL in strings (PostgreSQL's jsonb refuses them), which the
    # document says in words.
    return all("NUL" in message for message in messages.values())


def fuzz_operation(live: Live, operation: Any, strategy: Any, max_examples: int) -> int:
    """Send ``max_examples`` cases of ``strategy``; return how many were answered 2xx."""
    accepted = [0]
    checks = [
        openapi_checks.status_code_conformance,
        openapi_checks.content_type_conformance,
        openapi_checks.response_schema_conformance,
        openapi_checks.negative_data_rejection,
    ]

    @fuzz_settings(max_examples)
    @given(case=strategy)
    def run(case: Any) -> None:
        before = snapshot()
        response = case.call(base_url=live.url, session=live.session, timeout=30)
        what = f"{operation.label}: {case.as_curl_command()}"
        check_response(response, before, case.method.upper(), what)
        case.validate_response(response, checks=checks)
        mode = case.meta.generation.mode if case.meta is not None else None
        if mode == GenerationMode.POSITIVE and response.status_code in (400, 422):
            body = response.json()
            assert semantic_refusal(body), f"{what}\nThe document calls this request valid, but it was refused: {body}"
        accepted[0] += response.status_code < 300

    run()
    return accepted[0]


@pytest.fixture
def api_schema(live) -> Any:
    return schemathesis.openapi.from_url(live.url + API + "schema/")


def test_the_fuzzed_document_lists_every_operation(api_schema):
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert sorted(op.definition.raw["operationId"] for op in operations) == sorted(OPERATION_IDS)


@pytest.mark.parametrize("operation_id", OPERATION_IDS)
def test_schemathesis_fuzzes_every_operation(live, api_schema, operation_id):
    (operation,) = [
        result.ok()
        for result in api_schema.get_all_operations()
        if result.ok().definition.raw["operationId"] == operation_id
    ]
    by_id = "{workflow_id}" in operation.path
    raw = operation.definition.raw
    # Without a body or a query, a request has nothing to make invalid but its path, which any text fits.
    negatable = "requestBody" in raw or any(p["in"] != "path" for p in raw.get("parameters", []))
    accepted = 0
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE) if negatable else (GenerationMode.POSITIVE,):
        accepted += fuzz_operation(live, operation, operation.as_strategy(generation_mode=mode), 15)
        if by_id:  # the same on runs that exist, open, closed and suspended
            known = st.sampled_from(KNOWN_IDS).flatmap(
                lambda workflow_id, mode=mode: operation.as_strategy(
                    generation_mode=mode, path_parameters={"workflow_id": workflow_id}
                )
            )
            accepted += fuzz_operation(live, operation, known, 10)
    assert (accepted > 0) == (operation_id in REACHES_SUCCESS), accepted


# -- task tokens, made by Hypothesis -------------------------------------------------------

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)


def signed(payload: Any, *, salt: str = "django_durable.task_token", key: str | None = None) -> str:
    return signing.dumps(payload, salt=salt, key=key)


def token_strategy(real: str, real_fields: dict[str, Any]) -> st.SearchStrategy[str]:
    """Tokens that must all be refused: none is the real one, and no one but the server can sign."""
    field_values = json_scalars | st.sampled_from([0, -1, 2**63, 10**30, True, "1", 1.5, str(uuid.uuid4())])
    hostile_fields = st.fixed_dictionaries(
        {},
        optional={
            "i": field_values,
            "r": field_values | st.just(real_fields["r"]),
            "t": field_values,
            "a": field_values,
            "x": json_scalars,
        },
    ).filter(lambda fields: {k: fields.get(k) for k in "irta"} != real_fields)
    altered = (
        st.tuples(st.integers(0, len(real) - 1), st.characters(codec="ascii"))
        .map(lambda edit: real[: edit[0]] + edit[1] + real[edit[0] + 1 :])
        .filter(lambda token: token != real)
    )
    return st.one_of(
        st.text(max_size=300),
        st.text(alphabet=st.characters(codec="ascii"), min_size=1000, max_size=1100),
        hostile_fields.map(signed),  # correctly signed, but not a token of a real attempt
        hostile_fields.map(lambda fields: signed(fields, salt="another.salt")),
        st.just(real_fields).map(lambda fields: signed(fields, key="not-the-secret-key")),
        st.just(real_fields).map(lambda fields: signed({**fields, "a": fields["a"] + 1})),  # a later attempt
        altered,
        st.integers(1, len(real) - 1).map(lambda n: real[:n]),
        st.text(max_size=5).map(lambda junk: real + junk).filter(lambda token: token != real),
        st.just(real.swapcase()),
    )


def test_hostile_task_tokens_are_refused_and_change_nothing(awaiting, live):
    real = awaiting.token
    data = signing.loads(real, salt="django_durable.task_token")
    item = WorkItem.objects.get(awaiting_completion=True)

    @fuzz_settings(100)
    @given(token=token_strategy(real, data), endpoint=st.sampled_from(ACTIVITY_ENDPOINTS), in_header=st.booleans())
    def run(token: str, endpoint: str, in_header: bool) -> None:
        body: dict[str, Any] = {"result": 1, "details": 1, "error": {"message": "no"}}
        headers = {}
        if in_header and token.isascii() and token.isprintable() and token.strip() == token and token:
            headers["X-Durable-Task-Token"] = token
        else:
            body["task_token"] = token
        before = snapshot()
        response = live.post(endpoint, body, headers=headers)
        what = f"POST {endpoint} token={token!r} header={bool(headers)}"
        check_response(response, before, "POST", what)
        assert response.status_code in (400, 409), what
        assert check_error_shape(response, what)["code"] in ("invalid_token", "activity_not_pending"), what

    run()
    # The real token still works: nothing above consumed or disturbed the attempt.
    assert WorkItem.objects.get(pk=item.pk).attempt == item.attempt
    response = live.post(f"{API}activities/complete/", {"task_token": real, "result": {"ok": True}})
    assert response.status_code == 200, response.text
    assert awaiting.result() == {"result": {"ok": True}}


# -- payloads, made by Hypothesis ----------------------------------------------------------

CONVERTER_TAGS = ["__dict__", "__dataclass__", "__model__", "fields", "data"]
hostile_text = st.one_of(
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8", exclude_characters="\x00"), max_size=30),
    st.just("\x00"),
    st.just("a\x00b"),  # NUL: refused (PostgreSQL's jsonb cannot store it)
    st.characters(categories=["Cs"]).map(lambda c: f"x{c}y"),  # a lone surrogate: refused
    st.sampled_from(["os:system", "subprocess:Popen", "django_durable.models:WorkItem", "💥" * 50]),
)
hostile_keys = st.sampled_from(CONVERTER_TAGS) | hostile_text
hostile_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(10**40), max_value=10**40)
    | st.floats(allow_nan=False, allow_infinity=False)
    | hostile_text
)
hostile_json = st.recursive(
    hostile_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(hostile_keys, children, max_size=4),
    max_leaves=15,
) | st.integers(1, 120).map(lambda depth: json.loads("[" * depth + "]" * depth))  # up to 100 levels pass


def has_nul_or_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        return "\x00" in value or any(0xD800 <= ord(c) <= 0xDFFF for c in value)
    if isinstance(value, list):
        return any(has_nul_or_surrogate(item) for item in value)
    if isinstance(value, dict):
        return any(has_nul_or_surrogate(k) or has_nul_or_surrogate(v) for k, v in value.items())
    return False


def same_json(stored: Any, sent: Any) -> bool:
    """Equal as JSON. PostgreSQL's jsonb keeps numbers as decimals and prints an integral one
    without a fraction, so a float such as 1e+20 comes back as the int 10**20 (the same number)."""
    if isinstance(sent, float) and isinstance(stored, int) and not isinstance(stored, bool):
        return float(stored) == sent
    if isinstance(sent, list) and isinstance(stored, list):
        return len(sent) == len(stored) and all(map(same_json, stored, sent))
    if isinstance(sent, dict) and isinstance(stored, dict):
        return stored.keys() == sent.keys() and all(same_json(stored[k], sent[k]) for k in sent)
    return type(stored) is type(sent) and stored == sent


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


def post_payload(live: Live, path: str, body: dict[str, Any]) -> requests.Response:
    # ensure_ascii: a lone surrogate travels as a \\udxxx escape, the only way JSON can carry it.
    return live.post(path, raw=json.dumps(body, ensure_ascii=True).encode())


def test_hostile_payloads_are_stored_exactly_or_refused(awaiting, live):
    token = awaiting.token
    heartbeat, signal_url = f"{API}activities/heartbeat/", f"{API}workflows/awaiting/signal/"

    @fuzz_settings(100)
    @given(payload=hostile_json, target=st.sampled_from(["heartbeat", "signal", "start"]))
    def run(payload: Any, target: str) -> None:
        before = snapshot()
        if target == "heartbeat":
            response = post_payload(live, heartbeat, {"task_token": token, "details": payload})
        elif target == "signal":
            response = post_payload(live, signal_url, {"name": "fuzz", "payload": payload})
        else:
            response = post_payload(live, f"{API}workflows/", {"workflow": "api_greet", "args": [payload]})
        what = f"{target}: {payload!r}"[:2000]
        check_response(response, before, "POST", what)
        # The request body, a container around the payload, may be at most 100 levels deep.
        refuse = has_nul_or_surrogate(payload) or depth(payload) + (2 if target == "start" else 1) > 100
        assert (response.status_code >= 400) == refuse, f"{what}\n{response.status_code} {response.text[:500]}"
        if refuse:
            assert response.status_code == 400, what
            assert response.json()["code"] in ("invalid", "parse_error", "not_serializable"), what
            return
        if target == "heartbeat":
            stored = WorkItem.objects.get(awaiting_completion=True).heartbeat_details
        elif target == "signal":
            stored = InboxEvent.objects.order_by("-pk").first().payload["payload"]
        else:
            run_id = response.json()["run_id"]
            stored = durable.get_workflow(response.json()["workflow_id"], run_id).describe().args[0]
            assert same_json(stored, payload), what
            return
        assert same_json(from_json(stored), payload), what  # what the workflow will read, tag keys included

    run()
    assert awaiting.handle.status() == "running"  # still awaiting: heartbeats do not finish it


# -- limits over real HTTP -------------------------------------------------------------------


def test_payload_and_body_limits_answer_413_and_change_nothing(awaiting, live, settings):
    token = awaiting.token
    settings.DURABLE = {**settings.DURABLE, "PAYLOAD_MAX_BYTES": 1000, "API_MAX_BODY_SIZE": 64 * 1024}
    big = "x" * 2000
    requests_to_refuse = [
        (f"{API}workflows/", {"workflow": "api_greet", "args": [big]}),
        (f"{API}workflows/awaiting/signal/", {"name": "go", "payload": big}),
        (f"{API}activities/complete/", {"task_token": token, "result": big}),
        (f"{API}activities/fail/", {"task_token": token, "error": {"message": "m", "details": big}}),
        (f"{API}activities/heartbeat/", {"task_token": token, "details": big}),
    ]
    before = snapshot()
    for path, body in requests_to_refuse:
        response = live.post(path, body)
        assert response.status_code == 413, (path, response.text)
        detail = check_error_shape(response, path)
        assert detail["code"] == "payload_too_large" and "DURABLE['PAYLOAD_MAX_BYTES']" in detail["detail"]
        oversized = live.post(path, {**body, "padding": "p" * (64 * 1024)})
        assert oversized.status_code == 413, (path, oversized.text)
        assert oversized.json() == {
            "code": "payload_too_large",
            "detail": "The request body is larger than the limit of 65536 bytes.",
        }
    assert snapshot() == before
    assert live.post(f"{API}activities/complete/", {"task_token": token, "result": "x" * 900}).status_code == 200
    assert awaiting.result() == {"result": "x" * 900}
