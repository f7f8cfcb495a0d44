"""The layering of the code base, checked by parsing every import (also the ones inside functions).

    common  ←  losses  ←  data  ←  models  ←  engine  ←  preprocess, benchmarks, tools, entry points

``common`` imports no project package; ``losses`` only ``common``; ``data`` only ``common`` and names no
method; ``models`` may use ``common``, ``losses`` and ``data`` but never ``engine`` or ``preprocess``;
``engine`` never imports ``preprocess``, ``benchmarks`` or ``tools``, and finds no method hook with
``hasattr``. The project stands alone: no file cites a document outside the repository or a path of a
development machine.
"""

from __future__ import annotations

import ast
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("common", "losses", "data", "models", "engine", "preprocess", "benchmarks", "tools")
ENTRY_POINTS = ("train", "evaluate", "export", "predict", "benchmark", "visualize")
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
