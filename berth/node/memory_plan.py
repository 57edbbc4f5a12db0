"""Will the model fit on this node's memory, and with which context size?

prepare_files asks once the files are in place (it reads the model's headers) and before the
launch: a model that cannot fit fails there, as OOM with the largest context size that fits, and
nothing is launched. The arithmetic is `berth.domain.memory`; this module only gathers the facts.
"""

import logging
import os
import re

from berth.domain.errors import ErrorCode
from berth.domain.memory import ResourcePlan
from berth.domain.memory import plan_resources as plan
from berth.domain.replicas import memory_refusal
from berth.models.facts import ModelFilesUnreadable
from berth.node.failures import failure_error
from berth.node.hardware import probe_hardware
from berth.node.model_facts_cache import cached_model_facts


log = logging.getLogger(__name__)
MEMORY_LIMIT_ENV = "BERTH_MEMORY_LIMIT"
NODE_CAPACITY_ENV = "BERTH_NODE_CAPACITY"
_UNITS = {"": 1, "k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12, "ki": 2**10, "mi": 2**20, "gi": 2**30, "ti": 2**40}


def parse_bytes(text: str) -> int:
    """'536870912', '512MiB', '0.5 GiB', '2G' (powers of 1000), '2Gi' -> bytes."""
    found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]i?)?b?\s*", text, re.IGNORECASE)
    if not found:
        raise ValueError(f"{text!r} is not a size: use bytes or a number with K, M, G, Ki, Mi, Gi")
    return int(float(found[1]) * _UNITS[(found[2] or "").lower()])


def memory_limit() -> int | None:
    """BERTH_MEMORY_LIMIT: the most memory berth's engines may use on this node (unset: no limit)."""
    raw = os.environ.get(MEMORY_LIMIT_ENV, "").strip()
    return parse_bytes(raw) if raw else None


def node_capacity() -> int | None:
    """BERTH_NODE_CAPACITY: the memory this node offers the cluster's placement, in place of its
    memory budget (unset: the budget). Set above the budget, it overcommits on purpose: instances
    whose plan overestimates what they use (tiny models: 256 MiB of fixed overhead each) pack
    tighter, at the risk of a real OOM."""
    raw = os.environ.get(NODE_CAPACITY_ENV, "").strip()
    return parse_bytes(raw) if raw else None


def plan_for(
    model_path: str, engine: str, context_size: int | None = None, instances: int = 1
) -> ResourcePlan | None:
    """The plan, or the failure to raise (OOM). Blocking: call in a thread. `instances`: how many
    instances of the deployment the node must hold, each with this plan's memory (OOM with the
    per-instance numbers when they do not all fit).

    None when the model's header cannot be read: then there is nothing to estimate, and the
    engine itself is the authority on what is wrong with the file (its own log line is the
    evidence the user gets, classified as MODEL_LOADING_FAILURE)."""
    try:
        facts = cached_model_facts(model_path)
    except (ModelFilesUnreadable, OSError) as unreadable:
        log.info("no memory plan for %s: %s", model_path, unreadable)
        return None
    try:
        limit = memory_limit()
    except ValueError as bad:
        raise failure_error(ErrorCode.RUNTIME_ERROR, f"{MEMORY_LIMIT_ENV} on this node: {bad}") from None
    hardware = probe_hardware()
    result = plan(facts, engine, hardware, context_size, limit)
    if instances > 1 and context_size is None and result.fits:
        # the default context is the largest that fits: with several instances, their share of the budget
        share = plan(facts, engine, hardware, None, result.budget_bytes // instances)
        if not share.fits:  # not even the smallest context: the numbers per instance, at that context
            message = memory_refusal(instances, share.estimate_bytes, result.budget_bytes) or share.message
            raise failure_error(ErrorCode.OOM, message, log_lines=[*share.reasons, message])
        result = share.model_copy(update={"budget": result.budget})  # the node's whole budget, for the check below
    if not result.fits:
        raise failure_error(
            ErrorCode.OOM,
            result.message,
            log_lines=result.reasons,
            suggested_context_size=result.suggested_context_size,
        )
    too_many = memory_refusal(instances, result.estimate_bytes, result.budget_bytes)
    if too_many:
        raise failure_error(ErrorCode.OOM, too_many, log_lines=[*result.reasons, too_many])
    return result
