"""The rules both halves check (worker/engine/config.py): one function and one message each, the same
words from the API's 422 and from the engine; and the default stopping rule written into the config."""

from __future__ import annotations

import pytest
import torch

from worker.engine.config import (
    DEFAULT_MAX_STEPS,
    TrainConfig,
    batch_not_divisible,
    split_sizes,
    too_few_training_chars,
    too_small_validation_split,
)


def test_the_default_stopping_rule_is_in_the_config_not_hidden_in_the_trainer():
    assert TrainConfig().max_steps == DEFAULT_MAX_STEPS
    assert TrainConfig.from_dict({"max_steps": None}).max_steps == DEFAULT_MAX_STEPS  # an old job's stored null
    assert TrainConfig(max_epochs=1.5).max_steps is None
    assert TrainConfig(max_seconds=10).max_steps is None
    assert TrainConfig(max_steps=7).max_steps == 7


def test_the_api_stores_what_the_job_will_run():
    from app.jobs.schemas import TrainingSpec
    from app.jobs.service import effective_training

    assert effective_training(TrainingSpec())["max_steps"] == DEFAULT_MAX_STEPS
    by_time = effective_training(TrainingSpec(max_seconds=30))
    assert by_time["max_steps"] is None and by_time["max_seconds"] == 30
    assert effective_training(TrainingSpec(seq_len=9))["batch_size"] == TrainConfig().batch_size


def api_message(num_chars: int, **training) -> str:
    from app.errors import ApiError
    from app.jobs.schemas import TrainingSpec
    from app.jobs.service import check_training, effective_training

    with pytest.raises(ApiError) as caught:
        check_training(num_chars, effective_training(TrainingSpec(**training)))
    assert caught.value.status_code == 422
    return str(caught.value.detail)


def test_corpus_too_small_is_one_message_in_the_api_and_the_engine():
    from worker.engine.data import CorpusError, StreamBatcher

    train_chars, _ = split_sizes(1000, 0.1)
    expected = too_few_training_chars(train_chars, 32, 63)
    assert "needs at least 2,111" in expected and "batch_size=13" in expected
    with pytest.raises(CorpusError) as caught:
        StreamBatcher(torch.zeros(train_chars, dtype=torch.long), batch_size=32, seq_len=63)
    assert str(caught.value) == expected == api_message(1000, batch_size=32, seq_len=63, val_fraction=0.1)


def test_validation_split_too_small_is_one_message_in_the_api_and_the_engine(tmp_path):
    from worker.engine.data import CorpusError
    from worker.engine.trainer import Trainer

    text = "abcdefgh" * 20  # 160 characters: 0.01 of it is 1 character
    expected = too_small_validation_split(len(text), 0.01)
    assert "holds out 1 character(s)" in expected
    with pytest.raises(CorpusError) as caught:
        Trainer(text, tmp_path / "run", {"hidden_size": 8}, TrainConfig(seq_len=4, batch_size=2, val_fraction=0.01))
    assert str(caught.value) == expected == api_message(len(text), seq_len=4, batch_size=2, val_fraction=0.01)
    assert too_small_validation_split(len(text), 0.0) is None


def test_gpus_must_divide_the_batch_is_one_message():
    expected = batch_not_divisible(4, 3)
    assert "multiple of gpus=3" in expected and "try batch_size=3" in expected
    assert batch_not_divisible(6, 3) is None
    assert api_message(100_000, batch_size=4, gpus=3, seq_len=8) == expected
