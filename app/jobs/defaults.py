"""The engine's defaults, from the engine's own dataclasses.

worker/engine/config.py imports nothing heavy (no torch), so the API reads the defaults from the very
classes the trainer uses: there is no copy to drift.
"""

from __future__ import annotations

from functools import lru_cache

from worker.engine.autoconfig import AUTO_MODEL_FIELDS
from worker.engine.config import ModelConfig, TrainConfig
from worker.engine.settings import Setting, settings_of


@lru_cache
def train_defaults() -> dict:
    return TrainConfig().to_dict()


@lru_cache
def model_defaults() -> dict:
    """None for the fields the engine chooses for the job's budget and corpus when they are left out
    (autoconfig.py: the worker measures its speed first, so it decides when the job starts)."""
    return {s.name: None if s.name in AUTO_MODEL_FIELDS else s.default for s in settings_of(ModelConfig)}


def _form_field(s: Setting) -> dict:
    out = {"type": "choice" if s.choices else s.type.__name__, "help": s.help}
    if s.choices:
        out["choices"] = list(s.choices)
    out.update({bound: getattr(s, bound) for bound in ("ge", "gt", "le", "lt") if getattr(s, bound) is not None})
    return out


@lru_cache
def form_fields(training_fields: tuple[str, ...]) -> dict:
    """Each job setting as a form draws it, from its one definition: its type (int, float, or a choice
    among `choices`), its bounds (ge, gt, le, lt) and its help. `training_fields`: those a job may set."""
    return {
        "model": {s.name: _form_field(s) for s in settings_of(ModelConfig)},
        "training": {s.name: _form_field(s) for s in settings_of(TrainConfig) if s.name in training_fields},
    }
