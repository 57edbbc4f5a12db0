"""Will the model fit? Memory arithmetic before launch. Pure functions, no I/O.

The estimate, for a context of `ctx` tokens:

    total    = weights + kv_cache + overhead
    weights  = the bytes of all tensors in the model files (from their metadata)
    kv_cache = ctx * sum over layers of kv_heads * (key_dim + value_dim) * bytes_per_element
             = 2 * n_layers * n_kv_heads * head_dim * ctx * bytes_per_element
               (bytes_per_element = 2: f16, llama.cpp's default cache type; vLLM and MLX keep the
               cache in the model's dtype, 2 bytes for bf16/f16 models, 4 for f32 ones)
    overhead = OVERHEAD_FIXED[device] + OVERHEAD_FRACTION * weights
               (runtime, compute buffers, CUDA context and graphs on a GPU)

Every layer is counted as full attention, so models with sliding-window layers (Gemma 3) get an
upper bound, and so does a KV cache that the engine quantises.

The budget, from the node's hardware and the engine:

    NVIDIA GPU (vLLM)       min(free, GPU_MEMORY_UTILIZATION * total) of the GPU with most room
                            (vLLM claims that fraction of the GPU, --gpu-memory-utilization 0.9)
    RAM (CPU engines)       ram_available - min(CPU_RESERVE_BYTES, CPU_RESERVE_FRACTION * ram_total)
    llama.cpp with NVIDIA   RAM as above + each GPU as above (llama.cpp splits layers across them)
    Apple unified memory    min(unified - max(APPLE_RESERVE_MIN, APPLE_RESERVE_FRACTION * unified),
                                RAM as above)
                            (macOS lets the GPU wire about 3/4 of unified memory by default)

A node may cap all of that with a memory limit (BERTH_MEMORY_LIMIT, read by the activity).

The context, when none is asked for: the largest that fits, up to the model's trained context,
capped at DEFAULT_CONTEXT_CAP tokens. Suggestions are rounded down to CONTEXT_STEP tokens. A model
for which not even MIN_CONTEXT tokens (or its whole trained context, if smaller) fit does not fit:
it needs a smaller variant.
"""

from __future__ import annotations

from enum import Enum

from pydantic import BaseModel, ConfigDict, computed_field

from berth.domain.hardware import Hardware, gib
from berth.domain.model_facts import ModelFacts
from berth.domain.spec import MAX_CONTEXT_SIZE

GIB = 2**30
MIB = 2**20

GPU_MEMORY_UTILIZATION = 0.9  # vLLM's --gpu-memory-utilization: the share of a GPU it claims
CPU_RESERVE_BYTES = 1 * GIB  # RAM left for the OS and everything else on the node, at most ...
CPU_RESERVE_FRACTION = 0.10  # ... and at most this share of the node's RAM (small boards, laptops)
APPLE_RESERVE_FRACTION = 0.25  # unified memory macOS keeps from the GPU
APPLE_RESERVE_MIN = 2 * GIB
OVERHEAD_FRACTION = 0.10  # of the weights: compute buffers and activations grow with the model
DEFAULT_CONTEXT_CAP = 8192  # the default context when none is asked for, at most
MIN_CONTEXT = 512  # below this a deployment is not useful: a smaller variant is the answer
CONTEXT_STEP = 256  # suggested contexts are rounded down to a multiple of this


class Device(str, Enum):
    CPU = "cpu"  # RAM
    GPU = "gpu"  # one NVIDIA GPU's memory
    GPU_AND_CPU = "gpu+cpu"  # llama.cpp offloading to NVIDIA GPUs, the rest in RAM
    UNIFIED = "unified"  # Apple silicon unified memory


# The runtime's own memory, before weights and KV cache: the process and its compute buffers
# (measured: llama.cpp's server with Gemma 3 270M at 512 tokens is ~120 MiB above its weights);
# on a GPU also the CUDA context (~0.5 GiB), vLLM's activation profile and CUDA graphs.
OVERHEAD_FIXED = {
    Device.CPU: 256 * MIB,
    Device.UNIFIED: 256 * MIB,
    Device.GPU_AND_CPU: 768 * MIB,
    Device.GPU: 1536 * MIB,
}


class MemoryBudget(BaseModel):
    model_config = ConfigDict(frozen=True)

    device: Device
    bytes: int
    description: str  # "22.0 GiB of RAM (23.0 GiB available, less 1.0 GiB kept for the OS)"


class MemoryEstimate(BaseModel):
    model_config = ConfigDict(frozen=True)

    context_size: int
    weights_bytes: int
    kv_cache_bytes: int
    overhead_bytes: int
    kv_bytes_per_token: int | None  # None: the model files did not say; the KV cache is not counted

    @computed_field  # type: ignore[prop-decorator]
    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_cache_bytes + self.overhead_bytes

    def breakdown(self) -> str:
        kv = gib(self.kv_cache_bytes) if self.kv_bytes_per_token is not None else "unknown"
        return (
            f"{gib(self.total_bytes)} (weights {gib(self.weights_bytes)} + KV cache {kv} for "
            f"{self.context_size} tokens + overhead {gib(self.overhead_bytes)})"
        )


class ResourcePlan(BaseModel):
    """What plan_resources decided: the context to launch with, and why it fits (or not)."""

    engine: str
    device: Device
    context_size: int  # the context to launch the engine with
    requested_context_size: int | None = None
    trained_context: int | None = None
    estimate: MemoryEstimate
    budget: MemoryBudget
    fits: bool
    # The largest context that fits, up to the trained context, rounded down to CONTEXT_STEP
    # (the "balanced" option); None when not even MIN_CONTEXT tokens fit.
    suggested_context_size: int | None = None
    message: str
    reasons: list[str]

    @computed_field  # type: ignore[prop-decorator]
    @property
    def estimate_bytes(self) -> int:
        return self.estimate.total_bytes

    @computed_field  # type: ignore[prop-decorator]
    @property
    def budget_bytes(self) -> int:
        return self.budget.bytes


# ---- arithmetic --------------------------------------------------------------------------------


def overhead_bytes(weights_bytes: int, device: Device) -> int:
    return int(OVERHEAD_FIXED[device] + OVERHEAD_FRACTION * weights_bytes)


def estimate(facts: ModelFacts, context_size: int, device: Device = Device.CPU) -> MemoryEstimate:
    per_token = facts.kv_bytes_per_token()
    return MemoryEstimate(
        context_size=context_size,
        weights_bytes=facts.weights_bytes,
        kv_cache_bytes=(per_token or 0) * context_size,
        overhead_bytes=overhead_bytes(facts.weights_bytes, device),
        kv_bytes_per_token=per_token,
    )


def largest_fitting_context(facts: ModelFacts, budget_bytes: int, device: Device = Device.CPU) -> int:
    """The most tokens of context whose estimate fits in `budget_bytes` (not rounded, not capped
    at the trained context); 0 when the weights and overhead alone do not fit; MAX_CONTEXT_SIZE
    when the KV cache per token is unknown and the weights fit."""
    room = budget_bytes - facts.weights_bytes - overhead_bytes(facts.weights_bytes, device)
    if room < 0:
        return 0
    per_token = facts.kv_bytes_per_token()
    if not per_token:
        return MAX_CONTEXT_SIZE
    return min(MAX_CONTEXT_SIZE, room // per_token)


def round_context(tokens: int) -> int:
    """Down to a multiple of CONTEXT_STEP (tokens below one step are kept as they are)."""
    return tokens if tokens < CONTEXT_STEP else tokens - tokens % CONTEXT_STEP


def suggested_context(facts: ModelFacts, largest: int) -> int | None:
    """The largest context that fits, up to the trained context, rounded; None when too small to use."""
    ceiling = facts.trained_context or MAX_CONTEXT_SIZE
    suggestion = min(ceiling, round_context(largest))
    return suggestion if suggestion >= min(MIN_CONTEXT, ceiling) else None


def default_context(facts: ModelFacts, largest: int) -> int:
    """The context to use when none is asked for: up to the trained context, at most
    DEFAULT_CONTEXT_CAP, and no more than fits (when anything useful fits)."""
    wanted = min(facts.trained_context or DEFAULT_CONTEXT_CAP, DEFAULT_CONTEXT_CAP)
    suggestion = suggested_context(facts, largest)
    return min(wanted, suggestion) if suggestion is not None else wanted


# ---- budgets -----------------------------------------------------------------------------------


def _gpu_room(gpu) -> int:
    return max(0, int(min(gpu.memory_free, GPU_MEMORY_UTILIZATION * gpu.memory_total)))


def os_reserve(hardware: Hardware) -> int:
    return int(min(CPU_RESERVE_BYTES, CPU_RESERVE_FRACTION * hardware.ram_total))


def _ram_room(hardware: Hardware) -> int:
    return max(0, hardware.ram_available - os_reserve(hardware))


def _ram_description(hardware: Hardware) -> str:
    return (
        f"{gib(_ram_room(hardware))} of RAM ({gib(hardware.ram_available)} available, "
        f"less {gib(os_reserve(hardware))} kept for the OS)"
    )


def memory_budget(engine: str, hardware: Hardware, limit_bytes: int | None = None) -> MemoryBudget:
    """The memory the engine can use on this node, at most `limit_bytes` when one is set
    (BERTH_MEMORY_LIMIT on the node: memory that berth's engines may use there)."""
    budget = _hardware_budget(engine, hardware)
    if limit_bytes is not None and limit_bytes < budget.bytes:
        return MemoryBudget(
            device=budget.device,
            bytes=max(0, limit_bytes),
            description=f"{gib(max(0, limit_bytes))} (the node's memory limit for berth; the hardware has {budget.description})",
        )
    return budget


def _hardware_budget(engine: str, hardware: Hardware) -> MemoryBudget:
    apple = hardware.apple_silicon
    if apple is not None:
        reserve = max(APPLE_RESERVE_MIN, int(APPLE_RESERVE_FRACTION * apple.unified_memory))
        by_chip = max(0, apple.unified_memory - reserve)
        room = min(by_chip, _ram_room(hardware))
        limit = (
            f"{gib(apple.unified_memory)} less {gib(reserve)} kept for macOS"
            if room == by_chip
            else f"{gib(hardware.ram_available)} available now, less {gib(os_reserve(hardware))} kept for the OS"
        )
        return MemoryBudget(
            device=Device.UNIFIED,
            bytes=room,
            description=f"{gib(room)} of unified memory on the {apple.chip} ({limit})",
        )
    if hardware.gpus and engine == "vllm":
        best = max(hardware.gpus, key=_gpu_room)
        room = _gpu_room(best)
        return MemoryBudget(
            device=Device.GPU,
            bytes=room,
            description=(
                f"{gib(room)} on GPU {best.index} ({best.name}: {gib(best.memory_free)} free of "
                f"{gib(best.memory_total)}, vLLM claims at most {GPU_MEMORY_UTILIZATION:.0%})"
            ),
        )
    if hardware.gpus and engine == "llamacpp":
        gpu_room = sum(_gpu_room(gpu) for gpu in hardware.gpus)
        room = _ram_room(hardware) + gpu_room
        return MemoryBudget(
            device=Device.GPU_AND_CPU,
            bytes=room,
            description=(
                f"{gib(room)}: {gib(gpu_room)} on {len(hardware.gpus)} NVIDIA GPU(s) "
                f"(at most {GPU_MEMORY_UTILIZATION:.0%} of each) plus {_ram_description(hardware)}"
            ),
        )
    return MemoryBudget(device=Device.CPU, bytes=_ram_room(hardware), description=_ram_description(hardware))


# ---- the plan ----------------------------------------------------------------------------------


def _model_name(facts: ModelFacts) -> str:
    return facts.name or facts.path.rstrip("/").rsplit("/", 1)[-1]


def plan_resources(
    facts: ModelFacts,
    engine: str,
    hardware: Hardware,
    context_size: int | None = None,
    memory_limit: int | None = None,
) -> ResourcePlan:
    """The context to launch with and whether it fits, or why it does not."""
    budget = memory_budget(engine, hardware, memory_limit)
    device = budget.device
    largest = largest_fitting_context(facts, budget.bytes, device)
    suggestion = suggested_context(facts, largest)
    chosen = context_size if context_size is not None else default_context(facts, largest)
    planned = estimate(facts, chosen, device)
    fits = planned.total_bytes <= budget.bytes
    name = _model_name(facts)

    reasons = [f"{engine} uses {budget.description}"]
    if planned.kv_bytes_per_token is None:
        reasons.append("the model files do not say its layer and head sizes: only the weights were counted")
    else:
        reasons.append(
            f"KV cache: {gib(planned.kv_bytes_per_token)} per token "
            f"({facts.n_layers} layers x {facts.n_kv_heads} KV heads x {facts.head_dim} head dim, keys and values)"
        )
    if context_size is None and fits:
        trained = f"trained context {facts.trained_context}" if facts.trained_context else "trained context unknown"
        reasons.append(
            f"context {chosen}: the largest that fits, up to the model's {trained}, "
            f"at most {DEFAULT_CONTEXT_CAP} by default"
        )
    elif context_size is not None and facts.trained_context and context_size > facts.trained_context:
        reasons.append(f"context {context_size} is more than the model's trained context of {facts.trained_context}")

    if fits:
        message = f"{name} fits: {planned.breakdown()} of {budget.description}"
    elif suggestion is not None:
        message = (
            f"{name} does not fit with context size {chosen}: it needs {planned.breakdown()}, more than "
            f"the {budget.description}. The largest context size that fits is {suggestion}."
        )
    else:
        floor = min(MIN_CONTEXT, facts.trained_context or MIN_CONTEXT)
        at_floor = estimate(facts, floor, device)
        message = (
            f"{name} does not fit even with a {floor}-token context: it needs {at_floor.breakdown()}, "
            f"more than the {budget.description}. Choose a smaller variant (a lower quantisation or "
            "fewer parameters) or a node with more memory."
        )
    reasons.append(message)
    return ResourcePlan(
        engine=engine,
        device=device,
        context_size=chosen,
        requested_context_size=context_size,
        trained_context=facts.trained_context,
        estimate=planned,
        budget=budget,
        fits=fits,
        suggested_context_size=suggestion,
        message=message,
        reasons=reasons,
    )
