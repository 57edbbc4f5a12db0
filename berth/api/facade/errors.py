"""What the facade refuses, as typed errors the REST API turns into status codes, and messages
that name each field and what to change."""

from __future__ import annotations

import json

from pydantic import ValidationError
from temporalio.service import RPCError, RPCStatusCode


class DeploymentsError(Exception):
    """A request the facade refuses; `code` is the machine-readable name of the reason."""

    code = "error"

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class BadRequest(DeploymentsError):
    code = "invalid_request"


class NotFound(DeploymentsError):
    code = "not_found"


class Conflict(DeploymentsError):
    code = "conflict"


class Unavailable(DeploymentsError):
    """Temporal or the berth worker does not answer."""

    code = "unavailable"


def describe_problem(error: dict, field: str) -> str:
    """'field: what is wrong (got X)' for one pydantic error, in words that say what to change."""
    kind = error.get("type", "")
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        message = "unknown field; remove it (see /docs for the fields this request takes)"
    elif kind == "missing":
        message = "required field is missing"
    elif "input" in error and kind not in ("model_attributes_type", "dict_type", "value_error") and not _is_env(field):
        message += f" (got {json.dumps(error['input'], default=str)[:100]})"
    return f"{field}: {message}" if field else message


def _is_env(field: str) -> bool:
    """An env value is a secret: never echoed, not even to its sender."""
    return "env" in field.split(".")


def validation_message(invalid: ValidationError) -> str:
    """One clause per problem, each naming its field: 'context_size: Input should be ... (got -1)'."""
    return "; ".join(
        describe_problem(error, ".".join(str(part) for part in error["loc"])) for error in invalid.errors()
    )


def rpc_error(error: RPCError, name: str | None = None) -> Exception:
    """The typed error for what Temporal answered; an unexpected one is returned as it is."""
    if error.status is RPCStatusCode.NOT_FOUND and name is not None:
        return NotFound(f"no deployment named {name!r}: see GET /v1/deployments for the names")
    if error.status is RPCStatusCode.INVALID_ARGUMENT:
        return BadRequest(error.message)
    if error.status in (RPCStatusCode.UNAVAILABLE, RPCStatusCode.DEADLINE_EXCEEDED):
        return Unavailable(
            f"Temporal or the berth worker did not answer in time ({error.message}): "
            "is `berth up` running?"
        )
    return error  # not the caller's fault: the API's catch-all logs it and answers 500
