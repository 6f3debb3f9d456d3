"""OpenTelemetry tracing: one provider per service, a spec-faithful sampler, exporters.

Trace headers are parsed by :mod:`usvc.propagation`, not by OpenTelemetry's
propagators (``tests/framework/test_otel_interop.py`` shows where they
differ), so a request's sampling is decided here from that parse
(:class:`HeadSampler`), before any span exists. The spans usvc makes itself are
:class:`usvc.spans.UsvcSpan`; they reach the provider's span processors
(``on_start`` and ``on_end``) and exporters like any SDK span, within the
provider's span limits and with ids from its id generator.
"""

from __future__ import annotations

import logging
import random

from opentelemetry import context as otel_context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import IdGenerator, RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    ParentBased,
    Sampler,
    TraceIdRatioBased,
)
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import NonRecordingSpan, SpanContext, Tracer, set_span_in_context

from .propagation import Sampling, new_span_id, new_trace_id
from .settings import Settings
from .spans import UsvcSpan
from .version import USVC_VERSION

log = logging.getLogger("usvc.tracing")
_getrandbits = random.getrandbits


class HeadSampler:
    """The sampling decision for a request's server span, made before any span exists.

    Parent-based like OTEL_TRACES_SAMPLER says, but from usvc's parse of the
    trace headers: B3's accept and debug sample, deny drops, and "defer" (or
    no parent) lets the ratio decide on the trace id, as the root sampler
    would. OpenTelemetry's ParentBased would read "defer" as "deny".
    Unsampled requests then cost a NonRecordingSpan and nothing else.
    """

    def __init__(self, settings: Settings) -> None:
        name = settings.otel_traces_sampler
        self.parent_based = name.startswith("parentbased_")
        base = name.removeprefix("parentbased_")
        ratio = {"always_on": 1.0, "always_off": 0.0}.get(base, settings.otel_traces_sampler_arg)
        # TraceIdRatioBased's rule: the low 64 bits of the trace id below a bound.
        self.bound = TraceIdRatioBased.get_bound_for_rate(ratio)
        self.always = ratio >= 1.0

    def sampled(self, state: Sampling, trace_id: int) -> bool:
        # The members read from module globals: an Enum's attribute lookup is not cheap.
        if self.parent_based and state is not _DEFER:
            return state is not _DENY  # accept or debug
        return self.always or trace_id & _TRACE_ID_LIMIT < self.bound


_DEFER = Sampling.DEFER
_DENY = Sampling.DENY
_TRACE_ID_LIMIT = TraceIdRatioBased.TRACE_ID_LIMIT


# Attribute names for request headers users search traces by; any other header
# in SPAN_HEADERS becomes OpenTelemetry's http.request.header.<name>
# (https://opentelemetry.io/docs/specs/semconv/http/http-spans/).
NAMED_HEADERS = {"x-dev-user": "usvc.dev_user"}


def header_attributes(headers: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """(header, attribute) pairs for the server span, from the SPAN_HEADERS setting."""
    return tuple((h, NAMED_HEADERS.get(h, f"http.request.header.{h}")) for h in headers)


def build_sampler(settings: Settings) -> Sampler:
    """The SDK sampler, for spans users start with ``svc.tracer``.

    Inside a request their parent is the (local) server span, whose decision
    they follow; outside one, the root sampler decides.
    """
    name = settings.otel_traces_sampler
    base = name.removeprefix("parentbased_")
    root: Sampler
    if base == "always_on":
        root = ALWAYS_ON
    elif base == "always_off":
        root = ALWAYS_OFF
    else:
        root = TraceIdRatioBased(settings.otel_traces_sampler_arg)
    return ParentBased(root) if name.startswith("parentbased_") else root


def build_exporter(settings: Settings) -> SpanExporter | None:
    """The exporter OTEL_TRACES_EXPORTER names; None for ``none``."""
    name = settings.otel_traces_exporter
    if name == "none":
        return None
    if name == "console":
        return ConsoleSpanExporter(service_name=settings.trace_service_name)
    if name == "zipkin":
        from opentelemetry.exporter.zipkin.json import ZipkinExporter

        return ZipkinExporter(
            endpoint=settings.otel_exporter_zipkin_endpoint,
            timeout=int(max(settings.otel_exporter_timeout, 1)),
        )
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    endpoint = settings.otel_exporter_otlp_endpoint.rstrip("/")
    if not endpoint.endswith("/v1/traces"):
        endpoint += "/v1/traces"
    return OTLPSpanExporter(endpoint=endpoint, timeout=settings.otel_exporter_timeout)


def _random_trace_id() -> int:
    return _getrandbits(128) or new_trace_id()


def _random_span_id() -> int:
    return _getrandbits(64) or new_span_id()


class Tracing:
    """A tracer provider with this service's resource, sampler and exporter.

    ``id_generator`` and ``span_limits`` go to the provider as the SDK takes
    them (``SpanLimits()`` reads the ``OTEL_*_LIMIT`` variables); usvc's own
    spans use them too.
    """

    def __init__(
        self,
        settings: Settings,
        exporter: SpanExporter | None = None,
        *,
        batch: bool = True,
        id_generator: IdGenerator | None = None,
        span_limits: SpanLimits | None = None,
    ) -> None:
        self.enabled = not settings.otel_sdk_disabled
        resource = Resource.create(
            {
                "service.name": settings.trace_service_name,
                "service.version": settings.service_version,
                "service.instance.id": settings.service_instance,
                "deployment.environment": settings.service_env,
                "deployment.environment.name": settings.service_env,
            }
        )
        self.span_limits = span_limits or SpanLimits()
        self.provider = TracerProvider(
            resource=resource,
            sampler=build_sampler(settings),
            id_generator=id_generator,
            span_limits=self.span_limits,
        )
        self.id_generator = self.provider.id_generator
        if type(self.id_generator) is RandomIdGenerator:
            # The SDK's default generator is random.getrandbits, non-zero: called
            # directly, without its two method calls per id.
            self.new_trace_id = _random_trace_id  # type: ignore[method-assign]
            self.new_span_id = _random_span_id  # type: ignore[method-assign]
        # W3C Level 2: only a generator that says so earns the random-trace-id flag.
        self.random_trace_ids = self.id_generator.is_trace_id_random()
        self.head_sampler = HeadSampler(settings)
        self.scope = InstrumentationScope("usvc", USVC_VERSION)
        if exporter is None and self.enabled:
            exporter = build_exporter(settings)
        if exporter is not None:
            processor: SpanProcessor
            if not batch or settings.otel_traces_exporter == "console":
                processor = SimpleSpanProcessor(exporter)
            else:
                processor = BatchSpanProcessor(exporter)
            self.provider.add_span_processor(processor)
        self.tracer: Tracer = self.provider.get_tracer("usvc", USVC_VERSION)
        # The provider's processors (ours and any a user adds) get usvc's spans too.
        self._processor = self.provider._active_span_processor

    def new_trace_id(self) -> int:
        return self.id_generator.generate_trace_id()

    def new_span_id(self) -> int:
        return self.id_generator.generate_span_id()

    def start(self, span: UsvcSpan, parent: SpanContext | None) -> None:
        """Tell the span processors a span started, as the SDK's spans do."""
        if not self._processor._span_processors:
            return  # nobody listens (OTEL_TRACES_EXPORTER=none, no processor added)
        if parent is None:
            parent_context = None
        elif parent.is_remote:
            parent_context = set_span_in_context(NonRecordingSpan(parent))
        else:  # a client span: its parent, the server span, is the current span
            parent_context = otel_context.get_current()
        # The SDK types on_start for its own Span; usvc's spans have the same reading API.
        self._processor.on_start(span, parent_context=parent_context)  # type: ignore[arg-type]

    def export(self, span: UsvcSpan) -> None:
        """Hand a finished span to the span processors, as the SDK's spans are.

        With no processor (OTEL_TRACES_EXPORTER=none and none added) there is
        nobody to hand it to, and no ReadableSpan is built. A processor added
        later gets the spans that end after it was added, as with the SDK.
        """
        processor = self._processor
        if processor._span_processors:
            processor.on_end(span.readable())

    def shutdown(self) -> None:
        """Flush what is queued and stop the exporter."""
        try:
            self.provider.force_flush(timeout_millis=5000)
            self.provider.shutdown()
        except Exception:  # an exporter failure must not block shutdown
            log.warning("span exporter failed to flush", exc_info=True)
