"""The code's shape, checked: short functions and no import cycle between medtune modules."""

import ast
import re

from conftest import ROOT

SRC = ROOT / "src" / "medtune"
MAX_LINES = 80


def _modules() -> dict[str, ast.Module]:
    out = {}
    for p in sorted(SRC.rglob("*.py")):
        rel = p.relative_to(SRC.parent).with_suffix("")
        name = ".".join(rel.parts[:-1] if rel.name == "__init__" else rel.parts)
        out[name] = ast.parse(p.read_text(), str(p))
    return out


def _imports(name: str, tree: ast.Module, known: set[str]) -> set[str]:
    """medtune modules that `name` imports anywhere (top level or inside functions)."""
    found = set()
    for node in _executed(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
        for t in targets:
            while t and t not in known:
                t = t.rpartition(".")[0]
            if t and t != name and not name.startswith(t + "."):  # a package's own __init__ is not a cycle
                found.add(t)
    return found


def _executed(tree: ast.AST):
    """Every node of `tree` but those under `if TYPE_CHECKING:` (imports for type checkers only, never run)."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and getattr(node.test, "id", None) == "TYPE_CHECKING":
            yield from (n for child in node.orelse for n in [child, *_executed(child)])
            continue
        yield node
        yield from _executed(node)


def test_no_function_is_longer_than_80_lines():
    long = []
    for name, tree in _modules().items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > MAX_LINES:
                    long.append(f"{name}.{node.name}: {n} lines")
    assert not long, long


def find_cycle(graph: dict[str, set]) -> list[str] | None:
    """The first import cycle a depth-first walk meets (a -> b -> a), or None."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(m):
        state[m] = 1
        path.append(m)
        for d in sorted(graph.get(m, ())):
            if state.get(d) == 1:
                return path[path.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        path.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state:
            found = visit(m)
            if found:
                return found
    return None


def test_warnings_are_filtered_by_message_never_by_a_whole_category():
    """A category filter hides every future warning of that kind, the ones a user needs too."""
    call = re.compile(r"(filterwarnings|simplefilter)\((?P<args>[^)]*)\)")
    offenders = [
        f"{p.relative_to(SRC)}:{i}"
        for p in SRC.rglob("*.py")
        for i, line in enumerate(p.read_text().splitlines(), 1)
        for m in call.finditer(line)
        if '"ignore"' in m["args"] and "message=" not in m["args"]
    ]
    assert offenders == []


def test_no_import_cycle():
    mods = _modules()
    graph = {m: _imports(m, t, set(mods)) for m, t in mods.items()}
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


# The pipeline, bottom to top: a folder may import the ones before it, never one after it.
PIPELINE = (
    "infra",
    "models",
    "methods",
    "config",
    "data",
    "training",
    "evaluation",
    "tuning",
    "tracking",
    "report",
    "study",
    "cli",
)


def _stage(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 else None  # medtune.__main__ and medtune itself: no stage


def test_each_folder_imports_only_earlier_stages():
    mods = _modules()
    assert {_stage(m) for m in mods} - {None} == set(PIPELINE), "a folder missing from PIPELINE"
    upward = []
    for m, tree in mods.items():
        here = _stage(m)
        for dep in _imports(m, tree, set(mods)):
            there = _stage(dep)
            if here and there and PIPELINE.index(there) > PIPELINE.index(here):
                upward.append(f"{m} -> {dep}")
    assert not upward, upward


def test_every_package_init_is_only_a_docstring():
    """A package's face defines and imports nothing: a registry that imports its members lives in a
    module of its own (methods/registry.py, models/families/registry.py), so no member imports it
    back through the package."""
    heavy = []
    for p in sorted(SRC.rglob("__init__.py")):
        body = ast.parse(p.read_text()).body
        rest = body[1:] if body and isinstance(body[0], ast.Expr) else body
        if p.parent != SRC and rest:
            heavy.append(str(p.relative_to(SRC)))
    assert not heavy, heavy


def test_type_checking_imports_are_not_edges():
    tree = ast.parse(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from medtune.b import x\nimport medtune.c\n"
    )
    assert _imports("medtune.a", tree, {"medtune.a", "medtune.b", "medtune.c"}) == {"medtune.c"}


def test_the_cycle_detector_finds_a_cycle(tmp_path):
    """The checker above is not vacuous: config importing methods and methods importing config is caught."""
    a = ast.parse("from medtune.b import x\n")
    b = ast.parse("def f():\n    from medtune.a import y\n")
    known = {"medtune.a", "medtune.b"}
    graph = {"medtune.a": _imports("medtune.a", a, known), "medtune.b": _imports("medtune.b", b, known)}
    assert graph == {"medtune.a": {"medtune.b"}, "medtune.b": {"medtune.a"}}
    assert find_cycle(graph) == ["medtune.a", "medtune.b", "medtune.a"]  # the walk itself finds it
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None  # shared, not circular
