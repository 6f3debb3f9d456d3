"""The access log: valid JSON whatever the client sends, written in batches."""

from __future__ import annotations

import asyncio
import io
import json

from usvc.logs import AccessLog


def test_a_hostile_path_still_makes_one_valid_json_line() -> None:
    stream = io.StringIO()
    log = AccessLog("front", True, stream)
    path = '/a"b\\c\n{"status":1}/ünïcode/\x00'
    log.write("GET", path, "unmatched", 404, 0.0012)
    log.flush()
    (raw,) = stream.getvalue().splitlines()
    line = json.loads(raw)
    assert line["path"] == path
    assert line["status"] == 404
    assert line["message"] == f"GET {path} 404"
    assert line["duration_ms"] == 1.2
    assert raw.isascii()


def test_a_disabled_access_log_writes_nothing() -> None:
    stream = io.StringIO()
    log = AccessLog("front", False, stream)
    log.write("GET", "/", "/", 200, 0.001)
    log.flush()
    assert stream.getvalue() == ""


async def test_lines_are_flushed_within_the_interval_without_more_traffic() -> None:
    stream = io.StringIO()
    log = AccessLog("front", True, stream, flush_interval=0.05)
    log.write("GET", "/", "/", 200, 0.001)
    assert stream.getvalue() == ""  # batched...
    await asyncio.sleep(0.15)
    assert len(stream.getvalue().splitlines()) == 1  # ...but never held back for long


def test_a_full_batch_is_written_at_once() -> None:
    stream = io.StringIO()
    log = AccessLog("front", True, stream, batch=3)
    for _ in range(3):
        log.write("GET", "/", "/", 200, 0.001)
    assert len(stream.getvalue().splitlines()) == 3
