"""The engine's defaults, from the engine's own dataclasses.

worker/engine/config.py imports nothing heavy (no torch), so the API reads the defaults from the very
classes the trainer uses: there is no copy to drift.
"""

from __future__ import annotations

from dataclasses import fields
from functools import lru_cache

from worker.engine.config import ModelConfig, TrainConfig


@lru_cache
def train_defaults() -> dict:
    return TrainConfig().to_dict()


@lru_cache
def model_defaults() -> dict:
    return {f.name: f.default for f in fields(ModelConfig) if f.name != "vocab_size"}
