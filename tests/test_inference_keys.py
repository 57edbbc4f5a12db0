"""Inference keys: the store (hashing, scope, revocation, its file), what /v1/auth/check answers whom,
and the REST routes behind `berth keys`, in-process (the gateway's side: test_inference_keys_gateway)."""

import hashlib
import json
import logging
import stat
import time

import pytest
from fastapi.testclient import TestClient

from berth.api.app import create_app
from berth.api.auth_check import Caller, Kind, check_answer, deployment_of, identify
from berth.api.cli import build_parser
from berth.api.server import PassedChecks
from berth.api.inference_keys import (
    KEY_LENGTH,
    KEYS_FILE,
    MAX_SCOPE,
    InvalidKeyRequest,
    KeyRecord,
    KeyStore,
    KeyStoreError,
    UnknownKey,
    key_id_of,
)
from berth.settings import Settings

ADMIN = "admin-token-0123456789"


@pytest.fixture
def store(tmp_path) -> KeyStore:
    return KeyStore(tmp_path)


# ---- the store ---------------------------------------------------------------------------------------


def test_a_key_is_stored_as_its_sha256_only_in_a_private_file(store, tmp_path):
    key, record = store.create("chat", ["qwen"])
    assert len(key) == KEY_LENGTH and key_id_of(key) == record.id
    text = (tmp_path / KEYS_FILE).read_text()
    assert key not in text and key[len("bik_") + 13:] not in text, "neither the key nor its secret is stored"
    stored = json.loads(text)["keys"][0]
    assert stored["sha256"] == hashlib.sha256(key.encode()).hexdigest()
    assert stored["last4"] == key[-4:] and stored["deployments"] == ["qwen"] and stored["name"] == "chat"
    assert stat.S_IMODE((tmp_path / KEYS_FILE).stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [KEYS_FILE], "nothing left aside"
    assert "sha256" not in record.public()


def test_keys_are_random_and_their_ids_unique(store):
    made = [store.create()[0] for _ in range(20)]
    assert len(set(made)) == 20 and len({key_id_of(k) for k in made}) == 20
    assert len(store.records()) == 20


def test_verify_takes_the_key_and_nothing_near_it(store):
    key, record = store.create()
    assert store.verify(key) == record
    near = [
        key[:-1] + ("A" if key[-1] != "A" else "B"),  # one character of the secret changed
        key[:5] + ("0" if key[5] != "0" else "1") + key[6:],  # another id, same secret
        key + "x", key[:-1], key.upper(), "", "bik_", "not-a-key",
        "bik_" + "0" * 12 + "_" + "A" * 43,  # well formed, no such key
    ]
    for presented in near:
        assert store.verify(presented) is None, presented


@pytest.mark.parametrize("deployments, expected", [
    (None, None),
    (["a"], ("a",)),
    (["b", "a", "b"], ("b", "a")),
    (["qwen-2-5", "x" * 63], ("qwen-2-5", "x" * 63)),
])
def test_a_scope_is_deployment_names(store, deployments, expected):
    _, record = store.create(deployments=deployments)
    assert record.deployments == expected


@pytest.mark.parametrize("deployments, words", [
    ([], "empty"),
    (["Bad_Name"], "'Bad_Name' is not a deployment name"),
    (["-a"], "not a deployment name"),
    (["a" * 64], "not a deployment name"),
    (["a/../b"], "not a deployment name"),
    (["a", ""], "not a deployment name"),
    ([f"d{i}" for i in range(MAX_SCOPE + 1)], f"at most {MAX_SCOPE}"),
])
def test_a_scope_that_is_not_deployment_names_is_refused(store, deployments, words):
    with pytest.raises(InvalidKeyRequest, match="deployments"):
        store.create(deployments=deployments)
    with pytest.raises(InvalidKeyRequest) as refused:
        store.create(deployments=deployments)
    assert words in str(refused.value)
    assert store.records() == [], "nothing made"


@pytest.mark.parametrize("name", ["a\x1b[31mred", "tab\there", "x" * 65, "nl\n"])
def test_a_name_with_control_characters_or_too_long_is_refused(store, name):
    with pytest.raises(InvalidKeyRequest, match="name"):
        store.create(name=name)


def test_a_scoped_key_opens_its_deployments_only():
    record = KeyRecord("0" * 12, "", ("a", "b"), "", "", "0" * 64)
    assert record.opens("a") and record.opens("b")
    assert not record.opens("c") and not record.opens(None)
    assert KeyRecord("0" * 12, "", None, "", "", "0" * 64).opens("anything")


def test_a_revoked_key_is_refused_at_once_here_and_in_another_process_view(store, tmp_path):
    other = KeyStore(tmp_path)  # a second API sharing the home
    key, record = store.create()
    kept, _ = store.create()
    assert other.verify(key) == record
    store.revoke(record.id)
    assert store.verify(key) is None
    assert other.verify(key) is None, "the other view reloads the replaced file at its next check"
    assert other.verify(kept) is not None
    with pytest.raises(UnknownKey, match="berth keys ls"):
        store.revoke(record.id)
    with pytest.raises(UnknownKey):
        other.revoke("nope")


def test_two_writers_sharing_a_home_lose_no_key(tmp_path):
    first, second = KeyStore(tmp_path), KeyStore(tmp_path)
    made = [(first if i % 2 else second).create(name=f"k{i}")[1].id for i in range(10)]
    assert sorted(r.id for r in first.records()) == sorted(made) == sorted(r.id for r in second.records())


@pytest.mark.parametrize("content, words", [
    ("{not json", "not JSON"),
    ("[]", "version"),
    ('{"version": 2, "keys": []}', "version"),
    ('{"version": 1, "keys": [{"id": "zz", "sha256": "00"}]}', "bad id"),
    ('{"version": 1, "keys": [{"id": "0123456789ab", "sha256": "x"}]}', "bad sha256"),
    ('{"version": 1, "keys": [{"id": "0123456789ab", "sha256": "' + "0" * 64 + '", "deployments": ["A"]}]}',
     "not a deployment name"),
])
def test_a_damaged_keys_file_refuses_every_key_and_says_which_file(tmp_path, content, words):
    store = KeyStore(tmp_path)
    key, _ = store.create()
    (tmp_path / KEYS_FILE).write_text(content)
    for call in (lambda: store.verify(key), store.records, store.create, lambda: store.revoke("0123456789ab")):
        with pytest.raises(KeyStoreError) as damaged:
            call()
        assert str(tmp_path / KEYS_FILE) in str(damaged.value) and words in str(damaged.value)
    assert (tmp_path / KEYS_FILE).read_text() == content, "a damaged file is never overwritten"
    caller = identify(key, ADMIN, store)
    assert caller.kind is Kind.KEYS_DAMAGED and check_answer(caller, "/models/a/")[0] == 503
    assert identify(ADMIN, ADMIN, store).kind is Kind.ADMIN, "the admin token does not depend on the file"
    (tmp_path / KEYS_FILE).unlink()
    assert store.records() == [] and store.verify(key) is None, "removed: every key revoked, the store works again"


def test_no_file_until_a_key_is_made(tmp_path):
    store = KeyStore(tmp_path)
    assert store.records() == [] and store.verify("bik_" + "0" * 12 + "_" + "A" * 43) is None
    assert list(tmp_path.iterdir()) == []


# ---- what the check answers ------------------------------------------------------------------------


@pytest.mark.parametrize("uri, deployment", [
    ("/models/qwen/v1/chat/completions", "qwen"),
    ("/models/qwen/health?x=1", "qwen"),
    ("/models/q%77en/health", "qwen"),  # decoded once, as Traefik's router reads the path
    ("/models/qwen", None),  # PathPrefix(`/models/qwen/`) does not route it
    ("/models/Qwen/health", None),
    ("/models/q%2577en/", None),  # decoded once only
    ("/models//qwen/", None),
    ("/models/../models/qwen/", None),
    ("/models/qwen/../other/health", None),  # a traversal names no deployment, whichever way it points
    ("/models/qwen/%2e%2e/other/", None),
    ("/models/qwen%2F..%2Fother/", None),
    ("/models/qwen/./health", None),
    ("/v1/deployments", None),
    ("", None),
    (None, None),
])
def test_the_deployment_of_a_gateway_request(uri, deployment):
    assert deployment_of(uri) == deployment


def _key(deployments):
    return Caller(Kind.KEY, KeyRecord("0" * 12, "", deployments, "", "", "0" * 64))


@pytest.mark.parametrize("caller, uri, status, words", [
    (Caller(Kind.ADMIN), None, 200, ""),
    (Caller(Kind.ADMIN), "/models/anything/", 200, ""),
    (_key(None), "/models/b/v1/models", 200, ""),
    (_key(("a",)), "/models/a/v1/models", 200, ""),
    (_key(("a",)), "/models/b/v1/models", 403, "does not open b; it opens a"),
    (_key(("a", "c")), None, 403, "opens only the model endpoints of a, c"),
    (Caller(Kind.UNKNOWN_KEY), "/models/a/", 401, "unknown or revoked"),
    (Caller(Kind.NONE), "/models/a/", 401, "missing bearer token"),
    (Caller(Kind.WRONG), "/models/a/", 401, "wrong bearer token"),
    (Caller(Kind.KEYS_DAMAGED, problem="file X is damaged"), "/models/a/", 503, "file X is damaged"),
])
def test_what_the_check_answers(caller, uri, status, words):
    answer = check_answer(caller, uri)
    assert answer[0] == status and words in answer[2], answer


# ---- the REST routes, in-process ---------------------------------------------------------------------


@pytest.fixture
def app_http(tmp_path):
    app = create_app(Settings.from_env({"BERTH_HOME": str(tmp_path)}), token=ADMIN)
    with TestClient(app, raise_server_exceptions=False, headers={"Authorization": f"Bearer {ADMIN}"}) as http:
        yield http


def test_keys_are_made_listed_and_revoked_with_the_admin_token(app_http):
    http = app_http
    made = http.post("/v1/keys", json={"name": "chat", "deployments": ["a"]})
    assert made.status_code == 201, made.text
    body = made.json()
    assert set(body) == {"id", "name", "deployments", "created", "last4", "key"} and body["key"].endswith(body["last4"])
    listed = http.get("/v1/keys").json()["keys"]
    assert listed == [{k: v for k, v in body.items() if k != "key"}], "never the key again"
    assert body["key"] not in http.get("/v1/keys").text
    key = {"Authorization": f"Bearer {body['key']}"}
    for method, path in (("GET", "/v1/deployments"), ("POST", "/v1/keys"), ("GET", "/v1/keys"),
                         ("DELETE", f"/v1/keys/{body['id']}"), ("GET", "/v1/engines")):
        refused = http.request(method, path, headers=key)
        assert refused.status_code == 403, (method, path, refused.text)
        assert refused.json()["error"]["code"] == "forbidden"
        assert "inference key" in refused.json()["error"]["message"] and "admin token" in refused.json()["error"]["message"]
    ok = http.get("/v1/auth/check", headers={**key, "X-Forwarded-Uri": "/models/a/v1/chat/completions"})
    assert ok.status_code == 200 and ok.json() == {"authenticated": True}
    elsewhere = http.get("/v1/auth/check", headers={**key, "X-Forwarded-Uri": "/models/b/v1/chat/completions"})
    assert elsewhere.status_code == 403 and "does not open b" in elsewhere.json()["error"]["message"]
    revoked = http.delete(f"/v1/keys/{body['id']}")
    assert revoked.status_code == 200 and revoked.json()["id"] == body["id"]
    gone = http.get("/v1/auth/check", headers={**key, "X-Forwarded-Uri": "/models/a/"})
    assert gone.status_code == 401 and "revoked" in gone.json()["error"]["message"]
    assert gone.headers["www-authenticate"].startswith("Bearer")
    after = http.get("/v1/deployments", headers=key)
    assert after.status_code == 401 and "admin token" in after.json()["error"]["message"]
    assert http.delete(f"/v1/keys/{body['id']}").status_code == 404
    assert http.get("/v1/keys").json() == {"keys": []}


@pytest.mark.parametrize("body, words", [
    ({"deployments": []}, "deployments"),
    ({"deployments": ["Bad_Name"]}, "deployments"),
    ({"deployments": "a"}, "deployments"),
    ({"name": "x" * 65}, "name"),
    ({"name": "a\x1bb"}, "control characters"),
    ({"scope": ["a"]}, "scope"),
])
def test_a_bad_key_request_is_a_400_naming_the_field(app_http, body, words):
    refused = app_http.post("/v1/keys", json=body)
    assert refused.status_code == 400, refused.text
    assert words in refused.json()["error"]["message"]
    assert app_http.get("/v1/keys").json() == {"keys": []}


def test_a_damaged_keys_file_is_a_503_naming_it_not_a_500(app_http, tmp_path):
    (tmp_path / KEYS_FILE).write_text("{not json")
    for method, path in (("GET", "/v1/keys"), ("POST", "/v1/keys"), ("DELETE", "/v1/keys/0123456789ab")):
        refused = app_http.request(method, path)
        assert refused.status_code == 503, (method, refused.text)
        assert KEYS_FILE in refused.json()["error"]["message"]
    assert app_http.get("/v1/auth/check").status_code == 200, "the admin token still passes"


def test_the_keys_routes_are_in_the_schema_with_their_statuses(app_http):
    paths = app_http.get("/openapi.json").json()["paths"]
    assert set(paths["/v1/keys"]) == {"get", "post"} and set(paths["/v1/keys/{key_id}"]) == {"delete"}
    assert {"201", "400", "401", "403", "409", "413", "503"} <= set(paths["/v1/keys"]["post"]["responses"])
    assert {"200", "401", "403", "404", "503"} <= set(paths["/v1/keys/{key_id}"]["delete"]["responses"])
    assert {"200", "401", "403", "503"} <= set(paths["/v1/auth/check"]["get"]["responses"])
    guarded = 0
    for path, operations in paths.items():
        for method, operation in operations.items():
            if operation.get("security"):  # takes the bearer token: an inference key there is a 403
                assert "403" in operation["responses"], (method, path)
                guarded += 1
    assert guarded >= 10


def test_the_check_is_quick_in_process(app_http, tmp_path):
    """The gateway asks on every keyed request: no FastAPI routing, a dict lookup (the real figure is
    benchmark P4's)."""
    key = app_http.post("/v1/keys", json={"deployments": ["a"]}).json()["key"]
    headers = {"Authorization": f"Bearer {key}", "X-Forwarded-Uri": "/models/a/health"}
    store = KeyStore(tmp_path)
    started = time.perf_counter()
    for _ in range(2000):
        assert store.verify(key) is not None
    per_check_us = (time.perf_counter() - started) / 2000 * 1e6
    assert per_check_us < 100, f"{per_check_us:.1f} us per key check"
    assert app_http.get("/v1/auth/check", headers=headers).status_code == 200


# ---- the CLI's parser --------------------------------------------------------------------------------


def test_the_keys_commands_parse():
    parser = build_parser()
    made = parser.parse_args(["keys", "create", "--deployments", "a,b", "--name", "chat"])
    assert made.func.__name__ == "create" and made.deployments == "a,b" and made.name == "chat"
    assert parser.parse_args(["keys", "ls"]).func.__name__ == "ls"
    gone = parser.parse_args(["keys", "revoke", "0123456789ab"])
    assert gone.func.__name__ == "revoke" and gone.id == "0123456789ab"
    with pytest.raises(SystemExit):
        parser.parse_args(["keys"])


@pytest.mark.parametrize("path, status, kept", [
    ("/v1/auth/check", 200, False),  # the gateway's traffic: Traefik's to log
    ("/v1/auth/check", 401, True),
    ("/v1/auth/check", 403, True),
    ("/v1/deployments", 200, True),
    ("/v1/keys", 201, True),
])
def test_the_access_log_leaves_out_passed_checks_only(path, status, kept):
    record = logging.LogRecord("uvicorn.access", logging.INFO, "", 0, '%s - "%s %s HTTP/%s" %d',
                               ("127.0.0.1:5", "GET", path, "1.1", status), None)
    assert PassedChecks().filter(record) is kept
