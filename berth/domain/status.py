"""Where a deployment and each of its instances stand."""

from enum import Enum


class DeploymentStatus(str, Enum):
    REQUESTED = "REQUESTED"
    DEPLOYING = "DEPLOYING"
    INITIALIZING = "INITIALIZING"
    DEPLOYED = "DEPLOYED"
    STOPPED = "STOPPED"
    ERROR = "ERROR"  # recoverable: an automatic retry is scheduled
    FAILED = "FAILED"  # terminal until the user sends `retry`
    MUST_REDOWNLOAD = "MUST_REDOWNLOAD"


class InstanceStatus(str, Enum):
    REQUESTED = "REQUESTED"
    COPYING_FILES = "COPYING_FILES"
    STARTING = "STARTING"
    DEPLOYED = "DEPLOYED"
    STOPPED = "STOPPED"
    ERROR = "ERROR"
    FAILED = "FAILED"
    MUST_REDOWNLOAD = "MUST_REDOWNLOAD"


# Statuses in which nothing of the deployment runs and nothing will start by itself.
WAITING_FOR_USER = frozenset({DeploymentStatus.FAILED, DeploymentStatus.MUST_REDOWNLOAD})
