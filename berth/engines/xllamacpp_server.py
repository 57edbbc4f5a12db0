"""Run llama.cpp's HTTP server in-process via xllamacpp, which has no CLI.

    python -m berth.engines.xllamacpp_server --model PATH --host 127.0.0.1 \\
        --port P --ctx-size N --threads T [--alias NAME]

The flags mirror llama-server's, so one argv works for both. The process
serves until SIGTERM/SIGINT and then exits 0. If the model cannot be loaded
it exits 1 after llama.cpp's own error lines (all on stderr) and one line of
ours, so a supervisor sees the process die and can classify the failure from
the log.

xllamacpp behaviour this relies on (xllamacpp 2026.10, llama.cpp server):
- ``Server(params)`` starts the HTTP listener (``/health`` answers 503 while
  loading), loads the model, and returns once it is serving; a load or bind
  failure raises ``RuntimeError`` and leaves no server behind.
- The constructor holds the GIL for the whole load, so no Python signal
  handler (or thread) runs meanwhile. We therefore set SIGTERM/SIGINT to
  SIG_DFL during the load: a stop then kills the process at once (exit
  status -SIGTERM). /health turns 200 a few ms before ``Server()`` returns,
  so a stop right after readiness can still land in that window.
- xllamacpp installs no signal handlers; deleting the ``Server`` stops the
  HTTP server and the inference loop.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import faulthandler
import select
import signal
import socket
import sys
import time

import xllamacpp

PREFIX = "berth launcher:"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHUTDOWN_TIMEOUT_S = 10.0
LOG_DRAIN_S = 0.05  # llama.cpp logs from its own thread; let it finish first


def log(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m berth.engines.xllamacpp_server",
        description="Serve a GGUF model with llama.cpp's HTTP server (via xllamacpp).",
    )
    parser.add_argument("-m", "--model", required=True, help="path to the .gguf file")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8080)
    parser.add_argument("-c", "--ctx-size", type=int, default=0, help="context size (0 = from model)")
    parser.add_argument("-t", "--threads", type=int, default=-1, help="CPU threads (-1 = llama.cpp default)")
    parser.add_argument("--alias", help="model name reported by the API (default: file name)")
    return parser.parse_args(argv)


def build_params(args: argparse.Namespace) -> xllamacpp.CommonParams:
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx_size
    params.cpuparams.n_threads = args.threads
    params.cpuparams_batch.n_threads = args.threads
    if args.alias:
        params.model_alias = {args.alias}
    return params


def wait_for_stop_signal(received: list[int]) -> None:
    """Sleep until a Python-level handler has appended to ``received``.

    llama.cpp's threads may take the signal instead of the main thread, which
    then is not interrupted; the wakeup fd wakes it wherever the signal lands.
    """
    reader, writer = socket.socketpair()
    with reader, writer:
        for sock in (reader, writer):
            sock.setblocking(False)
        previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
        try:
            while not received:
                select.select([reader], [], [], 5.0)
                with contextlib.suppress(BlockingIOError):
                    reader.recv(64)
        finally:
            signal.set_wakeup_fd(previous)


def port_is_taken(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError as exc:
            return exc.errno == errno.EADDRINUSE
    return False


def main(argv: list[str] | None = None) -> int:
    for signum in STOP_SIGNALS:  # until the model is loaded, a stop kills at once
        signal.signal(signum, signal.SIG_DFL)
    args = parse_args(argv)
    params = build_params(args)
    log(f"starting xllamacpp {xllamacpp.__version__}: model={args.model} listen={args.host}:{args.port}")
    started = time.monotonic()
    try:
        # Blocks (GIL held) until the model is loaded; see the module docstring.
        server = xllamacpp.Server(params)
    except Exception as exc:
        time.sleep(LOG_DRAIN_S)
        if port_is_taken(args.host, args.port):
            log(f"HTTP server failed to start: {args.host}:{args.port} is in use ({exc})")
        else:
            log(f"model failed to load: {args.model} ({exc})")
        return 1

    received: list[int] = []
    for signum in STOP_SIGNALS:
        signal.signal(signum, lambda signum, _frame: received.append(signum))
    log(f"serving on {server.listening_address} (loaded in {time.monotonic() - started:.2f}s)")
    wait_for_stop_signal(received)

    log(f"received {signal.Signals(received[0]).name}, shutting down")
    # Deleting the Server joins llama.cpp's loop while holding the GIL; a
    # C-level watchdog exits the process should that ever hang.
    faulthandler.dump_traceback_later(SHUTDOWN_TIMEOUT_S, exit=True)
    del server
    faulthandler.cancel_dump_traceback_later()
    log("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
