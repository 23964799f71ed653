"""Strings that reach the database: PostgreSQL text cannot hold NUL (\\x00), so they are refused up front.

Without this, `?name=a%00b` or `"corpus_id": "corpus_x\\u0000y"` went through validation and made
psycopg raise in the middle of a query: a 500 on PostgreSQL, while SQLite took it. Refusing NUL
everywhere keeps both databases answering the same 422, naming the field.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Request
from fastapi.exceptions import RequestValidationError
from pydantic import AfterValidator, Field

NUL_MESSAGE = "must not contain NUL characters (\\x00)"
# The same rule as the schema says it, so clients and fuzzers (Schemathesis) know a NUL is not valid input.
NUL_FREE_PATTERN = "^[^\\x00]*$"


def refuse_nul(value: str) -> str:
    if "\x00" in value:
        raise ValueError(NUL_MESSAGE)
    return value


# For body fields that are stored or looked up: a 422 from pydantic that names the field.
DbStr = Annotated[str, AfterValidator(refuse_nul), Field(json_schema_extra={"pattern": NUL_FREE_PATTERN})]


def declare_nul_free_parameters(schema: dict) -> None:
    """In the OpenAPI document, every string path and query parameter says it holds no NUL
    (refuse_nul_in_url refuses them)."""
    for operations in schema.get("paths", {}).values():
        for operation in operations.values():
            for parameter in operation.get("parameters", []):
                if parameter.get("in") not in ("path", "query"):
                    continue
                shape = parameter.get("schema", {})
                for branch in [shape, *shape.get("anyOf", [])]:
                    if branch.get("type") == "string" and "pattern" not in branch and "enum" not in branch:
                        branch["pattern"] = NUL_FREE_PATTERN


def _error(where: str, name: str, value: str) -> dict:
    return {"type": "string_nul", "loc": (where, name), "msg": f"Value error, {NUL_MESSAGE}", "input": value}


async def refuse_nul_in_url(request: Request) -> None:
    """An app-wide dependency: path and query parameters are ids, names and cursors, all looked up in the
    database; none may hold NUL (a `%00` in the URL)."""
    errors = [_error("path", k, v) for k, v in request.path_params.items() if isinstance(v, str) and "\x00" in v]
    errors += [_error("query", k, v) for k, v in request.query_params.multi_items() if "\x00" in k + v]
    if errors:
        raise RequestValidationError(errors)
