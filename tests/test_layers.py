"""The package's architecture, read from the source with `ast`: the layers, no cycles, no private reaches.

Layers, each importing only from itself or those before it:
    base (paths, machine, metrics, config) < data < engine < analysis < app < book < cli
A module never uses another module's `_private` name, module-level imports never form a cycle, a
fer_utils module is never imported inside a function (a late import hides a dependency, or a cycle,
instead of removing it), and validating params never loads torch. Every failure lists each offending
file, line and import, so it says what to change.
"""
from __future__ import annotations

import ast
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

PACKAGE = "fer_utils"
SOURCE = Path(__file__).resolve().parent.parent / PACKAGE
REPO = SOURCE.parent

# first name under fer_utils -> layer; "" is the package itself (its version, and a facade that
# imports app.predict on first use by name: a deliberate dynamic import, like cli's, that ast does not see)
LAYERS = {"": 0, "paths": 0, "machine": 0, "metrics": 0, "config": 0, "data": 1, "engine": 2, "analysis": 3,
          "app": 4, "book": 5, "cli": 6, "__main__": 6}
LAYER_NAMES = ["base", "data", "engine", "analysis", "app", "book", "cli"]


def module_name(path: Path) -> str:
    parts = list(path.relative_to(SOURCE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


FILES = {module_name(p): p for p in sorted(SOURCE.rglob("*.py"))}
MODULES = set(FILES)


def layer(module: str) -> int:
    parts = module.split(".")
    return LAYERS[parts[1] if len(parts) > 1 else ""]


@dataclass(frozen=True)
class Import:
    """One fer_utils module reached by one import statement: `target`, and the `name` taken from it
    (None when the target module itself is bound)."""
    module: str
    line: int
    target: str
    name: str | None
    in_function: bool
    type_checking: bool

    def where(self) -> str:
        return f"{FILES[self.module].relative_to(REPO)}:{self.line}"

    def __str__(self) -> str:
        what = f"{self.name} from {self.target}" if self.name else self.target
        return f"{self.where()} ({self.module}) imports {what}"


def is_private(name: str) -> bool:
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


class Reader(ast.NodeVisitor):
    """A module's imports of fer_utils modules, and the local names bound to those modules."""

    def __init__(self, module: str):
        self.module = module
        self.package = module if FILES[module].name == "__init__.py" else module.rpartition(".")[0]
        self.imports: list[Import] = []
        self.aliases: dict[str, str] = {}  # local name -> fer_utils module
        self.depth = 0  # functions entered
        self.type_checking = 0  # `if TYPE_CHECKING:` blocks entered

    def visit_FunctionDef(self, node):
        self.depth += 1
        self.generic_visit(node)
        self.depth -= 1

    visit_AsyncFunctionDef = visit_FunctionDef
    visit_Lambda = visit_FunctionDef

    def visit_If(self, node):
        guarded = isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"
        self.type_checking += guarded
        for child in node.body:
            self.visit(child)
        self.type_checking -= guarded
        for child in node.orelse:
            self.visit(child)

    def add(self, node, target: str, name: str | None) -> None:
        self.imports.append(Import(self.module, node.lineno, target, name, self.depth > 0, self.type_checking > 0))

    def visit_Import(self, node):
        for alias in node.names:
            if alias.name.split(".")[0] != PACKAGE:
                continue
            self.add(node, alias.name, None)
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:  # `import fer_utils.x.y` binds fer_utils
                self.aliases[PACKAGE] = PACKAGE

    def visit_ImportFrom(self, node):
        if node.level:
            base = self.package.split(".")
            base = base[:len(base) - (node.level - 1)]
            source = ".".join(base + ([node.module] if node.module else []))
        elif node.module and node.module.split(".")[0] == PACKAGE:
            source = node.module
        else:
            return
        for alias in node.names:
            submodule = f"{source}.{alias.name}"
            if submodule in MODULES:  # `from . import faces`: the submodule itself
                self.add(node, submodule, None)
                self.aliases[alias.asname or alias.name] = submodule
            else:
                self.add(node, source, alias.name)


def read(module: str) -> tuple[ast.Module, Reader]:
    tree = ast.parse(FILES[module].read_text(encoding="utf-8"), str(FILES[module]))
    reader = Reader(module)
    reader.visit(tree)
    return tree, reader


PARSED = {m: read(m) for m in sorted(MODULES)}
IMPORTS = [imp for _, reader in PARSED.values() for imp in reader.imports]


def test_the_source_is_found_and_every_module_has_a_layer():
    assert {"fer_utils.paths", "fer_utils.config.params", "fer_utils.engine.train", "fer_utils.cli"} <= MODULES
    unknown = [f"{FILES[m].relative_to(REPO)}" for m in MODULES if m.split(".")[1:2] and
               m.split(".")[1] not in LAYERS]
    assert not unknown, "modules outside every layer (add them to LAYERS): " + ", ".join(unknown)
    assert len(IMPORTS) > 50  # the reader sees the imports (both relative and absolute ones)


def resolve_module(expr: ast.expr, aliases: dict[str, str]) -> str | None:
    """The fer_utils module an expression names (`faces_mod`, `fer_utils.data.images`), else None."""
    if isinstance(expr, ast.Name):
        return aliases.get(expr.id)
    if isinstance(expr, ast.Attribute):
        parent = resolve_module(expr.value, aliases)
        if parent is not None and f"{parent}.{expr.attr}" in MODULES:
            return f"{parent}.{expr.attr}"
    return None


def private_uses(module: str, tree: ast.Module, reader: Reader) -> list[str]:
    """Where `module` takes another module's private name: `from x import _y`, a private module, or
    `x._y` on a name bound to a fer_utils module."""
    found = [str(imp) for imp in reader.imports if imp.name is not None and is_private(imp.name)]
    found += [f"{imp} (a private module)" for imp in reader.imports
              if imp.name is None and any(is_private(part) for part in imp.target.split("."))]
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and is_private(node.attr):
            owner = resolve_module(node.value, reader.aliases)
            if owner is not None and owner != module and resolve_module(node, reader.aliases) is None:
                found.append(f"{FILES[module].relative_to(REPO)}:{node.lineno} ({module}) uses {owner}.{node.attr}")
    return found


def test_no_module_uses_another_modules_private_names():
    found = [use for module, (tree, reader) in PARSED.items() for use in private_uses(module, tree, reader)]
    if found:
        pytest.fail("private names used across modules (make them public, or move the code):\n  " + "\n  ".join(found))


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """One cycle (a list of modules, first == last) per strongly connected component that has one (Tarjan)."""
    index, low, stack, on_stack, components = {}, {}, [], set(), []

    def connect(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1 or v in edges.get(v, ()):
                components.append(component)

    for v in sorted(edges):
        if v not in index:
            connect(v)
    found = []
    for component in components:  # a shortest path back to the start, inside the component
        start = min(component)
        paths, seen = [[start]], {start}
        while paths:
            path = paths.pop(0)
            nxt = sorted(w for w in edges[path[-1]] if w in component)
            if start in nxt:
                found.append(path + [start])
                break
            for w in nxt:
                if w not in seen:
                    seen.add(w)
                    paths.append(path + [w])
    return found


def test_module_level_imports_form_no_cycle():
    runtime = [imp for imp in IMPORTS if not imp.in_function and not imp.type_checking and imp.target != imp.module]
    edges: dict[str, set[str]] = {}
    for imp in runtime:
        edges.setdefault(imp.module, set()).add(imp.target)
    messages = []
    for cycle in cycles(edges):
        steps = [next(str(imp) for imp in runtime if (imp.module, imp.target) == pair)
                 for pair in zip(cycle, cycle[1:])]
        messages.append(" -> ".join(cycle) + ":\n    " + "\n    ".join(steps))
    if messages:
        pytest.fail("import cycles among fer_utils modules:\n  " + "\n  ".join(messages))


def test_every_import_respects_the_layers():
    upward = [f"{imp} ({LAYER_NAMES[layer(imp.module)]} may not import {LAYER_NAMES[layer(imp.target)]})"
              for imp in IMPORTS if layer(imp.target) > layer(imp.module)]
    if upward:
        pytest.fail("imports of a higher layer (base < data < engine < analysis < app < book < cli):\n  "
                    + "\n  ".join(upward))


def test_no_fer_utils_module_is_imported_inside_a_function():
    late = [str(imp) for imp in IMPORTS if imp.in_function]
    if late:
        pytest.fail("function-level imports of fer_utils modules (import at the top of the module):\n  "
                    + "\n  ".join(late))


def test_the_checks_catch_what_they_look_for(monkeypatch):
    """The reader and the cycle finder on a made-up module: the checks above can fail."""
    fake = SOURCE / "data" / "fake.py"  # never written: only its name is used to place the module
    monkeypatch.setitem(FILES, "fer_utils.data.fake", fake)
    reader = Reader("fer_utils.data.fake")
    tree = ast.parse("from ..app import predict as p\nfrom .images import _private\nimport fer_utils.engine.models\n"
                     "def f():\n    from ..engine import train\n    return p._hidden, fer_utils.engine.models._cnn\n")
    reader.visit(tree)
    got = {(imp.target, imp.name, imp.in_function) for imp in reader.imports}
    assert got == {("fer_utils.app.predict", None, False), ("fer_utils.data.images", "_private", False),
                   ("fer_utils.engine.models", None, False), ("fer_utils.engine.train", None, True)}
    assert layer("fer_utils.app.predict") > layer("fer_utils.data.fake")
    assert reader.aliases["p"] == "fer_utils.app.predict"
    uses = private_uses("fer_utils.data.fake", tree, reader)
    assert [use.split(" ", 1)[1] for use in uses] == [
        "(fer_utils.data.fake) imports _private from fer_utils.data.images",
        "(fer_utils.data.fake) uses fer_utils.app.predict._hidden",
        "(fer_utils.data.fake) uses fer_utils.engine.models._cnn"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_resolving_params_does_not_import_torch():
    code = ("import sys\nfrom fer_utils.config.params import resolve\nresolve('params/default.yaml')\n"
            "heavy = sorted(m for m in ('torch', 'torchvision', 'cv2', 'pandas') if m in sys.modules)\n"
            "print(','.join(heavy))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(REPO)})
    assert proc.returncode == 0, proc.stderr
    assert "torch" not in proc.stdout.strip().split(","), \
        f"resolving params imported torch (loaded: {proc.stdout.strip()}); find the module-level import chain"
