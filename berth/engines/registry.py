"""All engines by name. An engine is one module in this package that defines one Engine subclass,
and one line below."""

from berth.engines.base import Engine
from berth.engines.llamacpp import LlamaCppEngine
from berth.engines.mlx import MlxEngine
from berth.engines.vllm import VllmEngine

ENGINES: dict[str, Engine] = {
    engine.name: engine
    for engine in (
        LlamaCppEngine(),
        VllmEngine(),
        MlxEngine(),
    )
}


def get_engine(name: str) -> Engine:
    try:
        return ENGINES[name]
    except KeyError:
        raise KeyError(f"unknown engine {name!r}; known: {', '.join(sorted(ENGINES))}") from None
