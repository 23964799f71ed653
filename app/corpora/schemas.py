from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict


class CorpusOut(BaseModel):
    model_config = ConfigDict(
        from_attributes=True,
        json_schema_extra={
            "examples": [
                {
                    "id": "corpus_0005f1a2b3c4d5e6a1b2c3d4e5",
                    "name": "tinyshakespeare",
                    "sha256": "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
                    "size_bytes": 1115394,
                    "num_chars": 1115394,
                    "vocab_size": 65,
                    "created_at": "2026-01-01T12:00:00Z",
                }
            ]
        },
    )

    id: str
    name: str
    sha256: str
    size_bytes: int
    num_chars: int
    vocab_size: int
    created_at: datetime
