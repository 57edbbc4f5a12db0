"""Screenshots of the web console from a real run: `python -m berth.testing.screenshots [docs/images]`.

Starts `berth up` in a scratch $BERTH_HOME (a node with 640 MiB for engines), deploys the tiny GGUF
twice (one serving, one asked for a context that cannot fit), a random-bytes model, and stops one;
logs in with the link `berth up` printed, in Debian's chromium, and saves:

    console-deployments.png   the deployments table (1280 px wide)
    console-failed.png        the failed deployment's page: code, message, guidance, log lines
    console-logs.png          View logs of it, the loader's line highlighted
    console-deploy.png        the deploy page in novice mode, with the balanced options
    console-nodes.png         the Nodes page: the node `berth up` joined, its capacity and reservations
    console-mobile.png        the deployments table 390 px wide

Everything it started is stopped at the end.
"""

from __future__ import annotations

import sys
import tempfile
import time
from pathlib import Path

from berth.testing.browser import chromium, console_link, why_no_browser
from berth.testing.harness import RunningStack, wait_for_api_status
from berth.testing.tiny_gguf import write_garbage_gguf, write_tiny_gguf

DEFAULT_OUT = Path("docs/images")


def deploy_examples(stack: RunningStack, models: Path) -> dict[str, str]:
    tiny = write_tiny_gguf(models / "tiny-chat.gguf")
    garbage = write_garbage_gguf(models / "random-bytes.gguf")
    with stack.api() as api:
        specs = [
            {"name": "tiny-chat", "model": str(tiny)},
            {"name": "tiny-chat-long", "model": str(tiny), "context_size": 1_048_576},
            {"name": "random-bytes", "model": str(garbage)},
            {"name": "tiny-chat-old", "model": str(tiny)},
        ]
        for spec in specs:
            api.post("/v1/deployments", json=spec).raise_for_status()
        wait_for_api_status(api, "tiny-chat", {"DEPLOYED"}, timeout_s=120)
        wait_for_api_status(api, "tiny-chat-old", {"DEPLOYED"}, timeout_s=120)
        wait_for_api_status(api, "random-bytes", {"FAILED"}, timeout_s=120)
        wait_for_api_status(api, "tiny-chat-long", {"FAILED"}, timeout_s=120)
        api.post("/v1/deployments/tiny-chat-old/stop").raise_for_status()
        wait_for_api_status(api, "tiny-chat-old", {"STOPPED"}, timeout_s=60)
    return {"tiny": str(tiny), "failed": "random-bytes"}


def shoot(stack: RunningStack, out: Path, tiny: str, failed: str) -> list[Path]:
    base = stack.api_url
    saved = []
    with chromium() as browser:
        context = browser.new_context(viewport={"width": 1280, "height": 720}, device_scale_factor=1)
        page = context.new_page()
        page.goto(console_link(stack.output))
        page.goto(f"{base}/ui/deployments")
        page.wait_for_selector('#deployments tr[data-name="tiny-chat-long"] .chip')
        time.sleep(1.0)  # one live update: the rows as the table keeps them
        saved.append(_save(page, out / "console-deployments.png"))

        page.goto(f"{base}/ui/deployments/{failed}")
        page.wait_for_selector("#error")
        saved.append(_save(page, out / "console-failed.png", full_page=True))

        page.goto(f"{base}/ui/deployments/{failed}/logs")
        page.wait_for_selector("#log li.issue")
        page.uncheck("#follow")
        page.evaluate("document.getElementById('log').scrollTop = 0")  # from the first line
        saved.append(_save(page, out / "console-logs.png", full_page=True))

        page.goto(f"{base}/ui/deploy")
        page.get_by_label("Or a model").fill(tiny)
        page.get_by_role("button", name="Check").click()
        page.wait_for_selector("#option-balanced")
        saved.append(_save(page, out / "console-deploy.png", full_page=True))

        page.goto(f"{base}/ui/nodes")
        page.wait_for_selector("#nodes tr[data-node] .status")
        saved.append(_save(page, out / "console-nodes.png"))

        mobile = browser.new_context(viewport={"width": 390, "height": 844}, storage_state=context.storage_state())
        phone = mobile.new_page()
        phone.goto(f"{base}/ui/deployments")
        phone.wait_for_selector('#deployments tr[data-name="tiny-chat"]')
        saved.append(_save(phone, out / "console-mobile.png"))
        mobile.close()
        context.close()
    return saved


def _save(page, path: Path, full_page: bool = False) -> Path:
    page.screenshot(path=str(path), full_page=full_page)
    return path


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out = Path(args[0]) if args else DEFAULT_OUT
    reason = why_no_browser()
    if reason:
        print(f"screenshots: {reason}", file=sys.stderr)
        return 1
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="berth-shots-") as scratch:
        stack = RunningStack(Path(scratch) / "home", extra_env={"BERTH_MEMORY_LIMIT": "640MiB"}).start()
        try:
            examples = deploy_examples(stack, Path(scratch) / "models")
            saved = shoot(stack, out, examples["tiny"], examples["failed"])
        finally:
            code, leftovers = stack.stop_and_reap()
        for path in saved:
            print(path)
        if code != 0 or leftovers:
            print(f"screenshots: berth up exited {code}; left behind: {leftovers}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
