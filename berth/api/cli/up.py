"""`berth up`: the local stack in the foreground, and `--deploy MODEL` once it is up."""

import argparse
import asyncio
import functools
import os

from berth.common.api_token import TOKEN_ENV, load_api_token, token_path
from berth.api.cli.common import command, model_reference, name_from_model
from berth.api.client import ApiRequestError, BerthApi
from berth.api.cli_output import follow, last_transition_key, outcome_text
from berth.api.server import api_url
from berth.settings import Settings


def run(args: argparse.Namespace) -> int:
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


def add(commands) -> None:
    up = command(
        commands, "up",
        "run the local stack (Temporal, Traefik, the worker, the API) in the foreground",
        "Start Temporal, the Traefik gateway, the berth worker and the REST API on loopback, with all "
        "state under $BERTH_HOME (default ~/.berth). The first run writes the API token to "
        "$BERTH_HOME/api-token (unless BERTH_API_TOKEN is set). Ctrl-C stops everything, engines "
        "included; deployments that were DEPLOYED come back on the next `berth up`. It also writes "
        "$BERTH_HOME/prometheus/prometheus.yml, a Prometheus config for every metrics endpoint, and "
        "prints the command that runs it (docs/observability.md).",
        "BERTH_HOME=/tmp/berth berth up\nberth up --deploy gemma3-270m\n"
        "berth up --deploy ./models/qwen2.5-0.5b-instruct-q4_k_m.gguf",
        run,
    )
    up.add_argument("--deploy", metavar="MODEL", help="once up, deploy MODEL (a path or a preset; named after it)")
    up.add_argument("--name", help="the name for --deploy (default: from the file name)")
