"""llama.cpp's HTTP server: `llama-server` when installed, else the same server from the xllamacpp wheel."""

import os
import shutil
import sys

from berth.domain.env_policy import ALLOW_UNSAFE_ENGINE_ARGS, operator_allows
from berth.domain.pipeline import LaunchRequest
from berth.engines.base import Engine, LaunchCommand, engine_threads
from berth.engines.llamacpp_flags import TABLE


def llama_server_binary() -> str | None:
    """An explicit BERTH_LLAMA_SERVER, else `llama-server` on PATH, else None (use xllamacpp)."""
    return os.environ.get("BERTH_LLAMA_SERVER") or shutil.which("llama-server")


class LlamaCppEngine(Engine):
    name = "llamacpp"
    formats = frozenset({"gguf"})
    metrics_path = "/metrics"  # served because berth passes --metrics
    in_flight_series = ("llamacpp:requests_processing", "llamacpp:requests_deferred")

    def command(self, request: LaunchRequest) -> LaunchCommand:
        binary = llama_server_binary()
        program = [binary] if binary else [sys.executable, "-m", "berth.engines.xllamacpp_server"]
        # the user's flags (checked, spelled canonically), then berth's: berth's win
        user = TABLE.canonical(request.engine_args, operator_allows(os.environ, ALLOW_UNSAFE_ENGINE_ARGS))
        defaults = [] if "--threads" in user else ["--threads", str(engine_threads())]
        owned = [
            "--model", request.model_path,
            "--host", "127.0.0.1",
            "--port", str(request.port),
            "--alias", request.deployment,
        ]
        if "--metrics" not in user:  # Prometheus at /metrics (llamacpp:* series), the job `engines`
            owned.append("--metrics")
        if request.context_size:
            owned += ["--ctx-size", str(request.context_size)]
        return LaunchCommand(argv=[*program, *defaults, *user, *owned], env=dict(request.env))
