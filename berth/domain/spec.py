"""What the user asks for: a deployment spec, and the patch a `retry` may carry."""

import re
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from berth.domain.cluster import check_node_id
from berth.domain.env_policy import env_name_problem
from berth.domain.model_reference import BadModelReference, is_node_reference, is_remote, parse_model_reference

# Names end up in Traefik rules, file names and workflow ids: a DNS label, nothing else.
NAME_PATTERN = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
MAX_CONTEXT_SIZE = 1_048_576
# The most instances one deployment may run (docs/replicas.md): every instance is a round of
# activities and a server in the route; beyond this, deploy another model name or a bigger node.
MAX_REPLICAS = 16
# How long an instance leaving the route may finish the requests it has (docs/replicas.md#draining):
# long streamed answers take tens of seconds; Kubernetes' default grace period is the same 30 s.
DEFAULT_DRAIN_TIMEOUT_S = 30.0
MAX_DRAIN_TIMEOUT_S = 3600.0
# Fields that say how berth treats the instances, not what an instance runs: a spec that changes
# only these is taken as it is, without new instances (reconfigure, retry).
NOT_RUN_BY_INSTANCES = frozenset({"replicas", "drain_timeout_s"})

EngineName = Literal["auto", "llamacpp", "vllm", "mlx"]


def check_name(name: str) -> str:
    if not NAME_PATTERN.match(name):
        raise ValueError(
            f"invalid deployment name {name!r}: use 1-63 lowercase letters, digits and '-', "
            "starting and ending with a letter or digit (a DNS label), e.g. 'qwen-small'"
        )
    return name


def check_model_reference(model: str) -> str:
    """A URL, hf: reference or NODE:/path must be well formed (a path or a preset is checked on the node)."""
    if is_remote(model) or is_node_reference(model):
        try:
            parse_model_reference(model)
        except BadModelReference as bad:
            raise ValueError(str(bad)) from None
    return model


def check_env_shape(env: dict[str, str]) -> dict[str, str]:
    for key, value in env.items():
        problem = env_name_problem(key)
        if problem:
            raise ValueError(problem)
        if "\0" in value:
            raise ValueError(f"env {key}: the value contains a NUL character, which no environment can hold")
    return env


class RestartPolicy(BaseModel):
    """How a recoverable failure (ERROR) is retried before the deployment gives up (FAILED)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_attempts: int = Field(5, ge=0, le=100, description="automatic restarts before FAILED")
    backoff_initial_s: float = Field(
        1.0, gt=0, le=3600,
        description="backoff before the second automatic restart (the first is immediate), doubled each attempt",
    )
    backoff_max_s: float = Field(60.0, gt=0, le=86400, description="cap of the backoff")
    stable_after_s: float = Field(
        60.0, gt=0, le=86400, description="serving this long resets the attempt counter"
    )

    def backoff_s(self, attempt: int) -> float:
        """Backoff before automatic attempt `attempt` (1-based). The first restart is immediate: a
        one-off crash costs no more than a start; a crash loop still slows down from the second."""
        if attempt <= 1:
            return 0.0
        attempt -= 1
        return min(self.backoff_max_s, self.backoff_initial_s * (2 ** max(0, attempt - 1)))


class DeploymentSpec(BaseModel):
    """A request to serve one model under one name."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="DNS label; the model is served at /models/<name>/v1/...")
    model: str = Field(min_length=1, max_length=4096, description="model path, URL or hub reference")
    engine: EngineName = Field("auto", description="auto picks from hardware and format; a name forces it")
    context_size: int | None = Field(
        None, ge=1, le=MAX_CONTEXT_SIZE,
        description="tokens of context; default: the largest that fits in memory, up to the model's "
        "trained context, at most 8192",
    )
    startup_timeout_s: float = Field(600.0, gt=0, le=86400, description="budget to become ready")
    engine_args: list[str] = Field(default_factory=list, description="extra arguments for the engine")
    env: dict[str, str] = Field(
        default_factory=dict,
        description="extra environment for the engine; values are write-only: sealed on their way to "
        "Temporal and shown as '***' in every answer",
    )
    public: bool = Field(False, description="serve the model endpoint without the API token")
    node: str | None = Field(
        None, description="pin: the node every instance runs on, never another (default: placed by fit)"
    )
    nodes: list[str] = Field(
        default_factory=list, max_length=64,
        description="the nodes instances may be placed on (empty: any node that fits)",
    )
    placement: Literal["spread", "pack"] = Field(
        "spread", description="spread: instances on different nodes where they fit; pack: fill a node first"
    )
    restart: RestartPolicy = Field(default_factory=RestartPolicy)
    replicas: int = Field(
        1, ge=0, le=MAX_REPLICAS,
        description="instances serving the model behind one route; 0 (keep the deployment, run nothing) "
        "only through `scale`",
    )
    drain_timeout_s: float = Field(
        DEFAULT_DRAIN_TIMEOUT_S, ge=0, le=MAX_DRAIN_TIMEOUT_S,
        description="an instance that leaves the route (scale down, rollout, node drain) is stopped once "
        "its engine has no request in flight, or after this many seconds",
    )

    @field_validator("name")
    @classmethod
    def _name_is_dns_label(cls, name: str) -> str:
        return check_name(name)

    @field_validator("node")
    @classmethod
    def _node_id(cls, node: str | None) -> str | None:
        return None if node is None else check_node_id(node)

    @field_validator("nodes")
    @classmethod
    def _node_ids(cls, nodes: list[str]) -> list[str]:
        return [check_node_id(node) for node in nodes]

    @field_validator("model")
    @classmethod
    def _model_reference(cls, model: str) -> str:
        return check_model_reference(model)

    @field_validator("env")
    @classmethod
    def _env_names(cls, env: dict[str, str]) -> dict[str, str]:
        """Names and values an environment can hold. Which names the node lets a spec set is its
        own rule (berth.domain.env_policy, applied by the API and at launch): not checked here,
        where a rule that changed would refuse specs already in workflow histories."""
        return check_env_shape(env)

    def patched(self, patch: "SpecPatch") -> "DeploymentSpec":
        """This spec with the patch's fields applied, validated again as a whole."""
        changes = patch.model_dump(exclude_unset=True)
        return DeploymentSpec.model_validate({**self.model_dump(), **changes})


def same_instances(one: "DeploymentSpec", other: "DeploymentSpec") -> bool:
    """Whether instances started with either spec run the same thing (NOT_RUN_BY_INSTANCES aside)."""
    return one.model_dump(exclude=NOT_RUN_BY_INSTANCES) == other.model_dump(exclude=NOT_RUN_BY_INSTANCES)


class SpecPatch(BaseModel):
    """The fields a `retry` may change. Unset fields keep their value."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    model: str | None = Field(None, min_length=1, max_length=4096)
    engine: EngineName | None = None
    context_size: int | None = Field(None, ge=1, le=MAX_CONTEXT_SIZE)
    startup_timeout_s: float | None = Field(None, gt=0, le=86400)
    engine_args: list[str] | None = None
    env: dict[str, str] | None = None
    public: bool | None = None
    restart: RestartPolicy | None = None
    drain_timeout_s: float | None = Field(None, ge=0, le=MAX_DRAIN_TIMEOUT_S)
