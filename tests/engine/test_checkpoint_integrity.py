"""A checkpoint's sha256 is recorded when it is written (last.json) and checked whenever it is loaded."""

import json

import pytest

from tests.engine.test_training import TINY_MODEL, tiny_config
from tests.harness import SHAKESPEARE
from worker.engine.checkpoint import CorruptCheckpointError, RunDirectory, load_model, sha256_hex
from worker.engine.trainer import Trainer


@pytest.fixture(scope="module")
def text() -> str:
    return SHAKESPEARE.read_text()[:30_000]


def test_last_json_records_the_weights_digest_and_resume_refuses_a_damaged_file(tmp_path, text):
    run = tmp_path / "run"
    Trainer(text, run, TINY_MODEL, tiny_config(max_steps=20)).train()
    last = json.loads((run / "last.json").read_text())
    weights = RunDirectory(run).step_paths(last["step"])[0]
    data = weights.read_bytes()
    assert last["sha256"] == sha256_hex(data) and last["size_bytes"] == len(data)
    load_model(weights, expected_sha256=last["sha256"])

    data = bytearray(data)
    data[-1] ^= 0xFF  # one flipped byte in the tensors: parses fine, but is not what was trained
    weights.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpointError) as refused:
        Trainer(text, run, TINY_MODEL, tiny_config(max_steps=40))
    message = str(refused.value)
    assert weights.name in message and str(tmp_path) not in message, message


def test_init_from_checks_the_expected_digest(tmp_path, text):
    run = tmp_path / "run"
    Trainer(text, run, TINY_MODEL, tiny_config(max_steps=10)).train()
    best = run / "best.safetensors"
    Trainer(text, tmp_path / "ok", init_from=best, init_from_sha256=sha256_hex(best.read_bytes()),
            train_config=tiny_config(max_steps=1))
    with pytest.raises(CorruptCheckpointError):
        Trainer(text, tmp_path / "bad", init_from=best, init_from_sha256="0" * 64, train_config=tiny_config())
