"""Dependencies every route takes, as named Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from app.db import get_sessionmaker, read_session
from app.keys.service import owner_for_key
from app.settings import Settings, get_settings


def get_session() -> Iterator[Session]:
    with get_sessionmaker()() as session:
        yield session


def get_owner(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise HTTPException(
            401,
            "missing API key: send the header `Authorization: Bearer KEY` (make a key with `charrnn keys create NAME`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    # Its own short transaction: an upload must not hold the database while its body streams in.
    with read_session() as session:
        owner = owner_for_key(session, key=key.strip())
    if owner is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return owner


SessionDep = Annotated[Session, Depends(get_session)]
CurrentOwner = Annotated[str, Depends(get_owner)]
SettingsDep = Annotated[Settings, Depends(get_settings)]
