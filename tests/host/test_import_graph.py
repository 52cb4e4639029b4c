"""No import cycle in the host package, nor in the firmware (its `s2l` package with the modules
beside it, main.py and the rest, walked as one folder): every module's imports (at module level and
inside functions, absolute and relative) form a graph without a loop. A lazy import inside a
function hides a cycle from Python, not from a reader, so those count too; so does a `try: import`
that picks a kernel flavour (ikernels.py)."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HOST = ROOT / "host" / "skip2lora"
FIRMWARE = ROOT / "firmware"  # top-level modules (main, field, ...) and the s2l package


def module_names(root_dir, package_name):
    """{dotted module name: its file} for every .py file under root_dir (package_name's folder; with
    package_name "", root_dir is a folder on the import path, its files top-level modules)."""
    root = Path(root_dir)
    names = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        names[".".join(([package_name] if package_name else []) + parts)] = path
    return names


def _package_of(name, path):
    """The package a module's relative imports start from: itself for an __init__.py."""
    return name if path.name == "__init__.py" else name.rpartition(".")[0]


def _imported(node, name, path, modules):
    """The package's modules an import statement names (a `from X import y` names X.y when y is a
    module, else X)."""
    if isinstance(node, ast.Import):
        targets = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:
            package = _package_of(name, path)
            for _ in range(node.level - 1):
                package = package.rpartition(".")[0]
            base = package + ("." + node.module if node.module else "")
        targets = [base + "." + alias.name if base + "." + alias.name in modules else base for alias in node.names]
    return {t for t in targets if t in modules}


def import_graph(root_dir, package_name):
    """{module: the package's modules it imports, anywhere in its body}."""
    modules = module_names(root_dir, package_name)
    graph = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        graph[name] = set().union(*(_imported(node, name, path, modules) for node in ast.walk(tree)
                                    if isinstance(node, (ast.Import, ast.ImportFrom))))
        graph[name].discard(name)
    return graph


def find_cycle(graph):
    """One cycle as [a, b, ..., a], or None (depth-first search, modules in sorted order)."""
    state = {}  # module -> "open" while on the current path, "done" after
    path = []

    def visit(node):
        state[node] = "open"
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return None


@pytest.mark.parametrize("root_dir, package_name", [(HOST, "skip2lora"), (FIRMWARE, "")], ids=["skip2lora", "firmware"])
def test_no_import_cycle(root_dir, package_name):
    cycle = find_cycle(import_graph(root_dir, package_name))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_walker_sees_lazy_and_relative_imports(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from .sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "sub" / "b.py").write_text("def f():\n    from .. import c\n")
    (pkg / "c.py").write_text("import pkg.a\n")
    graph = import_graph(pkg, "pkg")
    assert graph["pkg.a"] == {"pkg.sub.b"} and graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.c"] == {"pkg.a"}
    assert find_cycle(graph) == ["pkg.a", "pkg.sub.b", "pkg.c", "pkg.a"]
    (pkg / "c.py").write_text("")
    assert find_cycle(import_graph(pkg, "pkg")) is None
    # a folder on the import path (package name ""): its files are top-level modules beside the package
    (tmp_path / "top.py").write_text("import pkg.a\n")
    graph = import_graph(tmp_path, "")
    assert graph["top"] == {"pkg.a"} and graph["pkg.a"] == {"pkg.sub.b"}
