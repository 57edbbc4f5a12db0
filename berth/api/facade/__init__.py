"""The Temporal facade the REST API (and tests) use: lifecycle.py (deploy, state, logs, stop,
retry), listing.py (the list, a page at a time), logs.py (an engine log's answer), errors.py
(what the facade refuses)."""

from berth.api.facade.errors import BadRequest, Conflict, DeploymentsError, NotFound, Unavailable
from berth.api.facade.lifecycle import Deployments
from berth.api.facade.listing import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE, DeploymentPage, DeploymentSummary
from berth.api.facade.logs import MAX_TAIL, DeploymentLogs, LogIssue

__all__ = [
    "BadRequest",
    "Conflict",
    "DEFAULT_PAGE_SIZE",
    "DeploymentLogs",
    "DeploymentPage",
    "DeploymentSummary",
    "Deployments",
    "DeploymentsError",
    "LogIssue",
    "MAX_PAGE_SIZE",
    "MAX_TAIL",
    "NotFound",
    "Unavailable",
]
