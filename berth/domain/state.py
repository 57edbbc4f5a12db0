"""What berth knows about a deployment: the answer of the `state` query."""

from datetime import datetime

from pydantic import BaseModel, Field, computed_field

from berth.domain.errors import ErrorCode
from berth.domain.pipeline import RouteServer
from berth.domain.spec import DeploymentSpec
from berth.domain.status import DeploymentStatus, InstanceStatus


class Transition(BaseModel):
    at: datetime
    status: DeploymentStatus
    detail: str = ""


class DeploymentError(BaseModel):
    code: ErrorCode
    message: str
    guidance: str
    log_lines: list[str] = Field(default_factory=list)
    suggested_context_size: int | None = None  # for OOM: the largest context that fits
    at: datetime


class DownloadProgress(BaseModel):
    """How far prepare_files has fetched the model's files (instance COPYING_FILES)."""

    source: str = Field(description="what is fetched: a URL or hf:org/repo")
    file: str = Field("", description="the file being fetched now")
    bytes_done: int = 0
    bytes_total: int | None = Field(None, description="None while the size is unknown")
    files_done: int = 0
    files_total: int = 0
    resumed_from: int = Field(0, description="bytes already on disk from an earlier, interrupted fetch")

    @computed_field
    @property
    def percent(self) -> float | None:
        if not self.bytes_total:
            return None
        return round(100.0 * min(self.bytes_done, self.bytes_total) / self.bytes_total, 1)


class InstanceState(BaseModel):
    """One instance of the deployment: one engine on one node, with its own restart budget."""

    instance_id: str
    node: str = Field("", description="the node it runs on ('' until the cluster placed it)")
    reserved_bytes: int | None = Field(
        None, description="memory the cluster reserved for it on its node (None: no reservation held)"
    )
    status: InstanceStatus = InstanceStatus.REQUESTED
    port: int | None = None
    pid: int | None = None
    log_path: str | None = None
    restarts: int = Field(0, description="automatic restarts of this instance since it last served stably")
    error: DeploymentError | None = Field(None, description="this instance's last failure; None once it serves")
    next_retry_at: datetime | None = None
    routed: bool = Field(False, description="a server of the deployment's route in the gateway")


class DeploymentState(BaseModel):
    spec: DeploymentSpec
    status: DeploymentStatus = DeploymentStatus.REQUESTED
    engine: str | None = None
    engine_reasons: list[str] = Field(default_factory=list, description="why this engine")
    resource_plan: list[str] = Field(default_factory=list, description="why it fits, with which context")
    model_path: str | None = None
    model_choice: str | None = Field(None, description="which files of a hub repo were chosen, and why")
    download: DownloadProgress | None = Field(None, description="while the model's files are fetched")
    context_size: int | None = None
    endpoint: str | None = None
    instances: list[InstanceState] = Field(
        default_factory=list,
        description="every instance, oldest first; DEPLOYED ones serve (docs/replicas.md)",
    )
    error: DeploymentError | None = Field(
        None,
        description="why no instance serves (ERROR/FAILED/MUST_REDOWNLOAD): the failure of the instance "
        "that failed last; None while one serves (a degraded deployment's failures are its instances')",
    )
    attempts: int = Field(0, description="automatic restarts since the engine last served stably (first instance)")
    next_retry_at: datetime | None = None
    route_ports: list[int] | None = Field(
        None, description="the servers of the deployment's route in the gateway (None: not known)"
    )
    memory_per_instance: int | None = Field(None, description="bytes each instance is planned to use")
    memory_budget: int | None = Field(None, description="bytes berth's engines may use on the node")
    replaced: int = Field(
        0, description="instances replaced on another node because theirs was lost (DOWN) or drained: "
        "a restart of the deployment's replica, not of its engine"
    )
    routing: dict[str, str] = Field(
        default_factory=dict, description="the nodes whose gateways carry the route: node id -> gateway URL"
    )
    route_servers: list[RouteServer] | None = Field(
        None, description="the route's servers on every node, as the gateways hold them (None: not known)"
    )
    route_nodes: list[str] = Field(default_factory=list, description="the gateways that took the route last")
    cluster_free: dict[str, int] = Field(
        default_factory=dict,
        description="free memory per node (capacity - reservations) at the cluster's last answer: what "
        "`scale` checks a count against",
    )
    rollout: str | None = Field(None, description="the rollout in progress, or the last one that failed and why")
    rollout_error: DeploymentError | None = Field(None, description="the failure of the last rollout's new instance")
    rejected_patch: str | None = Field(None, description="why the last retry patch was refused")
    transitions: list[Transition] = Field(default_factory=list)

    @computed_field
    @property
    def name(self) -> str:
        return self.spec.name

    @computed_field(description="instances asked for (spec.replicas, changed by `scale`)")
    @property
    def replicas(self) -> int:
        return self.spec.replicas

    @computed_field(description="instances that serve: DEPLOYED and in the route")
    @property
    def ready_replicas(self) -> int:
        return sum(1 for instance in self.instances if instance.status is InstanceStatus.DEPLOYED and instance.routed)

    @computed_field(description="DEPLOYED, but fewer instances serve than asked for")
    @property
    def degraded(self) -> bool:
        return self.status is DeploymentStatus.DEPLOYED and self.ready_replicas < self.replicas

    @computed_field
    @property
    def port(self) -> int | None:
        return self.instances[0].port if self.instances else None

    @computed_field
    @property
    def pid(self) -> int | None:
        return self.instances[0].pid if self.instances else None
