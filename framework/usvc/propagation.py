"""Trace-context propagation: parse incoming headers once, write outgoing ones.

Formats, with the text each rule follows:

* W3C Trace Context (``traceparent``, ``tracestate``), including the Level 2
  "random" trace-flag (0x02) and the Level 2 tracestate key grammar.
* W3C Baggage (``baggage``).
* openzipkin/b3-propagation: the single ``b3`` header and the multiple
  ``x-b3-*`` headers, keeping the four sampling states (accept, deny, defer,
  debug) distinct.
* ``x-request-id`` (Envoy's request id), ``x-ot-span-context`` and an
  allow-list of headers passed through unchanged (default ``x-dev-user``).

Extraction accepts every format whatever the configuration (be liberal in what
you accept); the configured formats only choose what :meth:`Propagator.inject`
writes. Nothing here raises on malformed input: what was dropped, and why, is
listed in :attr:`Incoming.problems`. The problems never quote header text, so
they are safe to log.

This runs on every request, so each header is read once, every pattern is
compiled at import, and a request without trace headers costs a handful of
dictionary lookups.
"""

from __future__ import annotations

import enum
import random
import re
from collections.abc import MutableMapping, Sequence
from dataclasses import FrozenInstanceError
from typing import NamedTuple, Protocol, overload

__all__ = [
    "BAGGAGE_MAX_BYTES",
    "BAGGAGE_MAX_MEMBERS",
    "EMPTY",
    "FORMATS",
    "TRACESTATE_MAX_LENGTH",
    "Headers",
    "Incoming",
    "Propagator",
    "Sampling",
    "new_request_id",
    "new_span_id",
    "new_trace_id",
    "with_request_id",
]

FORMATS = frozenset({"tracecontext", "baggage", "b3", "b3multi", "none"})

# W3C Baggage §Limits: a platform MUST propagate all members while the result
# holds at most 64 members and 8192 bytes; beyond that it MAY drop whole members.
BAGGAGE_MAX_MEMBERS = 64
BAGGAGE_MAX_BYTES = 8192
# baggage-string = list-member 0*179( OWS "," OWS list-member ): more is not baggage.
_BAGGAGE_MAX_RAW_MEMBERS = 180

# W3C Trace Context §tracestate Limits: vendors SHOULD propagate at least 512
# characters and SHOULD document their maximum. Ours stays well under aiohttp's
# default 8190-byte field limit so the next hop never rejects the request.
TRACESTATE_MAX_LENGTH = 4096
_TRACESTATE_MAX_MEMBERS = 32
# Empty list members are allowed, so the raw count may exceed 32; this bound only
# caps the work an absurd header can cause.
_TRACESTATE_MAX_RAW_MEMBERS = 128
# §tracestate Limits: "Entries larger than 128 characters long SHOULD be removed first."
_TRACESTATE_LONG_ENTRY = 128

REQUEST_ID_MAX_LENGTH = 128
OT_SPAN_CONTEXT_MAX_LENGTH = 1024
PASSTHROUGH_MAX_LENGTH = 1024

_TRACE_ID_LIMIT = 1 << 128
_SPAN_ID_LIMIT = 1 << 64
_FLAG_SAMPLED = 0x01
_FLAG_RANDOM = 0x02
# The flags usvc sends are those two bits: their hex (after traceparent's last
# dash), without a format per call.
_FLAGS_HEX = ("-00", "-01", "-02", "-03")
_OWS = " \t"

# traceparent, §traceparent Header Field Values and §Versioning of traceparent:
# version "-" trace-id "-" parent-id "-" trace-flags, all lowercase hex; what
# follows a further "-" belongs to a future version and is not parsed.
_TRACEPARENT_RE = re.compile(
    r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?", re.DOTALL
)
# The version usvc and every current tracer send: exactly 55 characters, its
# fields at fixed offsets, so the fast path checks it whole and slices.
_TRACEPARENT_00_RE = re.compile(r"00-[0-9a-f]{32}-[0-9a-f]{16}-[0-9a-f]{2}")
_ZERO_SPAN_HEX = "0" * 16
# Incoming.b3's values: the two B3 forms, by their OTEL_PROPAGATORS names.
_B3_SINGLE = "b3"
_B3_MULTI = "b3multi"
# tracestate list-member, Level 2 grammar:
#   key      = ( lcalpha / DIGIT ) 0*255 ( keychar )
#   keychar  = lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@"
#   value    = 0*255(chr) nblk-chr
#   nblk-chr = %x21-2B / %x2D-3C / %x3E-7E ; chr = %x20 / nblk-chr
# Level 1's tenant@system split is gone: "@" may appear anywhere after the first
# character, and every Level 1 key is still a Level 2 key.
_TRACESTATE_MEMBER_RE = re.compile(
    r"[a-z0-9][a-z0-9_\-*/@]{0,255}=[\x20-\x2b\x2d-\x3c\x3e-\x7e]{0,255}[\x21-\x2b\x2d-\x3c\x3e-\x7e]"
)
# Baggage §Definition (RFC 7230 token for keys, baggage-octet for values):
#   list-member = key OWS "=" OWS value *( OWS ";" OWS property )
#   property    = key OWS "=" OWS value / key OWS
# The member is stripped of outer OWS first, so no two whitespace runs meet and
# the pattern cannot backtrack badly.
_TOKEN = r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+"
_BAGGAGE_VALUE = r"[\x21\x23-\x2b\x2d-\x3a\x3c-\x5b\x5d-\x7e]*"
_BAGGAGE_MEMBER_RE = re.compile(
    rf"{_TOKEN}[ \t]*=[ \t]*{_BAGGAGE_VALUE}"
    rf"(?:[ \t]*;[ \t]*{_TOKEN}(?:[ \t]*=[ \t]*{_BAGGAGE_VALUE})?)*"
)
# b3 single header: {TraceId}-{SpanId}[-{SamplingState}][-{ParentSpanId}].
_B3_SINGLE_RE = re.compile(
    r"([0-9a-f]{32}|[0-9a-f]{16})-([0-9a-f]{16})(?:-([01d]))?(?:-([0-9a-f]{16}))?"
)
_B3_TRACE_ID_RE = re.compile(r"[0-9a-f]{32}|[0-9a-f]{16}")
_B3_SPAN_ID_RE = re.compile(r"[0-9a-f]{16}")
# x-request-id: visible ASCII only, so it is safe to log and to forward.
_REQUEST_ID_RE = re.compile(rf"[\x21-\x7e]{{1,{REQUEST_ID_MAX_LENGTH}}}")
_OT_SPAN_CONTEXT_RE = re.compile(rf"[\x20-\x7e]{{1,{OT_SPAN_CONTEXT_MAX_LENGTH}}}")
# Pass-through values: visible ASCII, space and tab (RFC 9110 field-value without
# obs-text, which aiohttp's client could not re-encode).
_PASSTHROUGH_VALUE_RE = re.compile(rf"[\t\x20-\x7e]{{1,{PASSTHROUGH_MAX_LENGTH}}}")
_HEADER_NAME_RE = re.compile(_TOKEN)

_BAD_REQUEST_ID = f"x-request-id: not 1-{REQUEST_ID_MAX_LENGTH} visible ASCII characters, dropped"
_BAD_OT_SPAN_CONTEXT = (
    f"x-ot-span-context: not 1-{OT_SPAN_CONTEXT_MAX_LENGTH} printable ASCII characters, dropped"
)

# Headers this module reads and writes itself; they cannot be pass-through names.
OWN_HEADERS = frozenset(
    {
        "traceparent",
        "tracestate",
        "baggage",
        "b3",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-parentspanid",
        "x-b3-sampled",
        "x-b3-flags",
        "x-request-id",
        "x-ot-span-context",
    }
)
# Credentials and per-connection headers must never be copied to another hop,
# whatever the configuration says.
_NEVER_PASSTHROUGH = frozenset(
    {
        "authorization",
        "proxy-authorization",
        "cookie",
        "set-cookie",
        "host",
        "connection",
        "keep-alive",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "content-type",
        "content-encoding",
        "expect",
    }
)


class Sampling(enum.Enum):
    """B3 sampling state; W3C's sampled bit maps to ACCEPT or DENY."""

    ACCEPT = "1"
    DENY = "0"
    DEFER = ""
    DEBUG = "d"


# Read from globals in the per-request paths: an Enum member lookup is not cheap.
_ACCEPT = Sampling.ACCEPT
_DENY = Sampling.DENY
_DEFER = Sampling.DEFER
_DEBUG = Sampling.DEBUG
_getrandbits = random.getrandbits


class Incoming(NamedTuple):
    """What the caller sent, validated. Build it with :meth:`Propagator.extract`
    (or :data:`EMPTY` when there is no caller); :meth:`Propagator.inject` trusts
    its fields to be valid.

    Immutable (``_replace`` makes a changed copy). A named tuple rather than a
    frozen dataclass: one is built per request, and a frozen dataclass's
    ``__init__`` sets each field through ``object.__setattr__``, several times
    the cost of a tuple.
    """

    # None: no usable parent, a new trace starts (and parent_span_id is None too).
    trace_id: int | None
    # The caller's span: traceparent's parent-id, or B3's SpanId.
    parent_span_id: int | None
    # W3C trace-flags as received (sampled 0x01, random 0x02); 0 from B3 or nothing.
    trace_flags: int
    sampling: Sampling
    # B3 sent a 16-hex-character trace id: send it back the same width.
    trace_id_64bit: bool
    # Validated and re-serialised; "" when absent, invalid or without traceparent.
    tracestate: str
    # The valid list members, in order, within the spec's limits; "" if none.
    baggage: str
    request_id: str | None
    ot_span_context: str | None
    # Allow-listed headers with non-empty values, names lowercased, in allow-list order.
    passthrough: tuple[tuple[str, str], ...]
    # Why parts were dropped; never quotes header values, so safe to log.
    problems: tuple[str, ...]
    # The B3 form ("b3" single, "b3multi") the caller's context came in, or that
    # described the same trace beside traceparent (or asked for debug); "" if none.
    # :meth:`Propagator.inject` answers in kind: a B3 caller's trace goes on in B3
    # whatever the configured formats (a Zipkin-tracer sidecar reads only B3).
    b3: str = ""

    def __setattr__(self, name: str, value: object) -> None:
        # A named tuple's fields are read-only already; say so as a frozen dataclass would.
        raise FrozenInstanceError(f"cannot assign to field {name!r}")


# Positional construction without NamedTuple's keyword-handling __new__.
_new_incoming = tuple.__new__

EMPTY = Incoming(
    trace_id=None,
    parent_span_id=None,
    trace_flags=0,
    sampling=Sampling.DEFER,
    trace_id_64bit=False,
    tracestate="",
    baggage="",
    request_id=None,
    ot_span_context=None,
    passthrough=(),
    problems=(),
    b3="",
)


class Headers(Protocol):
    """The part of aiohttp's ``CIMultiDictProxy[str]`` that extraction uses."""

    @overload
    def getall(self, key: str, /) -> list[str]: ...
    @overload
    def getall(self, key: str, default: tuple[()], /) -> list[str] | tuple[()]: ...
    @overload
    def get(self, key: str, /) -> str | None: ...
    @overload
    def get(self, key: str, default: None, /) -> str | None: ...
    def __contains__(self, key: object, /) -> bool: ...


def new_trace_id() -> int:
    """A random, non-zero 128-bit trace id: every bit random, so the W3C
    random-trace-id flag (which needs the right-most 7 bytes) holds.

    ``random`` rather than ``secrets``: ids are correlation handles, not
    secrets, and ``random`` is reseeded in each forked worker.
    """
    while True:
        value = random.getrandbits(128)
        if value:
            return value


def new_span_id() -> int:
    """A random, non-zero 64-bit span id."""
    while True:
        value = random.getrandbits(64)
        if value:
            return value


def new_request_id() -> str:
    """A random 128-bit request id as 32 hex characters (valid for extraction)."""
    return _getrandbits(128).to_bytes(16, "big").hex()  # cheaper than a format spec


def with_request_id(incoming: Incoming, request_id: str) -> Incoming:
    """``incoming`` with ``request_id`` set, for a request that arrived without one.

    Raises ValueError if ``request_id`` would not survive extraction at the next hop.
    """
    if _REQUEST_ID_RE.fullmatch(request_id) is None:
        raise ValueError(f"request id must be 1-{REQUEST_ID_MAX_LENGTH} visible ASCII characters")
    return incoming._replace(request_id=request_id)


# A parsed trace context: (trace id, span id of the sender, sampling, 64-bit id).
_B3Context = tuple[int | None, int | None, Sampling, bool]


def _parse_traceparent(values: list[str] | tuple[()]) -> tuple[int, int, int] | str:
    """(trace id, parent id, flags), or why the header was ignored."""
    if len(values) != 1:
        # Two values leave no way to tell which one is the caller's; the W3C test
        # suite (test_traceparent_duplicated) expects a new trace.
        return f"traceparent: sent {len(values)} times, ignored"
    value = values[0].strip(_OWS)
    # §Versioning: "If the size of the header is shorter than 55 characters, the
    # vendor should not parse the header and should restart the trace."
    if len(value) < 55:
        return "traceparent: shorter than 55 characters"
    match = _TRACEPARENT_RE.fullmatch(value)
    if match is None:
        return "traceparent: not version-traceid-parentid-flags in lowercase hex"
    version, trace_hex, parent_hex, flags_hex, rest = match.groups()
    if version == "ff":
        return "traceparent: version ff is invalid"
    if version == "00" and rest is not None:
        # Version 00 is exactly 55 characters; extra fields exist only in later versions.
        return "traceparent: version 00 must be exactly 55 characters"
    trace_id = int(trace_hex, 16)
    if not trace_id:
        return "traceparent: all-zero trace-id is invalid"
    parent_id = int(parent_hex, 16)
    if not parent_id:
        return "traceparent: all-zero parent-id is invalid"
    return trace_id, parent_id, int(flags_hex, 16)


def _common_context(value: str, headers: Headers) -> tuple[int, int, int, str] | None:
    """The common case, or None for the full parse: one version-00 ``traceparent``
    and either no B3 headers or ``x-b3-*`` naming the same span without debug;
    (trace id, parent id, flags, ``"b3multi"`` if the ``x-b3-*`` were there else ``""``).

    Whatever it accepts, the full parse reads the same way and finds no
    problem in: B3's ids equal to traceparent's (so valid, and not 64-bit), a
    sampled flag of 0 or 1 (which W3C's overrides), a valid ParentSpanId.
    """
    if len(value) != 55 or _TRACEPARENT_00_RE.fullmatch(value) is None:
        return None
    trace_id = int(value[3:35], 16)
    parent_id = int(value[36:52], 16)
    if not trace_id or not parent_id or "b3" in headers:
        return None
    b3_trace = headers.get("x-b3-traceid")
    b3_span = headers.get("x-b3-spanid")
    sampled = headers.get("x-b3-sampled")
    if "x-b3-flags" in headers:
        return None
    if b3_trace is None or b3_span is None:
        if b3_trace is not None or b3_span is not None:
            return None
        if sampled is not None or "x-b3-parentspanid" in headers:
            return None
        return trace_id, parent_id, int(value[53:55], 16), ""
    if b3_trace + "-" + b3_span != value[3:52]:
        return None
    if sampled is not None and sampled != "1" and sampled != "0":
        return None
    b3_parent = headers.get("x-b3-parentspanid")
    if b3_parent is not None and (
        b3_parent == _ZERO_SPAN_HEX or _B3_SPAN_ID_RE.fullmatch(b3_parent) is None
    ):
        return None
    return trace_id, parent_id, int(value[53:55], 16), _B3_MULTI


def _parse_tracestate(values: list[str]) -> tuple[str, str | None]:
    """(re-serialised tracestate, problem or None)."""
    # §tracestate Header Field Values: multiple fields "MUST be combined into a
    # single header according to RFC9110", i.e. joined with commas in order.
    combined = values[0] if len(values) == 1 else ",".join(values)
    raw = combined.split(",", _TRACESTATE_MAX_RAW_MEMBERS)
    if len(raw) > _TRACESTATE_MAX_RAW_MEMBERS:
        return "", "tracestate: too many list members, dropped"
    kept: list[str] = []
    seen: set[str] = set()
    count = 0
    duplicates = False
    for piece in raw:
        # "Spaces and horizontal tabs surrounding list-members are ignored", and
        # trailing spaces are optional whitespace, not part of the value.
        member = piece.strip(_OWS)
        if not member:
            # "Empty and whitespace-only list members are allowed."
            continue
        count += 1
        if count > _TRACESTATE_MAX_MEMBERS:
            # "There can be a maximum of 32 list-members in a list"; the W3C test
            # suite (test_tracestate_member_count_limit) expects 33 to be discarded.
            return (
                "",
                f"tracestate: more than {_TRACESTATE_MAX_MEMBERS} list members, dropped",
            )
        if _TRACESTATE_MEMBER_RE.fullmatch(member) is None:
            # Processing model step 3: "If the tracestate header cannot be parsed
            # the vendor MAY discard the entire header." The W3C test suite at
            # strict level 2 expects exactly that.
            return "", "tracestate: malformed list member, dropped"
        key = member[: member.index("=")]
        if key in seen:
            # §Mutating the tracestate Field: "vendors MAY also discard duplicate
            # keys that were not generated by them." Keep the left-most, which is
            # the most recent position of that vendor.
            duplicates = True
            continue
        seen.add(key)
        kept.append(member)
    result = ",".join(kept)
    problem = "tracestate: duplicated key, later entries dropped" if duplicates else None
    if len(result) > TRACESTATE_MAX_LENGTH:
        result = _truncate_tracestate(kept)
        problem = f"tracestate: longer than {TRACESTATE_MAX_LENGTH} characters, entries dropped"
    return result, problem


def _truncate_tracestate(members: list[str]) -> str:
    # §tracestate Limits: truncate whole entries; "Entries larger than 128
    # characters long SHOULD be removed first. Then entries SHOULD be removed
    # starting from the end of tracestate."
    total = sum(len(m) for m in members) + len(members) - 1
    kept = list(members)
    for member in reversed(members):
        if total <= TRACESTATE_MAX_LENGTH:
            break
        if len(member) > _TRACESTATE_LONG_ENTRY:
            kept.remove(member)
            total -= len(member) + 1
    while total > TRACESTATE_MAX_LENGTH and kept:
        total -= len(kept.pop()) + 1
    return ",".join(kept)


def _parse_baggage(values: list[str]) -> tuple[str, str | None]:
    """(baggage to forward, problem or None)."""
    # Multiple baggage headers form one baggage-string, and "all limits apply to
    # the combination of all baggage headers".
    combined = values[0] if len(values) == 1 else ",".join(values)
    raw = combined.split(",", _BAGGAGE_MAX_RAW_MEMBERS)
    problem = None
    if len(raw) > _BAGGAGE_MAX_RAW_MEMBERS:
        raw.pop()
        problem = f"baggage: more than {_BAGGAGE_MAX_RAW_MEMBERS} list members, rest dropped"
    kept: list[str] = []
    size = -1  # the first member needs no comma
    for piece in raw:
        member = piece.strip(_OWS)
        if not member:
            continue
        if _BAGGAGE_MEMBER_RE.fullmatch(member) is None:
            # §Mutating baggage: for a malformed baggage-string an implementation
            # "MAY remove an offending list-member before propagating the rest".
            problem = problem or "baggage: malformed list member dropped"
            continue
        # §Limits: drop whole members only ("MUST NOT propagate any partial
        # list-members"), and only beyond 64 members or 8192 bytes. Members are
        # ASCII by grammar, so characters are bytes.
        if len(kept) == BAGGAGE_MAX_MEMBERS or size + 1 + len(member) > BAGGAGE_MAX_BYTES:
            problem = (
                f"baggage: over {BAGGAGE_MAX_MEMBERS} members or "
                f"{BAGGAGE_MAX_BYTES} bytes, rest dropped"
            )
            break
        size += 1 + len(member)
        kept.append(member)
    return ",".join(kept), problem


def _parse_b3_single(value: str) -> _B3Context | str:
    """Context from a ``b3`` header, or why it was ignored."""
    value = value.strip(_OWS)
    if len(value) == 1:
        # "Sampling state can also be sent on its own (with no identifiers)."
        if value == "1":
            return None, None, Sampling.ACCEPT, False
        if value == "0":
            return None, None, Sampling.DENY, False
        if value == "d":
            return None, None, Sampling.DEBUG, False
        return "b3: unknown sampling state"
    match = _B3_SINGLE_RE.fullmatch(value)
    if match is None:
        return "b3: not traceid-spanid[-sampled][-parentspanid] in lowercase hex"
    trace_hex, span_hex, state, parent_hex = match.groups()
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if not trace_id or not span_id or (parent_hex is not None and not int(parent_hex, 16)):
        return "b3: all-zero id is invalid"
    # "Defer is absence of the sampling field."
    sampling = Sampling(state) if state is not None else Sampling.DEFER
    return trace_id, span_id, sampling, len(trace_hex) == 16


def _parse_b3_multi(headers: Headers) -> tuple[_B3Context | None, str | None]:
    """(context or None when no x-b3-* header is present, problem or None)."""
    # §Multiple Headers: "When extracting state headers, the first value wins."
    trace_hex = headers.get("x-b3-traceid")
    span_hex = headers.get("x-b3-spanid")
    sampled = headers.get("x-b3-sampled")
    flags = headers.get("x-b3-flags")
    if trace_hex is None and span_hex is None and sampled is None and flags is None:
        return None, None
    problem = None
    sampling = Sampling.DEFER
    if flags is not None:
        if flags.strip(_OWS) == "1":
            # "Debug is encoded as X-B3-Flags: 1 ... Debug implies an accept decision."
            sampling = Sampling.DEBUG
        else:
            # "Absent or any other value can be ignored."
            problem = "x-b3-flags: value other than 1 ignored"
    if sampled is not None and sampling is not Sampling.DEBUG:
        word = sampled.strip(_OWS)
        if word == "1":
            sampling = Sampling.ACCEPT
        elif word == "0":
            sampling = Sampling.DENY
        elif word.lower() == "true":
            # "a lenient implementation may accept them" (legacy true/false).
            sampling = Sampling.ACCEPT
        elif word.lower() == "false":
            sampling = Sampling.DENY
        else:
            problem = "x-b3-sampled: malformed, sampling deferred"
    if trace_hex is None and span_hex is None:
        # "It is also valid to send sampling state independently."
        return (None, None, sampling, False), problem
    # Without usable ids the sampling state still stands on its own.
    if trace_hex is None or span_hex is None:
        return (None, None, sampling, False), "x-b3-traceid/x-b3-spanid: one without the other"
    trace_hex = trace_hex.strip(_OWS)
    span_hex = span_hex.strip(_OWS)
    if _B3_TRACE_ID_RE.fullmatch(trace_hex) is None or _B3_SPAN_ID_RE.fullmatch(span_hex) is None:
        return (None, None, sampling, False), "x-b3-traceid/x-b3-spanid: not lowercase hex"
    trace_id = int(trace_hex, 16)
    span_id = int(span_hex, 16)
    if not trace_id or not span_id:
        return (None, None, sampling, False), "x-b3-traceid/x-b3-spanid: all-zero id"
    parent_hex = headers.get("x-b3-parentspanid")
    if parent_hex is not None:
        parent_hex = parent_hex.strip(_OWS)
        if _B3_SPAN_ID_RE.fullmatch(parent_hex) is None or not int(parent_hex, 16):
            # The sender's parent is not part of our context, so a bad one costs nothing.
            problem = problem or "x-b3-parentspanid: malformed, ignored"
    return (trace_id, span_id, sampling, len(trace_hex) == 16), problem


class Propagator:
    """Extracts incoming trace context and injects it into egress requests.

    ``formats`` takes OTEL_PROPAGATORS names (``tracecontext``, ``baggage``,
    ``b3``, ``b3multi``, ``none``) and chooses what :meth:`inject` writes; every
    format is read. The default is OpenTelemetry's, W3C only (what Istio's
    ``opentelemetry`` provider reads); a caller that sent B3 is answered in B3
    too (see :attr:`Incoming.b3`), so a Zipkin-tracer mesh's traces stay whole,
    unless ``none`` is chosen, which writes no trace context at all.
    ``passthrough`` names headers copied unchanged from ingress to egress.
    """

    __slots__ = (
        "_answer_b3",
        "_b3multi",
        "_b3single",
        "_baggage",
        "_extracted",
        "_passthrough",
        "_passthrough_set",
        "_tracecontext",
    )

    def __init__(
        self,
        formats: Sequence[str] = ("tracecontext", "baggage"),
        passthrough: Sequence[str] = ("x-dev-user",),
    ) -> None:
        if isinstance(formats, str):
            raise TypeError("formats must be a sequence of names, not one string")
        chosen = {name.strip() for name in formats} - {""}
        unknown = sorted(chosen - FORMATS)
        if unknown:
            raise ValueError(
                f"unknown propagation format {unknown[0]!r}; expected one of {sorted(FORMATS)}"
            )
        if "none" in chosen and len(chosen) > 1:
            raise ValueError("propagation format 'none' cannot be combined with others")
        self._tracecontext = "tracecontext" in chosen
        self._baggage = "baggage" in chosen
        self._b3single = "b3" in chosen
        self._b3multi = "b3multi" in chosen
        # "none" writes no trace context at all, not even in a B3 caller's form.
        self._answer_b3 = "none" not in chosen
        if isinstance(passthrough, str):
            raise TypeError("passthrough must be a sequence of header names, not one string")
        names: list[str] = []
        for name in passthrough:
            lowered = name.strip().lower()
            if _HEADER_NAME_RE.fullmatch(lowered) is None:
                raise ValueError(f"passthrough header name {name!r} is not a valid header name")
            if lowered in OWN_HEADERS:
                raise ValueError(f"passthrough header {lowered!r} is handled by propagation itself")
            if lowered in _NEVER_PASSTHROUGH:
                raise ValueError(f"passthrough header {lowered!r} must never be forwarded")
            if lowered not in names:
                names.append(lowered)
        self._passthrough = tuple(names)
        self._passthrough_set = frozenset(names)
        # Every header extract reads: when none is present the answer is EMPTY.
        # The ones a request most often carries come first, to stop the scan early.
        likely = ("traceparent", *names, "x-request-id", "b3", "x-b3-traceid")
        self._extracted = (*likely, *sorted(OWN_HEADERS.difference(likely)))

    @property
    def passthrough(self) -> tuple[str, ...]:
        return self._passthrough

    def extract(self, headers: Headers) -> Incoming:
        """Read the caller's context from ``headers`` (aiohttp's ``request.headers``).

        Precedence: a valid ``traceparent``, then a valid ``b3``, then valid
        ``x-b3-*``; a malformed one falls through to the next. When the chosen
        W3C context and the B3 headers describe the same span, B3's debug state
        and 64-bit trace id are kept too, since W3C cannot express them.
        """
        # An edge service's usual request carries none of these: answer it
        # without parsing or building anything.
        for name in self._extracted:
            if name in headers:
                break
        else:
            return EMPTY
        problems: list[str] | None = None
        trace_id: int | None = None
        parent_span_id: int | None = None
        trace_flags = 0
        sampling = _DEFER
        is_64bit = False
        tracestate = ""
        b3_form = ""

        traceparent = headers.getall("traceparent", ())
        common = _common_context(traceparent[0], headers) if len(traceparent) == 1 else None
        if common is not None:
            trace_id, parent_span_id, trace_flags, b3_form = common
            sampling = _ACCEPT if trace_flags & _FLAG_SAMPLED else _DENY
            w3c_valid = True
        else:
            w3c: tuple[int, int, int] | None = None
            if traceparent:
                parsed_w3c = _parse_traceparent(traceparent)
                if isinstance(parsed_w3c, str):
                    problems = [parsed_w3c]
                else:
                    w3c = parsed_w3c

            b3: _B3Context | None = None
            b3_single = headers.get("b3")
            if b3_single is not None:
                parsed = _parse_b3_single(b3_single)
                if isinstance(parsed, str):
                    problems = _add(problems, parsed)
                else:
                    b3, b3_form = parsed, _B3_SINGLE
            if b3 is None:
                # §Http Encodings: "The single-header variant takes precedence over the
                # multiple header one"; the multiple headers count only without it.
                b3, problem = _parse_b3_multi(headers)
                if problem is not None:
                    problems = _add(problems, problem)
                if b3 is not None:
                    b3_form = _B3_MULTI

            w3c_valid = w3c is not None
            if w3c is not None:
                trace_id, parent_span_id, trace_flags = w3c
                sampling = _ACCEPT if trace_flags & _FLAG_SAMPLED else _DENY
                if b3 is not None:
                    b3_trace, b3_span, b3_sampling, b3_64 = b3
                    if b3_trace == trace_id and b3_span == parent_span_id:
                        is_64bit = b3_64
                        if b3_sampling is _DEBUG:
                            sampling = _DEBUG
                    elif b3_trace is None and b3_sampling is _DEBUG:
                        # A bare "b3: d" (the curl use case) asks for debug whatever the ids.
                        sampling = _DEBUG
                    elif b3_trace != trace_id:
                        # Another trace's B3 (or a bare sampling state that W3C's
                        # overrides): not this context's, not answered in kind. The same
                        # trace at another span is: a B3-only sidecar between two
                        # services moves B3 on and leaves traceparent as the caller wrote it.
                        b3_form = ""
            elif b3 is not None:
                trace_id, parent_span_id, sampling, is_64bit = b3

        tracestate_values = headers.getall("tracestate", ())
        if tracestate_values:
            if w3c_valid:
                tracestate, problem = _parse_tracestate(tracestate_values)
                if problem is not None:
                    problems = _add(problems, problem)
            elif any(v.strip(_OWS) for v in tracestate_values):
                # §Tracestate Header: "If the vendor failed to parse traceparent, it
                # MUST NOT attempt to parse tracestate."
                problems = _add(problems, "tracestate: dropped without a valid traceparent")

        baggage = ""
        baggage_values = headers.getall("baggage", ())
        if baggage_values:
            baggage, problem = _parse_baggage(baggage_values)
            if problem is not None:
                problems = _add(problems, problem)

        request_id: str | None = None
        values = headers.getall("x-request-id", ())
        if values:
            value = values[0]
            # The usual one, checked without a regex: sent once, 1-128 visible
            # ASCII characters (isprintable leaves out the control characters).
            if (
                len(values) == 1
                and 0 < len(value) <= REQUEST_ID_MAX_LENGTH
                and value.isascii()
                and value.isprintable()
                and " " not in value
            ):
                request_id = value
            else:
                request_id, problems = _opaque(
                    headers, "x-request-id", _REQUEST_ID_RE, _BAD_REQUEST_ID, problems
                )
        ot_span_context: str | None = None
        if "x-ot-span-context" in headers:
            ot_span_context, problems = _opaque(
                headers, "x-ot-span-context", _OT_SPAN_CONTEXT_RE, _BAD_OT_SPAN_CONTEXT, problems
            )

        passthrough: tuple[tuple[str, str], ...] = ()
        for name in self._passthrough:
            values = headers.getall(name, ())
            if not values:
                continue
            if len(values) > 1:
                # Which one is the caller's? As for traceparent: neither is sent on.
                problems = _add(problems, f"{name}: sent {len(values)} times, dropped")
                continue
            value = values[0].strip(_OWS)
            if not value:
                continue
            # _PASSTHROUGH_VALUE_RE without the regex: tab and 0x20-0x7e, at most 1024.
            if not (
                len(value) <= PASSTHROUGH_MAX_LENGTH
                and value.isascii()
                and (value.isprintable() or value.replace("\t", " ").isprintable())
            ):
                problems = _add(problems, f"{name}: not printable ASCII or too long, dropped")
                continue
            passthrough += ((name, value),)

        return _new_incoming(
            Incoming,
            (
                trace_id,
                parent_span_id,
                trace_flags,
                sampling,
                is_64bit,
                tracestate,
                baggage,
                request_id,
                ot_span_context,
                passthrough,
                tuple(problems) if problems else (),
                b3_form,
            ),
        )

    def inject(
        self,
        incoming: Incoming,
        trace_id: int,
        span_id: int,
        sampled: bool,
        out: MutableMapping[str, str],
        *,
        parent_span_id: int | None = None,
        request_id: str | None = None,
        random_trace_id: bool = True,
        trace_hex: str | None = None,
        parent_hex: str | None = None,
    ) -> None:
        """Write the headers for an egress call made from span ``span_id``.

        In the usvc model the egress client span is ``span_id``; it goes out as
        ``traceparent``'s parent-id and as B3's SpanId. B3's ParentSpanId is the
        span that made the call (usually the server span), passed as
        ``parent_span_id``; without it ParentSpanId is omitted, which B3 allows.
        ``request_id`` (one made for a request that came without) replaces
        ``incoming.request_id``; the caller validates it (see :func:`new_request_id`).

        B3 goes out in the configured forms and in the form the caller used
        (``incoming.b3``).

        ``sampled`` is this service's decision; a DEBUG incoming state forces it,
        since debug "implies accept". ``trace_id`` equal to ``incoming.trace_id``
        continues the caller's trace (its random flag, tracestate and 64-bit width
        carry over); any other ``trace_id`` is a new trace from
        :func:`new_trace_id`, so the random flag is set (unless ``random_trace_id``
        is False: an id generator that is not random) and tracestate is not sent.

        ``trace_hex`` and ``parent_hex``, when given, are ``trace_id`` and
        ``parent_span_id`` already formatted as 32 and 16 lowercase hex digits
        (a request context has them for its log lines), so they are not formatted again.

        Raises ValueError for ids out of range: that is a bug in the caller, not
        bad input from the network.
        """
        if not 0 < trace_id < _TRACE_ID_LIMIT:
            raise ValueError("trace_id must be a non-zero 128-bit integer")
        if not 0 < span_id < _SPAN_ID_LIMIT:
            raise ValueError("span_id must be a non-zero 64-bit integer")
        if parent_span_id is not None and not 0 < parent_span_id < _SPAN_ID_LIMIT:
            raise ValueError("parent_span_id must be a non-zero 64-bit integer")
        debug = incoming.sampling is _DEBUG
        continuing = incoming.trace_id == trace_id
        # Formatted once for W3C and B3 alike (to_bytes: cheaper than a format spec).
        trace_hex32 = trace_id.to_bytes(16, "big").hex() if trace_hex is None else trace_hex
        span_hex = span_id.to_bytes(8, "big").hex()
        if self._tracecontext:
            # Level 2 §Random Trace ID Flag: continuing a trace, the flag MUST be
            # kept as received; a trace we start uses new_trace_id, all random.
            if continuing:
                flags = incoming.trace_flags & _FLAG_RANDOM
            else:
                flags = _FLAG_RANDOM if random_trace_id else 0
            if sampled or debug:
                flags |= _FLAG_SAMPLED
            out["traceparent"] = "00-" + trace_hex32 + "-" + span_hex + _FLAGS_HEX[flags]
            # §Mutating the traceparent Field, restart: "Vendors SHOULD clean up
            # tracestate collection on traceparent restart."
            if continuing and incoming.tracestate:
                out["tracestate"] = incoming.tracestate
        if self._baggage and incoming.baggage:
            out["baggage"] = incoming.baggage
        # The configured B3 forms, and the one the caller used (Incoming.b3).
        answered = incoming.b3 if self._answer_b3 else ""
        b3single = self._b3single or answered == _B3_SINGLE
        b3multi = self._b3multi or answered == _B3_MULTI
        if b3single or b3multi:
            if continuing and incoming.trace_id_64bit and trace_id < _SPAN_ID_LIMIT:
                trace_hex = trace_hex32[16:]
            else:
                trace_hex = trace_hex32
            if parent_span_id is None:
                parent_hex = None
            elif parent_hex is None:
                parent_hex = parent_span_id.to_bytes(8, "big").hex()
            if b3single:
                state = "d" if debug else ("1" if sampled else "0")
                if parent_hex is None:
                    out["b3"] = f"{trace_hex}-{span_hex}-{state}"
                else:
                    out["b3"] = f"{trace_hex}-{span_hex}-{state}-{parent_hex}"
            if b3multi:
                out["x-b3-traceid"] = trace_hex
                out["x-b3-spanid"] = span_hex
                if parent_hex is not None:
                    out["x-b3-parentspanid"] = parent_hex
                if debug:
                    # "Debug implies an accept decision, so don't also send the
                    # X-B3-Sampled header."
                    out["x-b3-flags"] = "1"
                else:
                    out["x-b3-sampled"] = "1" if sampled else "0"
        request_id = request_id or incoming.request_id
        if request_id:
            out["x-request-id"] = request_id
        if incoming.ot_span_context:
            out["x-ot-span-context"] = incoming.ot_span_context
        for name, value in incoming.passthrough:
            if value and name in self._passthrough_set:
                out[name] = value


def _opaque(
    headers: Headers,
    name: str,
    valid: re.Pattern[str],
    problem: str,
    problems: list[str] | None,
) -> tuple[str | None, list[str] | None]:
    """Header ``name`` passed on as received (trimmed) when it was sent once and
    ``valid`` matches it, else dropped."""
    values = headers.getall(name, ())
    if not values:
        return None, problems
    if len(values) > 1:
        return None, _add(problems, f"{name}: sent {len(values)} times, dropped")
    value = values[0].strip(_OWS)
    if valid.fullmatch(value) is None:
        return None, _add(problems, problem)
    return value, problems


def _add(problems: list[str] | None, problem: str) -> list[str]:
    if problems is None:
        return [problem]
    problems.append(problem)
    return problems
