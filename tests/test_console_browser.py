"""The web console in a real browser (Debian's chromium under Playwright) against the session's real
stack: log in with the link `berth up` printed, deploy through the form and watch the row reach
DEPLOYED without a reload, a random-bytes model's failure in its row, its page and its logs,
Change and retry with the suggested context, Stop; a cross-site POST refused; the Nodes page and a
deployment's instances linking to their node."""

import importlib.util
import re
import time

import httpx
import pytest

from berth.common.console_login import issue_login_code, login_link
from berth.testing.browser import chromium, console_link, why_no_browser
from berth.testing.harness import wait_for_api_status

pytestmark = pytest.mark.skipif(why_no_browser() is not None, reason=str(why_no_browser()))

DEPLOY_S = 90_000  # ms: a deployment of the tiny model reaches DEPLOYED in a few seconds; CI is slow


@pytest.fixture(scope="module")
def browser():
    with chromium() as launched:
        yield launched


@pytest.fixture(scope="module")
def page(browser, stack):
    """One logged-in tab: through the link `berth up` printed, which is then spent."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    tab = context.new_page()
    link = console_link(stack.output)
    tab.goto(link)
    assert tab.url == f"{stack.api_url}/ui/deployments", tab.url  # the code is gone from the URL
    cookie = next(c for c in context.cookies() if c["name"] == "berth_console")
    assert cookie["httpOnly"] and cookie["sameSite"] == "Strict" and cookie["path"] == "/ui"
    tab.goto(link)  # a second time: spent
    assert "/ui/login" in tab.url and "used already" in tab.content()
    yield tab
    context.close()


def row(page, name: str):
    return page.locator(f'#deployments tr[data-name="{name}"]')


def test_deploy_through_the_form_and_watch_the_row_reach_deployed(page, stack, tiny_gguf, name):
    page.goto(f"{stack.api_url}/ui/deploy")
    page.get_by_label("Or a model").fill(str(tiny_gguf))
    page.get_by_label("Name", exact=True).fill(name)
    page.get_by_role("button", name="Check").click()
    page.wait_for_selector("#engine-choice:has-text('Engine: llamacpp')")
    assert "fits" in page.locator("#fit").inner_text()
    options = page.locator('input[name="context_option"]')
    assert options.count() == 3
    assert page.locator("#option-balanced").is_checked()
    balanced = int(page.locator("#option-balanced").get_attribute("value"))
    page.get_by_role("button", name="Deploy", exact=True).click()
    page.wait_for_url(f"**/ui/deployments/{name}")

    page.goto(f"{stack.api_url}/ui/deployments")
    page.evaluate("window.__same_page = true")
    page.wait_for_selector(f'#deployments tr[data-name="{name}"][data-status="DEPLOYED"]', timeout=DEPLOY_S)
    assert page.evaluate("window.__same_page") is True  # no reload: the table updated itself
    assert f"/models/{name}/v1" in row(page, name).inner_text()
    assert stack.api().get(f"/v1/deployments/{name}").json()["context_size"] == balanced
    # the node's memory is reserved per instance by the cluster: leave it to the tests after
    assert stack.api().post(f"/v1/deployments/{name}/stop").status_code == 202


def test_a_random_bytes_model_shows_its_failure_guidance_and_log_line(page, stack, api, garbage_gguf, name):
    page.goto(f"{stack.api_url}/ui/deployments")
    page.evaluate("window.__same_page = true")
    assert api.post("/v1/deployments", json={"name": name, "model": str(garbage_gguf)}).status_code == 202
    failed = page.locator(f'#deployments tr[data-name="{name}"][data-status="FAILED"]')
    failed.locator(".chip:has-text('MODEL_LOADING_FAILURE')").wait_for(timeout=DEPLOY_S)
    assert page.evaluate("window.__same_page") is True
    state = api.get(f"/v1/deployments/{name}").json()
    assert state["error"]["code"] == "MODEL_LOADING_FAILURE"
    assert " ".join(state["error"]["message"].split())[:60] in failed.inner_text()

    failed.get_by_role("link", name=name).click()
    page.wait_for_url(f"**/ui/deployments/{name}")
    error = page.locator("#error")
    assert "MODEL_LOADING_FAILURE" in error.inner_text()
    assert state["error"]["guidance"][:80] in " ".join(error.inner_text().split())

    page.get_by_role("link", name="View logs").click()
    page.wait_for_url(f"**/ui/deployments/{name}/logs")
    highlighted = page.locator("#log li.issue")
    highlighted.first.wait_for(timeout=15_000)
    issues = api.get(f"/v1/deployments/{name}/logs").json()["issues"]
    loader = next(i for i in issues if i["code"] == "MODEL_LOADING_FAILURE")
    line = highlighted.filter(has_text=loader["text"][:60]).first
    assert "MODEL_LOADING_FAILURE" in line.locator(".note").inner_text()
    # what to do: at the code's first highlighted line, and above the log
    assert "What to do" in highlighted.first.locator(".note").inner_text()
    assert state["error"]["guidance"][:60] in " ".join(page.locator("#issues").inner_text().split())


def test_change_and_retry_with_the_suggested_context_then_stop(page, stack, api, tiny_gguf, name):
    spec = {"name": name, "model": str(tiny_gguf), "context_size": 1_048_576}  # more than the node's 640 MiB
    assert api.post("/v1/deployments", json=spec).status_code == 202
    failed = wait_for_api_status(api, name, {"FAILED"}, timeout_s=60)
    suggested = failed["error"]["suggested_context_size"]
    assert failed["error"]["code"] == "OOM" and suggested

    page.goto(f"{stack.api_url}/ui/deployments/{name}")
    field = page.get_by_label("Context size (tokens)")
    assert field.input_value() == str(suggested)  # prefilled with the guidance's suggestion
    page.get_by_role("button", name="Change and retry").click()
    page.wait_for_selector("#detail #status:text-is('DEPLOYED')", timeout=DEPLOY_S)
    deployed = api.get(f"/v1/deployments/{name}").json()
    assert deployed["context_size"] == suggested == deployed["spec"]["context_size"]

    page.once("dialog", lambda dialog: dialog.accept())
    page.get_by_role("button", name="Stop").click()
    page.wait_for_selector("#detail #status:text-is('STOPPED')", timeout=60_000)
    assert api.get(f"/v1/deployments/{name}").json()["status"] == "STOPPED"


def test_scale_from_the_deployment_page_then_a_refused_scale_says_why(page, stack, api, tiny_gguf, name):
    # a small context: two instances fit in the node's 640 MiB (the cluster reserves each one's plan)
    spec = {"name": name, "model": str(tiny_gguf), "context_size": 1024}
    assert api.post("/v1/deployments", json=spec).status_code == 202
    wait_for_api_status(api, name, {"DEPLOYED"}, timeout_s=90)
    page.goto(f"{stack.api_url}/ui/deployments/{name}")
    page.get_by_label("Replicas").fill("2")
    page.get_by_role("button", name="Scale", exact=True).click()
    page.wait_for_selector("#action-result:has-text('Scaling to 2')", timeout=30_000)
    deadline = time.monotonic() + DEPLOY_S / 1000
    while (state := api.get(f"/v1/deployments/{name}").json())["ready_replicas"] < 2:
        assert time.monotonic() < deadline, state
        time.sleep(0.2)
    assert state["replicas"] == 2
    page.wait_for_selector("#detail :text('2/2 ready')", timeout=10_000)  # the page follows by itself
    page.get_by_label("Replicas").fill("64")  # above the maximum: the validator's reason, nothing changes
    page.get_by_role("button", name="Scale", exact=True).click()
    page.wait_for_selector("#action-result.alert", timeout=30_000)
    assert "16" in page.locator("#action-result").inner_text()
    assert api.get(f"/v1/deployments/{name}").json()["replicas"] == 2
    assert api.post(f"/v1/deployments/{name}/stop").status_code == 202
    wait_for_api_status(api, name, {"STOPPED"}, timeout_s=60)


def test_a_cross_site_post_from_a_browser_is_refused(browser, stack, api, tiny_gguf, name):
    """A page of another site (localhost is another site than 127.0.0.1) posts to the console with
    the user's browser: the SameSite=Strict cookie stays home, so the console refuses; and a
    forged request that had the cookie but came from elsewhere is refused by Origin / CSRF."""
    context = browser.new_context()
    tab = context.new_page()
    tab.goto(login_link(stack.api_url, issue_login_code(stack.settings)))
    assert tab.url.endswith("/ui/deployments")
    other_site = stack.api_url.replace("127.0.0.1", "localhost")
    tab.goto(f"{other_site}/ui/login")
    status = tab.evaluate(
        """async ([url, spec]) => (await fetch(url, {method: "POST", credentials: "include", mode: "cors",
             headers: {"Content-Type": "text/plain"}, body: JSON.stringify(spec)}).catch(e => ({status: 0}))).status""",
        [f"{stack.api_url}/ui/api/deploy", {"name": name, "model": str(tiny_gguf)}],
    )
    assert status in (0, 401, 403)
    cookie = next(c for c in context.cookies() if c["name"] == "berth_console")["value"]
    forged = httpx.post(
        f"{stack.api_url}/ui/api/deploy",
        json={"name": name, "model": str(tiny_gguf)},
        cookies={"berth_console": cookie},
        headers={"Origin": other_site, "X-Berth-CSRF": "x"},
    )
    assert forged.status_code == 403
    assert api.get(f"/v1/deployments/{name}").status_code == 404  # nothing was deployed
    context.close()


def test_the_console_is_usable_390_px_wide(browser, stack):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    tab = context.new_page()
    tab.goto(login_link(stack.api_url, issue_login_code(stack.settings)))
    for path in ("/ui/deployments", "/ui/nodes", "/ui/deploy"):
        tab.goto(f"{stack.api_url}{path}")
        width = tab.evaluate("document.documentElement.scrollWidth")
        assert width <= 390, (path, width)  # the table scrolls inside its box, the page does not
    tab.keyboard.press("Tab")
    assert tab.evaluate("document.activeElement.textContent") == "Skip to content"
    assert re.search(r"<label for=\"model\">", tab.content())
    context.close()


# with the cluster workflow (berth.workflows.cluster, on the core branch) `berth up` joins its node
HAS_CLUSTER_WORKFLOW = importlib.util.find_spec("berth.workflows.cluster") is not None


def test_the_nodes_page_and_an_instances_node(page, stack, api, tiny_gguf, name):
    # a serving deployment: one the tests before left (the node's 640 MiB may be reserved by it), or our own
    serving = api.get("/v1/deployments", params={"status": "DEPLOYED"}).json()["deployments"]
    ours = not serving
    if ours:
        spec = {"name": name, "model": str(tiny_gguf), "context_size": 1024}
        assert api.post("/v1/deployments", json=spec).status_code == 202
        wait_for_api_status(api, name, {"DEPLOYED"}, timeout_s=DEPLOY_S / 1000)
    else:
        name = serving[0]["name"]
    page.goto(f"{stack.api_url}/ui/deployments/{name}")
    page.locator("#detail a[href='/ui/nodes#node-test-node']").first.click()  # the instance's node
    page.wait_for_url("**/ui/nodes#node-test-node")
    assert page.locator("nav a[aria-current='page']").inner_text() == "Nodes"
    if not HAS_CLUSTER_WORKFLOW:
        page.locator("#nodes-why:has-text('No cluster view')").wait_for()
        assert "No node has joined the cluster." in page.locator("#nodes").inner_text()
    else:
        node = page.locator("#nodes tr#node-test-node")
        node.locator(".status:has-text('READY')").wait_for(timeout=30_000)
        text = node.inner_text()
        assert "test-node" in text and "MiB" in text or "GiB" in text
        # instances placed there: the page (polled every second) shows what /metrics counts; both read
        # the cluster's view, each at its own moment, so they are compared until they agree
        deadline = time.monotonic() + 10
        while True:
            placed = re.search(r'^berth_node_instances\{node="test-node"\} (\d+)$', api.get("/metrics").text, re.M)
            shown = node.locator("td").nth(7).inner_text()
            if placed and shown == placed.group(1) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        assert placed and shown == placed.group(1), (shown, placed)
        # Drain asks first; dismissed, nothing is sent and the node stays READY
        page.once("dialog", lambda dialog: dialog.dismiss())
        node.get_by_role("button", name="Drain").click()
        time.sleep(1.5)
        assert "READY" in node.locator(".status").inner_text()
    if ours:
        api.post(f"/v1/deployments/{name}/stop")
