"""`berth deploy MODEL`: serve a model under a name."""

import argparse

from berth.api.cli.common import ENGINES, api, command, deployment_spec, follow_until_done, say
from berth.models.presets import PRESETS


def run(args: argparse.Namespace) -> int:
    spec = deployment_spec(args)
    client = api()
    state = client.deploy(spec)
    if not args.wait:
        say(f"{state['name']} is {state['status']}: follow it with `berth status {state['name']} --watch`")
        return 0
    say(f"deploying {spec['model']} as {spec['name']}")
    return follow_until_done(client, spec["name"])


def add(commands) -> None:
    deploy = command(
        commands, "deploy",
        "serve a model under a name",
        "Deploy MODEL: a local file or folder (made absolute here, used in place; it must lie in one "
        "of the node's model roots, BERTH_MODEL_ROOTS; in a cluster of several nodes it names the file on the "
        "API's node, and a node that runs it copies it from there); NODE:/abs/path, a file or model folder "
        "on node NODE (copied to the node that runs it, sha256-checked); an http(s):// URL (downloaded, resumable; add "
        "#sha256=HEX to check it); a Hugging Face repo, hf:org/repo[@revision]"
        "[:file.gguf] or org/repo (berth picks Q4_K_M, else the smallest GGUF, or the safetensors set); or "
        f"a preset name: {', '.join(PRESETS)}. "
        "berth picks the engine for this machine unless --engine says which; the model is then served "
        "at http://<gateway>/models/NAME/v1/... With --wait, follow it (with a progress bar while files "
        "download) until it serves (exit 0) or fails (exit 1, with the reason, what to do, and the log "
        "lines that show it).",
        "berth deploy ./qwen2.5-0.5b-instruct-q4_k_m.gguf --name qwen --context-size 4096 --wait\n"
        "berth deploy hf:Qwen/Qwen2.5-0.5B-Instruct-GGUF --wait",
        run,
    )
    deploy.add_argument(
        "model", metavar="MODEL",
        help="model file/folder (inside the node's model roots, BERTH_MODEL_ROOTS), NODE:/abs/path on "
        "another node, URL, hf:org/repo reference, or preset",
    )
    deploy.add_argument("--name", help="deployment name, a DNS label (default: from the file name)")
    deploy.add_argument("--engine", help=f"force an engine: {', '.join(ENGINES)} (default: auto)")
    deploy.add_argument(
        "--context-size", type=int, metavar="N",
        help="tokens of context (default: the largest that fits in memory, up to the model's trained "
        "context, at most 8192)",
    )
    deploy.add_argument("--startup-timeout", type=float, metavar="S", help="seconds to become ready (default 600)")
    deploy.add_argument("--replicas", type=int, metavar="N", help="instances behind the one route (default 1)")
    deploy.add_argument(
        "--drain-timeout", type=float, metavar="S",
        help="how long an instance leaving the route (scale down, rollout) may finish its requests in "
        "flight before it is stopped (default 30)",
    )
    deploy.add_argument("--public", action="store_true", help="serve the model endpoint without the API token")
    deploy.add_argument("--wait", action="store_true", help="follow it until DEPLOYED (exit 0) or a failure (exit 1)")
