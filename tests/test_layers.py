"""The import contract: each layer imports only the layers below it, and no module imports itself back.

Read from the source (an AST walk), so it holds for imports inside functions too. The rules are the ones
docs/ARCHITECTURE.md draws; `test_contract_catches_a_forbidden_import` shows the checker can fail.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("loquilex_nb", "jupyter_server_ext")

# layer -> the layers it may import (itself included)
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "worker": {"core", "worker"},
    "supervisor": {"core", "supervisor"},
    "remote": {"core", "remote"},
    "backends": {"core", "supervisor", "remote", "backends"},
    "handle": {"core", "supervisor", "remote", "backends", "handle"},
    "ui": {"core", "supervisor", "remote", "backends", "handle", "ui"},
    "cli": {"core", "handle", "cli"},
    "testing": {"core", "supervisor", "testing"},
    "face": {"core", "supervisor", "backends", "handle", "ui", "testing", "face"},
    "server": {"core", "supervisor", "server"},
}
# The handle's `widget()` builds the ui's CaptionView; ipywidgets is optional, so it is imported
# there, on call, never when the handle loads. No other import may reach up.
LAZY_EXCEPTIONS = {("loquilex_nb.handle", "loquilex_nb.ui.widgets")}
# The fault-injecting worker is a worker process itself: it patches the shipped worker from outside
# and runs it, so that the worker has no test branches. Nothing else in testing reaches the worker.
CHILD_EXCEPTIONS = {("loquilex_nb.testing.faulty_worker", "worker")}


def layer_of(module: str) -> str:
    parts = module.split(".")
    if parts[0] == "jupyter_server_ext":
        return "server"
    if len(parts) == 1 or parts[1] == "__init__":
        return "face"
    return {"__main__": "face"}.get(parts[1], parts[1])


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool) -> list[tuple[str, bool]]:
    """(imported module, at load time?) for every import of ours in `source`."""
    tree = ast.parse(source)
    found: list[tuple[str, bool]] = []
    top_level = {id(n) for n in tree.body} | {id(n) for stmt in tree.body if isinstance(stmt, (ast.If, ast.Try)) for n in ast.walk(stmt)}
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            # `from pkg import mod` imports the module mod (and pkg's __init__, which is not a dependency of note)
            for a in node.names:
                sub = ROOT / Path(*f"{target}.{a.name}".split("."))
                names.append(f"{target}.{a.name}" if sub.with_suffix(".py").exists() or sub.is_dir() else target)
        for name in names:
            if name.split(".")[0] in PACKAGES:
                found.append((name, id(node) in top_level))
    return found


def sources() -> list[tuple[str, Path]]:
    out = []
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            if "labextension" in path.parts:
                continue
            out.append((module_name(path), path))
    return out


def violations(module: str, source: str, is_package: bool) -> list[str]:
    bad = []
    mine = layer_of(module)
    for target, at_load in imports(source, module, is_package):
        if target.split(".")[0] != module.split(".")[0] and mine != "server":
            bad.append(f"{module} imports {target}: the library never imports the server extension")
            continue
        theirs = layer_of(target)
        if theirs in ALLOWED[mine] or (module, theirs) in CHILD_EXCEPTIONS:
            continue
        if not at_load and (module, target) in LAZY_EXCEPTIONS:
            continue
        bad.append(f"{module} ({mine}) imports {target} ({theirs})")
    return bad


def test_every_import_follows_the_layers() -> None:
    bad = []
    for module, path in sources():
        bad += violations(module, path.read_text(), path.name == "__init__.py")
    assert not bad, "\n".join(bad)


def test_no_import_circle() -> None:
    graph: dict[str, set[str]] = {}
    known = {m for m, _ in sources()}
    for module, path in sources():
        deps = set()
        for target, _ in imports(path.read_text(), module, path.name == "__init__.py"):
            while target and target not in known:
                target = target.rpartition(".")[0]
            # a package's own __init__ is loaded by its children; that is not a circle of ours
            if target and target != module and not module.startswith(target + "."):
                deps.add(target)
        graph[module] = deps
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                raise AssertionError("import circle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d)
        stack.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


@pytest.mark.parametrize(
    "module, source",
    [
        ("loquilex_nb.core.events", "from ..supervisor.session import Session\n"),
        ("loquilex_nb.worker.streaming", "from ..handle import session\n"),
        ("loquilex_nb.supervisor.session", "def f():\n    from loquilex_nb.remote import client\n"),
        ("loquilex_nb.core.config", "from .. import testing\n"),
        ("loquilex_nb.testing.leakcheck", "from ..worker import main\n"),  # only the fault worker may
        ("loquilex_nb.worker.main", "from ..testing import faulty_worker\n"),
        ("loquilex_nb.supervisor.runtime", "from ..testing.leakcheck import leakcheck\n"),
        ("jupyter_server_ext.manager", "from loquilex_nb.handle import build_config\n"),
        ("jupyter_server_ext.hub", "from loquilex_nb.remote.client import RemoteBackend\n"),
        ("loquilex_nb.handle", "from .ui.widgets import CaptionView\n"),  # the exception holds on call only
        ("loquilex_nb.remote.client", "import jupyter_server_ext.app\n"),
    ],
)
def test_contract_catches_a_forbidden_import(module: str, source: str) -> None:
    assert violations(module, source, False), f"{source!r} in {module} passed the contract"


def test_contract_allows_the_documented_lazy_widget() -> None:
    source = "def widget(self):\n    from .ui.widgets import CaptionView\n    return CaptionView(self)\n"
    assert violations("loquilex_nb.handle", source, False) == []
