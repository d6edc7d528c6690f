"""Import structure: the model package imports point one way, never reach the tools or training code, and the files
shipped to the Hub are closed under their imports and load on their own."""

from __future__ import annotations

import ast
import shutil
from pathlib import Path

import pytest
from helpers.python_subprocess import run_python

from modeling_svitt.remote_code import MODEL_SOURCES

ROOT = Path(__file__).resolve().parents[1]
MODEL_PACKAGE = ROOT / "modeling_svitt"
TOOLS_PACKAGE = ROOT / "svitt_tools"


def _is_main_block(node: ast.AST) -> bool:
    """`if __name__ == "__main__":`: runs only when the file is executed as a command, never on import."""
    if not isinstance(node, ast.If) or not isinstance(node.test, ast.Compare):
        return False
    test = node.test
    return (
        isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and len(test.comparators) == 1
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def imports_of(path: Path, package: str) -> set[str]:
    """Every module `path` imports, at module level, inside functions or under `TYPE_CHECKING`, as dotted names
    (relative imports resolved against `package`); `__main__` blocks are left out."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if _is_main_block(child):
                continue
            if isinstance(child, ast.Import):
                found.update(alias.name for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = f"{package}.{child.module}" if child.level else child.module
                if child.level and child.module is None:  # `from . import x`: the modules named
                    found.update(f"{package}.{alias.name}" for alias in child.names)
                else:
                    found.add(base)
                    # `from modeling_svitt import losses` names a module too
                    found.update(f"{base}.{alias.name}" for alias in child.names)
            visit(child)

    visit(ast.parse(path.read_text(), filename=str(path)))
    return found


def package_graph(folder: Path) -> dict[str, set[str]]:
    """Edges between the modules of one package (`__init__` is the package itself)."""
    package = folder.name
    modules = {path.stem: path for path in folder.glob("*.py")}
    names = {f"{package}.{stem}" if stem != "__init__" else package for stem in modules}
    graph = {}
    for stem, path in modules.items():
        name = f"{package}.{stem}" if stem != "__init__" else package
        graph[name] = {target for target in imports_of(path, package) if target in names and target != name}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle of `graph` as a path that ends where it starts, or None. The package initialiser imports
    its modules by design; a circle through it is one where a module imports the package."""
    visiting, done = [], set()

    def walk(node: str) -> list[str] | None:
        if node in visiting:
            return visiting[visiting.index(node) :] + [node]
        if node in done:
            return None
        visiting.append(node)
        for target in sorted(graph.get(node, ())):
            cycle = walk(target)
            if cycle:
                return cycle
        visiting.pop()
        done.add(node)
        return None

    for start in sorted(graph):
        cycle = walk(start)
        if cycle:
            return cycle
    return None


def test_the_cycle_finder_finds_circles_through_functions(tmp_path):
    package = tmp_path / "circle"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "low.py").write_text("def late():\n    from .high import x\n")
    (package / "high.py").write_text("from .low import late\nx = 1\n")
    assert find_cycle(package_graph(package)) == ["circle.high", "circle.low", "circle.high"]
    (package / "low.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from . import high\n")
    assert find_cycle(package_graph(package)) == ["circle.high", "circle.low", "circle.high"]
    (package / "low.py").write_text('if __name__ == "__main__":\n    from .high import x\n')
    assert find_cycle(package_graph(package)) is None


@pytest.mark.parametrize("folder", [MODEL_PACKAGE, TOOLS_PACKAGE], ids=lambda folder: folder.name)
def test_no_import_circles(folder):
    assert find_cycle(package_graph(folder)) is None


def test_the_model_package_imports_neither_the_tools_nor_training():
    for path in sorted(MODEL_PACKAGE.glob("*.py")):
        imported = imports_of(path, "modeling_svitt")
        outside = {name for name in imported if name.split(".")[0] in ("svitt_tools", "training")}
        assert not outside, f"modeling_svitt/{path.name} imports {sorted(outside)}"
    for path in sorted(TOOLS_PACKAGE.glob("*.py")):
        assert not {name for name in imports_of(path, "svitt_tools") if name.split(".")[0] == "training"}, path.name


def test_the_shipped_files_are_closed_under_their_imports():
    assert set(MODEL_SOURCES) <= {path.name for path in MODEL_PACKAGE.glob("*.py")}
    assert "__init__.py" not in MODEL_SOURCES
    for name in MODEL_SOURCES:
        imported = imports_of(MODEL_PACKAGE / name, "modeling_svitt")
        ours = {module.split(".")[1] for module in imported if module.startswith("modeling_svitt.")}
        missing = {f"{module}.py" for module in ours} - set(MODEL_SOURCES)
        assert not missing, f"{name} imports {sorted(missing)}, which is not in remote_code.MODEL_SOURCES"
        # remote code is loaded as a flat folder of modules: only relative imports reach the other files
        tree = ast.parse((MODEL_PACKAGE / name).read_text())
        absolute = [node.lineno for node in ast.walk(tree) if _names_us(node)]
        assert not absolute, f"{name} imports modeling_svitt by name (lines {absolute}); shipped files import relatively"


def _names_us(node: ast.AST) -> bool:
    if isinstance(node, ast.ImportFrom):
        return not node.level and node.module.split(".")[0] == "modeling_svitt"
    return isinstance(node, ast.Import) and any(alias.name.split(".")[0] == "modeling_svitt" for alias in node.names)


def test_every_shipped_module_imports_from_the_shipped_files_alone(tmp_path):
    shipped = tmp_path / "shipped"
    shipped.mkdir()
    for name in MODEL_SOURCES:
        shutil.copyfile(MODEL_PACKAGE / name, shipped / name)
    (shipped / "__init__.py").write_text("")
    modules = sorted(name.removesuffix(".py") for name in MODEL_SOURCES)
    script = f"""
        import importlib, sys
        sys.path.insert(0, {str(tmp_path)!r})
        for module in {modules!r}:
            importlib.import_module("shipped." + module)
        print("imported", len({modules!r}))
    """
    result = run_python(script, env={}, cwd=tmp_path, with_package=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == f"imported {len(modules)}"
