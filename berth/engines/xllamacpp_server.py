"""Run llama.cpp's HTTP server in-process via xllamacpp, which has no CLI.

    python -m berth.engines.xllamacpp_server --model PATH --host 127.0.0.1 \\
        --port P --ctx-size N [--alias NAME] [--threads T --parallel N ...]

The flags mirror llama-server's, so one argv works for both: berth's own, and every flag of
berth.engines.llamacpp_flags (the table that berth checks engine_args against), each set on its
CommonParams attribute. Anything else exits 2, with the reason. The process
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

from berth.engines.flags import EngineArgsError, Given
from berth.engines.llamacpp_flags import ENUMS, TABLE

PREFIX = "berth launcher:"
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
SHUTDOWN_TIMEOUT_S = 10.0
LOG_DRAIN_S = 0.05  # llama.cpp logs from its own thread; let it finish first


def log(message: str) -> None:
    print(f"{PREFIX} {message}", file=sys.stderr, flush=True)


# berth's own flags (llama-server's spellings); the last occurrence wins, and berth puts its own last
OWNED = {"-m": "model", "--model": "model", "--host": "host", "--port": "port", "-c": "ctx_size",
         "--ctx-size": "ctx_size", "-a": "alias", "--alias": "alias"}
USAGE = (
    "usage: python -m berth.engines.xllamacpp_server --model PATH [--host H] [--port P] [--ctx-size N] "
    "[--alias NAME] [llama-server flags of berth.engines.llamacpp_flags]"
)


class LauncherArgs(argparse.Namespace):
    model: str
    host: str = "127.0.0.1"
    port: int = 8080
    ctx_size: int = 0  # 0: from the model
    alias: str | None = None
    flags: list[Given]


def parse_args(argv: list[str] | None = None) -> LauncherArgs:
    """berth's flags, and the rest through the llama.cpp flag table (what berth accepts is exactly
    what this launcher maps). A bad argv exits 2 with the reason, as argparse does."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, rest, i = LauncherArgs(), [], 0
    try:
        while i < len(argv):
            token = argv[i]
            name, inline = (token.split("=", 1) + [None])[:2] if token.startswith("--") else (token, None)
            if name in OWNED:
                if inline is None:
                    if i + 1 >= len(argv):
                        raise EngineArgsError(f"{name} needs a value")
                    inline, i = argv[i + 1], i + 1
                setattr(args, OWNED[name], int(inline) if OWNED[name] in ("port", "ctx_size") else inline)
            else:
                rest.append(token)
            i += 1
        if not getattr(args, "model", None):
            raise EngineArgsError("--model is required")
        args.flags = TABLE.parse(rest, allow_unsafe=True)
    except (EngineArgsError, ValueError) as bad:
        print(f"{USAGE}\n{PREFIX} error: {bad}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    return args


def param_value(given: Given, current: object) -> object:
    """The CommonParams value for one accepted flag."""
    flag = given.flag
    if flag.kind == "bool":
        return (not given.negated) != flag.target.startswith("!")
    if flag.kind == "choice":
        enum_type, members = ENUMS[flag.target]
        return getattr(getattr(xllamacpp, enum_type), members[str(given.value)])
    if flag.kind == "floats":
        shares = [float(part) for part in str(given.value).split(",")]
        size = len(current) if isinstance(current, list) else len(shares)
        return (shares + [0.0] * size)[:size]
    if flag.kind == "float":
        return float(str(given.value))
    if flag.kind == "int":
        number = int(str(given.value))
        return xllamacpp.LLAMA_DEFAULT_SEED if flag.target == "sampling.seed" and number < 0 else number
    return given.value


def set_param(params: xllamacpp.CommonParams, path: str, given: Given) -> None:
    *parents, attribute = path.lstrip("!").split(".")
    owner = params
    for parent in parents:
        owner = getattr(owner, parent)
    setattr(owner, attribute, param_value(given, getattr(owner, attribute)))


def build_params(args: LauncherArgs) -> xllamacpp.CommonParams:
    params = xllamacpp.CommonParams()
    params.model.path = args.model
    params.hostnames = [args.host]
    params.port = args.port
    params.n_ctx = args.ctx_size
    targets = set()
    for given in args.flags:
        set_param(params, given.flag.target, given)
        targets.add(given.flag.target)
    if "cpuparams_batch.n_threads" not in targets:  # as llama-server: --threads-batch defaults to --threads
        params.cpuparams_batch.n_threads = params.cpuparams.n_threads
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
    """Whether something listens on the port. SO_REUSEADDR, as llama.cpp's own listener sets it:
    without it, the connections berth's readiness probes left in TIME_WAIT made a port that nothing
    held look taken, and a model that failed to load was logged as "port in use"."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
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
