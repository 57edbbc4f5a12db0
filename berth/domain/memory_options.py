"""Balanced context options for a novice: the most that fits, a balanced one that leaves headroom, a
small fast one. Pure arithmetic over berth.domain.memory (no I/O); POST /v1/plan and the console's
deploy page show them.

With `replicas` instances on one node, each gets `budget // replicas`: an option's memory is that
of all the replicas together. The three are never larger than the one before them:

    most      the largest context that fits one replica's share, up to the trained context
              (memory.suggested_context: what an OOM failure suggests too)
    balanced  at most half of `most`, and no more than fits in HEADROOM_FRACTION of the share
              (room left for other deployments and for the estimate being low)
    fast      at most FAST_CONTEXT tokens, and at most half of `balanced`: quick to load, small
              KV cache, enough for chat

Each is rounded down to CONTEXT_STEP tokens and is at least the floor (MIN_CONTEXT, or the whole
trained context when smaller). When not even the floor fits, there are no options: the model
needs a smaller variant, which the plan's message says with the numbers.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from berth.domain.hardware import gib
from berth.domain.memory import (
    MIN_CONTEXT,
    Device,
    estimate,
    largest_fitting_context,
    round_context,
    suggested_context,
)
from berth.domain.model_facts import ModelFacts

HEADROOM_FRACTION = 0.75  # the balanced option uses at most this share of the budget
FAST_CONTEXT = 2048  # the small, fast option: at most this many tokens

OptionKind = Literal["most", "balanced", "fast"]
LABELS: dict[str, str] = {
    "most": "The most that fits",
    "balanced": "Balanced (leaves headroom)",
    "fast": "Small and fast",
}


class ContextOption(BaseModel):
    model_config = ConfigDict(frozen=True)

    kind: OptionKind
    label: str
    context_size: int = Field(description="tokens of context")
    memory_bytes: int = Field(description="the estimate for all replicas together")
    fits: bool
    description: str


def floor_context(facts: ModelFacts) -> int:
    return min(MIN_CONTEXT, facts.trained_context or MIN_CONTEXT)


def context_options(
    facts: ModelFacts, budget_bytes: int, device: Device = Device.CPU, replicas: int = 1
) -> list[ContextOption]:
    """The three options, largest first; [] when not even the floor fits."""
    replicas = max(1, replicas)
    share = budget_bytes // replicas
    most = suggested_context(facts, largest_fitting_context(facts, share, device))
    if most is None:
        return []
    floor = floor_context(facts)
    roomy = largest_fitting_context(facts, int(share * HEADROOM_FRACTION), device)
    balanced = max(floor, min(round_context(roomy), round_context(most // 2)))
    fast = max(floor, min(FAST_CONTEXT, round_context(balanced // 2)))
    options = []
    for kind, context in (("most", most), ("balanced", balanced), ("fast", fast)):
        memory = estimate(facts, context, device).total_bytes * replicas
        each = f" ({replicas} replicas, {gib(memory // replicas)} each)" if replicas > 1 else ""
        options.append(
            ContextOption(
                kind=kind,
                label=LABELS[kind],
                context_size=context,
                memory_bytes=memory,
                fits=memory <= budget_bytes,
                description=f"{context} tokens: {gib(memory)}{each} of {gib(budget_bytes)}",
            )
        )
    return options
