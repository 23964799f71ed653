"""Reading the `Last-Event-ID` header of a reconnecting event stream."""

from __future__ import annotations

import re

from app.errors import ApiError

# Event ids are database integers: 18 digits always fit a signed 64-bit column on every database.
_EVENT_ID = re.compile(r"[0-9]{1,18}")


def parse_last_event_id(value: str | None) -> int | None:
    """The event id to resume after, None when absent or empty; 400 for anything but ASCII digits.

    `str.isdigit` is not enough: it accepts "²" and other Unicode digits that int() then refuses, and 20
    ASCII digits overflow the database's integer type.
    """
    if value is None or value.strip() == "":  # an empty Last-Event-ID means "from the start" (SSE spec)
        return None
    value = value.strip()
    if not _EVENT_ID.fullmatch(value):
        shown = value[:40].encode("ascii", "backslashreplace").decode()
        raise ApiError(
            400,
            f"the Last-Event-ID header must be an event id (ASCII digits, at most 18 of them), not {shown!r}; "
            "send back the `id:` of the last event you received, or leave the header out",
        )
    return int(value)
