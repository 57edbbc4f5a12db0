"""The web console at /ui, served by the API process (docs/console.md): server-rendered pages
(pages.py, nodes.py, templates/), a script of berth's own for live updates (static/console.js) and the
JSON routes it calls (actions.py), behind a session cookie (session.py) that the admin token or a
one-time login link (berth.common.console_login) earns. None of it is in the OpenAPI schema."""

from pathlib import Path

from fastapi import FastAPI
from fastapi.staticfiles import StaticFiles

from berth.api.console import actions, nodes, pages

STATIC = Path(__file__).parent / "static"


def install_console(app: FastAPI) -> None:
    app.include_router(pages.router)
    app.include_router(actions.reads)
    app.include_router(actions.changes)
    app.include_router(nodes.page)
    app.include_router(nodes.reads)
    app.include_router(nodes.changes)
    app.mount("/ui/static", StaticFiles(directory=STATIC), name="console-static")
