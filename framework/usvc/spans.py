"""The server and egress spans: OpenTelemetry API spans without the SDK's per-span cost.

The SDK's span (locks, bounded attribute containers on every write) costs
about 50 µs from start to end; the work a span needs is a few fields and,
at the end, one :class:`ReadableSpan` handed to the span processors (about
4 µs). usvc makes exactly the spans it needs here, already sampled, and keeps
the SDK's contract with the provider: the span processors' ``on_start`` and
``on_end`` are both called, the provider's :class:`SpanLimits` bound the
attributes, events and links (users' values are cleaned as the SDK cleans
them), and ids come from the provider's id generator (see
:class:`usvc.tracing.Tracing`). Spans users make with ``svc.tracer`` stay SDK
spans, children of these through the context.
"""

from __future__ import annotations

import time
import traceback
from collections.abc import Mapping
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import (
    DEFAULT_TRACE_STATE,
    Link,
    NonRecordingSpan,
    Span,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
)
from opentelemetry.util import types

if TYPE_CHECKING:
    from .tracing import Tracing

# Every span starts with it; Status is immutable, so one is enough.
_UNSET = Status(StatusCode.UNSET)
SAMPLED = TraceFlags(TraceFlags.SAMPLED)
NOT_SAMPLED = TraceFlags(0)
_tuple_new = tuple.__new__


def _layout_is_known() -> bool:
    # SpanContext is a tuple (trace_id, span_id, is_remote, trace_flags,
    # trace_state, is_valid) whose __new__ range-checks the ids; usvc's ids are
    # valid by construction, so it builds the tuple itself when the layout is
    # the one it knows, and calls the constructor otherwise.
    made = SpanContext(3, 5, True, SAMPLED)
    return made == (3, 5, True, SAMPLED, DEFAULT_TRACE_STATE, True) and made.is_valid


_KNOWN_LAYOUT = _layout_is_known()


def span_context(
    trace_id: int, span_id: int, flags: TraceFlags, is_remote: bool = False
) -> SpanContext:
    """``SpanContext(trace_id, span_id, is_remote, flags)`` for ids known to be
    valid (non-zero, in range), without the constructor's checks."""
    if _KNOWN_LAYOUT:
        return _tuple_new(
            SpanContext, (trace_id, span_id, is_remote, flags, DEFAULT_TRACE_STATE, True)
        )
    return SpanContext(trace_id, span_id, is_remote, flags)


class UnsampledSpan(NonRecordingSpan):
    """The non-recording span of an unsampled request or egress attempt.

    Its :class:`SpanContext` is made only if something asks for it (a user's
    ``trace.get_current_span()``, a child span, a propagator): most unsampled
    requests never do.
    """

    def __init__(self, trace_id: int, span_id: int, flags: TraceFlags) -> None:
        self._ids = (trace_id, span_id, flags)
        self._context: SpanContext | None = None  # type: ignore[assignment]

    def get_span_context(self) -> SpanContext:
        context = self._context
        if context is None:
            trace_id, span_id, flags = self._ids
            context = self._context = span_context(trace_id, span_id, flags)
        return context

    def __repr__(self) -> str:
        return f"NonRecordingSpan({self.get_span_context()!r})"


class UsvcSpan(Span):
    """A recording, sampled span; exported as a ReadableSpan when it ends."""

    __slots__ = (
        "_attributes",
        "_context",
        "_end",
        "_events",
        "_kind",
        "_links",
        "_name",
        "_parent",
        "_start",
        "_status",
        "_tracing",
    )

    def __init__(
        self,
        tracing: Tracing,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        kind: SpanKind,
        attributes: dict[str, types.AttributeValue],
    ) -> None:
        self._tracing = tracing
        self._name = name
        self._context = context
        self._parent = parent
        self._kind = kind
        # usvc's own attributes are known-good; users' go through set_attribute.
        self._attributes = attributes
        # Made on the first event or link: most spans have none.
        self._events: list[Event] | None = None
        self._links: list[Link] | None = None
        self._status = _UNSET
        self._start = time.time_ns()
        self._end: int | None = None
        tracing.start(self, parent)

    # -- the API --------------------------------------------------------------
    def get_span_context(self) -> SpanContext:
        return self._context

    def is_recording(self) -> bool:
        return self._end is None

    def set_attribute(self, key: str, value: types.AttributeValue) -> None:
        if self._end is None:
            limits = self._tracing.span_limits
            kind = type(value)
            if (
                type(key) is str
                and key
                and (
                    kind is bool
                    or kind is int
                    or kind is float
                    or (
                        kind is str
                        and (
                            limits.max_span_attribute_length is None
                            or len(value) <= limits.max_span_attribute_length  # type: ignore[arg-type]
                        )
                    )
                )
            ):
                # A value the SDK keeps as it is: no BoundedAttributes (a lock, an
                # OrderedDict) for it. The count limit applies at export.
                self._attributes[key] = value
                return
            # Validate as the SDK does: a bad value is dropped with a warning,
            # a long one cut to the limit.
            cleaned = BoundedAttributes(
                attributes={key: value}, max_value_len=limits.max_span_attribute_length
            )
            self._attributes.update(cleaned)

    def set_attributes(self, attributes: Mapping[str, types.AttributeValue]) -> None:
        for key, value in attributes.items():
            self.set_attribute(key, value)

    def add_event(
        self,
        name: str,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
    ) -> None:
        if self._end is None:
            limits = self._tracing.span_limits
            bounded = BoundedAttributes(
                limits.max_event_attributes, attributes, max_value_len=limits.max_attribute_length
            )
            if self._events is None:
                self._events = []
            self._events.append(Event(name, bounded, timestamp))

    def add_link(self, context: SpanContext, attributes: types.Attributes = None) -> None:
        if self._end is None and context.is_valid:
            limits = self._tracing.span_limits
            bounded = BoundedAttributes(
                limits.max_link_attributes, attributes, max_value_len=limits.max_attribute_length
            )
            if self._links is None:
                self._links = []
            self._links.append(Link(context, bounded))

    def update_name(self, name: str) -> None:
        if self._end is None:
            self._name = name

    def set_status(self, status: Status | StatusCode, description: str | None = None) -> None:
        if self._end is not None:
            return
        if isinstance(status, StatusCode):
            status = Status(status, description)
        # OK is final; UNSET never overrides (the SDK's rule).
        if self._status.status_code is StatusCode.OK or status.status_code is StatusCode.UNSET:
            return
        self._status = status

    def record_exception(
        self,
        exception: BaseException,
        attributes: types.Attributes = None,
        timestamp: int | None = None,
        escaped: bool = False,
    ) -> None:
        details: dict[str, types.AttributeValue] = {
            "exception.type": type(exception).__qualname__,
            "exception.message": str(exception),
            "exception.stacktrace": "".join(traceback.format_exception(exception)),
            "exception.escaped": str(escaped),
        }
        details.update(attributes or {})
        self.add_event("exception", details, timestamp)

    def end(self, end_time: int | None = None) -> None:
        if self._end is not None:
            return
        self._end = end_time or time.time_ns()
        self._tracing.export(self)

    # -- for usvc itself ---------------------------------------------------------
    def outcome(self, status: int | None, error_from: int, error: str | None = None) -> None:
        """Record the HTTP outcome: a status at or over ``error_from`` (or an
        ``error``) marks the span as an error. No validation: usvc's own values."""
        if self._end is not None:
            return
        if status is not None:
            self._attributes["http.response.status_code"] = status
            if status >= error_from:
                self._status = Status(StatusCode.ERROR)
        if error is not None:
            self._attributes["error.type"] = error.split(" ", 1)[0].rstrip(":")
            self._status = Status(StatusCode.ERROR, error)

    # -- export ----------------------------------------------------------------
    def readable(self) -> ReadableSpan:
        tracing = self._tracing
        limits = tracing.span_limits
        attributes: Mapping[str, types.AttributeValue] = self._attributes
        max_attributes = limits.max_span_attributes
        if limits.max_span_attribute_length is not None or (
            max_attributes is not None and len(attributes) > max_attributes
        ):
            # Only when a limit can bite: usvc's own values are cut here too.
            attributes = BoundedAttributes(
                max_attributes, attributes, max_value_len=limits.max_span_attribute_length
            )
        else:
            attributes = MappingProxyType(self._attributes)
        events, links = self._events or [], self._links or []
        # Over the count limit, the newest are kept (the SDK's BoundedList does the same).
        if limits.max_events is not None and len(events) > limits.max_events:
            events = events[len(events) - limits.max_events :]
        if limits.max_links is not None and len(links) > limits.max_links:
            links = links[len(links) - limits.max_links :]
        return ReadableSpan(
            name=self._name,
            context=self._context,
            parent=self._parent,
            resource=tracing.provider.resource,
            attributes=attributes,
            events=tuple(events),
            links=tuple(links),
            kind=self._kind,
            status=self._status,
            start_time=self._start,
            end_time=self._end,
            instrumentation_scope=tracing.scope,
        )

    @property
    def name(self) -> str:
        return self._name

    @property
    def attributes(self) -> Mapping[str, Any]:
        return MappingProxyType(self._attributes)

    @property
    def parent(self) -> SpanContext | None:
        return self._parent

    # ReadableSpan's reading API, for span processors' on_start.
    @property
    def context(self) -> SpanContext:
        return self._context

    @property
    def kind(self) -> SpanKind:
        return self._kind

    @property
    def start_time(self) -> int:
        return self._start

    @property
    def end_time(self) -> int | None:
        return self._end

    @property
    def status(self) -> Status:
        return self._status

    @property
    def resource(self) -> Resource:
        return self._tracing.provider.resource

    @property
    def instrumentation_scope(self) -> InstrumentationScope:
        return self._tracing.scope

    def __repr__(self) -> str:
        return f"UsvcSpan({self._name!r}, {self._context!r})"
