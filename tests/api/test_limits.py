"""In-process: the memory estimate before a job queues, per-owner limits on active jobs
and stored corpus bytes (429 + Retry-After), NUL refused in every string that reaches the database, and
upload temp files removed on every way out."""

from __future__ import annotations

import pytest

from app.settings import get_settings
from tests.harness import small_corpus
from worker.engine.config import estimate_training_bytes, num_parameters, too_much_memory

HUGE = {"cell": "lstm", "hidden_size": 4096, "num_layers": 8}
HUGE_TRAINING = {"batch_size": 1024, "seq_len": 4096, "max_steps": 1}




# --- 5. the memory estimate -------------------------------------------------------------------------------


def test_huge_job_is_refused_with_the_estimate_and_the_limit(client, corpus):
    r = client.post("/jobs", json={"corpus_id": corpus["id"], "model": HUGE, "training": HUGE_TRAINING})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"]
    assert "CHARRNN_WORKER_MEMORY_BYTES" in detail and "TB of memory" in detail and "parameters" in detail
    assert "lower batch_size or seq_len" in detail


def test_the_memory_limit_is_a_setting(client, corpus, limited):
    limited(worker_memory_bytes=10 * 1024**2)  # 10 MB: the default model (384 x 2) does not fit
    r = client.post("/jobs", json={"corpus_id": corpus["id"], "training": {"max_steps": 1}})
    assert r.status_code == 422 and "10.0 MB (CHARRNN_WORKER_MEMORY_BYTES)" in r.json()["detail"], r.text


def test_the_defaults_fit_and_the_default_limit_is_the_machines(api, corpus):
    settings = get_settings()
    assert settings.worker_memory_bytes is None and settings.worker_memory_limit > 256 * 1024**2
    with api.owner_client("memory-defaults") as c:
        own = api.upload(c, small_corpus(), name="defaults")
        r = c.post("/jobs", json={"corpus_id": own["id"]})
        assert r.status_code == 201, r.text
        c.post(f"/jobs/{r.json()['id']}/cancel")


@pytest.mark.parametrize("cell", ["lstm", "gru", "rnn"])
def test_the_estimate_counts_the_engines_parameters_exactly(cell):
    torch = pytest.importorskip("torch")
    from worker.engine.config import ModelConfig
    from worker.engine.model import CharRNN

    torch.manual_seed(0)
    config = ModelConfig(vocab_size=65, cell=cell, hidden_size=48, num_layers=3, embedding_dim=16)
    real = CharRNN(config).num_parameters
    assert num_parameters(65, cell, 48, 3, 16) == real
    estimate = estimate_training_bytes(
        vocab_size=65, cell=cell, hidden_size=48, num_layers=3, embedding_dim=16, batch_size=4, seq_len=16
    )
    # Weights + gradients + AdamW's two moments: 16 bytes per parameter, no less, and within a sane factor.
    assert estimate["model_and_optimizer"] == 16 * real
    assert 16 * real <= estimate["total"] <= 100 * 16 * real


def test_the_estimate_grows_as_expected_and_says_what_to_lower():
    small = dict(vocab_size=65, cell="lstm", hidden_size=384, num_layers=2, embedding_dim=64,
                 batch_size=32, seq_len=128)
    base = estimate_training_bytes(**small)
    assert base["total"] < 200 * 1024**2  # the defaults: well under a laptop's memory
    double_batch = estimate_training_bytes(**{**small, "batch_size": 64})
    assert double_batch["activations"] == 2 * base["activations"] and double_batch["logits"] == 2 * base["logits"]
    assert estimate_training_bytes(**{**small, "cell": "gru"})["activations"] < base["activations"]
    wide = estimate_training_bytes(**{**small, "hidden_size": 4096, "num_layers": 8, "batch_size": 1, "seq_len": 1})
    assert "lower hidden_size or num_layers" in too_much_memory(wide, 1024**3)
    assert too_much_memory(base, 1024**3) is None


# --- 5. per-owner limits: active jobs, stored corpus bytes ---------------------------------------------------


def test_active_jobs_per_owner_answer_429_with_retry_after(api, limited):
    limited(max_active_jobs_per_owner=2)
    with api.owner_client("busy-jobs") as c:
        own = api.upload(c, small_corpus(), name="jobs")
        body = {"corpus_id": own["id"], "model": {"hidden_size": 16, "num_layers": 1}, "training": {"max_steps": 5}}
        ids = [c.post("/jobs", json=body).json()["id"] for _ in range(2)]
        r = c.post("/jobs", json=body)
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"].isdigit()
        assert "CHARRNN_MAX_ACTIVE_JOBS_PER_OWNER" in r.json()["detail"] and "2" in r.json()["detail"]
        with api.owner_client("other-jobs") as other:  # another owner is not held to this one's count
            theirs = api.upload(other, small_corpus(), name="other")
            r = other.post("/jobs", json={**body, "corpus_id": theirs["id"]})
            assert r.status_code == 201, r.text
            other.post(f"/jobs/{r.json()['id']}/cancel")
        assert c.post(f"/jobs/{ids[0]}/cancel").status_code == 200
        r = c.post("/jobs", json=body)  # a slot freed: accepted again
        assert r.status_code == 201, r.text
        for job_id in (ids[1], r.json()["id"]):
            c.post(f"/jobs/{job_id}/cancel")


def test_stored_corpus_bytes_per_owner_answer_429_and_leave_nothing(api, limited):
    limited(max_corpus_bytes_per_owner=25_000)
    corpora = api.data_dir / "corpora"
    with api.owner_client("big-storer") as c:
        first = api.upload(c, small_corpus(15_000), name="first")
        r = c.post("/corpora", content=small_corpus(12_000).encode(), headers={"Content-Type": "text/plain"})
        assert r.status_code == 429, r.text
        assert r.headers["retry-after"].isdigit()
        assert "CHARRNN_MAX_CORPUS_BYTES_PER_OWNER" in r.json()["detail"] and "25,000" in r.json()["detail"]
        assert not list(corpora.glob(".upload-*.tmp"))
        assert c.delete(f"/corpora/{first['id']}").status_code == 204  # deleting frees the quota
        api.upload(c, small_corpus(12_000), name="after-delete")


# --- 1. NUL in anything that reaches the database ---------------------------------------------------------------


@pytest.mark.parametrize(
    "method, path, kwargs, field",
    [
        ("POST", "/corpora", {"params": {"name": "a\x00b"}, "content": b"hello there", "headers": {
            "Content-Type": "text/plain"}}, "name"),
        ("POST", "/corpora", {"files": {"file": ("x.txt", b"hello there")}, "data": {"name": "a\x00b"}}, "name"),
        ("POST", "/jobs", {"json": {"corpus_id": "corpus_x\x00y"}}, "corpus_id"),
        ("POST", "/jobs", {"json": {"corpus_id": "corpus_x", "name": "n\x00"}}, "name"),
        ("POST", "/jobs", {"json": {"corpus_id": "corpus_x", "init_from": "ckpt_\x00"}}, "init_from"),
        ("POST", "/generate", {"json": {"model": "job_\x00"}}, "model"),
        ("POST", "/score", {"json": {"model": "job_\x00", "text": "abc"}}, "model"),
        ("GET", "/corpora", {"params": {"after": "corpus_\x00"}}, "after"),
        ("GET", "/jobs/job_a%00b", {}, "job_id"),
        ("POST", "/jobs/job_a%00b/cancel", {}, "job_id"),
        ("GET", "/corpora/corpus_%00", {}, "corpus_id"),
        ("DELETE", "/corpora/corpus_%00", {}, "corpus_id"),
        ("GET", "/checkpoints/ckpt_%00", {}, "checkpoint_id"),
    ],
)
def test_nul_is_refused_with_422_naming_the_field(client, method, path, kwargs, field):
    r = client.request(method, path, **kwargs)
    assert r.status_code == 422, r.text
    assert field in r.text and "NUL" in r.text


# --- 5. generation slots, and 2. the start-up sweep's care for uploads in flight --------------------------------


def test_generation_slots_count_release_once_and_precheck_by_key():
    from app.errors import ApiError
    from app.generation.limits import OwnerSlots

    slots = OwnerSlots()
    first = slots.acquire("ann", 2, key="k-ann")
    slots.acquire("ann", 2, key="k-ann")
    with pytest.raises(ApiError) as refused:
        slots.precheck("k-ann", 2)  # refused before any database lookup: the key's owner is known
    assert refused.value.status_code == 429 and refused.value.headers["Retry-After"] == "1"
    slots.precheck("k-bob", 2)  # an unknown key goes on to its lookup
    assert slots.acquire("bob", 2, key="k-bob").release() is None
    first.release()
    first.release()  # twice from two exit paths: counted once
    assert slots.in_flight("ann") == 1 and slots.in_flight("bob") == 0
    slots.precheck("k-ann", 2)


def test_the_sweep_spares_an_upload_in_flight(tmp_path):
    from app.corpora.upload import CorpusSink, sweep_stale_temp_files

    live = CorpusSink(tmp_path, max_bytes=100)
    live.write(b"half")
    stale = tmp_path / ".upload-00000000deadbeef.tmp"
    stale.write_bytes(b"left by a crash")
    assert sweep_stale_temp_files(tmp_path) == [stale]
    assert live.tmp_path.exists() and not stale.exists()
    live.discard()
    assert not list(tmp_path.iterdir())


# --- generation slots: free when the answer is ----------------------------------------------------------


def test_a_released_generation_slot_is_free_at_once_and_its_row_is_reused(api):
    """At the limit, a request that follows an answered one is admitted at once (the slot's row was deleted
    on a thread after the answer, and a next request could still find it counted: a spurious 429), and it
    reuses the row instead of writing the database again; rows are given back when the process stops."""
    import asyncio

    from sqlalchemy import func, select

    from app.db import read_session
    from app.generation.limits import OwnerSlots
    from app.models import GenerationSlot

    def rows() -> int:
        with read_session() as session:
            return session.scalar(select(func.count()).where(GenerationSlot.owner == "slot-owner"))

    async def run() -> None:
        slots = OwnerSlots()
        slots.start()
        first = await slots.take("slot-owner", 1, 30)
        first_id = first.id
        first.release()
        for _ in range(20):  # back to back at a limit of 1
            again = await slots.take("slot-owner", 1, 30)
            assert again.id == first_id  # the same row: no write
            again.release()
        assert rows() == 1
        await slots.close()
        assert rows() == 0

    asyncio.run(run())
