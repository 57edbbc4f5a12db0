"""Imports point one way (docs/architecture.md draws it): api -> workflows -> domain; worker ->
workflows, activities; activities -> node, engines, models -> domain. Read from the source (ast),
every import of every module under berth/, those inside functions too: a wrong one fails here."""

import ast
from pathlib import Path

import berth

ROOT = Path(berth.__file__).parent

# layer -> the layers it may import (besides itself). `settings` is berth/settings.py, the one
# configuration module; `common` the small helpers every layer but domain may use.
ALLOWED: dict[str, set[str]] = {
    "domain": set(),
    "settings": set(),
    "common": {"settings"},
    "engines": {"domain", "common", "settings"},
    "models": {"domain", "common", "settings"},
    "node": {"engines", "models", "domain", "common", "settings"},
    "activities": {"node", "engines", "models", "domain", "common", "settings"},
    "workflows": {"domain", "settings"},
    "worker": {"workflows", "activities", "node", "domain", "common", "settings"},
    "api": {"workflows", "engines", "models", "domain", "common", "settings"},
    # what the tests and the benchmarks start and break: a whole stack, any layer
    "testing": {"api", "worker", "workflows", "activities", "node", "engines", "models", "domain", "common", "settings"},
}

# (importing module or its prefix, imported module or package): why this one crosses the table
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("berth.api.cli", "berth.worker"): "`berth up` and `berth worker` are commands of the CLI",
    ("berth.worker.stack", "berth.api.server"): "`berth up` starts the API's process and waits for it",
    ("berth.api.routes_engines", "berth.node"): (
        "GET /v1/engines probes the hardware where the API runs and reads a model's format as a node would"
    ),
    ("berth.api.routes_plan", "berth.node"): (
        "POST /v1/plan probes the hardware where the API runs and reads a model's header as a node would"
    ),
}

# packages held to a narrower rule than their layer: package -> the packages it may import
NARROWER: dict[str, set[str]] = {
    # the web console: pages over the API's own facade and reports; no Temporal workflow code, no
    # node machinery of its own (the /v1 reports it shows do that)
    "berth.api.console": {"berth.api", "berth.engines", "berth.models", "berth.domain", "berth.common", "berth.settings"},
}


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> str | None:
    parts = module.split(".")
    if len(parts) < 2:
        return None  # the package itself
    return parts[1]


def berth_imports(path: Path) -> set[str]:
    """The berth modules (or packages) a file imports, wherever in the file."""
    return imports_in(path.read_text(), module_name(path), path.name == "__init__.py")


def imports_in(source: str, module: str, is_package: bool = False) -> set[str]:
    package = module if is_package else module.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the importing package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            if base == "berth":  # `from berth import x`: x is the module
                found.update(f"berth.{alias.name}" for alias in node.names)
            else:
                found.add(base)
    return {name for name in found if name == "berth" or name.startswith("berth.")}


def wrong_imports(module: str, imported: set[str]) -> list[str]:
    source = layer_of(module)
    wrong = []
    for name in sorted(imported):
        target = layer_of(name)
        if source is None or target in (None, source) or target in ALLOWED[source] or excused(module, name):
            continue
        wrong.append(f"{module} imports {name} ({source} -> {target})")
    return wrong


def excused(importer: str, imported: str) -> bool:
    return any(
        importer.startswith(source) and (imported == target or imported.startswith(target + "."))
        for source, target in EXCEPTIONS
    )


def modules() -> list[Path]:
    return sorted(path for path in ROOT.rglob("*.py") if "__pycache__" not in path.parts)


def test_every_module_is_in_a_known_layer():
    unknown = sorted({layer_of(module_name(p)) for p in modules()} - set(ALLOWED) - {None})
    assert not unknown, f"berth/{unknown[0]}: add it to ALLOWED here and to docs/architecture.md"


def test_imports_point_one_way():
    wrong = [line for path in modules() for line in wrong_imports(module_name(path), berth_imports(path))]
    assert not wrong, "imports against the layers (docs/architecture.md):\n" + "\n".join(wrong)


def test_narrower_packages_keep_to_their_rule():
    wrong = []
    for package, allowed in NARROWER.items():
        folder = ROOT.parent / package.replace(".", "/")
        assert folder.is_dir(), f"{package}: no such package (update NARROWER)"
        for path in sorted(folder.rglob("*.py")):
            for name in sorted(berth_imports(path)):
                if not any(name == a or name.startswith(a + ".") for a in allowed):
                    wrong.append(f"{module_name(path)} imports {name}")
    assert not wrong, "imports against NARROWER:\n" + "\n".join(wrong)


def test_the_table_itself_has_no_cycle():
    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        return any(n == goal or (n not in seen and reaches(n, goal, seen | {n})) for n in ALLOWED[start])

    looping = [layer for layer in ALLOWED if reaches(layer, layer, {layer})]
    assert not looping, f"the layer table loops through {looping}"


def test_domain_imports_nothing_of_berths():
    for path in (ROOT / "domain").rglob("*.py"):
        outside = {name for name in berth_imports(path) if not name.startswith("berth.domain")}
        assert not outside, f"{module_name(path)} imports {sorted(outside)}"


def test_activities_hold_only_activity_definitions():
    """Each file of berth/activities/ is one pipeline step: @activity.defn functions, nothing else
    (the machinery they call is in node/, engines/, models/)."""

    def is_activity(function: ast.AST) -> bool:
        for decorator in function.decorator_list:
            call = decorator.func if isinstance(decorator, ast.Call) else decorator
            if isinstance(call, ast.Attribute) and call.attr == "defn":
                return True
        return False

    for path in sorted((ROOT / "activities").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                continue
            if isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):  # the docstring
                continue
            assert isinstance(node, ast.AsyncFunctionDef) and is_activity(node), (
                f"{path.name}:{node.lineno}: only @activity.defn functions belong in berth/activities/"
            )


def test_a_wrong_import_is_caught():
    """The check itself: imports inside functions, relative ones and `from berth import x` count."""
    domain = "def f():\n    from berth.node.ports import registry\n"
    assert wrong_imports("berth.domain.x", imports_in(domain, "berth.domain.x")) == [
        "berth.domain.x imports berth.node.ports (domain -> node)"
    ]
    relative = "from ..worker import stack\nfrom . import spec\n"
    assert imports_in(relative, "berth.domain.x") == {"berth.worker", "berth.domain"}
    assert wrong_imports("berth.node.x", imports_in("from berth import api\n", "berth.node.x")) == [
        "berth.node.x imports berth.api (node -> api)"
    ]
    assert not wrong_imports("berth.api.cli_commands", {"berth.worker.stack"})  # the CLI starts the stack
    assert wrong_imports("berth.api.facade", {"berth.worker.stack"})
