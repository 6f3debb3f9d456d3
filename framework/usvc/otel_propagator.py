"""usvc's propagation as an OpenTelemetry ``TextMapPropagator``.

Registered under the ``opentelemetry_propagator`` entry point group as
``usvc``, so ``OTEL_PROPAGATORS=usvc`` makes ``opentelemetry.propagate`` — and
every instrumentation that uses it (httpx, grpc, asyncpg, ...) — read and
write the same headers as usvc's egress: W3C Trace Context with its Level 2
rules, W3C Baggage, B3 with its four sampling states, ``x-request-id``,
``x-ot-span-context`` and the pass-through allow-list. Use ``usvc`` alone:
it writes every format itself.

Made by the entry point (no arguments) it writes usvc's default formats and
reads the allow-list from ``PASSTHROUGH_HEADERS``; give it a service's own
:class:`usvc.propagation.Propagator` to match that service exactly::

    opentelemetry.propagate.set_global_textmap(UsvcTextMapPropagator(svc.propagator))

What OpenTelemetry's ``SpanContext`` cannot hold (B3 debug, a 64-bit trace
id, a Level 2 tracestate key, the caller's pass-through headers) is kept in
the context beside it, so a span continuing an extracted context re-emits it.
Its trace flags have no "defer": a deferred B3 decision reaches an SDK
sampler as not sampled (usvc's own sampler, :class:`usvc.tracing.HeadSampler`,
reads usvc's parse instead). Inside a usvc request, injection uses that
request's context (``usvc.context.current``).
"""

from __future__ import annotations

from typing import Any, overload

from opentelemetry import context as otel_context
from opentelemetry.context import Context
from opentelemetry.propagators.textmap import (
    CarrierT,
    Getter,
    Setter,
    TextMapPropagator,
    default_getter,
    default_setter,
)
from opentelemetry.trace import (
    NonRecordingSpan,
    SpanContext,
    TraceFlags,
    TraceState,
    get_current_span,
    set_span_in_context,
)

from .context import current_request
from .propagation import EMPTY, OWN_HEADERS, Incoming, Propagator, Sampling
from .settings import Env, Settings, _passthrough_list

__all__ = ["UsvcTextMapPropagator"]

_INCOMING_KEY = otel_context.create_key("usvc-incoming")


class _CarrierHeaders:
    """A carrier read through an OpenTelemetry Getter, as the headers extract reads."""

    def __init__(self, carrier: Any, getter: Getter[Any]) -> None:
        self._carrier = carrier
        self._getter = getter

    def _values(self, key: str) -> list[str]:
        return self._getter.get(self._carrier, key) or []

    @overload
    def getall(self, key: str, /) -> list[str]: ...
    @overload
    def getall(self, key: str, default: tuple[()], /) -> list[str] | tuple[()]: ...
    def getall(self, key: str, default: Any = None, /) -> Any:
        values = self._values(key)
        if values:
            return values
        if default is None:
            raise KeyError(key)
        return default

    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, default: None, /) -> str | None: ...
    def get(self, key: str, default: None = None, /) -> str | None:
        values = self._values(key)
        return values[0] if values else default

    def __contains__(self, key: object, /) -> bool:
        return isinstance(key, str) and bool(self._values(key))


class UsvcTextMapPropagator(TextMapPropagator):
    """See the module docstring."""

    def __init__(self, propagator: Propagator | None = None) -> None:
        if propagator is None:
            passthrough = Env().get(
                "PASSTHROUGH_HEADERS", _passthrough_list, Settings.passthrough_headers
            )
            propagator = Propagator(passthrough=passthrough)
        self.propagator = propagator
        self._fields = frozenset((*OWN_HEADERS, *propagator.passthrough))

    def extract(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        getter: Getter[CarrierT] = default_getter,
    ) -> Context:
        if context is None:
            context = Context()
        incoming = self.propagator.extract(_CarrierHeaders(carrier, getter))
        if incoming is EMPTY:
            return context
        context = otel_context.set_value(_INCOMING_KEY, incoming, context)
        if incoming.trace_id is None or incoming.parent_span_id is None:
            return context
        # OpenTelemetry's flags have no "defer": only accept and debug are sampled.
        sampled = incoming.sampling is Sampling.ACCEPT or incoming.sampling is Sampling.DEBUG
        flags = (incoming.trace_flags & ~TraceFlags.SAMPLED) | (
            TraceFlags.SAMPLED if sampled else 0
        )
        trace_state = TraceState.from_header([incoming.tracestate]) if incoming.tracestate else None
        span_context = SpanContext(
            incoming.trace_id,
            incoming.parent_span_id,
            is_remote=True,
            trace_flags=TraceFlags(flags),
            trace_state=trace_state,
        )
        return set_span_in_context(NonRecordingSpan(span_context), context)

    def inject(
        self,
        carrier: CarrierT,
        context: Context | None = None,
        setter: Setter[CarrierT] = default_setter,
    ) -> None:
        span = get_current_span(context)
        span_context = span.get_span_context()
        if not span_context.is_valid:
            return
        trace_id = span_context.trace_id
        request_id = None
        incoming = otel_context.get_value(_INCOMING_KEY, context)
        if not isinstance(incoming, Incoming):
            request = current_request.get()
            if request is not None and request.trace_id == trace_id:
                incoming, request_id = request.incoming, request.request_id
            else:
                incoming = EMPTY._replace(
                    trace_id=trace_id,
                    trace_flags=int(span_context.trace_flags),
                    tracestate=span_context.trace_state.to_header(),
                )
        parent = getattr(span, "parent", None)
        out: dict[str, str] = {}
        self.propagator.inject(
            incoming,
            trace_id,
            span_context.span_id,
            span_context.trace_flags.sampled,
            out,
            parent_span_id=parent.span_id if isinstance(parent, SpanContext) else None,
            request_id=request_id,
        )
        for name, value in out.items():
            setter.set(carrier, name, value)

    @property
    def fields(self) -> set[str]:
        return set(self._fields)
