"""Logs on stderr, for the API and the worker alike: one JSON object per line for a log collector, or
readable lines for a person at a terminal (CHARRNN_LOG_FORMAT: auto, json or text)."""

from __future__ import annotations

import json
import logging
import sys
import time


def _fields(record: logging.LogRecord) -> dict:
    return getattr(record, "fields", {}) or {}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        out.update(_fields(record))
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


def _compact(value) -> str:
    """A field's value as it reads best after `name=`: bare when it is one plain word, quoted otherwise."""
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if text and not any(c.isspace() or c in "\"'=" for c in text):
        return text
    return json.dumps(text, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`2026-12-01 22:50:01.123 INFO    charrnn.api: GET /jobs/j_1 404  route=/jobs/{job_id} ms=1.2`, local time."""

    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.created)) + f".{int(record.msecs):03d}"
        message = record.getMessage()
        line = f"{stamp} {record.levelname:<7} {record.name}: {message}"
        # What the message already says (a request's method, path and status) is not said twice.
        said = set(message.split())
        fields = [(name, _compact(value)) for name, value in _fields(record).items()]
        fields = [f"{name}={value}" for name, value in fields if value not in said]
        if fields:
            line += "  " + " ".join(fields)
        if record.exc_info:
            line += "\n" + self.formatException(record.exc_info)
        return line


def wants_text(log_format: str, stream) -> bool:
    """`text` and `json` decide; `auto` is text for a person at a terminal, JSON for anything else."""
    if log_format != "auto":
        return log_format == "text"
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty and isatty())
    except ValueError:  # a closed stream
        return False


def setup_logging(level: str = "INFO", log_format: str | None = None) -> None:
    if log_format is None:
        from app.settings import get_settings

        log_format = get_settings().log_format
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(TextFormatter() if wants_text(log_format, sys.stderr) else JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
    logging.getLogger("uvicorn.access").setLevel(logging.WARNING)  # our middleware logs each request
