"""The layout of ../shared/design.md, checked on the source: the import rules (no cycles;
model files import only common and kernels of the project; ganzoo never imports common or a
model file; kernels import only torch and triton), no private name of one project module used
in another, common.py small, and no function over 90 lines."""
import ast

from conftest import MODELS, ROOT

FRONT_ENDS = ("evaluate", "compare")


def _sources():
    out = {}
    for p in sorted(ROOT.rglob("*.py")):
        rel = p.relative_to(ROOT)
        if rel.parts[0].startswith(".") or rel.parts[0] in ("tests", "runs"):
            continue
        name = ".".join(rel.with_suffix("").parts).removesuffix(".__init__")
        out[name] = ast.parse(p.read_text(encoding="utf-8"))
    return out


SOURCES = _sources()


def _imports(name, tree):
    """The project modules `name` imports (relative imports resolved)."""
    package = name if name in ("ganzoo", "kernels") else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            found |= {base} | {f"{base}.{a.name}" for a in node.names}
    return {m for m in found if m in SOURCES and m != name}


GRAPH = {name: _imports(name, tree) for name, tree in SOURCES.items()}


def test_the_project_is_where_the_design_puts_it():
    assert set(MODELS) | {"common", "evaluate", "compare", "ganzoo", "kernels"} <= set(SOURCES)
    assert {"ganzoo.cli", "ganzoo.data", "ganzoo.batches", "ganzoo.scale", "ganzoo.images", "ganzoo.checkpoint",
            "ganzoo.loop", "ganzoo.sample", "ganzoo.metrics"} <= set(SOURCES)


def cycles(graph):
    """The import cycles of {module: imported modules}, each as a path back to its start."""
    state, found = {}, []

    def visit(u, path):
        state[u] = "open"
        for v in sorted(graph[u]):
            if state.get(v) == "open":
                found.append(path[path.index(v):] + [v])
            elif v not in state:
                visit(v, path + [v])
        state[u] = "done"

    for m in sorted(graph):
        if m not in state:
            visit(m, [m])
    return found


def test_no_import_cycle():
    assert cycles(GRAPH) == []


def test_import_rules():
    for m in MODELS:
        assert GRAPH[m] <= {"common", "kernels"}, (m, GRAPH[m])
    for m, deps in GRAPH.items():
        if m.startswith("ganzoo"):
            assert all(d.startswith("ganzoo") for d in deps), (m, deps)
        if m.startswith("kernels"):
            assert all(d.startswith("kernels") for d in deps), (m, deps)
    assert all(d.startswith("ganzoo") for d in GRAPH["common"])
    for m in FRONT_ENDS:  # thin front ends: the package, and evaluate's model-class lookup by name
        assert all(d.startswith("ganzoo") or d == "evaluate" for d in GRAPH[m]), (m, GRAPH[m])


def test_the_checker_sees_cycles_and_relative_imports():
    """The checker itself, on the old layout's circle (common -> evaluate -> metrics -> common)."""
    assert cycles({"common": {"evaluate"}, "evaluate": {"metrics"}, "metrics": {"common"}, "dcgan": {"common"}}) == [
        ["common", "evaluate", "metrics", "common"]]
    assert _imports("ganzoo.loop", ast.parse("from .data import x\nfrom . import cli\n")) == {
        "ganzoo.data", "ganzoo", "ganzoo.cli"}


def test_no_private_name_across_files():
    short = {m.rpartition(".")[2]: m for m in SOURCES}
    used = []
    for name, tree in SOURCES.items():
        for node in ast.walk(tree):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in short):
                used.append(f"{name}: {node.value.id}.{node.attr}")
            if isinstance(node, ast.ImportFrom) and node.module:
                used += [f"{name}: from {node.module} import {a.name}" for a in node.names
                         if a.name.startswith("_") and not a.name.startswith("__")]
    assert used == []


def test_common_is_small_and_no_function_is_long():
    assert len((ROOT / "common.py").read_text().splitlines()) <= 300
    long = [(f"{name}:{n.name}", n.end_lineno - n.lineno + 1) for name, tree in SOURCES.items()
            if not name.startswith("benchmarks") for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef)) and n.end_lineno - n.lineno + 1 > 90]
    assert long == []


def test_tests_use_public_names_only():
    project = set(SOURCES) | {m.rpartition(".")[2] for m in SOURCES}
    used = []
    for p in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(p.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
                    and isinstance(node.value, ast.Name) and node.value.id in project):
                used.append(f"{p.name}: {node.value.id}.{node.attr}")
    assert used == [], used
