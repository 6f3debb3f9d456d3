"""OpenTelemetry tracing: one provider per service, a spec-faithful sampler, exporters.

Trace headers are parsed by :mod:`usvc.propagation`, not by OpenTelemetry's
propagators (see TOOLING.md for their gaps). The sampler therefore gets the
incoming B3/W3C sampling state from usvc instead of guessing it from trace
flags: a B3 "defer" lets this service decide, which OpenTelemetry's own
parent-based sampler would turn into "deny".
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from contextvars import ContextVar

from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
)
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import (
    ALWAYS_OFF,
    ALWAYS_ON,
    Decision,
    Sampler,
    SamplingResult,
    TraceIdRatioBased,
)
from opentelemetry.trace import Link, SpanKind, Tracer, get_current_span
from opentelemetry.trace.span import TraceState
from opentelemetry.util.types import Attributes

from .propagation import Sampling
from .settings import Settings

log = logging.getLogger("usvc.tracing")

# The incoming sampling state for the server span about to start. Set by the
# middleware right before start_span, read by the sampler; no other use.
incoming_sampling: ContextVar[Sampling | None] = ContextVar("usvc_sampling", default=None)
# The trace id usvc chose for a new trace, for the id generator to hand the SDK.
chosen_trace_id: ContextVar[int | None] = ContextVar("usvc_trace_id", default=None)


class ChosenIdGenerator(RandomIdGenerator):
    """Gives the SDK the trace id usvc already sampled on, so both agree."""

    def generate_trace_id(self) -> int:
        chosen = chosen_trace_id.get()
        return chosen if chosen is not None else super().generate_trace_id()


_SAMPLE = SamplingResult(Decision.RECORD_AND_SAMPLE)
_DROP = SamplingResult(Decision.DROP)


class UsvcSampler(Sampler):
    """Parent-based sampling that keeps B3's four sampling states apart.

    A remote parent's accept/debug samples, deny drops, defer (or no parent)
    asks the root sampler. A local parent (a span of this process) is followed.
    """

    def __init__(self, root: Sampler, parent_based: bool = True) -> None:
        self._root = root
        self._parent_based = parent_based

    def should_sample(
        self,
        parent_context: Context | None,
        trace_id: int,
        name: str,
        kind: SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[Link] | None = None,
        trace_state: TraceState | None = None,
    ) -> SamplingResult:
        if self._parent_based:
            parent = get_current_span(parent_context).get_span_context()
            if parent.is_valid and not parent.is_remote:
                return _SAMPLE if parent.trace_flags.sampled else _DROP
            state = incoming_sampling.get()
            if state is Sampling.ACCEPT or state is Sampling.DEBUG:
                return _SAMPLE
            if state is Sampling.DENY:
                return _DROP
        return self._root.should_sample(parent_context, trace_id, name, kind, attributes, links)

    def get_description(self) -> str:
        kind = "ParentBased" if self._parent_based else "Root"
        return f"Usvc{kind}{{{self._root.get_description()}}}"


class Decider:
    """The sampling decision for a server span, made before any span exists.

    Unsampled requests then cost a NonRecordingSpan instead of an SDK span;
    sampled ones go through the SDK, whose :class:`UsvcSampler` reaches the
    same answer from the same inputs (the ratio depends on the trace id only).
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
        if self.parent_based:
            if state is Sampling.ACCEPT or state is Sampling.DEBUG:
                return True
            if state is Sampling.DENY:
                return False
        return self.always or trace_id & TraceIdRatioBased.TRACE_ID_LIMIT < self.bound


def build_sampler(settings: Settings) -> Sampler:
    name = settings.otel_traces_sampler
    parent_based = name.startswith("parentbased_")
    base = name.removeprefix("parentbased_")
    root: Sampler
    if base == "always_on":
        root = ALWAYS_ON
    elif base == "always_off":
        root = ALWAYS_OFF
    else:
        root = TraceIdRatioBased(settings.otel_traces_sampler_arg)
    return UsvcSampler(root, parent_based)


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


class Tracing:
    """A tracer provider with this service's resource, sampler and exporter."""

    def __init__(
        self, settings: Settings, exporter: SpanExporter | None = None, *, batch: bool = True
    ) -> None:
        self.enabled = not settings.otel_sdk_disabled
        resource = Resource.create(
            {
                "service.name": settings.trace_service_name,
                "service.version": settings.service_version,
                "deployment.environment": settings.service_env,
                "deployment.environment.name": settings.service_env,
            }
        )
        self.provider = TracerProvider(
            resource=resource, sampler=build_sampler(settings), id_generator=ChosenIdGenerator()
        )
        self.decider = Decider(settings)
        if exporter is None and self.enabled:
            exporter = build_exporter(settings)
        if exporter is not None:
            processor: SpanProcessor
            if not batch or settings.otel_traces_exporter == "console":
                processor = SimpleSpanProcessor(exporter)
            else:
                processor = BatchSpanProcessor(exporter)
            self.provider.add_span_processor(processor)
        self.tracer: Tracer = self.provider.get_tracer("usvc")

    def shutdown(self) -> None:
        """Flush what is queued and stop the exporter."""
        try:
            self.provider.force_flush(timeout_millis=5000)
            self.provider.shutdown()
        except Exception:  # an exporter failure must not block shutdown
            log.warning("span exporter failed to flush", exc_info=True)
