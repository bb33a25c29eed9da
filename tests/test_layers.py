"""The package's layers (issue 21): the pipeline imports no edge, no import runs upward, and no module of the
package imports itself back through others. Read from the source, every import statement counted, those inside
functions (the lazy ones) included."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "stripe_sf_sync"

# Lowest first: a module may import its own layer and those below, never one above. The edges (Stripe,
# Salesforce, the state stores) sit beside the pipeline, which talks to them only through pipeline/ports.py and
# the plain types of records.py and state/records.py.
LAYERS: list[tuple[str, tuple[str, ...]]] = [
    ("base", ("errors", "words", "lazy", "defaults", "money", "salesforce_ids", "identity", "logs", "gc_pause",
              "deadline", "fields", "mapping", "config", "pipelines", "records", "model", "mrr", "rules", "reads",
              "health", "metrics",
              "state.records", "state.interface", "state.schema")),
    ("pipeline", ("pipeline",)),
    ("edges", ("stripe", "salesforce", "state")),
    ("ways in", ("sources", "reconcile", "setup", "discover", "link")),
    ("service", ("service", "serve", "render")),
    ("integrations", ("integrations",)),  # engines a team already runs (Dagster): on the service, as the CLI
    ("cli", ("cli", "cli_options", "__main__")),
]
# Edges are not a layer above the pipeline: neither may import the other.
APART = {("pipeline", "edges"), ("edges", "pipeline")}


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(path: Path) -> set[str]:
    """The package's modules `path` imports (`from pkg import submodule` counts as the submodule)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in _dotted() else node.module
                     for a in node.names]
        else:
            continue
        out.update(n.removeprefix("stripe_sf_sync.") for n in names
                   if n.startswith("stripe_sf_sync.") and n.removeprefix("stripe_sf_sync.") in MODULES)
    return out


def _dotted() -> set[str]:
    return {f"stripe_sf_sync.{m}" for m in MODULES}


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _layer(module: str) -> int:
    best = (-1, -1)
    for rank, (_, prefixes) in enumerate(LAYERS):
        for prefix in prefixes:
            if module == prefix or module.startswith(prefix + "."):
                best = max(best, (len(prefix), rank))
    assert best[1] >= 0, f"{module} is in no layer: add it to LAYERS"
    return best[1]


@pytest.mark.parametrize("module", sorted(m for m in MODULES if m))
def test_no_import_runs_upward(module):
    mine = _layer(module)
    for dep in sorted(GRAPH[module]):
        theirs = _layer(dep)
        pair = (LAYERS[mine][0], LAYERS[theirs][0])
        assert theirs <= mine and pair not in APART, f"{module} ({pair[0]}) imports {dep} ({pair[1]})"


def test_no_import_cycle_in_the_package():
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in GRAPH[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in GRAPH:
        if module not in index:
            visit(module)
    assert cycles == []


def test_no_module_of_the_package_is_over_about_500_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 520}
    assert long == {}
