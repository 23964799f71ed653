"""The folders show the dependencies: the engine is pure torch, the API never reaches the worker.

    app/             the API; imports only the engine's torch-free modules (TORCH_FREE: defaults, rules, the
                     sampling contract, checkpoint headers)
    worker/engine/   pure torch: imports nothing of app/ or worker/service/
    worker/service/  the worker process: the one place that imports both app/ and the engine
    worker/cli.py    the `charrnn` entry point: the API's, the engine's and the worker's commands

The user's problems are EngineErrors (worker/engine/errors.py), raised and caught by name; a ValueError
is raised and caught only where named below, so that a bug's ValueError never passes for the user's mistake.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.harness import ROOT


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
    "worker.engine.config": {"__future__", "dataclasses", "typing", "worker.engine.errors", "worker.engine.settings"},
    # each setting's one definition (type, default, bounds, help) and the faces derived from it
    "worker.engine.settings": {"__future__", "dataclasses", "functools", "types", "typing", "pydantic",
                               "pydantic.fields", "worker.engine.errors"},
    # the user's errors: the engine raises them, the CLI and the worker catch them by name
    "worker.engine.errors": {"__future__"},
    "worker.engine.sampling_params": {"__future__", "typing", "pydantic"},  # the one generation contract
    "worker.engine.header": {"__future__", "json", "struct", "pathlib"},  # checkpoint metadata, read by both
    # the records that cross process boundaries: the worker builds them, the API stores them
    "worker.engine.records": {"__future__", "pydantic"},
    # the model fields a job may leave to the worker, and the rule it chooses them by
    "worker.engine.autoconfig": {"__future__", "math", "collections.abc", "dataclasses", "worker.engine.config"},
    # the reference losses of a corpus's split: computed at upload (the API) and for a job's own split
    "worker.engine.references": {"__future__", "math", "collections", "collections.abc", "dataclasses",
                                 "itertools", "pathlib", "worker.engine.config"},
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


# -- no import cycles -----------------------------------------------------------------------------------


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, packages: tuple[str, ...]) -> dict[str, set[str]]:
    """Module -> the modules of `packages` it imports (anywhere in it: a function-level import counts,
    and so does one under TYPE_CHECKING). `from a import b` names module a.b when that is a module."""
    paths = {module_name(p, root): p for package in packages for p in sorted((root / package).rglob("*.py"))}
    graph = {}
    for name, path in paths.items():
        edges = set()
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                    base = ".".join(anchor + ([base] if base else []))
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in paths else base for alias in node.names]
            else:
                continue
            edges.update(t for t in targets if t in paths and t != name)
        graph[name] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), each as a sorted list."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return cycles


def test_app_and_worker_have_no_import_cycles():
    cycles = find_cycles(import_graph(ROOT, ("app", "worker")))
    assert not cycles, f"import cycles (each module list imports itself, round the loop): {cycles}"


def test_the_cycle_detector_finds_a_planted_cycle(tmp_path):
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg.sub import b\n")
    (pkg / "sub" / "b.py").write_text("def f():\n    from ..c import g\n")  # a function-level, relative import
    (pkg / "c.py").write_text("import pkg.a\n")
    (pkg / "d.py").write_text("from pkg import a\n")  # imports into the cycle, is not part of it
    graph = import_graph(tmp_path, ("pkg",))
    assert graph["pkg.sub.b"] == {"pkg.c"} and graph["pkg.d"] == {"pkg.a"}
    assert find_cycles(graph) == [["pkg.a", "pkg.c", "pkg.sub.b"]]
    (pkg / "c.py").write_text("")
    assert find_cycles(import_graph(tmp_path, ("pkg",))) == []


# -- the user's errors are caught by name ---------------------------------------------------------------

# Where worker/ may catch a ValueError, and why: each is the parse of a file or a name that it skips or
# rewords, never the engine's answer to a user (an EngineError, not a ValueError).
VALUE_ERROR_CATCHES = {
    "worker/cli.py": "importlib's find_spec on a broken install: as good as a missing package",
    "worker/service/exits.py": "a death by a signal number that has no name",
    "worker/service/journal.py": "a metrics journal line cut short by a full disk",
    "worker/service/supervisor.py": "a checkpoint file whose metadata holds no record: not listed",
}
# Where worker/engine may raise a ValueError, and why: none of them reaches a user as it is.
VALUE_ERROR_RAISES = {
    "worker/engine/batching.py": "a caller's bug (the server routes by seed, and SamplingParams bounds num_samples)",
    "worker/engine/header.py": "not a safetensors file: load_model answers it as a CheckpointError",
    "worker/engine/records.py": "a checkpoint file's metadata without a record: the supervisor skips the file",
}


def value_error_sites(path: Path) -> tuple[bool, bool]:
    """Whether `path` catches ValueError (alone or in a tuple), and whether it raises one."""
    catches = raises = False
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.ExceptHandler) and node.type is not None:
            catches |= any(isinstance(n, ast.Name) and n.id == "ValueError" for n in ast.walk(node.type))
        elif isinstance(node, ast.Raise) and node.exc is not None:
            exc = node.exc.func if isinstance(node.exc, ast.Call) else node.exc
            raises |= isinstance(exc, ast.Name) and exc.id == "ValueError"
    return catches, raises


def test_value_errors_are_caught_and_raised_only_where_named():
    sites = {str(path.relative_to(ROOT)): value_error_sites(path) for path in modules_under("worker")}
    assert {path for path, (catches, _) in sites.items() if catches} == set(VALUE_ERROR_CATCHES)
    assert {path for path, (_, raises) in sites.items() if raises} == set(VALUE_ERROR_RAISES)


def test_the_value_error_check_sees_a_catch_and_a_raise(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("try:\n    pass\nexcept (OSError, ValueError):\n    raise ValueError('x')\n")
    assert value_error_sites(bad) == (True, True)
    bad.write_text("try:\n    pass\nexcept EngineError:\n    raise ConfigError('x')\n")
    assert value_error_sites(bad) == (False, False)
