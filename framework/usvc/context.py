"""The per-request context that egress calls and log lines read.

The server middleware sets it once per request; everything that runs inside
the handler (including tasks it spawns, which copy the context) sees it
through a :class:`contextvars.ContextVar` without passing it by hand.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass, field

from opentelemetry.trace import Span

from .propagation import Incoming


@dataclass(slots=True)
class RequestContext:
    incoming: Incoming
    span: Span
    trace_id: int
    span_id: int
    sampled: bool
    request_id: str
    deadline: float  # event-loop time by which every egress call must be done
    route: str = ""
    # The ids as hex, made on first use: the access line, log records, replies and
    # problem documents each read them, and a 128-bit format is not free.
    _trace_hex: str | None = field(default=None, repr=False, compare=False)
    _span_hex: str | None = field(default=None, repr=False, compare=False)

    @property
    def trace_id_hex(self) -> str:
        text = self._trace_hex
        if text is None:
            # to_bytes().hex(): cheaper than an f-string's format spec.
            text = self._trace_hex = self.trace_id.to_bytes(16, "big").hex()
        return text

    @property
    def span_id_hex(self) -> str:
        text = self._span_hex
        if text is None:
            text = self._span_hex = self.span_id.to_bytes(8, "big").hex()
        return text


current_request: ContextVar[RequestContext | None] = ContextVar("usvc_request", default=None)


def current() -> RequestContext | None:
    """The context of the request being served, or None outside a request."""
    return current_request.get()
