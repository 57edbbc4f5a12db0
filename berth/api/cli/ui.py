"""`berth ui`: a new one-time login link for the web console (berth.common.console_login)."""

import argparse

from berth.api.cli.common import command, say
from berth.api.server import api_url
from berth.common.console_login import CODE_TTL_S, issue_login_code, login_link
from berth.settings import Settings


def run(args: argparse.Namespace) -> int:
    settings = Settings.from_env()
    try:
        code = issue_login_code(settings)
    except OSError as error:
        say(f"berth: cannot write a login code under {settings.home} ({error}): run this as the user of `berth up`")
        return 1
    say(login_link(api_url(settings), code))
    return 0


def add(commands) -> None:
    command(
        commands, "ui",
        "print a one-time login link for the web console",
        "Print a link that logs a browser into the web console at /ui of the API once (it is good "
        f"for {CODE_TTL_S // 3600} h, and only for one login). Run it on the machine of `berth up`, "
        "as its user: the code is written under $BERTH_HOME. The console's login page also takes "
        "the API token itself.",
        "berth ui\nBERTH_HOME=/tmp/berth berth ui",
        run,
    )
