"""prepare_files: the model's files present on this node, and where they are.

Asked to (choose_engine), it first chooses the engine, before anything is fetched (a model no
engine here serves fails now); asked to (plan_memory), it plans the memory once the files are in
place (a model that cannot fit fails here, as OOM, before anything is launched). One step, so the
launch waits for one round trip through Temporal.
"""

import asyncio

from temporalio import activity

from berth.domain.pipeline import PREPARE_FILES, PrepareFilesInput, PreparedModel
from berth.node.engine_choice import choose_engine
from berth.node.memory_plan import plan_for
from berth.node.model_files import files_in_place


@activity.defn(name=PREPARE_FILES)
async def prepare_files(request: PrepareFilesInput) -> PreparedModel:
    choice = None
    if request.choose_engine:  # before any download: a model no engine here serves fails now
        choice = await choose_engine(request.model, request.override, request.source_gateway_url)
        request = request.model_copy(update={"engine": choice.engine})
    prepared = await files_in_place(request)
    if choice:
        prepared = prepared.model_copy(update={"choice": choice})
    if request.plan_memory and request.engine:
        # a model that cannot fit fails here (OOM), before anything is launched
        plan = await asyncio.to_thread(
            plan_for, prepared.path, request.engine, request.context_size, request.instances
        )
        prepared = prepared.model_copy(update={"plan": plan})
    return prepared
