"""What the console's pages and live updates show, gathered from the facade: a page of table rows,
a deployment's detail, log lines with their issues and what to do. Shared by pages.py (the first
render) and actions.py (the live updates, which send the same HTML fragments)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from fastapi import Request
from fastapi.templating import Jinja2Templates

from berth.api.console.rows import FAILED_STATUSES, STATUS_CLASS, Row, RowBuilder
from berth.api.facade import DeploymentLogs
from berth.domain.guidance import GuidanceFacts, guidance_for
from berth.domain.state import DeploymentState
from berth.domain.status import DeploymentStatus, InstanceStatus
from berth.domain.temporal_names import workflow_id
from berth.settings import Settings

TEMPLATES = Jinja2Templates(directory=str(Path(__file__).parent / "templates"))
PAGE_SIZE = 50


def status_filter(status: str | None) -> DeploymentStatus | None:
    """The table's filter: a known status, or none (an unknown one shows everything)."""
    try:
        return DeploymentStatus(status) if status else None
    except ValueError:
        return None


def row_builder(request: Request) -> RowBuilder:
    app = request.app
    builder = getattr(app.state, "console_rows", None)
    if builder is None:
        builder = app.state.console_rows = RowBuilder(app.state.deployments, app.state.settings.gateway_url)
    return builder


async def page_of_rows(
    request: Request, status: DeploymentStatus | None, page_token: str | None
) -> tuple[list[Row], str | None]:
    page = await request.app.state.deployments.list(status, PAGE_SIZE, page_token or None)
    return await row_builder(request).rows(page.deployments), page.next_page_token


def rows_html(request: Request, rows: list[Row]) -> str:
    return TEMPLATES.get_template("_rows.html").render(rows=rows)


def temporal_ui_url(settings: Settings, name: str) -> str:
    return f"http://127.0.0.1:{settings.ui_port}/namespaces/{settings.temporal_namespace}/workflows/{workflow_id(name)}"


@dataclass
class DetailView:
    status_class: str
    failed: bool
    copying: bool
    suggested_context_size: int | None
    replicas: str
    transitions: list  # newest first


def detail_view(state: DeploymentState) -> DetailView:
    error = state.error
    desired = getattr(state, "replicas", None)
    ready = getattr(state, "ready_replicas", None)
    if not (isinstance(desired, int) and isinstance(ready, int)):
        desired, ready = 1, 1 if state.status is DeploymentStatus.DEPLOYED else 0
    return DetailView(
        status_class=STATUS_CLASS.get(state.status, "idle"),
        failed=state.status in FAILED_STATUSES,
        copying=state.download is not None
        and any(i.status is InstanceStatus.COPYING_FILES for i in state.instances),
        suggested_context_size=error.suggested_context_size if error else None,
        replicas=f"{ready}/{desired}",
        transitions=list(reversed(state.transitions)),
    )


def detail_html(request: Request, state: DeploymentState) -> str:
    return TEMPLATES.get_template("_detail.html").render(state=state, d=detail_view(state))


def logs_answer(logs: DeploymentLogs, state: DeploymentState | None) -> dict:
    """The log lines, and for each issue its code, what it means and what to do."""
    facts = GuidanceFacts(
        deployment=logs.name,
        model=state.spec.model if state else None,
        engine=state.engine if state else None,
        context_size=state.context_size if state else None,
        suggested_context_size=state.error.suggested_context_size if state and state.error else None,
    )
    guidance: dict[str, str] = {}
    issues = []
    for issue in logs.issues:
        code = issue.code.value
        if code not in guidance:
            guidance[code] = guidance_for(issue.code, facts)
        issues.append(
            {"line": issue.line, "code": code, "description": issue.description, "guidance": guidance[code]}
        )
    return {"lines": logs.lines, "issues": issues, "offset": logs.offset, "path": logs.path}
