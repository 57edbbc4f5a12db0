"""What the `berth` commands share: model references and deployment names as the CLI reads them,
the API client, printing, following a deployment, and `command`, which declares a command's parser
(its help, description and example) in one call."""

import argparse
import os
import re
import shutil
import sys
import textwrap

from berth.api.client import BerthApi
from berth.api.cli_output import follow, outcome_text
from berth.domain.model_reference import (
    BadModelReference,
    HubReference,
    UrlReference,
    is_node_reference,
    parse_model_reference,
)
from berth.domain.status import DeploymentStatus
from berth.models.presets import looks_like_a_name, preset_for

REMOTE_PREFIXES = ("http://", "https://", "hf:")
# DeploymentSpec.engine's choices, spelled out so that the CLI starts without pydantic (a test
# keeps the two equal)
ENGINES = ("auto", "llamacpp", "vllm", "mlx")
STATUSES = [status.value for status in DeploymentStatus]


def model_reference(model: str) -> str:
    """A local path made absolute (the worker may run elsewhere than here); URLs, hub references
    (`hf:...`, or an `org/repo` that is no path here), another node's path (`NODE:/path`), and bare
    names with no file of that name here (presets, or a typo the node names) as they are."""
    exists = os.path.exists(os.path.expanduser(model))
    if model.startswith(REMOTE_PREFIXES) or is_node_reference(model) or (looks_like_a_name(model) and not exists):
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
                          ("startup_timeout", "startup_timeout_s"), ("replicas", "replicas"),
                          ("drain_timeout", "drain_timeout_s")):
        if getattr(args, option, None) is not None:
            spec[field] = getattr(args, option)
    if getattr(args, "public", False):
        spec["public"] = True
    return spec


def api() -> BerthApi:
    return BerthApi.from_env()


def say(text: str, file=None) -> None:
    """One line to stdout (or `file`), flushed. The stream is looked up at each call: a default
    bound at import would keep whatever sys.stdout was then (a test's capture, a closed pipe)."""
    print(text, file=file if file is not None else sys.stdout, flush=True)


def follow_until_done(client: BerthApi, name: str, **options) -> int:
    """--wait/--watch: each transition as it happens, then the outcome; 0 on success, 1 otherwise."""
    code, state = follow(lambda: client.get(name), sys.stdout, live=sys.stdout.isatty(), **options)
    say(outcome_text(state))
    return code


def command(commands, name: str, help: str, description: str, example: str, func) -> argparse.ArgumentParser:
    parser = commands.add_parser(
        name,
        help=help,
        description=textwrap.fill(description, width=min(100, shutil.get_terminal_size().columns - 2)),
        epilog="example:\n" + "\n".join(f"  {line}" for line in example.strip().splitlines()),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=func)
    return parser
