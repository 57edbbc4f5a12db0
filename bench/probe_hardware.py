"""Print this machine's hardware as berth's probe sees it, as JSON; run it on a GPU machine to see
the real NVML facts.

    python -m bench.probe_hardware [MODEL ...]

Prints {"hardware": ..., "probe_seconds": ..., "selection": {format: engine or refusal},
"budgets": {engine: budget}, "plans": {model: {engine: plan or error}}}. With MODEL paths (.gguf
files or safetensors folders), also the memory plan for each with the engine that would serve it.
"""

from __future__ import annotations

import json
import sys
import time

from berth.node.hardware import probe_hardware
from berth.models.facts import ModelFilesUnreadable, read_model_facts
from berth.domain.memory import memory_budget, plan_resources
from berth.engines.selection import SelectionRefused, select_engine


def report(models: list[str]) -> dict:
    started = time.perf_counter()
    hardware = probe_hardware(max_age_s=0)
    elapsed = time.perf_counter() - started
    selection: dict[str, object] = {}
    for model_format in ("gguf", "safetensors"):
        try:
            chosen = select_engine(model_format, hardware)
            selection[model_format] = {"engine": chosen.engine, "reasons": chosen.reasons}
        except SelectionRefused as refused:
            selection[model_format] = {"refused": str(refused)}
    budgets = {
        engine: memory_budget(engine, hardware).model_dump(mode="json") for engine in ("llamacpp", "vllm", "mlx")
    }
    plans: dict[str, object] = {}
    for model in models:
        try:
            facts = read_model_facts(model)
            engine = select_engine(facts.format, hardware).engine
            plan = plan_resources(facts, engine, hardware)
            plans[model] = {"facts": facts.model_dump(mode="json"), "plan": plan.model_dump(mode="json")}
        except (ModelFilesUnreadable, SelectionRefused) as error:
            plans[model] = {"error": str(error)}
    return {
        "hardware": hardware.model_dump(mode="json"),
        "summary": hardware.summary(),
        "probe_seconds": round(elapsed, 3),
        "selection": selection,
        "budgets": budgets,
        "plans": plans,
    }


def main(argv: list[str] | None = None) -> int:
    print(json.dumps(report(sys.argv[1:] if argv is None else argv), indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
