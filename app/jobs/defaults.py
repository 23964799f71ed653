"""The engine's defaults, read without importing it.

The API must run where torch is not installed, and worker/trainer.py and worker/model.py import
torch; yet the defaults must come from the engine's own dataclasses (TrainConfig, ModelConfig), never
from a copy that drifts. So the class bodies are read as source and their literal defaults evaluated.
"""

from __future__ import annotations

import ast
import contextlib
from functools import lru_cache
from pathlib import Path

WORKER = Path(__file__).resolve().parents[2] / "worker"


def _literal_defaults(path: Path, class_name: str) -> dict:
    tree = ast.parse(path.read_text())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and node.name == class_name:
            out = {}
            for item in node.body:
                if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is not None:
                    # A default that is not a literal (a factory) is left to the engine.
                    with contextlib.suppress(ValueError):
                        out[item.target.id] = ast.literal_eval(item.value)
            return out
    raise RuntimeError(f"{class_name} not found in {path}")


@lru_cache
def train_defaults() -> dict:
    return _literal_defaults(WORKER / "trainer.py", "TrainConfig")


@lru_cache
def model_defaults() -> dict:
    return _literal_defaults(WORKER / "model.py", "ModelConfig")
