"""/v1/engines: this machine's hardware, which engines can run on it, and which one a model would get.

The same report backs `berth engines [MODEL]`, which computes it locally (engines_report) when no
API answers. Everything comes from the functions the pipeline itself uses: the hardware probe
(berth.node.hardware), engine assessment and selection (berth.engines.selection), and the
model's format as the pipeline's choice of engine reads it (berth.node.engine_choice).
"""

import asyncio
import os
from typing import Annotated

from fastapi import APIRouter, Depends, Query
from pydantic import BaseModel, Field

from berth.api.dependencies import require_token
from berth.api.facade.model_paths import local_model_refusal
from berth.api.errors import ERROR_RESPONSES
from berth.domain.hardware import Hardware
from berth.domain.spec import EngineName
from berth.engines.registry import ENGINES
from berth.engines.selection import SelectionRefused, assess_engines, select_engine
from berth.models.presets import missing_model_message, preset_for
from berth.settings import Settings

REMOTE_PREFIXES = ("http://", "https://", "hf:")

router = APIRouter(
    prefix="/v1/engines",
    tags=["engines"],
    dependencies=[Depends(require_token)],
    responses={code: ERROR_RESPONSES[code] for code in (400, 401, 403)},
)


class EngineInfo(BaseModel):
    name: str
    formats: list[str] = Field(description="model formats it serves")
    available: bool = Field(description="it can run on this machine")
    why: str = Field(description="what makes it available here, or what is missing")
    serves_model: bool | None = Field(None, description="it serves the asked model's format (None: no model asked)")


class ModelInfo(BaseModel):
    reference: str
    format: str | None = Field(description="gguf, safetensors, unsupported:<what>, or None when unknown")
    size_bytes: int | None = None
    found: bool = Field(description="a file or folder of that path exists on this machine")
    preset: str | None = Field(None, description="the preset it names, when it is one")


class EngineSelected(BaseModel):
    engine: str
    reasons: list[str]


class EngineRefused(BaseModel):
    refused: str = Field(description="why no engine can serve the model here, and what to do")


class EnginesReport(BaseModel):
    hardware: Hardware
    engines: list[EngineInfo]
    model: ModelInfo | None = None
    selection: EngineSelected | EngineRefused | None = Field(
        None, description="the engine the model would get and why, or the refusal; None when no model was asked"
    )


def engines_report(model: str | None = None, engine: str = "auto", hardware: Hardware | None = None) -> EnginesReport:
    """The report for this machine (probed unless `hardware` is given). Blocking: the probe may
    ping Docker for up to a second."""
    # imported here: the probe (psutil, NVML through ctypes) and the model readers (the hub client)
    # cost the API ~5 MB, and most APIs never serve this report
    from berth.node.hardware import probe_hardware
    from berth.node.engine_choice import model_bytes_of, model_format_of

    hardware = hardware or probe_hardware()
    # a local path outside this machine's model roots is not looked at (nothing said of it but that)
    outside = local_model_refusal(model, Settings.from_env().model_roots) if model else None
    model_format = model_format_of(model) if model and not outside else None
    engines = []
    for name, registered in sorted(ENGINES.items()):
        formats = sorted(registered.formats)
        # assessed against a format it serves, so `why` says whether it can run here, and why
        own = assess_engines(formats[0] if formats else None, hardware, {name: frozenset(formats)})[0]
        engines.append(
            EngineInfo(
                name=name,
                formats=formats,
                available=own.can_run,
                why=own.reason,
                serves_model=None if model is None else model_format in registered.formats,
            )
        )
    if model is None:
        return EnginesReport(hardware=hardware, engines=engines)

    if outside:
        info = ModelInfo(reference=model, format=None, found=False)
        return EnginesReport(hardware=hardware, engines=engines, model=info, selection=EngineRefused(refused=outside))
    preset = preset_for(model)
    found = os.path.exists(os.path.expanduser(model))  # False, not an error, for a name no file can have
    size = model_bytes_of(model) or (preset.size_bytes if preset and preset.size_bytes else None)
    info = ModelInfo(
        reference=model, format=model_format, size_bytes=size, found=found, preset=preset.name if preset else None
    )
    try:
        chosen = select_engine(model_format, hardware, engine, size)
        selection: EngineSelected | EngineRefused = EngineSelected(engine=chosen.engine, reasons=chosen.reasons)
    except SelectionRefused as refused:
        unknown = model_format is None and not found and not model.startswith(REMOTE_PREFIXES)
        # a name that is no file here and no preset says more than "cannot tell the format"
        selection = EngineRefused(refused=missing_model_message(model) if unknown else str(refused))
    return EnginesReport(hardware=hardware, engines=engines, model=info, selection=selection)


@router.get("", response_model=EnginesReport, summary="Hardware, engines, and which engine a model would get")
async def engines(
    model: Annotated[
        str | None,
        Query(max_length=4096, description="a model path on the API's machine, a hub reference or a preset name"),
    ] = None,
    engine: Annotated[EngineName, Query(description="ask about forcing this engine")] = "auto",
) -> EnginesReport:
    """The hardware of the machine that runs the API (OS, CPU cores, RAM, NVIDIA GPUs with memory,
    driver and CUDA version, Apple chip, Docker), each engine with whether it can run there and
    why, and, for `model`, the engine berth would choose and the reasons, or `{"refused": ...}`
    saying why none can serve it and what to do. `berth engines [MODEL]` shows the same."""
    return await asyncio.to_thread(engines_report, model, engine)
