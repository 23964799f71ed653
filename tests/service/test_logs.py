"""Log lines (issue 21 item 12): readable at a terminal, JSON for everything else, and either on demand
with CHARRNN_LOG_FORMAT. The terminal is a real pseudo-terminal: `charrnn api` cannot tell it from a person's."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.harness import ROOT, free_port, wait_for


def run_api(tmp_path, log_format: str | None, terminal: bool) -> list[str]:
    """Start `charrnn api` with stderr on a terminal or a pipe, make one request, and return its log lines."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CHARRNN_")}
    env.update(CHARRNN_DATA_DIR=str(tmp_path / "data"), PYTHONUNBUFFERED="1")
    if log_format:
        env["CHARRNN_LOG_FORMAT"] = log_format
    if terminal:
        reader, writer = pty.openpty()
    else:
        reader, writer = os.pipe()
    proc = subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "api", "--port", str(port)],
        cwd=ROOT,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=writer,
        stderr=writer,
    )
    os.close(writer)
    chunks: list[bytes] = []

    def drain() -> None:  # read all along: a full terminal buffer would block the server's writes
        while True:
            try:
                chunk = os.read(reader, 65536)
            except OSError:  # the terminal's other end is gone
                return
            if not chunk:
                return
            chunks.append(chunk)

    threading.Thread(target=drain, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{port}"

        def healthy() -> bool:
            assert proc.poll() is None, b"".join(chunks).decode(errors="replace")
            try:
                return httpx.get(url + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(healthy, 30, "the API to answer")
        httpx.get(url + "/no-such-page", timeout=5)
        wait_for(lambda: b"/no-such-page" in b"".join(chunks), 10, "the request's log line")
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        time.sleep(0.2)
        os.close(reader)
    text = b"".join(chunks).decode(errors="replace").replace("\r\n", "\n")
    return [line for line in text.splitlines() if line.strip()]


def request_line(lines: list[str]) -> str:
    return next(line for line in lines if "/no-such-page" in line)


def is_json(line: str) -> bool:
    try:
        return isinstance(json.loads(line), dict)
    except ValueError:
        return False


def test_a_terminal_gets_readable_lines(tmp_path):
    lines = run_api(tmp_path, None, terminal=True)
    line = request_line(lines)
    assert not is_json(line), line
    # time, level, logger and message first, then the request's fields as name=value
    assert " INFO " in line and "charrnn.api: GET /no-such-page 404" in line, line
    assert "route=unmatched" in line and "ms=" in line and "status=" not in line, line  # said once
    assert line[:4].isdigit() and line[4] == "-", line
    assert not any(is_json(line) for line in lines), lines


def test_a_pipe_gets_json_lines(tmp_path):
    record = json.loads(request_line(run_api(tmp_path, None, terminal=False)))
    assert record["level"] == "info" and record["status"] == 404 and record["route"] == "unmatched", record


@pytest.mark.parametrize(("log_format", "terminal"), [("json", True), ("text", False)])
def test_the_setting_overrides_the_guess(tmp_path, log_format, terminal):
    line = request_line(run_api(tmp_path, log_format, terminal=terminal))
    assert is_json(line) == (log_format == "json"), line
