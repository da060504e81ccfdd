"""The house rules, read from the source like a lint rule: layers point down, no import cycles.

Every ``import`` in the library counts, those inside functions and ``TYPE_CHECKING`` blocks
included (a lazy import is still a dependency). The layers, top to bottom:

    cli                      thin skin: the facade, its errors and the schemas only
    crx.registry.api         the facade (`Registry`)
    workflows resolve declare
    catalog store engine db  (and the small helpers beside them)
    schemas                  imports nothing from the library
"""

from __future__ import annotations

import ast
import pkgutil
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FOLDERS = ("registry", "schemas", "cli", "migrations")
FACADE = "crx.registry.api"
UPPER_PACKAGES = ("crx.registry.workflows", "crx.registry.resolve", "crx.registry.declare")
LOWER_PACKAGES = ("crx.registry.catalog", "crx.registry.store", "crx.registry.engine")
CLI_MAY_IMPORT = ("crx.registry", FACADE, "crx.registry.errors")


def _modules() -> dict[str, Path]:
    found = {"crx": ROOT / "__init__.py", "crx.__main__": ROOT / "__main__.py"}
    for folder in FOLDERS:
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(("crx", *parts))
            found[name.removesuffix(".__init__")] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES.get(name, Path()).name == "__init__.py"


def _resolve(module: str, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if _is_package(module) else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _imports(module: str) -> set[str]:
    """The crx modules ``module`` imports (a name imported from a package that is itself a
    module counts as that module)."""
    tree = ast.parse(MODULES[module].read_text(encoding="utf-8"))
    out: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            origin = _resolve(module, node)
            names = [
                f"{origin}.{alias.name}" if f"{origin}.{alias.name}" in MODULES else origin
                for alias in node.names
            ]
        else:
            continue
        out |= {n for n in names if n == "crx" or n.startswith("crx.")}
    return out


GRAPH = {m: _imports(m) for m in MODULES}


def _within(name: str, packages: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in packages)


def _imports_facade(target: str) -> bool:
    # ``crx`` and ``crx.registry`` re-export the facade lazily: importing them for it is the same.
    return target in (FACADE, "crx", "crx.registry")


def test_the_graph_sees_every_module_and_real_edges() -> None:
    # The walker must find the library and the edges we know exist, or every rule below is moot.
    assert {FACADE, "crx.cli.main", "crx.schemas.records", "crx.registry.db.session"} <= set(GRAPH)
    assert "crx.registry.catalog.service" in GRAPH[FACADE]
    assert "crx.registry.errors" in GRAPH["crx.cli.main"]
    assert {
        "crx.cli.web.app",
        "crx.cli.web.api",
        "crx.cli.web.errors",
        "crx.cli.web.writes",
        "crx.cli.web.pages",
        "crx.cli.web.plots",
    } <= set(GRAPH)
    assert "crx.registry.errors" in GRAPH["crx.cli.web.errors"]
    installed = {m.name for m in pkgutil.iter_modules([str(ROOT / "registry")])}
    assert {"api", "workflows", "catalog"} <= installed


def test_nothing_below_the_facade_imports_it() -> None:
    below = [
        m
        for m in GRAPH
        if (m.startswith("crx.registry.") and m != FACADE) or m.startswith("crx.migrations")
    ]
    offenders = sorted(f"{m} -> {t}" for m in below for t in GRAPH[m] if _imports_facade(t))
    assert offenders == []


def test_schemas_import_nothing_from_the_library() -> None:
    offenders = sorted(
        f"{m} -> {t}"
        for m in GRAPH
        if m.startswith("crx.schemas")
        for t in GRAPH[m]
        if not t.startswith("crx.schemas")
    )
    assert offenders == []


def test_lower_layers_do_not_import_upper_ones() -> None:
    offenders = sorted(
        f"{m} -> {t}"
        for m in GRAPH
        if _within(m, LOWER_PACKAGES) or m == "crx.registry.db" or m.startswith("crx.registry.db.")
        for t in GRAPH[m]
        if _within(t, UPPER_PACKAGES) or t == FACADE
    )
    assert offenders == []


def test_the_cli_calls_only_the_facade() -> None:
    offenders = sorted(
        f"{m} -> {t}"
        for m in GRAPH
        if m.startswith("crx.cli")
        for t in GRAPH[m]
        if t.startswith("crx.registry") and t not in CLI_MAY_IMPORT
    )
    assert offenders == []


def test_the_web_skin_is_a_cli_skin() -> None:
    # crx.cli.web (`crx serve`) is held to the CLI's rule above, and reaches nothing else of
    # the library: the facade, its errors, the schemas and the CLI's own helpers.
    web = [m for m in GRAPH if m == "crx.cli.web" or m.startswith("crx.cli.web.")]
    assert len(web) == 7
    offenders = sorted(
        f"{m} -> {t}"
        for m in web
        for t in GRAPH[m]
        if t not in CLI_MAY_IMPORT and not _within(t, ("crx.schemas", "crx.cli"))
    )
    assert offenders == []


def _cycles() -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    edges = {m: {t for t in ts if t in GRAPH and t != m} for m, ts in GRAPH.items()}
    # A package's __init__ that only re-exports lazily is not a real edge back into it.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = [0]

    def visit(node: str) -> None:
        index[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in edges[node]:
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(edges):
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles() -> None:
    assert _cycles() == []


def test_a_cycle_would_be_found() -> None:
    # The detector itself: a two-module cycle added to the graph is reported.
    GRAPH["crx.registry.errors"].add("crx.registry.names")
    GRAPH["crx.registry.names"].add("crx.registry.errors")
    try:
        assert ["crx.registry.errors", "crx.registry.names"] in _cycles()
    finally:
        GRAPH["crx.registry.errors"].discard("crx.registry.names")
        GRAPH["crx.registry.names"].discard("crx.registry.errors")


def test_every_module_opens_with_a_docstring() -> None:
    missing = sorted(
        m
        for m, path in MODULES.items()
        if path.stat().st_size and ast.get_docstring(ast.parse(path.read_text())) is None
    )
    assert missing == []


def _reverse() -> dict[str, set[str]]:
    users: dict[str, set[str]] = defaultdict(set)
    for m, targets in GRAPH.items():
        for t in targets:
            users[t].add(m)
    return users


def test_the_facade_is_what_the_cli_and_the_package_reach() -> None:
    users = _reverse()[FACADE]
    assert users <= {"crx", "crx.registry"} | {m for m in GRAPH if m.startswith("crx.cli")}
