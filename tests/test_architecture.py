"""The layering of the code base, checked by parsing every import (also the ones inside functions).

    common  ←  losses  ←  data  ←  models  ←  engine  ←  preprocess, benchmarks, tools, entry points

``common`` imports no project package; ``losses`` only ``common``; ``data`` only ``common`` and names no
method; ``models`` may use ``common``, ``losses`` and ``data`` but never ``engine`` or ``preprocess``;
``engine`` never imports ``preprocess``, ``benchmarks`` or ``tools``, finds no method hook with
``hasattr``, and its classes set every attribute in ``__init__`` (none exists only after an earlier call). No
module imports itself back through others (an import circle, also through an import inside a function). The
project stands alone: no file cites a document outside the repository or a path of a development machine.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "losses", "data", "models", "engine", "preprocess", "benchmarks", "tools")
# Entry points and the Python API beside them (fer_api composes engine/ with preprocess/): no package imports these.
ENTRY_POINTS = ("train", "evaluate", "export", "predict", "benchmark", "visualize", "fer_api")
ALLOWED = {
    "common": {"common"},
    "losses": {"common", "losses"},
    "data": {"common", "data"},
    "models": {"common", "losses", "data", "models"},
    "engine": {"common", "losses", "data", "models", "engine"},
    "preprocess": {"common", "losses", "data", "models", "engine", "preprocess"},
    "benchmarks": {"common", "losses", "data", "models", "engine", "preprocess", "benchmarks"},
    "tools": {"common", "losses", "data", "models", "engine", "tools"},
}


def project_imports(path: Path) -> list[tuple[int, str]]:
    """(line, top-level project package) of every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names = [node.module]
        for name in names:
            top = name.split(".")[0]
            if top in PACKAGES or top in ENTRY_POINTS:
                found.append((node.lineno, top))
    return found


def layer_violations(root: Path = ROOT) -> list[str]:
    out = []
    for package, allowed in ALLOWED.items():
        for path in sorted((root / package).rglob("*.py")):
            for line, top in project_imports(path):
                if top not in allowed:
                    out.append(f"{path.relative_to(root)}:{line} imports {top}")
    return out


def test_every_import_respects_the_layers():
    assert layer_violations() == []


def test_the_layer_check_catches_an_upward_import(tmp_path):
    """The checker itself: each of the upward imports the code base once had is reported."""
    for package, line in (("models", "from engine.data import MethodData"), ("models", "import engine.uncertainty"),
                          ("engine", "from preprocess.synthetic import ensure_synthetic"),
                          ("data", "from models.registry import get_method"),
                          ("losses", "    from data.pipeline import normalize")):
        (tmp_path / package).mkdir(exist_ok=True)
        body = f"def f():\n{line}\n" if line.startswith(" ") else line + "\n"
        (tmp_path / package / "bad.py").write_text(body)
        assert any(f"{package}/bad.py" in v for v in layer_violations(tmp_path)), line
        (tmp_path / package / "bad.py").unlink()


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    """``{module: project modules it imports}`` (dotted names; every import, also inside functions).

    ``from a.b import c`` points at ``a.b.c`` when that is a module, else at ``a.b``."""
    files = [p for package in PACKAGES for p in sorted((root / package).rglob("*.py"))] + sorted(root.glob("*.py"))
    modules = {_module_name(p, root): p for p in files}
    graph = {}
    for module, path in modules.items():
        targets = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                         for alias in node.names]
            else:
                continue
            targets.update(name for name in names if name in modules and name != module)
        graph[module] = targets
    return graph


def import_circles(root: Path = ROOT) -> list[list[str]]:
    """The modules that import each other, directly or through others (strongly connected components of
    the import graph with more than one module; Tarjan's algorithm, iterative)."""
    graph = import_graph(root)
    index, low, stack, on_stack, circles = {}, {}, [], set(), []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    circles.append(sorted(component))
    return sorted(circles)


def test_no_import_circle():
    assert import_circles() == []


def test_the_circle_check_catches_circles(tmp_path):
    """The checker itself: a two-module circle through a function-level import, a three-module circle through
    ``from package import module``, and none for a chain."""
    (tmp_path / "models").mkdir()
    (tmp_path / "engine").mkdir()
    (tmp_path / "models" / "a.py").write_text("from models.b import f\n")
    (tmp_path / "models" / "b.py").write_text("def f():\n    from models import a\n")
    (tmp_path / "engine" / "x.py").write_text("import engine.y\n")
    (tmp_path / "engine" / "y.py").write_text("from engine import z\n")
    (tmp_path / "engine" / "z.py").write_text("from models.a import f\n")
    assert import_circles(tmp_path) == [["models.a", "models.b"]]
    (tmp_path / "engine" / "z.py").write_text("def g():\n    from engine.x import h\n")
    assert import_circles(tmp_path) == [["engine.x", "engine.y", "engine.z"], ["models.a", "models.b"]]
    (tmp_path / "models" / "b.py").write_text("def f():\n    pass\n")
    assert import_circles(tmp_path) == [["engine.x", "engine.y", "engine.z"]]


def test_tests_share_helpers_through_the_helpers_modules():
    """Tests import shared helpers from ``helpers`` / ``helpers_cli``, never from ``conftest`` (fixtures only)
    and never ``from test_x import helper`` (every import, also inside functions). A plain ``import test_x``
    that only inspects another test module (the catalogue counting its cases) is allowed."""
    hits = []
    for path in sorted((ROOT / "tests").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                hits += [f"tests/{path.name}:{node.lineno} imports {a.name}" for a in node.names
                         if a.name.split(".")[0] == "conftest"]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                top = node.module.split(".")[0]
                if top == "conftest" or top.startswith("test_"):
                    hits.append(f"tests/{path.name}:{node.lineno} imports from {node.module}")
    assert hits == []


def test_data_names_no_method():
    from models.registry import method_names

    names = set(method_names())
    for path in sorted((ROOT / "data").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Constant) and isinstance(node.value, str):
                assert node.value not in names, f"{path.relative_to(ROOT)}:{node.lineno} names method {node.value!r}"


def test_engine_looks_up_no_hook_with_hasattr():
    from models.base import FERModel

    hooks = {name for name in dir(FERModel) if not name.startswith("__")}
    for path in sorted((ROOT / "engine").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("hasattr", "getattr")
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)):
                assert node.args[1].value not in hooks, f"{path.relative_to(ROOT)}:{node.lineno} looks up hook {node.args[1].value!r}"


def late_attributes(root: Path = ROOT) -> list[str]:
    """Attributes an engine class sets on ``self`` outside ``__init__`` (and its class body): state that exists
    only after an earlier call, which a later method then has to look up with ``getattr(self, ..., default)``."""
    out = []
    for path in sorted((root / "engine").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for cls in (node for node in ast.walk(tree) if isinstance(node, ast.ClassDef)):
            methods = [node for node in cls.body if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))]

            def assigned(function):
                return [node for node in ast.walk(function) if isinstance(node, ast.Attribute)
                        and isinstance(node.ctx, ast.Store) and isinstance(node.value, ast.Name) and node.value.id == "self"]

            declared = {node.attr for m in methods if m.name == "__init__" for node in assigned(m)}
            declared |= {target.id for node in cls.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                         for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                         if isinstance(target, ast.Name)}
            out += [f"{path.relative_to(root)}:{node.lineno} {cls.name}.{m.name} sets self.{node.attr}"
                    for m in methods if m.name != "__init__" for node in assigned(m) if node.attr not in declared]
    return out


def test_engine_classes_set_their_attributes_in_init():
    assert late_attributes() == []
    late_reads = [f"{p.relative_to(ROOT)}:{i}" for p in sorted((ROOT / "engine").rglob("*.py"))
                  for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if "getattr(self" in line]
    assert late_reads == []


def test_the_late_attribute_check_catches_one(tmp_path):
    """The checker itself: the Trainer once set ``steps_per_epoch`` in ``build`` and ``_callbacks`` in ``_fit``."""
    (tmp_path / "engine").mkdir()
    (tmp_path / "engine" / "old.py").write_text(
        "class Trainer:\n    def __init__(self):\n        self.model = None\n\n"
        "    def build(self):\n        self.model = 1\n        self.steps_per_epoch = 2\n\n"
        "    def _fit(self):\n        self._callbacks = {}\n")
    assert late_attributes(tmp_path) == ["engine/old.py:7 Trainer.build sets self.steps_per_epoch",
                                         "engine/old.py:10 Trainer._fit sets self._callbacks"]


def _tracked(*patterns) -> list[Path]:
    try:
        listed = subprocess.run(["git", "ls-files", *patterns], cwd=ROOT, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    return [ROOT / line for line in listed.stdout.splitlines() if (ROOT / line).is_file()]


# The needles are assembled from parts so that this file does not contain them itself (and is checked too).
NEEDLES = ["reference " + "§", "shared/" + "reference", *("/" + d + "/" for d in ("work", "root", "home", "Users"))]


@pytest.mark.parametrize("needle", NEEDLES)
def test_no_file_cites_outside_documents_or_machine_paths(needle):
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _tracked("*.py", "*.md", "*.txt", "*.json")
            for i, line in enumerate(p.read_text(encoding="utf-8", errors="replace").splitlines(), 1) if needle in line]
    assert hits == [], f"{needle!r} in {hits[:10]}"


def test_docs_speak_of_the_project_not_of_work_sessions():
    import re

    pattern = re.compile(r"\b(first|second|third|fourth|fifth|this|last|next|previous|earlier|later) session", re.I)
    hits = [f"{p.relative_to(ROOT)}:{i}" for p in _tracked("*.md")
            for i, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if pattern.search(line)]
    assert hits == []
