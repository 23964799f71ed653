"""A corpus's reference losses, computed once at upload on the split a job uses by default."""

from __future__ import annotations

from pathlib import Path

from worker.engine.config import TrainConfig
from worker.engine.references import of_file

DEFAULT_VAL_FRACTION = TrainConfig.__dataclass_fields__["val_fraction"].default


def references_of_upload(path: Path, num_chars: int) -> dict | None:
    """{"unigram", "bigram", "val_fraction"} in nats per character, streamed from the uploaded file
    (bounded memory); None when the default split holds out fewer than 2 characters."""
    refs = of_file(path, DEFAULT_VAL_FRACTION, num_chars=num_chars)
    return refs.to_dict() if refs else None


def references_for_split(corpus_references: dict | None, *, val_fraction: float | None,
                         separate_validation: bool) -> dict | None:
    """The corpus's stored references where a job splits the corpus as they were scored; otherwise None
    (the job's worker computes those of its own split when it starts)."""
    if not corpus_references or separate_validation:
        return None
    if val_fraction is not None and val_fraction != corpus_references.get("val_fraction"):
        return None
    return corpus_references
