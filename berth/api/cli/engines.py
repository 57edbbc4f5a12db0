"""`berth engines [MODEL]`: the hardware, the engines that can run on it, and which one MODEL would get."""

import argparse
import json

from berth.api.cli.common import ENGINES, api, command, model_reference, say
from berth.api.client import ApiUnreachable, BerthApi
from berth.api.cli_output import engines_text
from berth.models.presets import PRESETS


def run(args: argparse.Namespace) -> int:
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


def add(commands) -> None:
    engines = command(
        commands, "engines",
        "this machine's hardware, the engines that can run on it, and which one MODEL would get",
        "Show the hardware (OS, CPU cores, RAM, NVIDIA GPUs with memory, driver and CUDA version, "
        "Apple chip, Docker), each engine and whether it can run here and why, and for MODEL the "
        "engine berth would choose and the reasons, or why no engine can serve it. Asks the berth API "
        "(GET /v1/engines) when `berth up` runs, else computes the same here. Exit 1 when MODEL "
        f"cannot be served. MODEL may be a preset: {', '.join(PRESETS)}.",
        "berth engines\nberth engines ./qwen2.5-0.5b-instruct-q4_k_m.gguf\nberth engines ./my-model/ --engine vllm\n"
        "docker compose exec worker berth engines --local gemma3-270m",
        run,
    )
    engines.add_argument("model", metavar="MODEL", nargs="?", help="a model file/folder, hub reference or preset")
    engines.add_argument("--engine", choices=ENGINES, metavar="E", help=f"ask about forcing one: {', '.join(ENGINES)}")
    engines.add_argument("--json", action="store_true", help="print the report as JSON (as GET /v1/engines answers)")
    engines.add_argument(
        "--local", action="store_true",
        help="compute it on this machine even when an API answers (e.g. on a worker node of docker-compose.yml)",
    )
