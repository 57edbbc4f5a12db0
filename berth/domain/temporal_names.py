"""The names under which deployments live in Temporal: what users type in the Temporal CLI and UI."""

WORKFLOW_TYPE = "DeploymentWorkflow"
STATE_QUERY = "state"
STOP_SIGNAL = "stop"
RETRY_SIGNAL = "retry"
# Updates (they need a running worker; a validator refuses a bad input before anything changes)
SCALE_UPDATE = "scale"
RECONFIGURE_UPDATE = "reconfigure"
# Sent by prepare_files to its own deployment: how far the model download is (shown by `state`).
DOWNLOAD_PROGRESS_SIGNAL = "download_progress"

# Keyword search attributes, registered when the Temporal server starts.
STATUS_ATTRIBUTE = "BerthStatus"
ENGINE_ATTRIBUTE = "BerthEngine"
MODEL_ATTRIBUTE = "BerthModel"
REPLICAS_ATTRIBUTE = "BerthReplicas"  # "<ready>/<desired>", e.g. "2/3"
SEARCH_ATTRIBUTES = (STATUS_ATTRIBUTE, ENGINE_ATTRIBUTE, MODEL_ATTRIBUTE, REPLICAS_ATTRIBUTE)
KEYWORD_LIMIT_BYTES = 2048  # what Temporal keeps of a Keyword value, by default


def keyword_value(text: str, limit_bytes: int = KEYWORD_LIMIT_BYTES) -> str:
    """`text` cut to what a Keyword search attribute holds: Temporal counts its bytes, not its
    characters; cut at a UTF-8 character boundary. A longer value fails the workflow task at every
    attempt (the spec allows 4096 characters: up to 16 KB)."""
    return text.encode()[:limit_bytes].decode("utf-8", "ignore")


def workflow_id(deployment: str) -> str:
    return f"deployment-{deployment}"


def deployment_of_workflow_id(workflow_id: str) -> str | None:
    prefix = "deployment-"
    return workflow_id[len(prefix):] if workflow_id.startswith(prefix) else None
