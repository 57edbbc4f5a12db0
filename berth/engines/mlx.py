"""MLX's OpenAI-compatible server (`mlx_lm.server`), a native process: Metal on Apple silicon, and
the CPU on Linux with `mlx[cpu]`.

Readiness needs a real request: mlx_lm.server answers /health with 200 before the model is loaded
(it loads in its generation thread, or on the first request in older releases), and 503 only
once that thread has died (a failed load, a crash). The probe therefore asks /health first and
then for one token. The request carries no `model` field: mlx_lm.server takes that field as a
model to load, and the default is the one it was started with.

It has no context-size option: the KV cache grows with the request, so context_size is not passed.
"""

import importlib.util
import os
import re
import sys

import httpx

from berth.domain.diagnostics import LogPattern
from berth.domain.env_policy import ALLOW_UNSAFE_ENGINE_ARGS, operator_allows
from berth.domain.errors import ErrorCode
from berth.domain.pipeline import LaunchRequest
from berth.engines.base import Engine, HttpProbe, LaunchCommand, Readiness
from berth.engines.mlx_flags import TABLE

PROBE_PATH = "/v1/completions"  # a plain completion: needs no chat template
PROBE_BODY = {"prompt": "hi", "max_tokens": 1, "temperature": 0.0}


def mlx_installed() -> bool:
    return importlib.util.find_spec("mlx_lm") is not None


class MlxEngine(Engine):
    name = "mlx"
    formats = frozenset({"safetensors"})
    log_patterns = (
        LogPattern(
            ErrorCode.MODEL_LOADING_FAILURE,
            re.compile(r"No module named '?mlx_lm\.models\.\w+"),
            55,
            "mlx-lm does not support this model architecture",
        ),
        LogPattern(
            ErrorCode.MODEL_LOADING_FAILURE,
            re.compile(r"Received \d+ parameters not in model|Missing \d+ parameters:"),
            55,
            "the weights do not match the model's config.json",
        ),
    )

    def command(self, request: LaunchRequest) -> LaunchCommand:
        # the user's flags (checked, spelled canonically), then berth's: berth's win
        user = TABLE.canonical(request.engine_args, operator_allows(os.environ, ALLOW_UNSAFE_ENGINE_ARGS))
        owned = ["--model", request.model_path, "--host", "127.0.0.1", "--port", str(request.port)]
        env = {"PYTHONUNBUFFERED": "1", **request.env}
        if request.model_path.startswith("/"):  # a local folder: never ask the Hugging Face Hub
            env.setdefault("HF_HUB_OFFLINE", "1")
        return LaunchCommand(argv=[sys.executable, "-m", "mlx_lm.server", *user, *owned], env=env)

    async def probe(self, client: HttpProbe, base_url: str, after_ready: bool = False) -> Readiness:
        """Refused: starting. /health 503: the generation thread died. Then one real token: an
        answer is ready; a wait or an error means the model is still loading. Once the model was
        loaded (after_ready), /health alone: a probe must not queue behind users' generations."""
        try:
            health = await client.get(base_url + self.health_path)
        except (httpx.ConnectError, httpx.RemoteProtocolError, httpx.ReadError):
            return Readiness.STARTING
        except httpx.TimeoutException:
            return Readiness.LOADING
        if health.status_code != 200:
            return Readiness.UNHEALTHY
        if after_ready:
            return Readiness.READY
        try:
            response = await client.post(base_url + PROBE_PATH, json=PROBE_BODY)
        except httpx.TransportError:
            return Readiness.LOADING
        return Readiness.READY if response.status_code == 200 else Readiness.LOADING
