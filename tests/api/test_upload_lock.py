"""An upload to a remote store sends its bytes before it takes the database's write lock (on SQLite, the one
lock every writer shares): a corpus of hundreds of megabytes takes seconds to send, and the workers' progress
writes must not wait for it. In-process, on the real SQLite file; the remote store is the data directory
seen as a remote one (no local_root), which probes the lock as each file arrives."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from app.corpora import service as corpora
from app.settings import get_settings
from app.storage.local import LocalStore
from tests.harness import small_corpus


class ProbingRemoteStore(LocalStore):
    """The data directory as a remote store would be used (bytes sent, not renamed in), recording for each file
    it receives whether another connection could take SQLite's write lock at that moment."""

    def __init__(self, root: Path, database: Path):
        super().__init__(root)
        self.local_root = None  # seen as remote: bytes are sent to it, not renamed in
        self.database = database
        self.lock_free_while_receiving: list[bool] = []

    def put_file(self, key: str, src: Path, *, move: bool = False) -> None:
        # A fifth of a second: what a transient lock (another writer's short commit) could take; a lock held
        # for the whole send is held by the request that waits in this call, so it is never released.
        probe = sqlite3.connect(self.database, timeout=0.2, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            self.lock_free_while_receiving.append(True)
        except sqlite3.OperationalError:  # "database is locked": someone holds the write lock
            self.lock_free_while_receiving.append(False)
        finally:
            probe.close()
        super().put_file(key, src, move=move)


@pytest.fixture
def remote(api, monkeypatch) -> ProbingRemoteStore:
    settings = get_settings()
    database = Path(settings.sqlalchemy_url.removeprefix("sqlite:///"))
    store = ProbingRemoteStore(api.data_dir, database)
    monkeypatch.setattr(corpora, "get_store", lambda _settings: store)
    return store


def test_an_upload_sends_its_bytes_without_holding_the_write_lock(api, client, remote):
    text = small_corpus()[:5000] + "a text of its own for this test"
    corpus = api.upload(client, text, name="sent-first")
    assert remote.lock_free_while_receiving == [True]  # sent once, before the lock; not again under it
    assert (api.data_dir / corpus_path(corpus["id"])).read_text() == text


def test_a_refused_upload_removes_what_it_sent(api, remote, limited):
    with api.owner_client("tight-quota") as c:
        limited(max_corpus_bytes_per_owner=10)
        text = small_corpus()[:4000] + "refused, so not kept"
        r = c.post("/corpora", content=text.encode(), headers={"Content-Type": "text/plain"})
        assert r.status_code == 429, r.text
    assert remote.lock_free_while_receiving == [True]
    sent = [p for p in (api.data_dir / "corpora").rglob("*") if p.is_file() and p.read_bytes() == text.encode()]
    assert sent == []  # the refusal rolled back, and the object it had sent is gone


def corpus_path(corpus_id: str) -> str:
    from app.db import session_scope
    from app.models import Corpus

    with session_scope() as session:
        return session.get(Corpus, corpus_id).path
