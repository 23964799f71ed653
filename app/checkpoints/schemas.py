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
                    "sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
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
    # The file's SHA-256 as written (null for checkpoints of older versions); the download serves it too.
    sha256: str | None = None
    created_at: datetime
