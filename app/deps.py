"""Dependencies every route takes, as named Annotated aliases."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, HTTPException, Request
from sqlalchemy.orm import Session

from app.db import read_session, write_session
from app.generation.state import Generation
from app.keys.service import owner_for_key
from app.settings import Settings, get_settings


def get_read_session() -> Iterator[Session]:
    """A read route's session: on SQLite a plain BEGIN, so it never waits for the write lock that the
    workers' progress writes take (app/db.py)."""
    with read_session() as session:
        yield session


def get_write_session() -> Iterator[Session]:
    """A writing route's one transaction, owned here: committed once after the route returns (before its
    response is sent, so a failed commit is the answer), rolled back on any error. Services only add to it."""
    with write_session() as session:
        yield session


def bearer_key(request: Request) -> str:
    """The key from `Authorization: Bearer KEY`, not yet checked against the database."""
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise HTTPException(
            401,
            "missing API key: send the header `Authorization: Bearer KEY` (make a key with `charrnn keys create NAME`)",
            headers={"WWW-Authenticate": "Bearer"},
        )
    return key.strip()


def owner_of_key(session: Session, key: str) -> str:
    owner = owner_for_key(session, key=key)
    if owner is None:
        raise HTTPException(401, "invalid or revoked API key", headers={"WWW-Authenticate": "Bearer"})
    return owner


def get_owner(request: Request) -> str:
    key = bearer_key(request)
    # Its own short transaction: an upload must not hold the database while its body streams in.
    with read_session() as session:
        return owner_of_key(session, key)


async def bearer_key_dependency(request: Request) -> str:
    return bearer_key(request)  # async: reading a header needs no trip to the thread pool


# The two below are async for the same reason: FastAPI runs a plain `def` dependency on its thread pool,
# and two such trips per /generate cost more than the rest of its admission.
async def current_settings() -> Settings:
    return get_settings()


async def get_generation(request: Request) -> Generation:
    return request.app.state.generation  # the main app's, which /v1 shares (app/openai/app.py)


# scope="function": the session ends when the route function returns, not after the response is sent
# (a streamed body must not hold it, and the commit must happen before the client reads a success).
ReadSessionDep = Annotated[Session, Depends(get_read_session, scope="function")]
WriteSessionDep = Annotated[Session, Depends(get_write_session, scope="function")]
SessionDep = WriteSessionDep  # the older name, for routes written before the split
CurrentOwner = Annotated[str, Depends(get_owner)]
# For routes that look the owner up together with their own reads, in one session (see generation).
BearerKey = Annotated[str, Depends(bearer_key_dependency)]
SettingsDep = Annotated[Settings, Depends(current_settings)]
GenerationDep = Annotated[Generation, Depends(get_generation)]
