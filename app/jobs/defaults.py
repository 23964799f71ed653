"""The engine's defaults, from the engine's own dataclasses.

worker/engine/config.py imports nothing heavy (no torch), so the API reads the defaults from the very
classes the trainer uses: there is no copy to drift.
"""

from __future__ import annotations

from functools import lru_cache

from worker.engine.autoconfig import AUTO_MODEL_FIELDS
from worker.engine.config import ModelConfig, TrainConfig
from worker.engine.settings import settings_of


@lru_cache
def train_defaults() -> dict:
    return TrainConfig().to_dict()


@lru_cache
def model_defaults() -> dict:
    """None for the fields the engine chooses for the job's budget and corpus when they are left out
    (autoconfig.py: the worker measures its speed first, so it decides when the job starts)."""
    return {s.name: None if s.name in AUTO_MODEL_FIELDS else s.default for s in settings_of(ModelConfig)}
