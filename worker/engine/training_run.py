"""From a job spec to a training run: the one builder the CLI, the service's training child and the
data-parallel entry point all use.

Data-parallel launch (what a worker does for a job that asks for N GPUs; see distributed.py):

    torchrun --standalone --nproc_per_node N -m worker.engine.training_run SPEC.json

SPEC.json is a JobSpec (records.py); rank 0 prints the run's RunResult as JSON, its last line on stdout.
"""

from __future__ import annotations

import sys
from pathlib import Path

from worker.engine.config import TrainConfig, check_model_settings
from worker.engine.data import read_text
from worker.engine.records import JobSpec
from worker.engine.trainer import Trainer, TrainingObserver


def build_trainer(spec: JobSpec, observer: TrainingObserver | None = None) -> Trainer:
    """A Trainer for `spec`: a new run in spec.run_dir, or the continuation of the run already there."""
    check_model_settings(spec.model)
    return Trainer(
        read_text(spec.corpus_path),
        spec.run_dir,
        model_config=spec.model,
        train_config=TrainConfig.from_dict(spec.training),
        init_from=spec.init_from,
        init_from_sha256=spec.init_from_sha256,
        observer=observer,
        corpus_path=spec.corpus_path,
        val_text=read_text(spec.val_corpus_path) if spec.val_corpus_path else None,
        memory_limit=spec.memory_limit,
        reference_losses=spec.reference_losses,
    )


def main(argv: list[str] | None = None) -> None:
    """One rank of a data-parallel run started by torchrun."""
    from worker.engine.distributed import is_main_rank, leave_process_group, setup_process_group

    spec = JobSpec.model_validate_json(Path((argv or sys.argv[1:])[0]).read_text())
    spec = spec.model_copy(update={"training": setup_process_group(spec.training)})
    finished = False
    try:
        result = build_trainer(spec).train()
        finished = True
        if is_main_rank():
            print(result.model_dump_json())
    finally:
        leave_process_group(finished)


if __name__ == "__main__":
    main()
