"""Cursor pagination shared by every list: newest first, `?after=ID` continues after that item."""

from __future__ import annotations

from typing import Annotated, Generic, TypeVar

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import Select
from sqlalchemy.orm import Session

T = TypeVar("T")


class Page(BaseModel, Generic[T]):
    data: list[T]
    has_more: bool


class PageParams(BaseModel):
    limit: int = 20
    after: str | None = None


async def page_params(  # async: FastAPI runs a plain def on its thread pool
    limit: Annotated[int, Query(ge=1, le=100, description="items per page, 1 to 100")] = 20,
    after: Annotated[str | None, Query(max_length=64, description="the last ID of the previous page")] = None,
) -> PageParams:
    return PageParams(limit=limit, after=after)


def paginate(session: Session, query: Select, id_column, params: PageParams, descending: bool = True):
    """Rows of `query` (already filtered by owner) after the cursor; IDs sort by creation time."""
    if params.after is not None:
        query = query.where(id_column < params.after if descending else id_column > params.after)
    query = query.order_by(id_column.desc() if descending else id_column.asc()).limit(params.limit + 1)
    rows = list(session.scalars(query))
    return rows[: params.limit], len(rows) > params.limit
