"""The access log: valid JSON whatever the client sends, written in batches."""

from __future__ import annotations

import asyncio
import io
import json
import logging

from usvc.logs import AccessLog, JsonFormatter


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


def test_access_and_framework_lines_name_the_instance_when_given() -> None:
    stream = io.StringIO()
    log = AccessLog("front", True, stream, instance="front-7d9f-abcde")
    log.write("GET", "/", "/", 200, 0.001)
    log.flush()
    record = logging.makeLogRecord({"name": "usvc", "levelname": "INFO", "msg": "serving"})
    lines = [
        json.loads(stream.getvalue()),
        json.loads(JsonFormatter("front", "front-7d9f-abcde").format(record)),
    ]
    assert [(line["service"], line["instance"]) for line in lines] == [
        ("front", "front-7d9f-abcde")
    ] * 2


def test_repeated_and_many_distinct_requests_log_the_same_fields_each_time() -> None:
    stream = io.StringIO()
    log = AccessLog("svc", True, stream=stream, batch=10_000)
    hostile = '/a"b\\c/\u00e9\n'
    for _ in range(2):  # the second line comes from the quoted-once cache
        log.write("GET", hostile, "/{x}", 404, 0.0015)
    for n in range(2000):  # more distinct paths than the cache keeps
        log.write("GET", f"/item/{n}", "/item/{n}", 200, 0.001)
    log.flush()
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert len(lines) == 2002
    assert lines[0] == lines[1] | {"time": lines[0]["time"]}
    assert lines[0]["path"] == hostile and lines[0]["message"] == f"GET {hostile} 404"
    assert lines[0]["duration_ms"] == 1.5
    assert [line["path"] for line in lines[2:]] == [f"/item/{n}" for n in range(2000)]
    assert len(log._middles) == 1024
