"""The shape of the code: imports between runner's packages only point down; errors live in one module."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import jobs
import runner

ROOT = Path(__file__).resolve().parent.parent
#: runner's parts, lowest first; a part may import only from its own and lower rows (and from jobs/).
LAYERS: list[set[str]] = [
    {"fal", "ledger", "embedded"},
    {"settings"},
    {"simulator"},
    {"steps"},
    {"batches"},
    {"schedules", "web"},
    {"tasks"},
    {"cli", "__main__"},
]
LEVEL = {part: level for level, parts in enumerate(LAYERS) for part in parts}


def runner_imports() -> list[tuple[str, str, int]]:
    """(importing part, imported part, line) for every import of one runner part in another."""
    found = []
    for path in sorted((ROOT / "runner").rglob("*.py")):
        part = path.relative_to(ROOT / "runner").parts[0].removesuffix(".py")
        if part == "__init__":
            continue
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            names: list[str] = []
            if isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            for name in names:
                pieces = name.split(".")
                if pieces[0] == "runner" and len(pieces) > 1 and pieces[1] in LEVEL and pieces[1] != part:
                    found.append((f"{path.relative_to(ROOT)}", pieces[1], node.lineno))
    return found


def test_every_part_of_runner_has_a_layer() -> None:
    parts = {p.stem if p.is_file() else p.name for p in (ROOT / "runner").iterdir()
             if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").is_file())}  # fmt: skip
    assert parts == set(LEVEL)


def test_imports_only_point_down() -> None:
    upward = []
    for where, imported, line in runner_imports():
        part = Path(where).relative_to("runner").parts[0].removesuffix(".py")
        if LEVEL[imported] > LEVEL[part]:
            upward.append(f"{where}:{line} imports runner.{imported}")
    assert runner_imports(), "the check sees imports"
    assert upward == []


def test_jobs_never_imports_runner() -> None:
    for path in (ROOT / "jobs").rglob("*.py"):
        text = path.read_text()
        assert "import runner" not in text and "from runner" not in text, path


def test_every_error_class_is_in_jobs_errors() -> None:
    defined = []
    for package in (jobs, runner):
        for module in pkgutil.walk_packages(package.__path__, f"{package.__name__}."):
            if module.name.endswith("__main__"):
                continue
            loaded = importlib.import_module(module.name)
            for name, value in vars(loaded).items():
                if (isinstance(value, type) and issubclass(value, Exception) and value.__module__ == module.name
                        and not name.startswith("_")):  # fmt: skip
                    defined.append(f"{module.name}.{name}")
    assert defined, "the check sees classes"
    assert {d.rpartition(".")[0] for d in defined} == {"jobs.errors"}, defined


def test_importing_the_tasks_module_builds_no_celery_app() -> None:
    code = (
        "import celery._state, runner.tasks, runner.cli;"
        "print(len(list(celery._state._get_active_apps())));"
        "runner.tasks.app;"
        "print(len(list(celery._state._get_active_apps())))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["0", "1"], "none at import; one when `celery -A runner.tasks` asks for `app`"


@pytest.mark.parametrize("module", ["runner.tasks", "runner.cli"])
def test_modules_import_on_their_own(module: str) -> None:
    done = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True, cwd=ROOT,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr
