"""Failures that activities hand to the workflow: a non-retryable ApplicationError carrying a Failure."""

from temporalio.exceptions import ApplicationError

from berth.domain.errors import ErrorCode, Failure


def failure_error(
    code: ErrorCode,
    message: str,
    log_lines: list[str] | None = None,
    suggested_context_size: int | None = None,
    missing_files: list[str] | None = None,
) -> ApplicationError:
    failure = Failure(
        code=code, message=message, log_lines=log_lines or [], suggested_context_size=suggested_context_size,
        missing_files=missing_files or [],
    )
    return ApplicationError(message, failure.model_dump(mode="json"), type=code.value, non_retryable=True)
