"""The per-request context that egress calls and log lines read.

The server middleware sets it once per request; everything that runs inside
the handler (including tasks it spawns, which copy the context) sees it
through a :class:`contextvars.ContextVar` without passing it by hand.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass

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
    # The ids as 32 and 16 lowercase hex digits, formatted once: the access line,
    # the egress headers, log records, replies and problem documents all read them.
    trace_id_hex: str
    span_id_hex: str
    route: str = ""


current_request: ContextVar[RequestContext | None] = ContextVar("usvc_request", default=None)


def current() -> RequestContext | None:
    """The context of the request being served, or None outside a request."""
    return current_request.get()
