"""The package's import graph: every import counted, at the top of a module or inside a function, relative or
absolute, and `import_module` by name. It has no cycle, and each module imports only from the layers below it."""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "storyteller"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported(path: Path, modules: set[str] | None = None) -> set[str]:
    """The storyteller modules a file imports, wherever the import stands. `from package import name` counts as an
    import of the submodule `package.name` where there is one, else of the package itself (its `__init__`)."""
    modules = set(MODULES) if modules is None else modules
    tree, here = ast.parse(path.read_text(encoding="utf-8")), module_name(path).split(".")
    package = here if path.name == "__init__.py" else here[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package[:len(package) - node.level + 1] + ([base] if base else []))
            found |= {f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names}
        elif isinstance(node, ast.Call) and getattr(node.func, "id", getattr(node.func, "attr", "")) == "import_module":
            found |= {a.value for a in node.args if isinstance(a, ast.Constant) and isinstance(a.value, str)}
    return found


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py") if p.name != "_modidx.py"}
GRAPH = {name: {m for m in imported(path) if m in MODULES and m != name} for name, path in MODULES.items()}


LAYERS = [  # bottom to top: a module may import its own layer's modules and those of the layers below it
    ("checks",), ("core",), ("world.",), ("models.",), ("recipes",), ("integration.",), ("story", "app", "cli"), ("",),
]


def layer(module: str) -> int:
    name = module.removeprefix("storyteller").removeprefix(".")
    return next(i for i, prefixes in enumerate(LAYERS)
                if any(name == p or (p.endswith(".") and name.startswith(p)) for p in prefixes))


def test_the_import_graph_has_no_cycle():
    done, active = set(), []

    def visit(module: str) -> None:
        if module in active:
            raise AssertionError("import cycle: " + " -> ".join(active[active.index(module):] + [module]))
        if module not in done:
            active.append(module)
            for target in sorted(GRAPH[module]):
                visit(target)
            active.pop()
            done.add(module)
    for module in sorted(GRAPH):
        visit(module)


@pytest.mark.parametrize("module", sorted(GRAPH))
def test_each_module_imports_only_from_its_layer_and_below(module):
    upward = sorted(m for m in GRAPH[module] if layer(m) > layer(module))
    assert not upward, f"{module} (layer {layer(module)}) imports from layers above it: {upward}"


def test_the_walk_sees_every_kind_of_import(tmp_path, monkeypatch):
    """Imports inside functions, relative ones and `import_module` by name are all edges of the graph, and so is a
    name taken from the package itself (its `__init__`, the top layer)."""
    source = tmp_path / "storyteller" / "models" / "probe.py"
    source.parent.mkdir(parents=True)
    source.write_text("from ..core import fit\n"
                      "def f():\n    from storyteller.recipes import get_recipe\n"
                      "    return import_module('storyteller.app')\n"
                      "from storyteller import load_shipped\nfrom storyteller import lora\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", tmp_path / "storyteller")
    assert imported(source, {"storyteller", "storyteller.lora"}) == {
        "storyteller.core", "storyteller.recipes", "storyteller.app", "storyteller", "storyteller.lora"}


@pytest.mark.parametrize("module", ["storyteller.checks", "storyteller.world.scenes", "storyteller.world.text",
                                    "storyteller.story"])
def test_modules_that_need_no_tensors_load_no_deep_learning_framework(module):
    import subprocess
    import sys

    check = f"import sys, {module}; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    assert subprocess.run([sys.executable, "-c", check], capture_output=True, text=True, check=True).stdout.strip() == "[]"
