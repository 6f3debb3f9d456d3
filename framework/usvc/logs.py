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

from .context import RequestContext, current_request

ACCESS_LOGGER = "usvc.access"
# JSON string quoting in C: a quoted, escaped, ASCII-only string literal.
_quote = json.encoder.encode_basestring_ascii
# Distinct (method, path, route, status) whose quoted part of the line is kept.
_MIDDLE_CACHE_SIZE = 1024
_RESERVED = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}
# "000" to "999": the access line's milliseconds and fractions without a format spec,
# whose parsing costs more than the rest of the number.
_THOUSANDTHS = tuple(f"{n:03d}" for n in range(1000))


def _timestamp(created: float) -> str:
    seconds = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(created))
    return f"{seconds}.{int(created % 1 * 1000):03d}Z"


class JsonFormatter(logging.Formatter):
    """Formats any record as one JSON object; extra fields are kept."""

    def __init__(self, service: str, instance: str | None = None) -> None:
        super().__init__()
        self.service = service
        self.instance = instance

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": _timestamp(record.created),
            "level": record.levelname.lower(),
            "service": self.service,
        }
        if self.instance is not None:
            line["instance"] = self.instance
        line["logger"] = record.name
        line["message"] = record.getMessage()
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


def configure(
    service: str,
    level: str = "INFO",
    stream: TextIO | None = None,
    *,
    instance: str | None = None,
) -> None:
    """Send every log record of the process to ``stream`` as JSON lines."""
    handler = logging.StreamHandler(stream or sys.stdout)
    handler.setFormatter(JsonFormatter(service, instance))
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

    It bypasses :mod:`logging` (a LogRecord, caller lookup and a flush per
    line cost more than the rest of the request), builds the line from
    pre-encoded parts, and writes lines in batches: at most every
    ``flush_interval`` seconds, every ``batch`` lines, and on close.
    """

    def __init__(
        self,
        service: str,
        enabled: bool,
        stream: TextIO | None = None,
        flush_interval: float = 0.2,
        batch: int = 256,
        *,
        instance: str | None = None,
    ) -> None:
        self.service = service
        self.enabled = enabled
        self.stream = stream
        self.flush_interval = flush_interval
        self.batch = batch
        self._pending: list[str] = []
        who = f'"service":{_quote(service)}'
        if instance is not None:
            who += f',"instance":{_quote(instance)}'
        self._head = f',"level":"info",{who},"logger":"{ACCESS_LOGGER}","message":'
        self._second = -1
        self._second_text = ""
        self._millis = -1
        self._time_text = ""
        self._middles: dict[tuple[str, str, str, int], str] = {}

    def _time(self, now: float) -> str:
        millis = int(now * 1000)
        if millis != self._millis:
            self._millis = millis
            second = millis // 1000
            if second != self._second:
                self._second = second
                self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._time_text = f"{self._second_text}.{_THOUSANDTHS[millis % 1000]}Z"
        return self._time_text

    def _middle(self, method: str, path: str, route: str, status: int) -> str:
        """The line from its message to its status, for one (method, path, route, status)."""
        # aiohttp accepts only token characters in a method: nothing to escape.
        escaped_path = _quote(path)[1:-1]
        return (
            f'"{method} {escaped_path} {status}","method":"{method}","path":"{escaped_path}",'
            f'"route":{_quote(route)},"status":{status},"duration_ms":'
        )

    def write(self, method: str, path: str, route: str, status: int, duration: float) -> None:
        """The line of a request, with the ids of the request being served (if any)."""
        if self.enabled:
            self.write_request(current_request.get(), method, path, route, status, duration)

    def write_request(
        self,
        ctx: RequestContext | None,
        method: str,
        path: str,
        route: str,
        status: int,
        duration: float,
    ) -> None:
        """The line of a request, with ``ctx``'s ids: what the service calls, which has it."""
        # A service answers few distinct (method, path, status): their part of the
        # line is quoted once. Paths are the client's, so the cache is bounded.
        key = (method, path, route, status)
        middle = self._middles.get(key)
        if middle is None:
            middle = self._middle(method, path, route, status)
            if len(self._middles) < _MIDDLE_CACHE_SIZE:
                self._middles[key] = middle
        now = time.time()
        stamp = self._time_text if int(now * 1000) == self._millis else self._time(now)
        pending = self._pending
        # Milliseconds to three decimals, as f"{ms:.3f}" writes them.
        micros = round(duration * 1_000_000)
        took = f"{micros // 1000}.{_THOUSANDTHS[micros % 1000]}"
        if ctx is None:
            pending.append(f'{{"time":"{stamp}"{self._head}{middle}{took}}}\n')
        else:
            request_id = ctx.request_id
            # Request ids are visible ASCII (propagation checks them): only a quote
            # or a backslash needs escaping.
            if '"' in request_id or "\\" in request_id:
                request_id = _quote(request_id)[1:-1]
            pending.append(
                f'{{"time":"{stamp}"{self._head}{middle}{took}'
                f',"trace_id":"{ctx.trace_id_hex}"'
                f',"span_id":"{ctx.span_id_hex}","request_id":"{request_id}"}}\n'
            )
        if len(pending) == 1:
            try:
                asyncio.get_running_loop().call_later(self.flush_interval, self.flush)
            except RuntimeError:  # no loop: nothing would flush later
                self.flush()
        elif len(pending) >= self.batch:
            self.flush()

    def flush(self) -> None:
        if not self._pending:
            return
        stream = self.stream or sys.stdout
        stream.write("".join(self._pending))
        self._pending.clear()
        stream.flush()
