"""vLLM's OpenAI-compatible server: in Docker (`vllm/vllm-openai`) by default, natively when vllm is
installed next to berth.

The container gets every GPU (or those named by CUDA_VISIBLE_DEVICES in the deployment's env)
through a Docker device request, the host's IPC namespace (PyTorch shares memory between vLLM's
processes), its port published on 127.0.0.1 only (the router is the one door), and of the host's
files one folder (container_mounts): a local model's own folder, read-only (the file's folder, or
the model folder; for a model in berth's hub cache, its repo's folder there, whose snapshot links
point into its blobs), or, for a hub repo id vLLM fetches itself, berth's own hub cache
($BERTH_HOME/models/hub). Never `/`, never the user's Hugging Face cache or home.

vLLM's /health: connection refused while it starts (the API server listens only once the model is
loaded), 200 when healthy, 503 once the engine has died (the API server may outlive it).
"""

import importlib.util
import os
import re
import sys
from pathlib import Path

import httpx

from berth.domain.diagnostics import LogPattern
from berth.domain.env_policy import ALLOW_UNSAFE_ENGINE_ARGS, operator_allows
from berth.domain.errors import ErrorCode
from berth.domain.pipeline import LaunchRequest
from berth.engines.base import (
    ContainerSpec,
    DeviceRequest,
    Engine,
    HttpProbe,
    LaunchCommand,
    Readiness,
    Runtime,
    container_name,
    instance_labels,
)
from berth.engines.vllm_flags import TABLE
from berth.settings import Settings

DEFAULT_IMAGE = "vllm/vllm-openai:latest"
DEFAULT_GPU_MEMORY_UTILIZATION = "0.9"
HUB_CACHE_IN_CONTAINER = "/root/.cache/huggingface/hub"  # $HF_HOME/hub of the image's root user
MODELS_IN_CONTAINER = "/models"


class UnsafeMount(ValueError):
    """A model path that cannot become the container's one bind mount; the message says why."""


def vllm_image() -> str:
    """BERTH_VLLM_IMAGE names the image (and its tag), e.g. vllm/vllm-openai:v0.11.0."""
    return os.environ.get("BERTH_VLLM_IMAGE") or DEFAULT_IMAGE


def hub_cache_dir() -> Path:
    """berth's own Hugging Face hub cache on this node (berth.models.fetch downloads into it)."""
    return Settings.from_env().models_dir / "hub"


def hub_repo_index(parts: list[str]) -> int | None:
    """Where `models--org--repo` is among a path's parts when the path lies in its snapshots/ (the
    hub cache's layout, berth's or a user's), else None."""
    for index in range(len(parts) - 2, 0, -1):
        if parts[index].startswith("models--") and parts[index + 1] == "snapshots":
            return index
    return None


def container_mounts(model: str, hub_cache: Path, is_dir=os.path.isdir) -> tuple[dict[str, dict[str, str]], str]:
    """The container's bind mounts ({host path: {"bind", "mode"}}) for `model`, and the model as
    vLLM inside sees it. A local path (prepare_files has resolved it and checked it against the
    node's model roots) mounts its own folder read-only (in a hub cache: its repo's folder, so that
    the snapshot's links reach the blobs); anything else is a hub repo id, which vLLM
    fetches into berth's hub cache. UnsafeMount for what no mount may be (`/`, a ':' Docker's bind
    syntax cannot hold)."""
    if not model.startswith("/"):
        return {str(hub_cache): {"bind": HUB_CACHE_IN_CONTAINER, "mode": "rw"}}, model
    path = os.path.normpath(model)
    parts = path.split(os.sep)
    repo = hub_repo_index(parts)
    if repo is not None:  # a hub cache's models--org--repo/snapshots/<commit>/...: links into its blobs/
        folder, inside = os.sep.join(parts[: repo + 1]), parts[repo:]
        if inside[-1].endswith(".safetensors"):  # one weights file: serve its snapshot folder
            inside.pop()
    elif is_dir(path):
        folder, inside = path, [os.path.basename(path)]
    else:
        folder = os.path.dirname(path)
        inside = [os.path.basename(folder)]
        if not path.endswith(".safetensors"):  # one weights file is served as its folder
            inside.append(os.path.basename(path))
    if folder == os.sep or not os.path.basename(folder):
        raise UnsafeMount(f"the model {model!r} would mount the host's root folder into vLLM's container")
    if ":" in folder or "," in folder:
        raise UnsafeMount(
            f"the model folder {folder!r} has a ':' or ',' in its path, which a Docker bind mount cannot "
            "hold: rename it"
        )
    target = "/".join([MODELS_IN_CONTAINER, *inside[:1]])
    return {folder: {"bind": target, "mode": "ro"}}, "/".join([MODELS_IN_CONTAINER, *inside])


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VllmEngine(Engine):
    name = "vllm"
    formats = frozenset({"safetensors"})
    metrics_path = "/metrics"  # vLLM's OpenAI server always serves it (vllm:* series)
    in_flight_series = ("vllm:num_requests_running", "vllm:num_requests_waiting")
    log_patterns = (
        LogPattern(
            ErrorCode.CUDA_ERROR,
            re.compile(r"Bfloat16 is only supported on GPUs with compute capability", re.I),
            70,
            "vLLM: this GPU cannot run bfloat16 (pass --dtype float16 in engine_args)",
        ),
        LogPattern(
            ErrorCode.MODEL_LOADING_FAILURE,
            re.compile(r"GatedRepoError|Cannot access gated repo|Access to model \S+ is restricted", re.I),
            55,
            "the Hugging Face repository is gated: accept its licence and give the node an HF_TOKEN",
        ),
    )

    def runtime(self) -> Runtime:
        """BERTH_VLLM_RUNTIME=process|container decides; else native when vllm is importable."""
        chosen = os.environ.get("BERTH_VLLM_RUNTIME", "").strip().lower()
        if chosen in ("process", "container"):
            return chosen  # type: ignore[return-value]
        return "process" if vllm_installed() else "container"

    def server_args(self, request: LaunchRequest, model: str) -> list[str]:
        """The arguments of vLLM's OpenAI server, the same natively and in the image: berth's
        defaults, the user's flags (checked, spelled canonically), then berth's own: berth's win."""
        user = TABLE.canonical(request.engine_args, operator_allows(os.environ, ALLOW_UNSAFE_ENGINE_ARGS))
        defaults = [] if "--gpu-memory-utilization" in user else [
            "--gpu-memory-utilization", DEFAULT_GPU_MEMORY_UTILIZATION
        ]
        owned = ["--model", model, "--port", str(request.port), "--served-model-name", request.deployment]
        if request.context_size:
            owned += ["--max-model-len", str(request.context_size)]
        return [*defaults, *user, *owned]

    def command(self, request: LaunchRequest) -> LaunchCommand:
        """Native: `python -m vllm.entrypoints.openai.api_server` (what `vllm serve` runs)."""
        argv = [sys.executable, "-m", "vllm.entrypoints.openai.api_server"]
        args = self.server_args(request, request.model_path)
        return LaunchCommand(argv=[*argv, *args, "--host", "127.0.0.1"], env=dict(request.env))

    def container_request(self, request: LaunchRequest) -> ContainerSpec:
        env = dict(request.env)
        # Host GPU numbers go to Docker; inside, the container sees only those, numbered from 0.
        visible = env.pop("CUDA_VISIBLE_DEVICES", "").strip()
        if visible:
            ids = tuple(part.strip() for part in visible.split(",") if part.strip())
            gpus = DeviceRequest(count=0, device_ids=ids)
        else:
            gpus = DeviceRequest(count=-1)
        volumes, model = container_mounts(request.model_path, hub_cache_dir())
        if request.model_path.startswith("/"):  # a local model: nothing to fetch
            env.setdefault("HF_HUB_OFFLINE", "1")
        if os.environ.get("HF_TOKEN"):
            env.setdefault("HF_TOKEN", os.environ["HF_TOKEN"])
        return ContainerSpec(
            image=vllm_image(),
            command=self.server_args(request, model),
            name=container_name(request.instance_id),
            environment=env,
            device_requests=(gpus,),
            ports={f"{request.port}/tcp": ("127.0.0.1", request.port)},
            volumes=volumes,
            labels=instance_labels(request),
            ipc_mode="host",
        )

    async def probe(self, client: HttpProbe, base_url: str, after_ready: bool = False) -> Readiness:
        """Refused: starting. 200: ready. 503 (or any other answer): the engine died behind its API."""
        try:
            response = await client.get(base_url + self.health_path)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            return Readiness.STARTING
        except httpx.TimeoutException:
            return Readiness.LOADING
        return Readiness.READY if response.status_code == 200 else Readiness.UNHEALTHY
