"""The house's layering, read from the source: who may import whom among ``worldmodel/``, ``games/``, ``runtime/``.

Every ``import`` statement counts, those inside functions too (a lazy import is still a dependency). A package's
``__init__.py`` is the package's module. Names are resolved to the project's modules: ``from games.data import video``
is an import of ``games.data.video``, ``from games.registry import make_game`` one of ``games.registry``.
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT

PACKAGES = ("worldmodel", "games", "runtime")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def imported_names(name: str) -> set[str]:
    """Every module name that module ``name`` imports, anywhere in it, as written (relative imports resolved)."""
    path = MODULES[name]
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in MODULES)
    return out


def project_module(imported: str) -> str | None:
    """The project module an import names: itself, or the longest enclosing one (``games.data.x.Y`` -> its module)."""
    parts = imported.split(".")
    for n in range(len(parts), 0, -1):
        if ".".join(parts[:n]) in MODULES:
            return ".".join(parts[:n])
    return None


IMPORTS = {name: imported_names(name) for name in MODULES}
GRAPH = {name: {m for i in imports if (m := project_module(i)) and m != name} for name, imports in IMPORTS.items()}


def violations(package: str, allowed) -> list[str]:
    """``module imports name`` for every import by a module of ``package`` that ``allowed(name)`` refuses."""
    return sorted(f"{mod} imports {imp}" for mod, imports in IMPORTS.items()
                  if mod == package or mod.startswith(package + ".") for imp in imports if not allowed(imp))


def under(name: str, *prefixes: str) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_the_modules_are_found():
    assert {"worldmodel.engine.session", "games.data.recording", "runtime.player", "games"} <= set(MODULES)


def test_worldmodel_imports_no_window_no_runtime_and_of_games_only_the_data_contract():
    found = violations("worldmodel", lambda m: not under(m, "pygame", "moderngl", "runtime")
                       and (not under(m, "games") or under(m, "games.data")))
    assert not found, "\n".join(found)


def test_games_import_no_torch_no_worldmodel_and_no_runtime():
    found = violations("games", lambda m: not under(m, "torch", "worldmodel", "runtime"))
    assert not found, "\n".join(found)


def test_commands_sit_on_top_and_apart():
    """``runtime/commands/*`` may use the runtime's modules, never the other way round, and no command module
    imports another: what two commands share lives in the runtime library."""
    found = violations("runtime", lambda m: not under(m, "runtime.commands"))
    assert not found, "\n".join(found)


def test_importing_the_data_contract_loads_no_game():
    """Importing a module runs its packages' ``__init__`` too: ``import games.data.recording`` runs ``games``'s."""
    loaded, todo = set(), [m for m in MODULES if under(m, "games.data")]
    while todo:
        mod = todo.pop()
        if mod in loaded:
            continue
        loaded.add(mod)
        parents = [".".join(mod.split(".")[:n]) for n in range(1, mod.count(".") + 1)]
        todo += [*GRAPH[mod], *parents]
    games = sorted(m for m in loaded if not under(m, "games.data") and m != "games")
    assert not games, f"importing games.data loads {', '.join(games)}"


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as [a, b, ..., a], or None (depth-first search, colouring the nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_no_import_cycles():
    cycle = find_cycle(GRAPH)
    assert cycle is None, " -> ".join(cycle)


@pytest.mark.parametrize("graph, cyclic", [({"a": {"b"}, "b": {"c"}, "c": set()}, False),
                                           ({"a": {"b"}, "b": {"c"}, "c": {"a"}}, True)])
def test_the_cycle_finder_finds_cycles(graph, cyclic):
    assert (find_cycle(graph) is not None) == cyclic
