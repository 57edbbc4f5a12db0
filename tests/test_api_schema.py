"""API hygiene: no request, well-formed or not, gets a 5xx, and every answer is one the OpenAPI
schema documents.

The property-based test generates requests from the app's own schema (schemathesis: valid ones,
and invalid ones: wrong types, missing or unknown fields, values out of range, odd strings) and
sends them to the app in-process (ASGI); the app's facade talks to the Temporal of a real
`berth up` of its own (the deployments it makes, with whatever names and models were generated,
stay out of the session stack that the other tests list), so the deployment routes answer as
they do in use.
"""

import time
from collections import Counter

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings, strategies as st
from schemathesis.generation import GenerationMode

from berth.api.app import create_app
from berth.api.limits import MAX_PATH_CHARS, MAX_QUERY_CHARS, MAX_QUERY_VALUE_CHARS
from berth.settings import Settings
from berth.testing.harness import RunningStack

MAX_EXAMPLES = 400  # per generation mode (valid, invalid); the run stops sooner at the time budget
MIN_CASES = 300
TIME_BUDGET_S = 40
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.fixture(scope="module")
def own_stack(tmp_path_factory):
    running = RunningStack(tmp_path_factory.mktemp("schema-home")).start()
    yield running
    code, leftovers = running.stop_and_reap()
    assert code == 0 and not leftovers, (code, leftovers)


@pytest.fixture
def bare_app(tmp_path):
    """The app with no Temporal behind it: for what is answered before the facade is asked."""
    app = create_app(Settings.from_env({"BERTH_HOME": str(tmp_path)}), token="t")
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": "Bearer t"}) as http:
        yield app, http


def assert_error(response, status: int, code: str, *words: str) -> str:
    assert response.status_code == status, (response.status_code, response.text)
    error = response.json()["error"]
    assert set(error) == {"code", "message"} and error["code"] == code, error
    for word in words:
        assert word in error["message"], (word, error["message"])
    return error["message"]


# ---- 405, and the limits ---------------------------------------------------------------------------


def test_every_method_the_schema_does_not_declare_is_a_405_with_allow(bare_app):
    app, http = bare_app
    checked = 0
    for template, operations in app.openapi()["paths"].items():
        path = template.replace("{name}", "qwen")
        declared = sorted(method.upper() for method in operations)
        for method in METHODS:
            if method in declared:
                continue
            response = http.request(method, path)
            assert response.status_code == 405, (method, path, response.status_code, response.text)
            assert response.headers["allow"] == ", ".join(declared), (method, path)
            if method != "HEAD":  # a HEAD answer has no body
                assert_error(response, 405, "method_not_allowed", method, path, ", ".join(declared))
            checked += 1
    assert checked >= 40


def test_the_forward_auth_endpoint_takes_get_as_the_gateway_asks(bare_app):
    app, http = bare_app
    assert list(app.openapi()["paths"]["/v1/auth/check"]) == ["get"]
    assert http.get("/v1/auth/check").json() == {"authenticated": True}
    assert_error(http.post("/v1/auth/check"), 405, "method_not_allowed", "GET")
    assert_error(http.put("/v1/auth/check"), 405, "method_not_allowed", "GET")


def test_an_over_long_path_or_query_value_is_a_400_naming_the_limit(bare_app):
    _, http = bare_app
    assert_error(http.get("/v1/deployments/" + "a" * MAX_PATH_CHARS), 400, "invalid_request", str(MAX_PATH_CHARS))
    assert_error(http.get("/v1/nothing/" + "a" * MAX_PATH_CHARS), 400, "invalid_request", str(MAX_PATH_CHARS))
    assert_error(http.get("/v1/deployments/" + "a" * 64), 400, "invalid_request", "name", "63")
    long_value = "a" * (MAX_QUERY_VALUE_CHARS + 1)
    assert_error(http.get("/v1/engines", params={"model": long_value}), 400, "invalid_request",
                 "model", str(MAX_QUERY_VALUE_CHARS))
    assert_error(http.get("/v1/deployments", params={"unknown": long_value}), 400, "invalid_request",
                 "unknown", str(MAX_QUERY_VALUE_CHARS))
    assert_error(http.get("/v1/deployments", params={"page_token": long_value}), 400, "invalid_request",
                 "page_token", str(MAX_QUERY_VALUE_CHARS))
    many = {f"p{i}": "x" * 100 for i in range(MAX_QUERY_CHARS // 100)}
    assert_error(http.get("/healthz", params=many), 400, "invalid_request", "query string", str(MAX_QUERY_CHARS))


def test_a_model_no_file_can_be_named_is_reported_not_a_500(bare_app):
    """A name too long for the file system (ENAMETOOLONG), a NUL, an unknown user's home: no such file."""
    _, http = bare_app
    for model in ("a" * 4000, "/x/" + "b" * 300 + ".gguf", "a\x00b.gguf", "~nobody-here-xyz/m.gguf"):
        response = http.get("/v1/engines", params={"model": model})
        assert response.status_code == 200, (model[:40], response.text)
        assert response.json()["model"]["found"] is False


# ---- requests generated from the schema ------------------------------------------------------------


def documented_statuses(case) -> set[str]:
    return set(case.operation.definition.raw.get("responses", {}))


def test_generated_requests_get_no_5xx_and_only_documented_statuses(own_stack):
    stack = own_stack
    app = create_app(stack.settings, token=stack.api_token())
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    strategy = st.one_of(
        schema.as_strategy(generation_mode=GenerationMode.POSITIVE),
        schema.as_strategy(generation_mode=GenerationMode.NEGATIVE),
    )
    auth = {"Authorization": f"Bearer {stack.api_token()}"}
    seen: Counter = Counter()
    modes: Counter = Counter()
    problems: list[str] = []
    created: set[str] = set()
    deadline = time.monotonic() + TIME_BUDGET_S

    @settings(
        max_examples=2 * MAX_EXAMPLES,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(case=strategy)
    def send(case) -> None:
        if time.monotonic() > deadline:
            return
        if sum(seen.values()) % 10:  # 1 in 10 as it was generated, the others with the right token  # negative cases may mangle the bearer token: most are sent with the right one
            case.headers = {**(case.headers or {}), **auth}
        response = case.call()
        label = f"{case.method} {case.operation.path}"
        seen[(label, response.status_code)] += 1
        modes[case.meta.generation.mode.value if case.meta else "?"] += 1
        if response.status_code >= 500 or str(response.status_code) not in documented_statuses(case):
            problems.append(f"{label} -> {response.status_code}: {response.text[:300]} (sent {case.path_parameters}, "
                            f"{case.query}, {str(case.body)[:200]})")
        if label == "POST /v1/deployments" and response.status_code == 202:
            created.add(response.json()["name"])

    try:
        send()
    finally:
        with stack.api() as http:  # what the generated deployments started stops with the test
            for name in created:
                http.post(f"/v1/deployments/{name}/stop")

    total = sum(seen.values())
    statuses = Counter()
    for (_, status), count in seen.items():
        statuses[status] += count
    print(f"\n{total} generated requests ({dict(modes)}); statuses seen: {dict(sorted(statuses.items()))}")
    for (label, status), count in sorted(seen.items()):
        print(f"  {label:40} {status}  x{count}")
    assert not problems, "\n".join(problems[:20])
    assert total >= MIN_CASES, f"only {total} requests were generated"
    assert not any(status >= 500 for status in statuses)
    assert {200, 202, 400, 401, 404} <= set(statuses), statuses
