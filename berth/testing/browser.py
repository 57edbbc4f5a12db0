"""Debian's chromium under Playwright, for the console's browser tests and its screenshots.

`playwright install` downloads browsers, which offline machines cannot: the system's chromium
(`make system-chromium` installs it) is launched by path instead, headless, without the sandbox
(root cannot have it), and without the background traffic that a closed network refuses.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager

CHROMIUM_ENV = "BERTH_CHROMIUM"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]
LINK = re.compile(r"(https?://\S+/ui/login\?token=[A-Za-z0-9_-]+)")


def chromium_path() -> str | None:
    path = os.environ.get(CHROMIUM_ENV) or "/usr/bin/chromium"
    return path if os.access(path, os.X_OK) else shutil.which("chromium")


def why_no_browser() -> str | None:
    """None when a browser test can run; else why not, for pytest.skip."""
    if chromium_path() is None:
        return "no chromium: `make system-chromium` (apt-get install chromium, as root) installs it"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "the playwright package is missing: `make install-test`"
    return None


@contextmanager
def chromium(**launch) -> Iterator:
    """A Playwright Browser on the system's chromium."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS, **launch)
        try:
            yield browser
        finally:
            browser.close()


def console_link(output: list[str]) -> str:
    """The one-time console link that `berth up` printed."""
    for line in output:
        found = LINK.search(line)
        if found:
            return found[1]
    raise AssertionError("berth up printed no console link:\n" + "".join(output))
