"""vLLM's OpenAI-compatible server: in Docker (`vllm/vllm-openai`) by default, natively when vllm is
installed next to berth.

The container gets every GPU (or those named by CUDA_VISIBLE_DEVICES in the deployment's env)
through a Docker device request, the host's IPC namespace (PyTorch shares memory between vLLM's
processes), the Hugging Face cache, the model folder read-only when the model is a local path, and
its port published on 127.0.0.1 only: the router is the one door.

vLLM's /health: connection refused while it starts (the API server listens only once the model is
loaded), 200 when healthy, 503 once the engine has died (the API server may outlive it).
"""

import importlib.util
import os
import re
import sys
from pathlib import Path, PurePosixPath

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

DEFAULT_IMAGE = "vllm/vllm-openai:latest"
DEFAULT_GPU_MEMORY_UTILIZATION = "0.9"
HF_CACHE_IN_CONTAINER = "/root/.cache/huggingface"
MODELS_IN_CONTAINER = "/models"


def vllm_image() -> str:
    """BERTH_VLLM_IMAGE names the image (and its tag), e.g. vllm/vllm-openai:v0.11.0."""
    return os.environ.get("BERTH_VLLM_IMAGE") or DEFAULT_IMAGE


def hf_cache_dir() -> Path:
    """The host's Hugging Face cache: $HF_HOME, else ~/.cache/huggingface."""
    return Path(os.environ.get("HF_HOME") or Path.home() / ".cache" / "huggingface").expanduser()


def vllm_installed() -> bool:
    return importlib.util.find_spec("vllm") is not None


class VllmEngine(Engine):
    name = "vllm"
    formats = frozenset({"safetensors"})
    metrics_path = "/metrics"  # vLLM's OpenAI server always serves it (vllm:* series)
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
        volumes = {str(hf_cache_dir()): {"bind": HF_CACHE_IN_CONTAINER, "mode": "rw"}}
        model = request.model_path
        if model.startswith("/"):  # a local path (prepare_files resolves them); else a hub repo id
            folder = PurePosixPath(model)
            if folder.suffix == ".safetensors":  # one weights file: serve its folder
                folder = folder.parent
            inside = f"{MODELS_IN_CONTAINER}/{folder.name}"
            volumes[str(folder)] = {"bind": inside, "mode": "ro"}
            model = inside
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
