"""The house rules of the package's layout, read from its source (no import, no server).

* no import cycle among the package's modules, counting imports inside functions and
  under ``TYPE_CHECKING``;
* no module over :data:`MAX_LINES` lines;
* only ``pool/sqla.py`` names SQLAlchemy's private pool internals;
* no module imports, or reads from a module, another module's private name (tests
  may: they reach private state on purpose).

Known violations outside what has been split so far are listed below, each with the
issue that removes it; the lists only shrink.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import django_poolconf

PACKAGE = "django_poolconf"
ROOT = Path(django_poolconf.__file__).resolve().parent
MAX_LINES = 700

#: Import edges (importer, imported) that close a cycle today (issue 12): none left.
KNOWN_CYCLE_EDGES: frozenset[tuple[str, str]] = frozenset()

#: Modules over MAX_LINES lines today (issue 12): none left.
KNOWN_LONG: frozenset[str] = frozenset()

#: SQLAlchemy's private pool names: those the pool relies on (see
#: django_poolconf.pool.sqla), and those of QueuePool it relied on before.
SQLALCHEMY_PRIVATE = re.compile(
    r"\._(?:do_get|do_return_conn|return_conn|pool|overflow|inc_overflow|dec_overflow"
    r"|create_connection|timeout|max_overflow|invalidate_time|recycle|checkin_failed"
    r"|soft_invalidate_time)\b"
    r"|_fairy_was_created|sqlalchemy\.util\.queue|sqlalchemy\.util import queue"
    r"|\.starttime\b"
)


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(ROOT.rglob("*.py")):
        parts = [PACKAGE, *path.relative_to(ROOT).with_suffix("").parts]
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def _is_package(name: str) -> bool:
    return MODULES[name].name == "__init__.py"


def _imports(name: str) -> set[str]:
    """The package's modules ``name`` imports, anywhere in its source."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".")
                if not _is_package(name):
                    base.pop()
                base = base[: len(base) - (node.level - 1)]
                module = ".".join([*base, *([node.module] if node.module else [])])
            else:
                module = node.module or ""
            # `from package import module` imports the module; `from module import
            # name` the module itself.
            targets = [
                f"{module}.{alias.name}"
                if f"{module}.{alias.name}" in MODULES
                else module
                for alias in node.names
            ]
        else:
            continue
        for target in targets:
            # `import a.b.c` imports a.b.c; keep the longest known module name.
            while target and target not in MODULES:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def _graph() -> dict[str, set[str]]:
    return {name: _imports(name) for name in MODULES}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph``, as a path that ends where it starts; None if acyclic."""
    done: set[str] = set()
    for start in sorted(graph):
        if start in done:
            continue
        path: list[str] = []
        on_path: set[str] = set()
        stack = [(start, iter(sorted(graph[start])))]
        path.append(start)
        on_path.add(start)
        while stack:
            node, children = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                path.pop()
                on_path.discard(node)
                done.add(node)
            elif child in on_path:
                return [*path[path.index(child) :], child]
            elif child not in done:
                stack.append((child, iter(sorted(graph[child]))))
                path.append(child)
                on_path.add(child)
    return None


def test_the_graph_sees_function_level_imports():
    # A self-check of the parser: metrics imports the registry inside a function.
    assert "django_poolconf.engines" in _imports("django_poolconf.metrics")


def test_no_import_cycle():
    graph = _graph()
    for importer, imported in KNOWN_CYCLE_EDGES:
        assert imported in graph[importer], (
            f"{importer} -> {imported} is gone: unlist it"
        )
        graph[importer].discard(imported)
    assert _cycle(graph) is None


def test_the_pool_imports_nothing_above_it():
    graph = _graph()
    pool = {name for name in MODULES if name.startswith(f"{PACKAGE}.pool")}
    allowed = pool | {
        f"{PACKAGE}.compat",
        f"{PACKAGE}.conf.pool",
        f"{PACKAGE}.errors",
        f"{PACKAGE}.leaks",
        f"{PACKAGE}.process",
        f"{PACKAGE}.signals",
        f"{PACKAGE}.stats",
    }
    for name in sorted(pool):
        assert graph[name] <= allowed, name


def test_no_module_is_too_long():
    long = {
        name
        for name, path in MODULES.items()
        if len(path.read_text().splitlines()) > MAX_LINES
    }
    assert long == KNOWN_LONG


def test_only_the_adapter_names_sqlalchemy_private_internals():
    users = {
        name
        for name, path in MODULES.items()
        if SQLALCHEMY_PRIVATE.search(path.read_text())
    }
    assert users == {f"{PACKAGE}.pool.sqla"}


def _resolve(name: str, node: ast.ImportFrom) -> str:
    """The module an ``ImportFrom`` in module ``name`` imports from."""
    if not node.level:
        return node.module or ""
    base = name.split(".")
    if not _is_package(name):
        base.pop()
    base = base[: len(base) - (node.level - 1)]
    return ".".join([*base, *([node.module] if node.module else [])])


def _is_private(attribute: str) -> bool:
    return attribute.startswith("_") and not attribute.startswith("__")


def _private_uses(name: str) -> set[str]:
    """The private names of the package's other modules that ``name`` imports or reads."""
    tree = ast.parse(MODULES[name].read_text(), filename=str(MODULES[name]))
    modules: dict[str, str] = {}  # a local name bound to one of the package's modules
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _resolve(name, node)
            for alias in node.names:
                target = f"{source}.{alias.name}"
                if target in MODULES:
                    modules[alias.asname or alias.name] = target
                elif source in MODULES and source != name and _is_private(alias.name):
                    found.add(target)
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in MODULES:
                    modules[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and _is_private(node.attr):
            # `module._name`, or `package.module._name` through a bound package.
            parts = []
            value: ast.expr = node.value
            while isinstance(value, ast.Attribute):
                parts.append(value.attr)
                value = value.value
            if isinstance(value, ast.Name) and value.id in modules:
                owner = ".".join([modules[value.id], *reversed(parts)])
                if owner in MODULES and owner != name:
                    found.add(f"{owner}.{node.attr}")
    return found


def test_the_private_name_check_sees_imports_and_reads():
    # A self-check of the parser on a module written for it.
    source = (
        "from django_poolconf.pool import registry\n"
        "from django_poolconf.stats import _hidden\n"
        "registry._registry.get('default')\n"
    )
    path = ROOT / "pool" / "_house_probe.py"
    path.write_text(source)
    try:
        MODULES["django_poolconf.pool._house_probe"] = path
        assert _private_uses("django_poolconf.pool._house_probe") == {
            "django_poolconf.stats._hidden",
            "django_poolconf.pool.registry._registry",
        }
    finally:
        del MODULES["django_poolconf.pool._house_probe"]
        path.unlink()


def test_no_module_uses_another_s_private_name():
    uses = {name: _private_uses(name) for name in MODULES}
    assert {name: found for name, found in uses.items() if found} == {}
