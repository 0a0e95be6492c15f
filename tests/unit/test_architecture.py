"""The layout docs/architecture.md promises, checked from the source: no import cycles, no
first-party imports hidden inside functions, the wire package free of the daemon, modules of a
readable size, and every event kind documented."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tenantd.events import EVENT_TABLE, Event

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = {
    "tenantd": ROOT / "tenantd",
    "tenantwire": ROOT / "clients/tenantwire",
    "tenantclient": ROOT / "clients/tenantclient",
}
MAX_LINES = 500
# The probe measures the memory a runtime costs, so it imports the runtime only after its first reading.
MEASURED_IMPORTS = {"tenantd.probe"}


def _modules() -> dict[str, Path]:
    found = {}
    for package, folder in PACKAGES.items():
        for path in folder.rglob("*.py"):
            parts = path.relative_to(folder).with_suffix("").parts
            name = ".".join((package, *parts)).removesuffix(".__init__")
            found[name] = path
    return found


MODULES = _modules()


def _first_party(name: str) -> bool:
    return name.split(".")[0] in PACKAGES


def _imports(tree: ast.AST, module: str) -> list[tuple[str, ast.stmt]]:
    """(imported first-party module, statement) for every import in ``tree``."""
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node) for alias in node.names if _first_party(alias.name)]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 and _first_party(node.module):
            # ``from tenantd import auth`` imports the submodule tenantd.auth (the package itself is
            # already initialising when one of its modules runs, so that is no edge to it).
            submodules = [f"{node.module}.{a.name}" for a in node.names if f"{node.module}.{a.name}" in MODULES]
            out += [(m, node) for m in submodules]
            if len(submodules) < len(node.names):
                out.append((node.module, node))
    return out


def _top_level_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for name, path in MODULES.items():
        tree = ast.parse(path.read_text())
        top = [n for n in tree.body if isinstance(n, ast.Import | ast.ImportFrom)]
        targets = {m for m, _ in _imports(ast.Module(body=top, type_ignores=[]), name) if m in MODULES and m != name}
        graph[name] = targets
    return graph


def test_there_are_no_import_cycles() -> None:
    graph = _top_level_graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
    assert "tenantd.daemon" in graph and "tenantwire.protocol" in graph  # the walk saw the tree


def test_no_first_party_import_is_hidden_in_a_function() -> None:
    hidden = []
    for name, path in MODULES.items():
        if name in MEASURED_IMPORTS:
            continue
        tree = ast.parse(path.read_text())
        for func in ast.walk(tree):
            if isinstance(func, ast.FunctionDef | ast.AsyncFunctionDef):
                hidden += [f"{name}:{stmt.lineno} imports {m}" for m, stmt in _imports(func, name)]
    assert not hidden, hidden


def test_the_wire_package_and_the_client_import_nothing_of_the_daemon() -> None:
    offenders = [
        f"{name} imports {m}"
        for name, path in MODULES.items()
        if not name.startswith("tenantd")
        for m, _ in _imports(ast.parse(path.read_text()), name)
        if m.startswith("tenantd")
    ]
    assert not offenders, offenders


def test_no_module_of_the_daemon_is_over_the_size_a_reader_can_hold() -> None:
    long = {n: len(p.read_text().splitlines()) for n, p in MODULES.items() if n.startswith("tenantd")}
    assert {n: lines for n, lines in long.items() if lines > MAX_LINES} == {}


def test_every_event_kind_is_described_and_documented() -> None:
    assert set(EVENT_TABLE) == set(Event)
    documented = (ROOT / "docs/protocol.md").read_text()
    missing = [kind.value for kind in Event if f"`{kind.value}`" not in documented]
    assert not missing, f"docs/protocol.md does not list the event kinds {missing}"


def test_the_daemon_emits_only_declared_event_kinds() -> None:
    literal = re.compile(r"\.emit\(\s*\"([^\"]+)\"")
    stray = [(n, m) for n, p in MODULES.items() for m in literal.findall(p.read_text())]
    assert not stray, f"events emitted by string, not Event: {stray}"


def test_who_may_call_each_operation_is_what_the_protocol_says() -> None:
    """The operations table and docs/protocol.md section 7 agree (they disagreed on policy_show)."""
    from_docs = {}
    for row in (ROOT / "docs/protocol.md").read_text().splitlines():
        cells = [c.strip() for c in row.split("|")]
        if len(cells) > 4 and re.fullmatch(r"`[a-z_]+`", cells[1]):
            from_docs[cells[1].strip("`")] = cells[3]
    expected = {
        "anyone": lambda text: "operator only" not in text,
        "operator": lambda text: text.startswith("**operator only**"),
        "operator_under_keys": lambda text: "anyone under `header`; **operator only** under `keys`" in text,
    }
    table = _operations_table()
    assert set(table) <= set(from_docs)
    wrong = {op: from_docs[op] for op, caller in table.items() if not expected[caller](from_docs[op])}
    assert not wrong, wrong


def _operations_table() -> dict[str, str]:
    """op -> caller, read from the source of tenantd/operations.py (no daemon needed)."""
    source = (ROOT / "tenantd/operations.py").read_text()
    rows = re.findall(r"Operation\(Op\.([A-Z_]+), [^,)]+(?:, \"([a-z_]+)\")?\)", source)
    assert len(rows) >= 13, rows
    return {name.lower(): caller or "anyone" for name, caller in rows}
