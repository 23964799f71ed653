from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class CheckpointOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "ckpt_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "job_id": "job_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "step": 500,
                    "train_loss": 1.52,
                    "val_loss": 1.61,
                    "is_best": True,
                    "size_bytes": 3300000,
                    "created_at": "2026-01-01T12:01:00Z",
                }
            ]
        },
    )
    id: str
    job_id: str
    step: int
    train_loss: float | None
    val_loss: float | None
    is_best: bool
    size_bytes: int
    created_at: datetime
