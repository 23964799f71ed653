"""A bug, told apart from the user's mistake: logged with its traceback under an id, answered with the id.

The engine raises EngineError for what the user can change (worker/engine/errors.py), and the worker
catches that by name: its message is the answer (a 422 from the generation server, the job's error).
Anything else that reaches the edge of a training child or of a generation request is a bug in charrnn
or in a library it uses, a ValueError included. The user is told "internal error" and an id, never the
exception's own words (they would read as their mistake, and may hold paths); the operator finds the
traceback in the worker's log under the same id.
"""

from __future__ import annotations

import logging
import secrets

ERROR_ID_PREFIX = "err_"


def new_error_id() -> str:
    return ERROR_ID_PREFIX + secrets.token_hex(6)


def internal_error_message(error_id: str, what: str) -> str:
    """What the user is told about a bug in `what` ("the training process", "the worker")."""
    return (
        f"internal error {error_id}: {what} hit a bug in charrnn, not a problem with what you sent; "
        f"the worker's log has its traceback under this id"
    )


def log_bug(log: logging.Logger, exc: BaseException, what: str, error_id: str | None = None, **fields) -> str:
    """Log `exc` with its traceback under an error id (a new one unless given), and return the id."""
    error_id = error_id or new_error_id()
    log.error("internal error %s in %s: %s: %s", error_id, what, type(exc).__name__, exc,
              exc_info=(type(exc), exc, exc.__traceback__), extra={"fields": {"error_id": error_id, **fields}})
    return error_id
