"""What the Temporal UI (and `temporal workflow metadata -w deployment-NAME`) shows of a deployment
without a query: the workflow's static summary and details (set when the API starts it), its
current details in Markdown (set by the workflow at each transition), and each activity's summary
("launch llama.cpp on node-a, port 20001"). Pure text from berth's data."""

from berth.domain.spec import DeploymentSpec
from berth.domain.state import DeploymentState

ENGINE_NAMES = {"llamacpp": "llama.cpp", "vllm": "vLLM", "mlx": "MLX"}
MAX_DETAILS_CHARS = 4000  # Temporal keeps user metadata small; a long log message is cut
MAX_INSTANCE_ROWS = 20


def engine_name(engine: str | None) -> str:
    if engine in (None, "", "auto"):
        return "the engine berth chooses"
    return ENGINE_NAMES.get(engine, engine)


def static_summary(spec: DeploymentSpec) -> str:
    """One line: the model and the engine (as asked: chosen at deploy unless the spec names one)."""
    return _cut(f"{spec.model} on {engine_name(spec.engine)}", 200)


def static_details(spec: DeploymentSpec) -> str:
    rows = [
        ("model", spec.model),
        ("engine", engine_name(spec.engine)),
        ("node", spec.node or "placed by berth"),
        ("context size", str(spec.context_size) if spec.context_size else "from the model and memory"),
        ("public", "yes" if spec.public else "no"),
    ]
    return _cut(f"### deployment {spec.name}\n\n" + _table(("", ""), rows), MAX_DETAILS_CHARS)


def current_details(state: DeploymentState) -> str:
    """The status, endpoint, instances and, after a failure, its code, message and guidance."""
    lines = [f"**{state.status.value}** · {engine_name(state.engine)}"]
    if state.endpoint:
        lines.append(f"endpoint: `{state.endpoint}`")
    if state.transitions:
        lines.append(f"since {state.transitions[-1].at:%Y-%m-%d %H:%M:%S} UTC: {state.transitions[-1].detail}")
    if state.next_retry_at is not None:
        lines.append(f"next automatic retry at {state.next_retry_at:%H:%M:%S} UTC (attempt {state.attempts})")
    if state.instances:
        rows = [
            (i.instance_id, i.node, i.status.value, str(i.port or "-"))
            for i in state.instances[:MAX_INSTANCE_ROWS]
        ]
        lines += ["", _table(("instance", "node", "status", "port"), rows)]
        if len(state.instances) > MAX_INSTANCE_ROWS:
            lines.append(f"and {len(state.instances) - MAX_INSTANCE_ROWS} more instances")
    if state.error is not None:
        error = state.error
        lines += ["", f"**error `{error.code.value}`**: {_cut(error.message, 600)}", "", f"what to do: {error.guidance}"]
    return _cut("\n".join(lines), MAX_DETAILS_CHARS)


# ---- activities ------------------------------------------------------------------------------------


def launch_summary(engine: str, node: str, port: int | None) -> str:
    return f"launch {engine_name(engine)} on {node}, port {port}"


def step_summary(what: str, node: str, port: int | None = None) -> str:
    return f"{what} on {node}" + (f", port {port}" if port else "")


def _table(header: tuple[str, ...], rows: list[tuple[str, ...]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows]
    return "\n".join(out)


def _cell(text: str) -> str:
    return _cut(text.replace("|", "\\|").replace("\n", " "), 300)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
