"""The checks on what a spec asks the node to run: its `env` (berth.domain.env_policy) and its
`engine_args` (each engine's flag table). Pure: the API calls spec_refusal with its own
environment, the node calls it at launch with the node's (BERTH_ALLOW_UNSAFE_ENV and
BERTH_ALLOW_UNSAFE_ENGINE_ARGS there), and a workflow may call it with {} (nothing allowed).

engine "auto": the engine is chosen on the node, later. The args pass when one engine's table
accepts them all (engine_args are written for one engine; a mix of two engines' flags is surely a
mistake); the node checks them again against the engine it chose, before starting anything.
"""

from collections.abc import Mapping

from berth.domain.env_policy import ALLOW_UNSAFE_ENGINE_ARGS, ALLOW_UNSAFE_ENV, env_problems, operator_allows
from berth.engines import llamacpp_flags, mlx_flags, vllm_flags
from berth.engines.flags import EngineArgsError, FlagTable

TABLES: dict[str, FlagTable] = {
    table.engine: table for table in (llamacpp_flags.TABLE, vllm_flags.TABLE, mlx_flags.TABLE)
}


def check_engine_args(engine: str, args: list[str], allow_unsafe: bool = False) -> list[str]:
    """`args` in canonical spelling for `engine` ("auto": for the first engine that accepts them
    all); EngineArgsError naming the refused flag otherwise."""
    if engine != "auto":
        table = TABLES.get(engine)
        if table is None:
            raise EngineArgsError(f"unknown engine {engine!r}; known: {', '.join(sorted(TABLES))}")
        return table.canonical(list(args), allow_unsafe)
    if not args:
        return []
    refusals: list[tuple[EngineArgsError, str]] = []
    for name, table in TABLES.items():
        try:
            return table.canonical(list(args), allow_unsafe)
        except EngineArgsError as refused:
            refusals.append((refused, name))
    # the engine whose table got furthest (and knew the flag it stopped at) is the one meant
    best, name = max(refusals, key=lambda pair: pair[0].position)
    raise EngineArgsError(
        f"{best} (engine is auto: checked as {name} flags, which they match best; set `engine` to be sure)",
        best.position,
    )


def spec_refusal(
    engine: str, engine_args: list[str], env: Mapping[str, str], environ: Mapping[str, str] | None = None
) -> str | None:
    """Why this node (or API) refuses to run a spec with this engine, engine_args and env, in one
    message that names each refused variable and flag; None when it may run. `environ`: the
    deciding machine's environment, where the operator's allowances are read."""
    environ = environ or {}
    problems = env_problems(env, allow_unsafe=operator_allows(environ, ALLOW_UNSAFE_ENV))
    try:
        check_engine_args(engine, engine_args, allow_unsafe=operator_allows(environ, ALLOW_UNSAFE_ENGINE_ARGS))
    except EngineArgsError as refused:
        problems.append(str(refused))
    return "; ".join(problems) or None
