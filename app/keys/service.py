"""API keys: random tokens shown once, stored only as a SHA-256 hash.

A key is 32 random bytes, so a plain hash is as good as a keyed one: there is nothing to brute-force.
The key's name is its owner; every resource is filed under the owner, not under the key.
"""

from __future__ import annotations

import hashlib
import secrets

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.ids import new_id
from app.models import ApiKey

KEY_PREFIX = "crn_"


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(session: Session, *, name: str, key: str | None = None) -> tuple[ApiKey, str]:
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(id=new_id("key"), name=name, key_hash=hash_key(key), prefix=key[:10], created_at=utcnow())
    session.add(record)
    session.flush()
    return record, key


def owner_for_key(session: Session, *, key: str) -> str | None:
    return session.scalar(select(ApiKey.name).where(ApiKey.key_hash == hash_key(key), ApiKey.revoked_at.is_(None)))


def owners_of_key_hashes(session: Session, key_hashes: tuple[str, ...] | list[str]) -> dict[str, str]:
    """{key hash: owner} for those of `key_hashes` that are still valid (one query for many followers' keys)."""
    rows = session.execute(
        select(ApiKey.key_hash, ApiKey.name).where(ApiKey.key_hash.in_(list(key_hashes)), ApiKey.revoked_at.is_(None))
    )
    return dict(rows.all())


def list_keys(session: Session) -> list[ApiKey]:
    return list(session.scalars(select(ApiKey).order_by(ApiKey.created_at)))


def revoke_key(session: Session, *, key_id: str) -> bool:
    result = session.execute(
        update(ApiKey).where(ApiKey.id == key_id, ApiKey.revoked_at.is_(None)).values(revoked_at=utcnow())
    )
    return result.rowcount == 1


def ensure_bootstrap_key(session: Session, *, key: str | None) -> str | None:
    """Make sure `key` (CHARRNN_BOOTSTRAP_KEY) works; with none set and no key at all, make one.

    Returns a newly created key to print once, or None when nothing new was made.
    """
    if key:
        if session.scalar(select(ApiKey.id).where(ApiKey.key_hash == hash_key(key))) is None:
            create_key(session, name="bootstrap", key=key)
        return None
    if session.scalar(select(ApiKey.id).limit(1)) is None:
        return create_key(session, name="default")[1]
    return None
