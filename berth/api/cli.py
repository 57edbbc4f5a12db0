"""The `berth` command: `up` and `worker` run berth; the other commands talk to the REST API that
`berth up` serves (http://127.0.0.1:$BERTH_API_PORT, token from BERTH_API_TOKEN or
$BERTH_HOME/api-token).

A command is one `cmd_*` function and one `add_*` function that declares its parser; COMMANDS
lists them in the order `berth --help` shows them.
"""

import argparse
import asyncio
import functools
import json
import os
import re
import shutil
import sys
import textwrap
import time

from berth.common.api_token import TOKEN_ENV, load_api_token, token_path
from berth.api.client import ApiRequestError, ApiUnreachable, BerthApi
from berth.api.server import api_url
from berth.api.cli_output import (
    engines_text,
    follow,
    last_transition_key,
    outcome_text,
    state_text,
    table,
    transition_line,
)
from berth.domain.status import DeploymentStatus
from berth.domain.model_reference import BadModelReference, HubReference, UrlReference, parse_model_reference
from berth.models.presets import PRESETS, looks_like_a_name, preset_for
from berth.settings import Settings

DESCRIPTION = """berth: serve models on your own hardware, durably.

Every deployment is a Temporal workflow; berth picks the engine, gives it a port and a route
through the gateway, launches it, waits until it serves, and keeps it serving.

Start with `berth up` (it runs everything); in another terminal, `berth deploy MODEL --wait`."""

REMOTE_PREFIXES = ("http://", "https://", "hf:")
# DeploymentSpec.engine's choices, spelled out so that the CLI starts without pydantic (a test
# keeps the two equal)
ENGINES = ("auto", "llamacpp", "vllm", "mlx")
STATUSES = [status.value for status in DeploymentStatus]


# ---- helpers ----------------------------------------------------------------------------------------


def model_reference(model: str) -> str:
    """A local path made absolute (the worker may run elsewhere than here); URLs, hub references
    (`hf:...`, or an `org/repo` that is no path here), and bare names with no file of that name
    here (presets, or a typo the node names) as they are."""
    exists = os.path.exists(os.path.expanduser(model))
    if model.startswith(REMOTE_PREFIXES) or (looks_like_a_name(model) and not exists):
        return model
    try:
        if isinstance(parse_model_reference(model, exists=exists), HubReference):
            return model
    except BadModelReference:
        pass
    return os.path.abspath(os.path.expanduser(model))


def name_from_model(model: str) -> str:
    """A deployment name (DNS label) from the model's file name: 'Qwen2.5-0.5B_Q4.gguf' -> 'qwen2-5-0-5b-q4';
    a preset's name as it is ('gemma3-270m'); a hub repo's file, or the repo's name."""
    if preset_for(model) is not None:
        return model
    try:
        reference = parse_model_reference(model, exists=os.path.exists(os.path.expanduser(model)))
    except BadModelReference:
        reference = None
    if isinstance(reference, HubReference):
        model = reference.file or reference.repo
    elif isinstance(reference, UrlReference):
        model = reference.file_name
    stem = model.split("?", 1)[0].rstrip("/").rsplit("/", 1)[-1].removeprefix("hf:")
    stem = re.sub(r"\.(gguf|safetensors)$", "", stem, flags=re.IGNORECASE)
    name = re.sub(r"[^a-z0-9]+", "-", stem.lower()).strip("-")[:63].strip("-")
    return name or "model"


def deployment_spec(args: argparse.Namespace) -> dict:
    """The POST body: only what was given, the API fills in the defaults."""
    spec = {"name": args.name or name_from_model(args.model), "model": model_reference(args.model)}
    for option, field in (("engine", "engine"), ("context_size", "context_size"),
                          ("startup_timeout", "startup_timeout_s")):
        if getattr(args, option, None) is not None:
            spec[field] = getattr(args, option)
    if getattr(args, "public", False):
        spec["public"] = True
    return spec


def api() -> BerthApi:
    return BerthApi.from_env()


def say(text: str, file=sys.stdout) -> None:
    print(text, file=file, flush=True)


def follow_until_done(client: BerthApi, name: str, **options) -> int:
    """--wait/--watch: each transition as it happens, then the outcome; 0 on success, 1 otherwise."""
    code, state = follow(lambda: client.get(name), sys.stdout, live=sys.stdout.isatty(), **options)
    say(outcome_text(state))
    return code


# ---- commands that run berth --------------------------------------------------------------------


def cmd_up(args: argparse.Namespace) -> int:
    from berth.worker.stack import run_stack

    on_ready = None
    if args.deploy:
        spec = {"name": args.name or name_from_model(args.deploy), "model": model_reference(args.deploy)}
        on_ready = functools.partial(deploy_when_up, spec=spec)
    return asyncio.run(run_stack(Settings.from_env(), on_ready=on_ready))


_followers: set = set()  # background followers of `up --deploy` (kept referenced until done)


async def deploy_when_up(stack, spec: dict) -> None:
    """`berth up --deploy MODEL`: deploy through the API, then report its transitions in the
    background while `up` goes on supervising the stack. Whatever goes wrong, the stack stays up."""
    try:
        await _deploy_and_report(stack, spec)
    except Exception as error:  # noqa: BLE001 - `berth deploy` can try again by hand
        stack.say(f"berth: could not deploy {spec['model']}: {error}")


async def _deploy_and_report(stack, spec: dict) -> None:
    client = BerthApi(api_url(stack.settings), load_api_token(stack.settings))
    name, seen = spec["name"], None
    try:
        await asyncio.to_thread(client.deploy, spec)
        stack.say(f"berth: deploying {spec['model']} as {name}")
    except ApiRequestError as error:
        if error.status != 409:
            stack.say(f"berth: could not deploy {spec['model']}: {error.message}")
            return
        state = await asyncio.to_thread(client.get, name)  # e.g. deployed by an earlier `berth up`
        stack.say(f"berth: {name} already exists (status {state['status']}); `berth status {name}` shows it")
        seen = last_transition_key(state)

    def report() -> None:
        try:
            # ERROR is retried by berth itself: its line is printed, the report goes on
            _, state = follow(
                lambda: client.get(name), stack.out, seen=seen, prefix=f"berth: {name}  ",
                done_bad=frozenset({"FAILED", "MUST_REDOWNLOAD", "STOPPED"}),
            )
        except Exception:  # noqa: BLE001 - the API went away: berth is shutting down
            return
        finally:
            client.close()
        stack.say(f"berth: {outcome_text(state)}")
        if state.get("status") == "DEPLOYED":
            token = f"${TOKEN_ENV}" if os.environ.get(TOKEN_ENV) else f"$(cat {token_path(stack.settings)})"
            stack.say(
                f"  try: curl {state['endpoint']}/chat/completions -H \"Authorization: Bearer {token}\" "
                "-H 'Content-Type: application/json' "
                "-d '{\"messages\": [{\"role\": \"user\", \"content\": \"Hello\"}]}'"
            )

    future = asyncio.get_running_loop().run_in_executor(None, report)
    _followers.add(future)
    future.add_done_callback(_followers.discard)


def cmd_worker(args: argparse.Namespace) -> int:
    from berth.worker.main import main as worker_main

    worker_main()
    return 0


# ---- commands that talk to the API ----------------------------------------------------------------


def cmd_deploy(args: argparse.Namespace) -> int:
    spec = deployment_spec(args)
    client = api()
    state = client.deploy(spec)
    if not args.wait:
        say(f"{state['name']} is {state['status']}: follow it with `berth status {state['name']} --watch`")
        return 0
    say(f"deploying {spec['model']} as {spec['name']}")
    return follow_until_done(client, spec["name"])


def cmd_ls(args: argparse.Namespace) -> int:
    rows = api().list(args.status)
    if args.json:
        say(json.dumps(rows, indent=2))
        return 0
    if not rows:
        say("no deployments" + (f" with status {args.status}" if args.status else ""))
        return 0
    say(table(([r["name"], r["status"], r.get("engine"), r.get("model")] for r in rows),
              header=["NAME", "STATUS", "ENGINE", "MODEL"]))
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    client = api()
    state = client.get(args.name)
    if args.json:
        say(json.dumps(state, indent=2))
        return 0
    if not args.watch:
        say(state_text(state))
        return 0
    for transition in (state.get("transitions") or [])[-5:]:  # a little history, then what happens
        say(transition_line(transition))
    return follow_until_done(client, args.name, seen=last_transition_key(state))


def cmd_logs(args: argparse.Namespace) -> int:
    client = api()
    answer = client.logs(args.name, tail=args.lines)
    _print_logs(answer)
    if not args.follow:
        if answer["path"] is None:
            say(f"berth: {args.name} has no engine log yet (no engine launched)", file=sys.stderr)
        return 0
    try:
        while True:
            time.sleep(0.5)
            answer = client.logs(args.name, tail=10_000, offset=answer["offset"])
            _print_logs(answer)
    except KeyboardInterrupt:
        return 0


def _print_logs(answer: dict) -> None:
    for line in answer["lines"]:
        print(line)
    sys.stdout.flush()
    for issue in answer["issues"]:  # on stderr: stdout stays the log itself
        say(f"berth: {issue['code']} ({issue['description']}): {issue['text']}", file=sys.stderr)


def cmd_stop(args: argparse.Namespace) -> int:
    client = api()
    state = client.stop(args.name)
    if not args.wait:
        say(f"stopping {args.name} (status {state['status']}); `berth status {args.name}` shows when it is STOPPED")
        return 0
    return follow_until_done(
        client, args.name, done_ok=frozenset({"STOPPED"}), done_bad=frozenset(), seen=last_transition_key(state)
    )


def cmd_retry(args: argparse.Namespace) -> int:
    client = api()
    before = client.get(args.name)
    patch = {}
    if args.context_size is not None:
        patch["context_size"] = args.context_size
    client.retry(args.name, patch)
    if not args.wait:
        say(f"retrying {args.name}; `berth status {args.name} --watch` follows it")
        return 0
    return follow_until_done(client, args.name, seen=last_transition_key(before), require_new=True)


def cmd_engines(args: argparse.Namespace) -> int:
    """The berth API's answer when one answers, else the same report computed here."""
    model = model_reference(args.model) if args.model else None
    report = None
    if not args.local:
        client = api()
        try:
            report = fetch_engines(client, model, args.engine)
            source = f"the machine of the berth API at {client.base_url}"
        except ApiUnreachable:
            source = f"this machine (computed here: no berth API answers at {client.base_url})"
        finally:
            client.close()
    else:
        source = "this machine (computed here, as asked)"
    if report is None:
        from berth.api.routes_engines import engines_report  # FastAPI and the probe: only here

        report = engines_report(model, args.engine or "auto").model_dump(mode="json")
    if args.json:
        say(json.dumps(report, indent=2))
    else:
        say(engines_text(report, source))
    selection = report.get("selection") or {}
    return 1 if "refused" in selection else 0


def fetch_engines(client: BerthApi, model: str | None, engine: str | None) -> dict:
    """GET /v1/engines (BerthApi has one method per deployment route; this one lives here)."""
    params = {key: value for key, value in (("model", model), ("engine", engine)) if value}
    return client._call("GET", "/v1/engines", params=params or None)


# ---- the parser ---------------------------------------------------------------------------------


def _command(commands, name: str, help: str, description: str, example: str, func) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, width=min(100, shutil.get_terminal_size().columns - 2)),
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser


def add_up(commands) -> None:
    up = _command(
        commands, "up",
        "run the local stack (Temporal, Traefik, the worker, the API) in the foreground",
        "Start Temporal, the Traefik gateway, the berth worker and the REST API on loopback, with all "
        "state under $BERTH_HOME (default ~/.berth). The first run writes the API token to "
        "$BERTH_HOME/api-token (unless BERTH_API_TOKEN is set). Ctrl-C stops everything, engines "
        "included; deployments that were DEPLOYED come back on the next `berth up`.",
        "BERTH_HOME=/tmp/berth berth up\nberth up --deploy gemma3-270m\n"
        "berth up --deploy ./models/qwen2.5-0.5b-instruct-q4_k_m.gguf",
        cmd_up,
    )
    up.add_argument("--deploy", metavar="MODEL", help="once up, deploy MODEL (a path or a preset; named after it)")
    up.add_argument("--name", help="the name for --deploy (default: from the file name)")


def add_worker(commands) -> None:
    _command(
        commands, "worker",
        "run only the berth worker (for a Temporal cluster you run yourself)",
        "Poll the control queue `berth` and this node's queue `berth-node-<BERTH_NODE_ID>` "
        "on the Temporal at BERTH_TEMPORAL_ADDRESS (default 127.0.0.1:$BERTH_TEMPORAL_PORT).",
        "BERTH_TEMPORAL_ADDRESS=temporal:7233 BERTH_NODE_ID=gpu-1 berth worker",
        cmd_worker,
    )


def add_deploy(commands) -> None:
    deploy = _command(
        commands, "deploy",
        "serve a model under a name",
        "Deploy MODEL: a local file or folder (made absolute here, used in place); an http(s):// URL "
        "(downloaded, resumable; add #sha256=HEX to check it); a Hugging Face repo, hf:org/repo[@revision]"
        "[:file.gguf] or org/repo (berth picks Q4_K_M, else the smallest GGUF, or the safetensors set); or "
        f"a preset name: {', '.join(PRESETS)}. "
        "berth picks the engine for this machine unless --engine says which; the model is then served "
        "at http://<gateway>/models/NAME/v1/... With --wait, follow it (with a progress bar while files "
        "download) until it serves (exit 0) or fails (exit 1, with the reason, what to do, and the log "
        "lines that show it).",
        "berth deploy ./qwen2.5-0.5b-instruct-q4_k_m.gguf --name qwen --context-size 4096 --wait\n"
        "berth deploy hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF --wait",
        cmd_deploy,
    )
    deploy.add_argument("model", metavar="MODEL", help="model file/folder, URL, hf:org/repo reference, or preset")
    deploy.add_argument("--name", help="deployment name, a DNS label (default: from the file name)")
    deploy.add_argument("--engine", help=f"force an engine: {', '.join(ENGINES)} (default: auto)")
    deploy.add_argument("--context-size", type=int, metavar="N", help="tokens of context (default: the engine's)")
    deploy.add_argument("--startup-timeout", type=float, metavar="S", help="seconds to become ready (default 600)")
    deploy.add_argument("--public", action="store_true", help="serve the model endpoint without the API token")
    deploy.add_argument("--wait", action="store_true", help="follow it until DEPLOYED (exit 0) or a failure (exit 1)")


def add_ls(commands) -> None:
    ls = _command(
        commands, "ls",
        "list deployments",
        "List deployments with their status, engine and model, as Temporal's visibility store has "
        "them (it trails changes by about a second).",
        "berth ls\nberth ls --status FAILED",
        cmd_ls,
    )
    ls.add_argument("--status", choices=STATUSES, metavar="STATUS", help=f"only this status: {', '.join(STATUSES)}")
    ls.add_argument("--json", action="store_true", help="print the API's JSON")


def add_status(commands) -> None:
    status = _command(
        commands, "status",
        "show one deployment",
        "Show a deployment: status, engine and why, endpoint, process, the last error with what to "
        "do about it, and recent transitions. With --watch, print each transition as it happens "
        "until DEPLOYED (exit 0) or a failure (exit 1).",
        "berth status qwen\nberth status qwen --watch",
        cmd_status,
    )
    status.add_argument("name", metavar="NAME")
    status.add_argument("--watch", action="store_true", help="follow it until DEPLOYED or a failure")
    status.add_argument("--json", action="store_true", help="print the API's JSON (the whole state)")


def add_logs(commands) -> None:
    logs = _command(
        commands, "logs",
        "print a deployment's engine log",
        "Print the last lines of the engine's log. Lines that match a known failure (out of memory, "
        "CUDA errors, unreadable model files...) are named on stderr after them.",
        "berth logs qwen -n 50\nberth logs qwen -f",
        cmd_logs,
    )
    logs.add_argument("name", metavar="NAME")
    logs.add_argument("-n", "--lines", type=int, default=100, metavar="N", help="how many of the last lines (default 100)")
    logs.add_argument("-f", "--follow", action="store_true", help="keep printing new lines (Ctrl-C ends)")


def add_stop(commands) -> None:
    stop = _command(
        commands, "stop",
        "stop a deployment",
        "Stop the engine and remove its route and port. The name can be deployed again afterwards.",
        "berth stop qwen --wait",
        cmd_stop,
    )
    stop.add_argument("name", metavar="NAME")
    stop.add_argument("--wait", action="store_true", help="return once it is STOPPED")


def add_retry(commands) -> None:
    retry = _command(
        commands, "retry",
        "deploy a deployment again, optionally with a smaller context",
        "Deploy again now: after FAILED or MUST_REDOWNLOAD (berth does not retry those by itself), "
        "or to apply a change. The change is checked first; a bad one changes nothing.",
        "berth retry qwen --context-size 2048 --wait",
        cmd_retry,
    )
    retry.add_argument("name", metavar="NAME")
    retry.add_argument("--context-size", type=int, metavar="N", help="a new context size (tokens)")
    retry.add_argument("--wait", action="store_true", help="follow it until DEPLOYED (exit 0) or a failure (exit 1)")


def add_engines(commands) -> None:
    engines = _command(
        commands, "engines",
        "this machine's hardware, the engines that can run on it, and which one MODEL would get",
        "Show the hardware (OS, CPU cores, RAM, NVIDIA GPUs with memory, driver and CUDA version, "
        "Apple chip, Docker), each engine and whether it can run here and why, and for MODEL the "
        "engine berth would choose and the reasons, or why no engine can serve it. Asks the berth API "
        "(GET /v1/engines) when `berth up` runs, else computes the same here. Exit 1 when MODEL "
        f"cannot be served. MODEL may be a preset: {', '.join(PRESETS)}.",
        "berth engines\nberth engines ./qwen2.5-0.5b-instruct-q4_k_m.gguf\nberth engines ./my-model/ --engine vllm\n"
        "docker compose exec worker berth engines --local gemma3-270m",
        cmd_engines,
    )
    engines.add_argument("model", metavar="MODEL", nargs="?", help="a model file/folder, hub reference or preset")
    engines.add_argument("--engine", choices=ENGINES, metavar="E", help=f"ask about forcing one: {', '.join(ENGINES)}")
    engines.add_argument("--json", action="store_true", help="print the report as JSON (as GET /v1/engines answers)")
    engines.add_argument(
        "--local", action="store_true",
        help="compute it on this machine even when an API answers (e.g. on a worker node of docker-compose.yml)",
    )


COMMANDS = [add_up, add_deploy, add_ls, add_status, add_logs, add_stop, add_retry, add_engines, add_worker]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="berth",
        description=DESCRIPTION,
        epilog="example:\n  berth up &\n  berth deploy ./model.gguf --wait\n  berth ls\n\n"
        "`berth COMMAND --help` explains each command.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for add in COMMANDS:
        add(commands)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        code = args.func(args)
    except ApiUnreachable as error:
        say(f"berth: {error}", file=sys.stderr)
        code = 1
    except ApiRequestError as error:
        say(f"berth: {error.message}", file=sys.stderr)
        code = 1
    except KeyboardInterrupt:
        code = 130
    sys.exit(code)


if __name__ == "__main__":
    main()
