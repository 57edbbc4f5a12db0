"""The console's gate, in-process: the session cookie, the one-time login codes, the cross-site and
CSRF checks (berth.api.console.session, berth.common.console_login). No browser and no Temporal:
everything here is answered before the facade is asked. tests/test_console_browser.py drives the
pages in chromium against a real stack."""

import time
from datetime import datetime, timedelta, timezone

import pytest
from fastapi.testclient import TestClient

from berth.api.app import create_app
from berth.api.console import session as sessions
from berth.api.console.rows import age_text, one_line, replicas_text
from berth.api.facade import DeploymentSummary
from berth.domain.status import DeploymentStatus
from berth.common.console_login import consume_login_code, issue_login_code, login_dir
from berth.settings import Settings

TOKEN = "admin-token-for-tests"
PAGES = ["/ui", "/ui/", "/ui/deployments", "/ui/deployments?status=FAILED", "/ui/deploy", "/ui/deployments/x",
         "/ui/deployments/x/logs"]
READS = ["/ui/api/deployments", "/ui/api/deployments/x", "/ui/api/deployments/x/logs", "/ui/api/engines?model=x"]
ACTIONS = ["/ui/api/deploy", "/ui/api/plan", "/ui/api/deployments/x/stop", "/ui/api/deployments/x/retry",
           "/ui/api/deployments/x/scale"]


@pytest.fixture
def settings(tmp_path):
    return Settings.from_env({"BERTH_HOME": str(tmp_path), "BERTH_TEMPORAL_PORT": "1"})


@pytest.fixture
def http(settings):
    app = create_app(settings, token=TOKEN)
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        yield client


def logged_in(http) -> str:
    """Log in with the form; the CSRF token of the session."""
    answer = http.post("/ui/login", data={"token": TOKEN})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/deployments", answer.text
    return sessions.csrf_token(TOKEN, http.cookies.get(sessions.COOKIE))


def test_without_the_cookie_every_page_redirects_to_login(http):
    for page in PAGES:
        answer = http.get(page)
        assert answer.status_code == 303 and answer.headers["location"] == "/ui/login", page
    assert http.get("/ui/login").status_code == 200


def test_without_the_cookie_every_action_is_refused(http):
    for url in READS:
        assert http.get(url).status_code == 401, url
    for url in ACTIONS:
        answer = http.post(url, json={"name": "x", "model": "x"}, headers={"X-Berth-CSRF": "anything"})
        assert answer.status_code == 401 and answer.json()["error"]["code"] == "unauthorized", url
    # the API's bearer token is no console session either
    bearer = {"Authorization": f"Bearer {TOKEN}"}
    assert http.get("/ui/api/deployments", headers=bearer).status_code == 401
    assert http.get("/ui/deploy", headers=bearer).status_code == 303


def test_the_form_takes_only_the_admin_token(http):
    for wrong in ("", "nope", TOKEN + "x", " "):
        answer = http.post("/ui/login", data={"token": wrong})
        assert answer.status_code == 401 and "not the API token" in answer.text, wrong
        assert sessions.COOKIE not in answer.headers.get("set-cookie", "")
    answer = http.post("/ui/login", data={"token": TOKEN})
    cookie = answer.headers["set-cookie"]
    assert answer.status_code == 303
    for flag in ("HttpOnly", "SameSite=strict", "Path=/ui"):
        assert flag.lower() in cookie.lower(), cookie
    assert TOKEN not in cookie
    assert http.get("/ui/deploy").status_code == 200


def test_a_login_link_works_once_and_the_url_is_cleaned(http, settings):
    code = issue_login_code(settings)
    assert TOKEN not in code
    answer = http.get(f"/ui/login?token={code}")
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/deployments"
    assert answer.headers["referrer-policy"] == "no-referrer"
    assert sessions.COOKIE in answer.headers["set-cookie"]
    http.cookies.clear()
    again = http.get(f"/ui/login?token={code}")
    assert again.status_code == 401 and "used already or has expired" in again.text
    assert sessions.COOKIE not in again.headers.get("set-cookie", "")
    # the admin token itself is not a login code
    assert http.get(f"/ui/login?token={TOKEN}").status_code == 401
    assert list(login_dir(settings).iterdir()) == []


def test_login_codes_expire_and_odd_ones_are_refused(settings):
    code = issue_login_code(settings, ttl_s=60)
    assert not consume_login_code(settings, code, now=time.time() + 61)
    assert not consume_login_code(settings, code)  # consumed by the expired attempt
    for odd in (None, "", "../../api-token", "a" * 500, "x y", "é" * 30):
        assert not consume_login_code(settings, odd)
    issue_login_code(settings, ttl_s=-1)
    issue_login_code(settings)  # removes the expired one
    assert len(list(login_dir(settings).iterdir())) == 1


def test_a_cross_site_post_is_refused(http):
    csrf = logged_in(http)
    own = {"X-Berth-CSRF": csrf}
    for headers, code in (
        ({**own, "Origin": "https://evil.example"}, "cross_site_refused"),
        ({**own, "Sec-Fetch-Site": "cross-site"}, "cross_site_refused"),
        ({**own, "Sec-Fetch-Site": "same-site"}, "cross_site_refused"),
        ({**own, "Origin": "null"}, "cross_site_refused"),
        ({}, "csrf_refused"),
        ({"X-Berth-CSRF": "forged"}, "csrf_refused"),
    ):
        for url in ACTIONS:
            answer = http.post(url, json={"name": "x", "model": "x"}, headers=headers)
            assert answer.status_code == 403 and answer.json()["error"]["code"] == code, (url, headers, answer.text)
    # a login or a logout from another site is refused too
    assert http.post("/ui/login", data={"token": TOKEN}, headers={"Origin": "https://evil.example"}).status_code == 403
    assert http.post("/ui/logout", data={"csrf": csrf}, headers={"Sec-Fetch-Site": "cross-site"}).status_code == 403
    # the same request from the console's own page passes the gate (and reaches the plan)
    answer = http.post("/ui/api/plan", json={"model": "hf:org/repo:m.gguf"},
                       headers={**own, "Origin": "http://testserver", "Sec-Fetch-Site": "same-origin"})
    assert answer.status_code == 200 and answer.json()["known"] is False


def test_forged_or_expired_cookies_are_no_session(http):
    good = sessions.new_session(TOKEN)
    assert sessions.session_valid(TOKEN, good)
    assert not sessions.session_valid("another-token", good)  # a new API token ends every session
    assert not sessions.session_valid(TOKEN, sessions.new_session(TOKEN, now=time.time() - sessions.SESSION_S - 1))
    expires, nonce, signature = good.split(".")
    for forged in (f"{int(expires) + 999}.{nonce}.{signature}", "1.2.3", "", "x" * 300, good + "."):
        http.cookies.set(sessions.COOKIE, forged)
        assert http.get("/ui/deploy").status_code == 303, forged


def test_logout_ends_the_session(http):
    csrf = logged_in(http)
    assert http.post("/ui/logout", data={"csrf": "wrong"}).status_code == 403
    answer = http.post("/ui/logout", data={"csrf": csrf})
    assert answer.status_code == 303 and answer.headers["location"] == "/ui/login"
    assert http.get("/ui/deploy").status_code == 303


def test_pages_carry_a_strict_content_security_policy(http):
    logged_in(http)
    page = http.get("/ui/deploy")
    assert page.status_code == 200 and 'id="deploy"' in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy and "frame-ancestors 'none'" in policy
    assert "<script src=\"/ui/static/console.js\"" in page.text and "http" not in page.text.split("<body>")[0].replace("http-equiv", "")
    assert http.get("/ui/static/console.js").status_code == 200
    assert http.get("/ui/static/console.css").status_code == 200


# ---- what the table shows (pure) -------------------------------------------------------------------

NOW = datetime(2026, 12, 2, 12, 0, tzinfo=timezone.utc)


@pytest.mark.parametrize("ago, text", [
    (None, ""), (timedelta(0), "0s"), (timedelta(seconds=59), "59s"), (timedelta(seconds=60), "1m"),
    (timedelta(minutes=59, seconds=59), "59m"), (timedelta(hours=3, minutes=5), "3h"), (timedelta(days=2, hours=1), "2d"),
    (timedelta(seconds=-5), "0s"),  # a clock a little ahead of this one
])
def test_age(ago, text):
    assert age_text(None if ago is None else NOW - ago, NOW) == text


class WithReplicas(DeploymentSummary):
    replicas: int = 3
    ready_replicas: int = 2


@pytest.mark.parametrize("summary, status, text", [
    (DeploymentSummary(name="a", status="DEPLOYED"), DeploymentStatus.DEPLOYED, "1/1"),
    (DeploymentSummary(name="a", status="FAILED"), DeploymentStatus.FAILED, "0/1"),
    (DeploymentSummary(name="a", status="REQUESTED"), DeploymentStatus.REQUESTED, "0/1"),
    (WithReplicas(name="a", status="DEPLOYED"), DeploymentStatus.DEPLOYED, "2/3"),  # once the listing has them
])
def test_replicas(summary, status, text):
    assert replicas_text(summary, status) == text


@pytest.mark.parametrize("message, text", [
    ("short", "short"), ("two\nlines  and\ttabs", "two lines and tabs"), ("x" * 200, "x" * 159 + "…"),
])
def test_one_line_messages(message, text):
    assert one_line(message) == text


def test_berth_ui_prints_a_link_that_logs_in_once(settings, monkeypatch, capfd):
    from berth.api.cli import main

    monkeypatch.setenv("BERTH_HOME", str(settings.home))
    monkeypatch.setenv("BERTH_API_PORT", "8123")
    with pytest.raises(SystemExit) as exited:
        main(["ui"])
    assert exited.value.code == 0
    link = capfd.readouterr().out.strip()
    assert link.startswith("http://127.0.0.1:8123/ui/login?token=")
    code = link.rsplit("=", 1)[1]
    assert consume_login_code(settings, code) and not consume_login_code(settings, code)


def test_the_download_shows_as_a_progress_bar_while_copying_files():
    from berth.api.console.views import TEMPLATES, detail_view
    from berth.domain.spec import DeploymentSpec
    from berth.domain.state import DeploymentState, DownloadProgress, InstanceState
    from berth.domain.status import InstanceStatus

    state = DeploymentState(
        spec=DeploymentSpec(name="q", model="hf:org/repo"), status=DeploymentStatus.DEPLOYING,
        download=DownloadProgress(source="hf:org/repo", file="model-q4.gguf", bytes_done=3 * 2**20,
                                  bytes_total=12 * 2**20, files_done=0, files_total=1),
        instances=[InstanceState(instance_id="q-1", node="n", status=InstanceStatus.COPYING_FILES)],
    )
    html = TEMPLATES.get_template("_detail.html").render(state=state, d=detail_view(state))
    assert '<progress id="download" max="100" value="25.0"' in html
    assert "model-q4.gguf: 3.0 MiB of 12.0 MiB (25.0%), file 1 of 1" in " ".join(html.split())
    state.instances[0].status = InstanceStatus.STARTING  # the files are in place: no bar
    assert "<progress" not in TEMPLATES.get_template("_detail.html").render(state=state, d=detail_view(state))
