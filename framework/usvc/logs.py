"""JSON logs: one line per request, and the framework's own records as JSON.

Every record made while a request is served carries its trace id, span id and
request id, read from :mod:`usvc.context`, so a log line can be joined with
its trace in Jaeger. The access line is built by hand from a few fields: it
runs once per request and must stay cheap.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
from typing import Any, TextIO

from .context import current_request

ACCESS_LOGGER = "usvc.access"
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats any record as one JSON object; extra fields are kept."""

    def __init__(self, service: str) -> None:
        super().__init__()
        self.service = service

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _RESERVED and not key.startswith("_"):
                line[key] = value
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str, separators=(",", ":"))


class ContextFilter(logging.Filter):
    """Stamps the current request's ids on a record while it is still in context."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "trace_id" not in record.__dict__:
            ctx = current_request.get()
            if ctx is not None:
                record.trace_id = ctx.trace_id_hex
                record.span_id = ctx.span_id_hex
                record.request_id = ctx.request_id
        return True


def configure(service: str, level: str = "INFO", stream: TextIO | None = None) -> None:
    """Send every log record of the process to ``stream`` as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    handler.addFilter(ContextFilter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # aiohttp's own access log would duplicate ours.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)


class AccessLog:
    """Writes the one-line-per-request access record, in the same JSON shape.

    It bypasses :mod:`logging` (a LogRecord, caller lookup and a flush per line
    cost more than the rest of the request) and writes to a buffered stream
    that is flushed at most every ``flush_interval`` seconds and on close.
    """

    def __init__(
        self,
        service: str,
        enabled: bool,
        stream: TextIO | None = None,
        flush_interval: float = 0.2,
    ) -> None:
        self.service = service
        self.enabled = enabled
        self.stream = stream
        self.flush_interval = flush_interval
        self._flush_pending = False
        self._encode = json.JSONEncoder(separators=(",", ":"), ensure_ascii=True).encode
        self._second = -1
        self._second_text = ""

    def _time(self, now: float) -> str:
        second = int(now)
        if second != self._second:
            self._second = second
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return f"{self._second_text}.{int(now % 1 * 1000):03d}Z"

    def write(self, method: str, path: str, route: str, status: int, duration: float) -> None:
        if not self.enabled:
            return
        line: dict[str, object] = {
            "time": self._time(time.time()),
            "level": "info",
            "service": self.service,
            "logger": ACCESS_LOGGER,
            "message": f"{method} {path} {status}",
            "method": method,
            "path": path,
            "route": route,
            "status": status,
            "duration_ms": round(duration * 1000, 3),
        }
        ctx = current_request.get()
        if ctx is not None:
            line["trace_id"] = ctx.trace_id_hex
            line["span_id"] = ctx.span_id_hex
            line["request_id"] = ctx.request_id
        stream = self.stream or sys.stdout
        stream.write(self._encode(line) + "\n")
        if not self._flush_pending:
            self._flush_pending = True
            try:
                asyncio.get_running_loop().call_later(self.flush_interval, self.flush)
            except RuntimeError:  # no loop: flush now
                self.flush()

    def flush(self) -> None:
        self._flush_pending = False
        (self.stream or sys.stdout).flush()
