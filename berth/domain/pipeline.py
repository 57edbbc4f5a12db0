"""The messages between the deployment workflow and its activities, and the activities' names.

Workflows import this module (never the activities themselves), so it holds pure data only.
"""

from pydantic import BaseModel, Field

from berth.domain.errors import Failure
from berth.domain.memory import ResourcePlan

# Registered activity names: the workflow schedules activities by these.
PLACE_DEPLOYMENT = "place_deployment"
CHECK_SPEC = "check_spec"
ALLOCATE_PORT = "allocate_port"
RELEASE_PORT = "release_port"
CONFIGURE_ROUTE = "configure_route"
REMOVE_ROUTE = "remove_route"
PREPARE_FILES = "prepare_files"
LAUNCH_ENGINE = "launch_engine"
AWAIT_READY = "await_ready"
SUPERVISE = "supervise"
STOP_ENGINE = "stop_engine"
DRAIN_ENGINE = "drain_engine"


class EngineChoice(BaseModel):
    engine: str
    reasons: list[str] = Field(default_factory=list)


class SpecCheck(BaseModel):
    """What check_spec judges of a spec: what it asks the node to run. Env names only: the values
    (sealed, or in clear from the Temporal CLI) do not decide anything and stay out of the request."""

    engine: str
    engine_args: list[str] = Field(default_factory=list)
    env_names: list[str] = Field(default_factory=list)


class PortRequest(BaseModel):
    instance_id: str


class RouteServer(BaseModel):
    """One server of a deployment's route: an instance that serves, on its node."""

    instance_id: str
    node: str
    port: int


class RouteRequest(BaseModel):
    """The deployment's route: one Traefik service whose servers are the instances that serve.

    The same request goes to every node's gateway (docs/cluster.md): each one sends to the
    instances on its own node directly (127.0.0.1:port) and to the others through their node's
    gateway (`nodes`: node id -> gateway URL) with the cluster token."""

    deployment: str
    port: int | None = None  # one server (how a route was asked for before replicas)
    ports: list[int] = Field(default_factory=list)  # the servers on this node (before the cluster)
    engine: str
    public: bool = False
    instances: list[RouteServer] = Field(default_factory=list)  # the servers, on every node
    nodes: dict[str, str] = Field(default_factory=dict)  # node id -> gateway URL, for remote servers

    def servers(self) -> list[int]:
        return list(self.ports) or ([self.port] if self.port else [])


class PrepareFilesInput(BaseModel):
    deployment: str
    model: str
    engine: str | None = None  # the chosen engine: which files of a hub repo it needs
    # choose the engine here first (`engine` is then ignored), with this override ("auto": by the
    # model's format and the node's hardware), and return it in PreparedModel.choice
    choose_engine: bool = False
    override: str = "auto"
    # files berth fetched before and that are gone now: fetch them again (first deploy, user's
    # retry) or stop at MUST_REDOWNLOAD (an automatic restart)
    may_refetch: bool = True
    # plan the memory too once the files are in place (PreparedModel.plan), for `engine` and this
    # context size (None: the largest that fits): one round trip fewer than a plan_resources step
    plan_memory: bool = False
    context_size: int | None = None
    instances: int = 1  # how many instances of it the node must hold: the plan checks them all
    # `model` is another node's path (NODE:/path): that node's gateway URL, where its file server
    # is reached (the workflow takes it from the cluster's routing map, Placement.routing); None:
    # not known (the copy then fails, saying the node is not in the cluster)
    source_gateway_url: str | None = None


class PreparedModel(BaseModel):
    path: str
    format: str  # "gguf", "safetensors", ...
    note: str | None = None  # e.g. which GGUF of a hub repo was chosen, and why
    plan: ResourcePlan | None = None  # with plan_memory; None too when the header cannot be read
    choice: EngineChoice | None = None  # with choose_engine


class LaunchRequest(BaseModel):
    instance_id: str
    deployment: str
    engine: str
    model_path: str
    port: int
    context_size: int | None = None
    engine_args: list[str] = Field(default_factory=list)
    env: dict[str, str] = Field(default_factory=dict)


class EngineHandle(BaseModel):
    """How to find a launched engine again, on its node, from any worker."""

    instance_id: str
    deployment: str
    engine: str
    port: int
    pid: int
    log_path: str
    log_offset: int = 0  # where this launch's output starts in the log
    started_at: float  # epoch seconds on the node
    container_id: str | None = None  # set when the engine runs in a Docker container


class ReadyRequest(BaseModel):
    handle: EngineHandle
    startup_timeout_s: float


class EngineOutcome(BaseModel):
    """What await_ready or supervise saw: ready/served until a failure, or the node went down under it."""

    ready: bool = False
    failure: Failure | None = None
    node_shutdown: bool = False
    served_s: float = 0.0


class StopRequest(BaseModel):
    instance_id: str


class DrainRequest(BaseModel):
    """Wait, before an instance that left the route is stopped, until its engine has no request in
    flight (berth.node.drain), at most `timeout_s`."""

    instance_id: str
    timeout_s: float


class DrainOutcome(BaseModel):
    """How a drain ended: `idle` (nothing in flight), or not after `waited_s` with `in_flight` left
    (None: the engine cannot say; its drain was a fixed wait). `detail` says it in words."""

    idle: bool
    waited_s: float
    in_flight: int | None = None
    detail: str = ""
