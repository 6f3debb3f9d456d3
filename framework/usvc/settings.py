"""Typed settings read once from the environment.

Every value is parsed and checked at start-up. A bad value raises
:class:`SettingsError` with one line naming the variable, the value and what
was expected, so a misconfigured pod fails fast instead of at its first request.
A SettingsError nobody catches ends the process with that one line on stderr
and exit status 2 (this module installs the ``sys.excepthook`` that does it).
"""

from __future__ import annotations

import contextlib
import os
import socket
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from types import TracebackType
from typing import TypeVar
from urllib.parse import urlsplit

from .propagation import Propagator

T = TypeVar("T")

# "usvc" names usvc's own OpenTelemetry propagator (usvc.otel_propagator), which
# writes usvc's default formats.
PROPAGATOR_NAMES = frozenset({"tracecontext", "baggage", "b3", "b3multi", "none", "usvc"})
SAMPLER_NAMES = frozenset(
    {
        "always_on",
        "always_off",
        "traceidratio",
        "parentbased_always_on",
        "parentbased_always_off",
        "parentbased_traceidratio",
    }
)
EXPORTER_NAMES = frozenset({"otlp", "zipkin", "console", "none"})
LOG_LEVELS = frozenset({"DEBUG", "INFO", "WARNING", "ERROR"})


class SettingsError(ValueError):
    """A configuration value is missing or malformed; the message names it."""


def _fail(name: str, raw: str, expected: str) -> SettingsError:
    return SettingsError(f"{name}={raw!r} is invalid: expected {expected}")


def configuration_error(exc: SettingsError) -> str:
    """The one line a process prints on stderr before it exits 2."""
    return f"usvc: configuration error: {exc}"


def _one_line_for_uncaught(
    previous: Callable[[type[BaseException], BaseException, TracebackType | None], object],
) -> Callable[[type[BaseException], BaseException, TracebackType | None], None]:
    def hook(kind: type[BaseException], exc: BaseException, tb: TracebackType | None) -> None:
        if not isinstance(exc, SettingsError):
            previous(kind, exc, tb)
            return
        # `svc = usvc.Service(...)` at module level fails before `svc.run()`
        # can catch anything (the `python file.py` path): say it in one line.
        # The interpreter would exit 1 after a hook; 2 is the usage-error code
        # `usvc run` uses, so end here, after flushing what was written.
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(OSError, ValueError):
                stream.flush()
        try:
            print(configuration_error(exc), file=sys.stderr, flush=True)
        finally:
            os._exit(2)

    return hook


sys.excepthook = _one_line_for_uncaught(sys.excepthook)


def _bool(name: str, raw: str) -> bool:
    value = raw.strip().lower()
    if value in {"1", "true", "yes", "on"}:
        return True
    if value in {"0", "false", "no", "off", ""}:
        return False
    raise _fail(name, raw, "a boolean (true/false, 1/0, yes/no, on/off)")


def _number(low: float, high: float) -> Callable[[str, str], float]:
    def parse(name: str, raw: str) -> float:
        try:
            value = float(raw)
        except ValueError:
            raise _fail(name, raw, f"a number between {low:g} and {high:g}") from None
        if not low <= value <= high or value != value:
            raise _fail(name, raw, f"a number between {low:g} and {high:g}")
        return value

    return parse


def _integer(low: int, high: int) -> Callable[[str, str], int]:
    def parse(name: str, raw: str) -> int:
        try:
            value = int(raw)
        except ValueError:
            raise _fail(name, raw, f"an integer between {low} and {high}") from None
        if not low <= value <= high:
            raise _fail(name, raw, f"an integer between {low} and {high}")
        return value

    return parse


def _url(name: str, raw: str) -> str:
    parts = urlsplit(raw)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise _fail(name, raw, "an absolute http:// or https:// URL")
    return raw


def _header_list(name: str, raw: str) -> tuple[str, ...]:
    names = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
    for header in names:
        if not header.isascii() or not all(c.isalnum() or c in "-_" for c in header):
            raise _fail(name, raw, "a comma-separated list of HTTP header names")
    return names


def _path_list(name: str, raw: str) -> tuple[str, ...]:
    paths = tuple(part.strip() for part in raw.split(",") if part.strip())
    for path in paths:
        if not path.startswith("/") or not path.isascii() or not path.isprintable():
            raise _fail(name, raw, "a comma-separated list of paths, each starting with /")
    return paths


def _choice_list(allowed: frozenset[str]) -> Callable[[str, str], tuple[str, ...]]:
    def parse(name: str, raw: str) -> tuple[str, ...]:
        values = tuple(part.strip().lower() for part in raw.split(",") if part.strip())
        unknown = [value for value in values if value not in allowed]
        if unknown or not values:
            raise _fail(name, raw, "a comma-separated list of " + ", ".join(sorted(allowed)))
        return values

    return parse


def _choice(allowed: frozenset[str], *, upper: bool = False) -> Callable[[str, str], str]:
    def parse(name: str, raw: str) -> str:
        value = raw.strip().upper() if upper else raw.strip().lower()
        if value not in allowed:
            raise _fail(name, raw, "one of " + ", ".join(sorted(allowed)))
        return value

    return parse


def _passthrough_list(name: str, raw: str) -> tuple[str, ...]:
    names = _header_list(name, raw)
    # The propagator refuses credentials, hop-by-hop and its own trace headers;
    # ask it now, so the refusal names the variable instead of a traceback.
    try:
        Propagator(("tracecontext",), names)
    except ValueError as exc:
        raise SettingsError(f"{name}={raw!r} is invalid: {exc}") from None
    return names


def _text(name: str, raw: str) -> str:
    value = raw.strip()
    if not value or not value.isprintable():
        raise _fail(name, raw, "a non-empty printable string")
    return value


class Env:
    """Reads variables from one mapping (``os.environ`` by default) with typed casts."""

    def __init__(self, environ: Mapping[str, str] | None = None) -> None:
        self.environ: Mapping[str, str] = os.environ if environ is None else environ

    def get(self, name: str, cast: Callable[[str, str], T], default: T) -> T:
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return default
        return cast(name, raw)

    def optional(self, name: str, cast: Callable[[str, str], T]) -> T | None:
        raw = self.environ.get(name)
        if raw is None or raw.strip() == "":
            return None
        return cast(name, raw)

    def url(self, name: str) -> str | None:
        """An optional absolute URL, for a service's own upstream variables."""
        return self.optional(name, _url)

    def flag(self, name: str, default: bool = False) -> bool:
        return self.get(name, _bool, default)

    def seconds(self, name: str, default: float, high: float = 3600.0) -> float:
        return self.get(name, _number(0.0, high), default)


@dataclass(frozen=True)
class Settings:
    service_name: str
    service_version: str = "v1"
    service_env: str = "dev"
    # Which replica this is: the pod name in Kubernetes, the container's in compose.
    service_instance: str = field(default_factory=socket.gethostname)
    host: str = "127.0.0.1"
    port: int = 8080
    upstream_uri: str | None = None
    egress_proxy: str | None = None
    egress_connect_timeout: float = 1.0
    egress_timeout: float = 10.0
    request_deadline: float = 15.0
    egress_retries: int = 2
    egress_retry_backoff: float = 0.05
    passthrough_headers: tuple[str, ...] = ("x-dev-user",)
    # Request headers recorded on the server span (see tracing.header_attributes).
    span_headers: tuple[str, ...] = ("x-dev-user",)
    fault_injection: bool = False
    # Served outside the telemetry: not traced, counted or logged (probes and scrapes).
    telemetry_excluded_paths: tuple[str, ...] = ("/healthz", "/readyz", "/metrics")
    drain_seconds: float = 5.0
    shutdown_timeout: float = 15.0
    # A connection must send its first request head within this (slowloris).
    request_head_timeout: float = 5.0
    log_level: str = "INFO"
    access_log: bool = True
    otel_sdk_disabled: bool = False
    otel_service_name: str | None = None
    otel_traces_sampler: str = "parentbased_always_on"
    otel_traces_sampler_arg: float = 1.0
    otel_traces_exporter: str = "otlp"
    otel_exporter_otlp_endpoint: str = "http://127.0.0.1:4318"
    otel_exporter_zipkin_endpoint: str = "http://127.0.0.1:9411/api/v2/spans"
    # The spec's default is 10 s; shorter, so an absent collector can't hold up a shutdown.
    otel_exporter_timeout: float = 2.0
    otel_propagators: tuple[str, ...] = ("tracecontext", "baggage")
    # The whole environment, for the service's own variables; kept out of
    # repr() because it holds whatever secrets the process was given.
    extra: Mapping[str, str] = field(default_factory=dict, repr=False)

    @property
    def trace_service_name(self) -> str:
        return self.otel_service_name or self.service_name

    @classmethod
    def from_env(cls, default_name: str, environ: Mapping[str, str] | None = None) -> Settings:
        """Read every setting; raise :class:`SettingsError` on the first bad one."""
        env = Env(environ)
        seconds = _number(0.0, 3600.0)
        positive = _number(0.001, 3600.0)
        sampler = env.get("OTEL_TRACES_SAMPLER", _choice(SAMPLER_NAMES), cls.otel_traces_sampler)
        request_deadline, egress_timeout = _deadline_and_timeout(env, positive)
        settings = cls(
            service_name=env.get("SERVICE_NAME", _text, default_name),
            service_version=env.get("SERVICE_VERSION", _text, cls.service_version),
            service_env=env.get("SERVICE_ENV", _text, cls.service_env),
            service_instance=env.get("SERVICE_INSTANCE", _text, socket.gethostname()),
            host=env.get("HOST", _text, cls.host),
            port=env.get("PORT", _integer(0, 65535), cls.port),
            upstream_uri=env.optional("UPSTREAM_URI", _url),
            egress_proxy=env.optional("EGRESS_PROXY", _url),
            egress_connect_timeout=env.get(
                "EGRESS_CONNECT_TIMEOUT", positive, cls.egress_connect_timeout
            ),
            egress_timeout=egress_timeout,
            request_deadline=request_deadline,
            egress_retries=env.get("EGRESS_RETRIES", _integer(0, 10), cls.egress_retries),
            egress_retry_backoff=env.get("EGRESS_RETRY_BACKOFF", seconds, cls.egress_retry_backoff),
            passthrough_headers=env.get(
                "PASSTHROUGH_HEADERS", _passthrough_list, cls.passthrough_headers
            ),
            span_headers=env.get("SPAN_HEADERS", _header_list, cls.span_headers),
            fault_injection=env.get("FAULT_INJECTION", _bool, cls.fault_injection),
            telemetry_excluded_paths=env.get(
                "TELEMETRY_EXCLUDED_PATHS", _path_list, cls.telemetry_excluded_paths
            ),
            drain_seconds=env.get("DRAIN_SECONDS", seconds, cls.drain_seconds),
            shutdown_timeout=env.get("SHUTDOWN_TIMEOUT", seconds, cls.shutdown_timeout),
            request_head_timeout=env.get(
                "REQUEST_HEAD_TIMEOUT", positive, cls.request_head_timeout
            ),
            log_level=env.get("LOG_LEVEL", _choice(LOG_LEVELS, upper=True), cls.log_level),
            access_log=env.get("ACCESS_LOG", _bool, cls.access_log),
            otel_sdk_disabled=env.get("OTEL_SDK_DISABLED", _bool, cls.otel_sdk_disabled),
            otel_service_name=env.optional("OTEL_SERVICE_NAME", _text),
            otel_traces_sampler=sampler,
            otel_traces_sampler_arg=env.get(
                "OTEL_TRACES_SAMPLER_ARG", _number(0.0, 1.0), cls.otel_traces_sampler_arg
            ),
            otel_traces_exporter=env.get(
                "OTEL_TRACES_EXPORTER", _choice(EXPORTER_NAMES), cls.otel_traces_exporter
            ),
            otel_exporter_otlp_endpoint=env.get(
                "OTEL_EXPORTER_OTLP_ENDPOINT", _url, cls.otel_exporter_otlp_endpoint
            ),
            otel_exporter_zipkin_endpoint=env.get(
                "OTEL_EXPORTER_ZIPKIN_ENDPOINT", _url, cls.otel_exporter_zipkin_endpoint
            ),
            otel_exporter_timeout=env.get(
                "OTEL_EXPORTER_OTLP_TIMEOUT", positive, cls.otel_exporter_timeout
            ),
            otel_propagators=env.get(
                "OTEL_PROPAGATORS", _choice_list(PROPAGATOR_NAMES), cls.otel_propagators
            ),
            extra=dict(env.environ),
        )
        if "usvc" in settings.otel_propagators:
            formats = (
                cls.otel_propagators if f == "usvc" else (f,) for f in settings.otel_propagators
            )
            unique = tuple(dict.fromkeys(f for group in formats for f in group))
            settings = replace(settings, otel_propagators=unique)
        return settings

    @property
    def env(self) -> Env:
        """Typed access to service-specific variables (e.g. ``FALLBACK_URI``)."""
        return Env(self.extra)


def _deadline_and_timeout(env: Env, positive: Callable[[str, str], float]) -> tuple[float, float]:
    """REQUEST_DEADLINE and EGRESS_TIMEOUT, one attempt never longer than the budget.

    An unset EGRESS_TIMEOUT follows a shorter deadline down (REQUEST_DEADLINE=2
    alone means 2 s attempts); one set explicitly above the deadline is an
    error that says which of the two to change.
    """
    deadline = env.get("REQUEST_DEADLINE", positive, Settings.request_deadline)
    explicit = env.optional("EGRESS_TIMEOUT", positive)
    if explicit is None:
        return deadline, min(Settings.egress_timeout, deadline)
    if explicit > deadline:
        raw = env.environ["EGRESS_TIMEOUT"]
        given = env.optional("REQUEST_DEADLINE", positive)
        where = (
            f"REQUEST_DEADLINE ({deadline:g} s, the default)"
            if given is None
            else f"REQUEST_DEADLINE={env.environ['REQUEST_DEADLINE']!r}"
        )
        raise SettingsError(
            f"EGRESS_TIMEOUT={raw!r} is invalid: expected at most {where}, the budget of all "
            f"attempts; lower EGRESS_TIMEOUT or raise REQUEST_DEADLINE to at least {explicit:g}"
        )
    return deadline, explicit
