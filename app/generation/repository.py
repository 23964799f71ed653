"""Generation slots in the database: the per-owner count of generations in flight, shared by API processes."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from app.db import utcnow
from app.ids import new_id
from app.models import GenerationSlot
from app.owner_lock import lock_owner


def take(session: Session, *, owner: str, holder: str, limit: int, lease_seconds: float) -> tuple[str | None, int]:
    """(the new slot's id, or None when the owner already holds `limit` live slots; the live count seen).
    Call inside a write transaction: the owner's lock makes the count and the insert one step."""
    lock_owner(session, owner=owner, limit="generations")
    now = utcnow()
    session.execute(delete(GenerationSlot).where(GenerationSlot.owner == owner, GenerationSlot.expires_at < now))
    held = session.scalar(select(func.count()).select_from(GenerationSlot).where(GenerationSlot.owner == owner))
    if held >= limit:
        return None, held
    slot_id = new_id("gen")
    session.execute(
        insert(GenerationSlot).values(
            id=slot_id, owner=owner, holder=holder, expires_at=now + timedelta(seconds=lease_seconds)
        )
    )
    return slot_id, held + 1


def release(session: Session, *, slot_ids: list[str]) -> None:
    session.execute(delete(GenerationSlot).where(GenerationSlot.id.in_(slot_ids)))


def renew(session: Session, *, slot_ids: list[str], lease_seconds: float) -> None:
    """Push back the expiry of slots still in flight (their process is alive and still generating)."""
    expires = utcnow() + timedelta(seconds=lease_seconds)
    session.execute(update(GenerationSlot).where(GenerationSlot.id.in_(slot_ids)).values(expires_at=expires))
