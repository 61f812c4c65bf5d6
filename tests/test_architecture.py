"""The import graph of daemon/ and trainer/ (docs/architecture.md, "Who may import what"),
read from the source with ast: every import counts, also one inside a function.

- no cycles;
- no arrow from server code to the client (daemon.atarictl), and the client reaches the server
  only through daemon.control_server.protocol;
- the daemon imports from trainer/ only trainer.contract, and trainer.contract is stdlib only.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLIENT = "daemon.atarictl"
SERVER_PKG = "daemon.control_server"
# The one client module allowed past protocol: the latency benchmark starts a bare server
# in-process when no --socket is given, to measure the socket without a daemon.
CLIENT_TO_SERVER_EXCEPTIONS = {("daemon.atarictl.bench", "daemon.control_server.server")}


def _modules() -> dict[str, Path]:
    mods = {}
    for pkg in ("daemon", "trainer"):
        for path in sorted((REPO / pkg).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            mods[".".join(parts)] = path
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> set[str]:
    """Every module ``name`` imports (internal ones resolved to the module, not the package)."""
    out = set()
    is_pkg = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                out.add(sub if sub in MODULES else mod)
    return out


IMPORTS = {name: _imports(name, path) for name, path in MODULES.items()}
GRAPH = {n: {m for m in deps if m in MODULES and m != n} for n, deps in IMPORTS.items()}


def _under(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_the_graph_is_read() -> None:
    # Guards the reader itself: known arrows must be found, or every check below is vacuous.
    assert "daemon.control_server.protocol" in GRAPH["daemon.atarictl.client"]
    assert "trainer.contract" in GRAPH["daemon.process.manager"]
    assert len(MODULES) > 50


def test_no_import_cycles() -> None:
    assert _cycles(GRAPH) == []


def test_cycle_finder_finds_one() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_server_code_never_imports_the_client() -> None:
    bad = sorted(
        (n, m) for n, deps in GRAPH.items() if not _under(n, CLIENT)
        for m in deps if _under(m, CLIENT)
    )  # fmt: skip
    assert bad == [], "server-side modules importing atarictl (move the shared part out)"


def test_client_reaches_the_server_only_through_protocol() -> None:
    bad = sorted(
        (n, m) for n, deps in GRAPH.items() if _under(n, CLIENT)
        for m in deps
        if _under(m, SERVER_PKG) and m != f"{SERVER_PKG}.protocol"
        and (n, m) not in CLIENT_TO_SERVER_EXCEPTIONS
    )  # fmt: skip
    assert bad == []
    # The control server knows nothing of the daemon around it (it is handed a handler).
    server = {m for n, deps in GRAPH.items() if _under(n, SERVER_PKG) for m in deps}
    assert {m for m in server if not _under(m, SERVER_PKG)} == set()


def test_the_daemon_imports_only_the_trainer_contract() -> None:
    bad = sorted(
        (n, m) for n, deps in GRAPH.items() if _under(n, "daemon")
        for m in deps if _under(m, "trainer") and m != "trainer.contract"
    )  # fmt: skip
    assert bad == [], "the daemon must stay light (no torch): go through trainer/contract.py"
    assert not any(_under(m, "daemon") for n in GRAPH if _under(n, "trainer") for m in GRAPH[n])


def test_trainer_contract_is_stdlib_only() -> None:
    imported = {m.split(".")[0] for m in IMPORTS["trainer.contract"]}
    assert imported - set(sys.stdlib_module_names) - {"__future__"} == set()
