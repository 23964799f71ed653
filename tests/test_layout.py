"""The folders show the dependencies: the engine is pure torch, the API never reaches the worker.

    app/             the API; imports only the engine's torch-free modules (TORCH_FREE: defaults, rules, the
                     sampling contract, checkpoint headers)
    worker/engine/   pure torch: imports nothing of app/ or worker/service/
    worker/service/  the worker process: the one place that imports both app/ and the engine
    worker/cli.py    the `charrnn` entry point: the API's, the engine's and the worker's commands
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.conftest import ROOT


def imported_modules(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def modules_under(folder: str) -> list[Path]:
    return sorted((ROOT / folder).rglob("*.py"))


@pytest.mark.parametrize("path", modules_under("worker/engine"), ids=lambda p: p.name)
def test_the_engine_imports_neither_the_api_nor_the_worker_service(path):
    bad = {m for m in imported_modules(path) if m.split(".")[0] == "app" or m.startswith("worker.service")}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}: the engine must run with no database"


# The engine modules the API may import, and all that each of them may import in turn.
TORCH_FREE = {
    "worker.engine.config": {"__future__", "dataclasses", "typing"},
    "worker.engine.sampling_params": {"__future__", "typing", "pydantic"},  # the one generation contract
    "worker.engine.header": {"__future__", "json", "struct", "pathlib"},  # checkpoint metadata, read by both
    # the model fields a job may leave to the worker, and the rule it chooses them by
    "worker.engine.autoconfig": {"__future__", "math", "collections.abc", "dataclasses", "worker.engine.config"},
}


@pytest.mark.parametrize("path", modules_under("app"), ids=lambda p: str(p.relative_to(ROOT)))
def test_the_api_imports_only_the_engines_torch_free_modules(path):
    bad = {m for m in imported_modules(path) if m.split(".")[0] in ("worker", "torch") and m not in TORCH_FREE}
    assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


@pytest.mark.parametrize("module", sorted(TORCH_FREE))
def test_the_engines_torch_free_modules_import_nothing_heavy(module):
    path = ROOT / (module.replace(".", "/") + ".py")
    assert imported_modules(path) <= TORCH_FREE[module]


def test_the_layout_test_sees_a_violation(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("from app.db import session_scope\nimport worker.service.runner\n")
    assert imported_modules(bad) == {"app.db", "worker.service.runner"}
