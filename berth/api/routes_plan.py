"""POST /v1/plan: a dry run of the memory plan, before deploying. Which engine the model would get
here, whether it fits with the context asked, and three context options (berth.domain.memory_options:
the most that fits, a balanced one, a small fast one) with their memory. Nothing is started.

The numbers are those prepare_files computes at deploy time (berth.domain.memory over the model's
header facts, this node's hardware and BERTH_MEMORY_LIMIT), on the machine that runs the API,
which is the node with `berth up`. A model whose files are not here yet (a hub or URL model not
fetched, a packaged preset not assembled) cannot be read before deploying: the answer says so
(`known: false`), and the deployment plans again once the files are in place.
"""

from __future__ import annotations

import asyncio
import os
from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel, ConfigDict, Field

from berth.api.dependencies import require_token
from berth.api.errors import ERROR_RESPONSES, ApiError
from berth.domain.hardware import gib
from berth.domain.memory import memory_budget, plan_resources
from berth.domain.memory_options import ContextOption, context_options
from berth.domain.spec import MAX_CONTEXT_SIZE, MAX_REPLICAS, EngineName
from berth.engines.selection import SelectionRefused, select_engine
from berth.models.facts import ModelFilesUnreadable
from berth.models.presets import is_assembled, missing_model_message, packaged_path, preset_for
from berth.settings import Settings

REMOTE_PREFIXES = ("http://", "https://", "hf:")

router = APIRouter(
    prefix="/v1/plan",
    tags=["plan"],
    dependencies=[Depends(require_token)],
    responses={code: ERROR_RESPONSES[code] for code in (400, 401, 403, 413)},
)


class PlanRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    model: str = Field(min_length=1, max_length=4096, description="model path, URL, hub reference or preset")
    engine: EngineName = Field("auto", description="auto picks from hardware and format; a name forces it")
    context_size: int | None = Field(
        None, ge=1, le=MAX_CONTEXT_SIZE, description="tokens of context; default: what berth would choose"
    )
    replicas: int = Field(1, ge=1, le=MAX_REPLICAS, description="instances on this node, sharing its memory")


class PlanAnswer(BaseModel):
    model: str
    engine: str | None = Field(description="the engine the model would get here; None when none can serve it")
    engine_reasons: list[str] = Field(default_factory=list, description="why this engine, or why none")
    known: bool = Field(description="the model's files are here and berth read their sizes")
    fits: bool | None = Field(None, description="the asked (or default) context fits; None when not known")
    context_size: int | None = Field(None, description="the context asked, or the one berth would choose")
    memory_bytes: int | None = Field(None, description="the estimate for that context, all replicas")
    budget_bytes: int | None = Field(None, description="the memory the engine may use on this node")
    budget: str | None = Field(None, description="where that budget comes from")
    trained_context: int | None = None
    replicas: int = 1
    message: str = Field(description="the fit, or why it does not fit, with the numbers")
    reasons: list[str] = Field(default_factory=list)
    options: list[ContextOption] = Field(
        default_factory=list, description="most, balanced, fast (largest first); empty when nothing fits"
    )


def model_file(model: str, settings: Settings) -> tuple[str | None, str | None]:
    """(the local path whose header to read, or None with why not). ApiError for a model that names nothing."""
    path = os.path.expanduser(model)
    if os.path.exists(path):
        return path, None
    preset = preset_for(model)
    if preset is not None:
        if preset.source == "package" and is_assembled(preset, settings.models_dir):
            return str(packaged_path(preset, settings.models_dir)), None
        return None, (
            f"the preset {preset.name}'s files are put in place when it is deployed ({gib(preset.size_bytes)}"
            " to fetch or assemble); the deployment plans its memory then"
            if preset.size_bytes
            else f"the preset {preset.name}'s files are fetched when it is deployed; the deployment plans its memory then"
        )
    if model.startswith(REMOTE_PREFIXES):
        return None, "the model's files are fetched when it is deployed; its memory is planned then, before the launch"
    raise ApiError(400, "invalid_request", f"model: {missing_model_message(model)}")


def plan_report(request: PlanRequest, settings: Settings) -> PlanAnswer:
    """The dry run. Blocking (the hardware probe, the model's header): call in a thread."""
    # imported here, as routes_engines does: the probe and the readers cost the API memory, and
    # most APIs never plan
    from berth.node.engine_choice import model_bytes_of, model_format_of
    from berth.node.hardware import probe_hardware
    from berth.node.memory_plan import memory_limit
    from berth.node.model_facts_cache import cached_model_facts

    path, unknown = model_file(request.model, settings)
    hardware = probe_hardware()
    answer = PlanAnswer(model=request.model, engine=None, known=False, replicas=request.replicas, message="")
    model_format = model_format_of(request.model)
    try:
        chosen = select_engine(model_format, hardware, request.engine, model_bytes_of(request.model))
    except SelectionRefused as refused:
        if model_format is None and path is None:  # a hub repo: its file list says the format, at deploy time
            answer.message = f"{unknown} The engine is chosen then too, from the repo's files."
            answer.engine_reasons = [str(refused)]
            return answer
        answer.message = str(refused)
        answer.engine_reasons = [str(refused)]
        return answer
    answer.engine, answer.engine_reasons = chosen.engine, list(chosen.reasons)
    if path is None:
        answer.message = unknown or ""
        return answer
    try:
        facts = cached_model_facts(path)
    except (ModelFilesUnreadable, OSError) as unreadable:
        answer.message = (
            f"berth cannot read this model's header ({unreadable}), so it cannot estimate its memory; "
            "the engine will say what is wrong with the file when it loads it"
        )
        return answer
    try:
        limit = memory_limit()
    except ValueError:
        limit = None  # the node's worker refuses the deployment with the reason; here: the hardware's
    budget = memory_budget(chosen.engine, hardware, limit)
    share = budget.bytes // request.replicas
    plan = plan_resources(facts, chosen.engine, hardware, request.context_size, share if request.replicas > 1 else limit)
    memory = plan.estimate.total_bytes * request.replicas
    message = plan.message
    if request.replicas > 1:
        message = f"{request.replicas} replicas share {budget.description}, {gib(share)} each. {message}"
    answer.known = True
    answer.fits = plan.fits and memory <= budget.bytes
    answer.context_size = plan.context_size
    answer.memory_bytes = memory
    answer.budget_bytes = budget.bytes
    answer.budget = budget.description
    answer.trained_context = facts.trained_context
    answer.message = message
    answer.reasons = plan.reasons
    answer.options = context_options(facts, budget.bytes, budget.device, request.replicas)
    return answer


@router.post("", response_model=PlanAnswer, summary="Dry run: the engine, the memory fit, and balanced context options")
async def plan(body: PlanRequest, request: Request) -> PlanAnswer:
    """Nothing is deployed. For `model` (a path on the API's machine, a preset, a URL or `hf:` repo):
    the engine it would get here and why; whether `context_size` (default: berth's choice) fits
    `replicas` instances on this node, with the numbers; and three context options with their
    memory: the most that fits, a balanced one leaving headroom, a small fast one. A model that
    cannot fit answers `fits: false`, a message with its estimate and the budget, and no options.
    A model whose files are not here yet answers `known: false` (its memory is planned at deploy
    time). A model that names nothing is a 400."""
    settings: Settings = request.app.state.settings
    return await asyncio.to_thread(plan_report, body, settings)

