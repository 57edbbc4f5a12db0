"""HubError: why a Hugging Face hub listing or download failed, in words a novice can act on.

huggingface_hub raises a zoo of exception types (and its HTTP layer changed from requests to httpx
between versions); berth callers only need to know what kind of failure it was (`kind`, to decide
whether a retry can help) and what to tell the user (`str(error)`). The child process that downloads
(berth.models.hub_fetch) uses the same mapping, and sends kind and message back to the parent.
"""

import errno
import os

KINDS = ("offline", "not_found", "revision_not_found", "file_not_found", "auth", "network", "no_model_files", "disk")
NO_ROOM = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
DEFAULT_ENDPOINT = "https://huggingface.co"
TRANSPORT_MODULES = ("httpx", "httpx2", "requests", "urllib3", "http", "ssl", "socket")


class HubError(Exception):
    """kind: offline | not_found | revision_not_found | file_not_found | auth | network | no_model_files, or
    disk (the cache cannot be written: full, read-only, no permission; a retry does not help)."""

    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind
        self.message = message

    def __str__(self) -> str:
        return self.message

    def __reduce__(self):  # picklable with both arguments (Temporal, multiprocessing)
        return (type(self), (self.kind, self.message))


def hub_endpoint() -> str:
    """The hub berth talks to, read now: huggingface_hub reads HF_ENDPOINT once, at import."""
    return (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")


def hub_offline() -> bool:
    """HF_HUB_OFFLINE, read now (huggingface_hub reads it once, at import)."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.strip().upper() in ("1", "ON", "YES", "TRUE")


def offline_error(source: str) -> HubError:
    return HubError(
        "offline",
        f"{source} is not in this node's model cache, and HF_HUB_OFFLINE=1 forbids fetching it from the "
        "Hugging Face hub. Unset HF_HUB_OFFLINE for the berth worker (then deploy again), or fetch the model "
        "on a node that is online, or give a local path to the model file instead.",
    )


def hub_error_from(error: BaseException, repo: str, revision: str | None = None, file: str | None = None) -> HubError:
    """The HubError for an exception raised by huggingface_hub while working on `repo`."""
    if isinstance(error, HubError):
        return error
    from huggingface_hub import errors as hf_errors  # imported late: the parent may never need it

    source = f"hf:{repo}" + (f"@{revision}" if revision else "")
    endpoint = hub_endpoint()
    page = f"{endpoint}/{repo}"
    if isinstance(error, hf_errors.OfflineModeIsEnabled):
        return offline_error(source)
    if isinstance(error, hf_errors.GatedRepoError):
        return HubError(
            "auth",
            f"{source} is a gated repo: its files are only served to accounts that accepted its terms. Open {page}, "
            "accept the terms with your Hugging Face account, then give the berth worker a token of that account "
            "(HF_TOKEN=hf_... in its environment) and deploy again.",
        )
    if isinstance(error, hf_errors.RepositoryNotFoundError):
        return HubError(
            "not_found",
            f"The Hugging Face repo '{repo}' was not found at {endpoint}. Check the spelling (org/name, as in the "
            f"repo's URL {page}); if it is private, give the berth worker a token that may read it "
            "(HF_TOKEN=hf_... in its environment).",
        )
    if isinstance(error, hf_errors.RevisionNotFoundError):
        return HubError(
            "revision_not_found",
            f"The Hugging Face repo '{repo}' has no revision '{revision}'. Use a branch, tag or commit that exists "
            f"(see {page}/tree/main), e.g. hf:{repo}@main, or leave out '@{revision}' for the default branch.",
        )
    if isinstance(error, hf_errors.EntryNotFoundError):
        return HubError(
            "file_not_found",
            f"{source} has no file '{file}'. Name a file the repo has (see {page}/tree/main), or leave out "
            f"':{file}' and berth chooses.",
        )
    if isinstance(error, hf_errors.HfHubHTTPError):
        status = getattr(getattr(error, "response", None), "status_code", None)
        if status in (401, 403):
            return HubError(
                "auth",
                f"The Hugging Face hub refused access to {source} (HTTP {status}). If the repo is private or gated, "
                "give the berth worker a token that may read it (HF_TOKEN=hf_... in its environment); if HF_TOKEN "
                "is set, check that it is valid and not expired.",
            )
        return HubError(
            "network",
            f"The Hugging Face hub at {endpoint} answered HTTP {status} for {source}. This is usually temporary: "
            "deploy again in a while (the download resumes where it stopped).",
        )
    if isinstance(error, OSError) and error.errno in NO_ROOM:
        return HubError(
            "disk",
            f"Cannot write {source} into this node's model cache: {error.strerror} ({error.filename or 'cache'}). "
            "Free disk space or fix the cache folder's permissions (BERTH_HOME), then deploy again.",
        )
    if _is_transport_error(error):
        return HubError(
            "network",
            f"Could not reach the Hugging Face hub at {endpoint} for {source} ({_short(error)}). Check this node's "
            "network connection, proxy settings and HF_ENDPOINT, then deploy again: the download resumes where it "
            "stopped.",
        )
    return HubError(
        "network",
        f"Fetching {source} from the Hugging Face hub failed: {_short(error)}. Deploy again to retry (the download "
        "resumes where it stopped); if it keeps failing, give a local path or a URL to the model file instead.",
    )


def _is_transport_error(error: BaseException) -> bool:
    if isinstance(error, (ConnectionError, TimeoutError)):
        return True
    return type(error).__module__.split(".")[0] in TRANSPORT_MODULES


def _short(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return f"{type(error).__name__}: {text[0]}" if text else type(error).__name__
