"""Trace-context propagation, tested against the specifications' own words.

References (section names as they appear in the texts):
* W3C Trace Context (Recommendation, Level 2 for the random flag and the
  tracestate key grammar), and the W3C test suite ``test/test.py`` whose cases
  several tests below mirror.
* W3C Baggage, §Definition, §Limits, §Mutating baggage.
* openzipkin/b3-propagation README: §Multiple Headers, §Single Header, §Sampling State.
"""

from __future__ import annotations

import dataclasses
import string
from collections.abc import Callable, Iterable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from multidict import CIMultiDict, CIMultiDictProxy

from usvc.propagation import (
    BAGGAGE_MAX_BYTES,
    BAGGAGE_MAX_MEMBERS,
    EMPTY,
    TRACESTATE_MAX_LENGTH,
    Incoming,
    Propagator,
    Sampling,
    _common_context,
    new_span_id,
    new_trace_id,
    with_request_id,
)

# W3C test suite ids, and the spec's own examples.
TRACE_HEX = "12345678901234567890123456789012"
PARENT_HEX = "1234567890123456"
TRACE_ID = int(TRACE_HEX, 16)
PARENT_ID = int(PARENT_HEX, 16)
TP_SAMPLED = f"00-{TRACE_HEX}-{PARENT_HEX}-01"
TP_NOT_SAMPLED = f"00-{TRACE_HEX}-{PARENT_HEX}-00"
B3_TRACE = "80f198ee56343ba864fe8b2a57d3eff7"
B3_SPAN = "e457b5a2e4d86bd1"
B3_PARENT = "05e3ac9a4f6e3b90"
B3_TRACE_64 = "463ac35c9f6413ad"

TRACE_HEADERS = frozenset(
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

ALL_FORMATS = ("tracecontext", "baggage", "b3", "b3multi")


def hdrs(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    """Headers as aiohttp hands them to a handler."""
    return CIMultiDictProxy(CIMultiDict(pairs))


def extract(*pairs: tuple[str, str]) -> Incoming:
    return Propagator().extract(hdrs(*pairs))


def inject(
    incoming: Incoming,
    trace_id: int = TRACE_ID,
    span_id: int = 0xABC,
    sampled: bool = True,
    formats: Iterable[str] = ALL_FORMATS,
    passthrough: Iterable[str] = ("x-dev-user",),
    parent_span_id: int | None = None,
) -> CIMultiDict[str]:
    out: CIMultiDict[str] = CIMultiDict()
    Propagator(tuple(formats), tuple(passthrough)).inject(
        incoming, trace_id, span_id, sampled, out, parent_span_id=parent_span_id
    )
    return out


def tracestate_of(*values: str) -> str:
    return extract(("traceparent", TP_SAMPLED), *(("tracestate", v) for v in values)).tracestate


def baggage_of(*values: str) -> str:
    return extract(*(("baggage", v) for v in values)).baggage


# --------------------------------------------------------------------------
# W3C traceparent (§traceparent Header, §Versioning of traceparent)


def test_valid_traceparent_gives_trace_id_parent_and_flags() -> None:
    incoming = extract(("traceparent", TP_SAMPLED))
    assert (incoming.trace_id, incoming.parent_span_id, incoming.trace_flags) == (
        TRACE_ID,
        PARENT_ID,
        0x01,
    )
    assert incoming.sampling is Sampling.ACCEPT
    assert incoming.problems == ()


def test_unset_sampled_bit_means_deny() -> None:
    assert extract(("traceparent", TP_NOT_SAMPLED)).sampling is Sampling.DENY


def test_sampled_is_read_as_a_bit_not_by_equality() -> None:
    """§trace-flags: "both 01 and 03 represent that the trace has been sampled"."""
    incoming = extract(("traceparent", f"00-{TRACE_HEX}-{PARENT_HEX}-03"))
    assert incoming.sampling is Sampling.ACCEPT
    assert incoming.trace_flags == 0x03


@pytest.mark.parametrize("name", ["TraceParent", "TRACEPARENT", "TrAcEpArEnT"])
def test_traceparent_header_name_is_case_insensitive(name: str) -> None:
    assert extract((name, TP_SAMPLED)).trace_id == TRACE_ID


@pytest.mark.parametrize("name", ["trace-parent", "trace.parent"])
def test_misspelt_traceparent_header_is_not_traceparent(name: str) -> None:
    assert extract((name, TP_SAMPLED)).trace_id is None


@pytest.mark.parametrize("value", [f" {TP_SAMPLED}", f"{TP_SAMPLED}\t", f"\t {TP_SAMPLED} \t"])
def test_optional_whitespace_around_traceparent_is_ignored(value: str) -> None:
    """W3C test suite test_traceparent_ows_handling."""
    assert extract(("traceparent", value)).trace_id == TRACE_ID


@pytest.mark.parametrize(
    "value",
    [f"{TP_SAMPLED}.", f"{TP_SAMPLED}-what-the-future-will-be-like"],
)
def test_version_00_must_be_exactly_55_characters(value: str) -> None:
    """§version-format: version 00 has exactly four fields; extra ones belong to later versions."""
    incoming = extract(("traceparent", value))
    assert incoming.trace_id is None
    assert incoming.problems


def test_traceparent_shorter_than_55_characters_starts_a_new_trace() -> None:
    incoming = extract(("traceparent", f"00-{TRACE_HEX}-{PARENT_HEX}-1"))
    assert incoming.trace_id is None
    assert incoming.problems == ("traceparent: shorter than 55 characters",)


def test_version_ff_is_invalid() -> None:
    """§version: "Version 255 ("ff") is invalid"."""
    incoming = extract(("traceparent", f"ff-{TRACE_HEX}-{PARENT_HEX}-01"))
    assert incoming.trace_id is None
    assert incoming.problems == ("traceparent: version ff is invalid",)


@pytest.mark.parametrize(
    "value",
    [
        f"00-{TRACE_HEX.upper()}-{PARENT_HEX}-01".replace("1234", "ABCD"),
        f"00-{TRACE_HEX}-{'ABCDEF0123456789'}-01",
        f"00-{TRACE_HEX}-{PARENT_HEX}-0A",
        f"0A-{TRACE_HEX}-{PARENT_HEX}-01",
    ],
)
def test_uppercase_hex_is_invalid(value: str) -> None:
    """HEXDIGLC: lowercase hex only."""
    assert extract(("traceparent", value)).trace_id is None


@pytest.mark.parametrize(
    "value",
    [
        f".0-{TRACE_HEX}-{PARENT_HEX}-01",
        f"0.-{TRACE_HEX}-{PARENT_HEX}-01",
        f"000-{TRACE_HEX}-{PARENT_HEX}-01",
        f"0-{TRACE_HEX}-{PARENT_HEX}-01",
        f"00-.{TRACE_HEX[1:]}-{PARENT_HEX}-01",
        f"00-{TRACE_HEX}3-{PARENT_HEX}-01",
        f"00-{TRACE_HEX[1:]}-{PARENT_HEX}-01",
        f"00-{TRACE_HEX}-{PARENT_HEX[:-1]}.-01",
        f"00-{TRACE_HEX}-{PARENT_HEX}7-01",
        f"00-{TRACE_HEX}-{PARENT_HEX[1:]}-01",
        f"00-{TRACE_HEX}-{PARENT_HEX}-.0",
        f"00-{TRACE_HEX}-{PARENT_HEX}-001",
        f"00_{TRACE_HEX}_{PARENT_HEX}_01",
    ],
)
def test_malformed_traceparent_fields_start_a_new_trace(value: str) -> None:
    """W3C test suite: illegal characters, too long, too short in each field."""
    incoming = extract(("traceparent", value))
    assert incoming.trace_id is None
    assert incoming.parent_span_id is None
    assert incoming.problems


def test_all_zero_trace_id_is_invalid() -> None:
    """§trace-id: "All bytes as zero ... is considered an invalid value"."""
    incoming = extract(("traceparent", f"00-{'0' * 32}-{PARENT_HEX}-01"))
    assert incoming.trace_id is None
    assert incoming.problems == ("traceparent: all-zero trace-id is invalid",)


def test_all_zero_parent_id_is_invalid() -> None:
    """§parent-id: "Vendors MUST ignore the traceparent when the parent-id is invalid"."""
    incoming = extract(("traceparent", f"00-{TRACE_HEX}-{'0' * 16}-01"))
    assert incoming.trace_id is None
    assert incoming.problems == ("traceparent: all-zero parent-id is invalid",)


@pytest.mark.parametrize(
    "value",
    [
        f"cc-{TRACE_HEX}-{PARENT_HEX}-01",
        f"cc-{TRACE_HEX}-{PARENT_HEX}-01-what-the-future-will-be-like",
    ],
)
def test_higher_version_is_parsed_leniently(value: str) -> None:
    """§Versioning: parse the first four fields; further fields follow a dash."""
    incoming = extract(("traceparent", value))
    assert (incoming.trace_id, incoming.parent_span_id) == (TRACE_ID, PARENT_ID)
    assert incoming.sampling is Sampling.ACCEPT


def test_higher_version_flags_must_end_the_string_or_be_followed_by_a_dash() -> None:
    """§Versioning: "the 2 characters are either at the end of the string or followed by a dash"."""
    incoming = extract(("traceparent", f"cc-{TRACE_HEX}-{PARENT_HEX}-01.what-the-future"))
    assert incoming.trace_id is None


def test_duplicated_traceparent_starts_a_new_trace() -> None:
    """W3C test suite test_traceparent_duplicated: two values, a new trace id."""
    incoming = extract(
        ("traceparent", f"00-{TRACE_HEX[:-1]}1-{PARENT_HEX}-01"),
        ("traceparent", TP_SAMPLED),
    )
    assert incoming.trace_id is None
    assert incoming.problems == ("traceparent: sent 2 times, ignored",)


def test_duplicated_identical_traceparent_is_still_rejected() -> None:
    incoming = extract(("traceparent", TP_SAMPLED), ("traceparent", TP_SAMPLED))
    assert incoming.trace_id is None


def test_random_flag_is_kept_as_received() -> None:
    """Level 2 §Random Trace ID Flag."""
    assert extract(("traceparent", f"00-{TRACE_HEX}-{PARENT_HEX}-02")).trace_flags == 0x02


def test_empty_traceparent_is_invalid() -> None:
    incoming = extract(("traceparent", ""))
    assert incoming.trace_id is None
    assert incoming.problems


# --------------------------------------------------------------------------
# W3C tracestate (§tracestate Header Field Values, §Mutating the tracestate Field)


def test_tracestate_is_kept_with_a_valid_traceparent() -> None:
    assert tracestate_of("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE") == (
        "rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"
    )


def test_tracestate_without_traceparent_is_discarded() -> None:
    """Processing model: "a tracestate header ... without an accompanying traceparent ...
    is invalid and MUST be discarded"."""
    incoming = extract(("tracestate", "foo=1"))
    assert incoming.tracestate == ""
    assert incoming.problems == ("tracestate: dropped without a valid traceparent",)


def test_tracestate_is_ignored_when_traceparent_is_invalid() -> None:
    """§Tracestate Header: "If the vendor failed to parse traceparent, it MUST NOT attempt
    to parse tracestate"."""
    incoming = extract(("traceparent", f"ff-{TRACE_HEX}-{PARENT_HEX}-01"), ("tracestate", "foo=1"))
    assert incoming.tracestate == ""


def test_tracestate_is_ignored_when_trace_context_comes_from_b3() -> None:
    incoming = extract(("b3", f"{B3_TRACE}-{B3_SPAN}-1"), ("tracestate", "foo=1"))
    assert incoming.trace_id == int(B3_TRACE, 16)
    assert incoming.tracestate == ""


def test_multiple_tracestate_headers_combine_in_order() -> None:
    """§tracestate Header Field Values: multiple fields "MUST be combined" (RFC 9110 §5.3)."""
    assert tracestate_of("foo=1,bar=2", "rojo=1,congo=2", "baz=3") == (
        "foo=1,bar=2,rojo=1,congo=2,baz=3"
    )


@pytest.mark.parametrize(
    "value",
    ["foo=1 \t , \t bar=2, \t baz=3", "foo=1\t \t,\t \tbar=2,\t \tbaz=3", " foo=1,bar=2 ,baz=3\t"],
)
def test_whitespace_around_tracestate_members_is_ignored(value: str) -> None:
    """W3C test suite test_tracestate_ows_handling."""
    assert tracestate_of(value) == "foo=1,bar=2,baz=3"


def test_empty_tracestate_members_and_headers_are_accepted() -> None:
    """ "Empty and whitespace-only list members are allowed"; empty headers MUST be accepted."""
    incoming = extract(
        ("traceparent", TP_SAMPLED),
        ("tracestate", ""),
        ("tracestate", "foo=1,, ,"),
    )
    assert incoming.tracestate == "foo=1"
    assert incoming.problems == ()


def test_tracestate_keeps_32_members() -> None:
    members = [f"bar{i:02d}={i:02d}" for i in range(1, 33)]
    assert tracestate_of(",".join(members)) == ",".join(members)


def test_tracestate_with_33_members_is_discarded() -> None:
    """ "There can be a maximum of 32 list-members"; W3C test suite
    test_tracestate_member_count_limit expects 33 to be discarded."""
    members = ",".join(f"bar{i:02d}={i:02d}" for i in range(1, 34))
    assert tracestate_of(members) == ""


@pytest.mark.parametrize(
    "key",
    [
        "foo",
        "0foo",
        "foo@",
        "foo@@bar",
        "foo@bar@baz",
        "t@" + "v" * 15,
        "t" * 242 + "@v",
        "z" * 256,
        string.ascii_lowercase + string.digits + "_-*/@a-z0-9_-*/",
    ],
)
def test_tracestate_keys_follow_the_level_2_grammar(key: str) -> None:
    """Level 2: key = ( lcalpha / DIGIT ) 0*255 ( keychar ), keychar includes "@"."""
    assert tracestate_of(f"{key}=1,bar=2") == f"{key}=1,bar=2"


@pytest.mark.parametrize("key", ["@foo", "FOO", "foo.bar", "foo ", "z" * 257, "_foo", "fö"])
def test_invalid_tracestate_key_discards_the_whole_tracestate(key: str) -> None:
    """Processing model: "If the tracestate header cannot be parsed the vendor MAY discard
    the entire header"; the W3C test suite (strict level 2) expects exactly that."""
    incoming = extract(("traceparent", TP_SAMPLED), ("tracestate", f"{key}=1,bar=2"))
    assert incoming.tracestate == ""
    assert incoming.trace_id == TRACE_ID
    assert incoming.problems == ("tracestate: malformed list member, dropped",)


def test_tracestate_value_may_use_every_allowed_character() -> None:
    """W3C test suite test_tracestate_all_allowed_characters; leading spaces are part of
    the value: "All leading spaces MUST be preserved"."""
    value = "".join(chr(c) for c in range(0x20, 0x7F) if chr(c) not in ",=")
    assert tracestate_of(f"foo={value}") == f"foo={value}"


@pytest.mark.parametrize(
    "value", ["foo=bar=baz", "foo=,bar=3", "foo", "foo=" + "x" * 257, "foo=caf\u00e9", "foo=a\tb"]
)
def test_invalid_tracestate_value_discards_the_whole_tracestate(value: str) -> None:
    """value = 0*255(chr) nblk-chr: printable ASCII except "," and "=", 1 to 256 characters."""
    assert tracestate_of(value) == ""


def test_tracestate_value_of_256_characters_is_kept() -> None:
    assert tracestate_of("foo=" + "x" * 256) == "foo=" + "x" * 256


def test_duplicated_tracestate_key_keeps_the_left_most_entry() -> None:
    """§Mutating the tracestate Field: "vendors MAY also discard duplicate keys that were
    not generated by them". Left-most is the most recent position; the rest survives."""
    incoming = extract(
        ("traceparent", TP_SAMPLED), ("tracestate", "foo=1,bar=2"), ("tracestate", "foo=3,baz=4")
    )
    assert incoming.tracestate == "foo=1,bar=2,baz=4"
    assert incoming.problems == ("tracestate: duplicated key, later entries dropped",)


def test_over_long_tracestate_drops_long_entries_first_then_from_the_end() -> None:
    """§tracestate Limits: truncate whole entries, entries over 128 characters first, then
    from the end."""
    long_entry = "long=" + "l" * 200
    short = [f"k{i:02d}=" + "s" * 240 for i in range(17)]  # 17 * 244 + commas > 4096
    incoming = extract(
        ("traceparent", TP_SAMPLED), ("tracestate", ",".join(["a=1", long_entry, *short[:3]]))
    )
    assert long_entry in incoming.tracestate  # short enough: nothing dropped

    entries = ["a=1", *short[:16], "tail=1", long_entry]
    incoming = extract(("traceparent", TP_SAMPLED), ("tracestate", ",".join(entries)))
    assert len(incoming.tracestate) <= TRACESTATE_MAX_LENGTH
    assert incoming.tracestate.startswith("a=1,")
    assert long_entry not in incoming.tracestate
    assert incoming.tracestate.endswith("tail=1")


# --------------------------------------------------------------------------
# W3C Baggage (§Definition, §Limits, §Mutating baggage)


def test_baggage_spec_example_is_forwarded() -> None:
    value = "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue"
    assert baggage_of(value) == (
        "key1=value1;property1;property2,key2 = value2,key3=value3; propertyKey=propertyValue"
    )


def test_multiple_baggage_headers_combine() -> None:
    assert baggage_of("userId=alice", "serverNode=DF%2028,isProduction=false") == (
        "userId=alice,serverNode=DF%2028,isProduction=false"
    )


def test_baggage_value_may_contain_equal_signs_and_be_empty() -> None:
    """§value: "value MAY contain any number of the equal sign"; value = *baggage-octet."""
    assert baggage_of("a=b=c,empty=") == "a=b=c,empty="


@pytest.mark.parametrize(
    "bad",
    [
        "userId=Am\u00e9lie",  # must be percent-encoded
        "no-equals",
        "bad key=1",
        'k="quoted"',
        "k=back\\slash",
        "=novalue",
        "k=v;",
        "k=v;=p",
        "k=a b",
    ],
)
def test_malformed_baggage_member_is_dropped_and_the_rest_kept(bad: str) -> None:
    """§Mutating baggage: an implementation "MAY remove an offending list-member before
    propagating the rest"."""
    incoming = extract(("baggage", f"a=1,{bad},b=2"))
    assert incoming.baggage == "a=1,b=2"
    assert incoming.problems == ("baggage: malformed list member dropped",)


def test_baggage_keeps_64_members_and_drops_whole_members_beyond() -> None:
    """§Limits: MUST propagate up to 64 members; MAY drop whole members beyond."""
    members = [f"k{i}=v" for i in range(BAGGAGE_MAX_MEMBERS + 1)]
    incoming = extract(("baggage", ",".join(members)))
    assert incoming.baggage == ",".join(members[:BAGGAGE_MAX_MEMBERS])
    assert incoming.problems


def test_baggage_of_exactly_8192_bytes_is_kept() -> None:
    first = "a=" + "x" * 4000
    second = "b=" + "y" * (BAGGAGE_MAX_BYTES - len(first) - 1 - 2)
    value = f"{first},{second}"
    assert len(value) == BAGGAGE_MAX_BYTES
    assert baggage_of(value) == value


def test_baggage_over_8192_bytes_drops_whole_members() -> None:
    """§Limits: "MUST NOT propagate any partial list-members"."""
    first = "a=" + "x" * 4000
    second = "b=" + "y" * (BAGGAGE_MAX_BYTES - len(first))
    assert baggage_of(f"{first},{second}") == first


def test_duplicated_baggage_keys_are_kept_in_order() -> None:
    """§baggage-string: "The order of duplicate entries SHOULD be preserved"."""
    assert baggage_of("k=1,k=2") == "k=1,k=2"


# --------------------------------------------------------------------------
# B3 single header (§Single Header)


def test_b3_single_with_ids_only_defers_sampling() -> None:
    """§Sampling State: "Defer is absence of the sampling field"."""
    incoming = extract(("b3", f"{B3_TRACE}-{B3_SPAN}"))
    assert (incoming.trace_id, incoming.parent_span_id) == (int(B3_TRACE, 16), int(B3_SPAN, 16))
    assert incoming.sampling is Sampling.DEFER
    assert incoming.trace_flags == 0


@pytest.mark.parametrize(
    ("state", "sampling"),
    [("1", Sampling.ACCEPT), ("0", Sampling.DENY), ("d", Sampling.DEBUG)],
)
def test_b3_single_sampling_state(state: str, sampling: Sampling) -> None:
    assert extract(("b3", f"{B3_TRACE}-{B3_SPAN}-{state}")).sampling is sampling


def test_b3_single_with_parent_span_id() -> None:
    """§Single Header example: the sender's span is SpanId; ParentSpanId is its parent."""
    incoming = extract(("b3", f"{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT}"))
    assert incoming.parent_span_id == int(B3_SPAN, 16)
    assert incoming.sampling is Sampling.ACCEPT


def test_b3_single_with_parent_but_no_sampling_state_defers() -> None:
    incoming = extract(("b3", f"{B3_TRACE}-{B3_SPAN}-{B3_PARENT}"))
    assert incoming.parent_span_id == int(B3_SPAN, 16)
    assert incoming.sampling is Sampling.DEFER


def test_b3_single_64_bit_trace_id_is_remembered() -> None:
    incoming = extract(("b3", f"{B3_TRACE_64}-{B3_SPAN}-1"))
    assert incoming.trace_id == int(B3_TRACE_64, 16)
    assert incoming.trace_id_64bit is True


@pytest.mark.parametrize(
    ("value", "sampling"),
    [("0", Sampling.DENY), ("1", Sampling.ACCEPT), ("d", Sampling.DEBUG)],
)
def test_b3_sampling_only_is_honoured(value: str, sampling: Sampling) -> None:
    """§Single Header: "A deny decision may omit identifiers and look like this: b3: 0"."""
    incoming = extract(("b3", value))
    assert incoming.trace_id is None
    assert incoming.sampling is sampling
    assert incoming.problems == ()


@pytest.mark.parametrize(
    "value",
    [
        f"{B3_TRACE.upper()}-{B3_SPAN}-1",
        f"{B3_TRACE}-{B3_SPAN.upper()}",
        f"{B3_TRACE[:-1]}-{B3_SPAN}-1",
        f"{B3_TRACE}-{B3_SPAN}0-1",
        f"{B3_TRACE}-{B3_SPAN}-2",
        f"{B3_TRACE}-{B3_SPAN}-true",
        f"{B3_TRACE}-{B3_SPAN}-1-{B3_PARENT[1:]}",
        f"{B3_TRACE}-{B3_SPAN}-1-",
        f"{B3_TRACE}-",
        f"{'0' * 32}-{B3_SPAN}-1",
        f"{B3_TRACE}-{'0' * 16}-1",
        "x",
        "",
    ],
)
def test_malformed_b3_single_is_ignored(value: str) -> None:
    incoming = extract(("b3", value))
    assert incoming.trace_id is None
    assert incoming.sampling is Sampling.DEFER
    assert incoming.problems


# --------------------------------------------------------------------------
# B3 multiple headers (§Multiple Headers)


def test_x_b3_headers_give_ids_and_sampling() -> None:
    incoming = extract(
        ("X-B3-TraceId", B3_TRACE),
        ("X-B3-SpanId", B3_SPAN),
        ("X-B3-ParentSpanId", B3_PARENT),
        ("X-B3-Sampled", "1"),
    )
    assert (incoming.trace_id, incoming.parent_span_id) == (int(B3_TRACE, 16), int(B3_SPAN, 16))
    assert incoming.sampling is Sampling.ACCEPT
    assert incoming.problems == ()


def test_absent_x_b3_sampled_defers() -> None:
    incoming = extract(("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN))
    assert incoming.sampling is Sampling.DEFER


def test_x_b3_sampled_0_alone_denies() -> None:
    """§Multiple Headers: "It is also valid to send sampling state independently, such as a
    deny decision X-B3-Sampled: 0"."""
    incoming = extract(("x-b3-sampled", "0"))
    assert incoming.trace_id is None
    assert incoming.sampling is Sampling.DENY


@pytest.mark.parametrize(
    ("value", "sampling"),
    [("true", Sampling.ACCEPT), ("false", Sampling.DENY), ("True", Sampling.ACCEPT)],
)
def test_legacy_true_false_sampled_is_accepted(value: str, sampling: Sampling) -> None:
    """§Sampling State: "a lenient implementation may accept them"."""
    incoming = extract(
        ("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-sampled", value)
    )
    assert incoming.sampling is sampling


def test_x_b3_flags_1_means_debug() -> None:
    incoming = extract(("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-flags", "1"))
    assert incoming.sampling is Sampling.DEBUG


def test_x_b3_flags_debug_outranks_a_sampled_header() -> None:
    """§Debug Flag: "Debug implies an accept decision"."""
    incoming = extract(("x-b3-flags", "1"), ("x-b3-sampled", "0"))
    assert incoming.sampling is Sampling.DEBUG


def test_x_b3_flags_other_than_1_are_ignored() -> None:
    """§Debug Flag: "Absent or any other value can be ignored"."""
    incoming = extract(
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-flags", "0"),
        ("x-b3-sampled", "1"),
    )
    assert incoming.sampling is Sampling.ACCEPT


def test_x_b3_first_value_wins() -> None:
    """§Multiple Headers: "When extracting state headers, the first value wins"."""
    incoming = extract(
        ("x-b3-traceid", B3_TRACE),
        ("x-b3-traceid", "1" * 32),
        ("x-b3-spanid", B3_SPAN),
        ("x-b3-sampled", "0"),
        ("x-b3-sampled", "1"),
    )
    assert incoming.trace_id == int(B3_TRACE, 16)
    assert incoming.sampling is Sampling.DENY


def test_x_b3_64_bit_trace_id_is_remembered() -> None:
    incoming = extract(("x-b3-traceid", B3_TRACE_64), ("x-b3-spanid", B3_SPAN))
    assert incoming.trace_id_64bit is True


def test_x_b3_span_id_without_trace_id_is_invalid() -> None:
    incoming = extract(("x-b3-spanid", B3_SPAN), ("x-b3-sampled", "1"))
    assert incoming.trace_id is None
    assert incoming.sampling is Sampling.ACCEPT  # the decision stands on its own
    assert incoming.problems


@pytest.mark.parametrize("sampled", ["", "yes", "2"])
def test_malformed_x_b3_sampled_defers(sampled: str) -> None:
    """§Multiple Headers: "An empty header (ex. X-B3-Sampled: ) ... malformed data"."""
    incoming = extract(
        ("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-sampled", sampled)
    )
    assert incoming.trace_id == int(B3_TRACE, 16)
    assert incoming.sampling is Sampling.DEFER
    assert incoming.problems == ("x-b3-sampled: malformed, sampling deferred",)


@pytest.mark.parametrize("trace", [B3_TRACE.upper(), B3_TRACE[:20], "0" * 16, ""])
def test_malformed_x_b3_trace_id_is_ignored(trace: str) -> None:
    incoming = extract(("x-b3-traceid", trace), ("x-b3-spanid", B3_SPAN))
    assert incoming.trace_id is None
    assert incoming.problems


def test_malformed_x_b3_parent_span_id_does_not_spoil_the_context() -> None:
    incoming = extract(
        ("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-parentspanid", "-")
    )
    assert incoming.trace_id == int(B3_TRACE, 16)
    assert incoming.problems == ("x-b3-parentspanid: malformed, ignored",)


# --------------------------------------------------------------------------
# Precedence between formats


def test_traceparent_takes_precedence_over_b3() -> None:
    incoming = extract(
        ("traceparent", TP_NOT_SAMPLED),
        ("b3", f"{B3_TRACE}-{B3_SPAN}-1"),
        ("x-b3-traceid", B3_TRACE_64),
        ("x-b3-spanid", B3_SPAN),
    )
    assert incoming.trace_id == TRACE_ID
    assert incoming.sampling is Sampling.DENY


def test_b3_single_takes_precedence_over_x_b3() -> None:
    """§Http Encodings: "The single-header variant takes precedence over the multiple
    header one"."""
    incoming = extract(
        ("b3", f"{B3_TRACE}-{B3_SPAN}-0"),
        ("x-b3-traceid", B3_TRACE_64),
        ("x-b3-spanid", B3_PARENT),
        ("x-b3-sampled", "1"),
    )
    assert incoming.trace_id == int(B3_TRACE, 16)
    assert incoming.sampling is Sampling.DENY


def test_malformed_traceparent_falls_back_to_b3_single() -> None:
    incoming = extract(("traceparent", "garbage"), ("b3", f"{B3_TRACE}-{B3_SPAN}-1"))
    assert incoming.trace_id == int(B3_TRACE, 16)
    assert incoming.problems == ("traceparent: shorter than 55 characters",)


def test_malformed_b3_single_falls_back_to_x_b3() -> None:
    incoming = extract(
        ("traceparent", "garbage"),
        ("b3", "garbage"),
        ("x-b3-traceid", B3_TRACE_64),
        ("x-b3-spanid", B3_SPAN),
    )
    assert incoming.trace_id == int(B3_TRACE_64, 16)
    assert len(incoming.problems) == 2


def test_nothing_valid_means_a_new_trace() -> None:
    incoming = extract(("traceparent", "garbage"), ("b3", "garbage"), ("x-b3-traceid", "garbage"))
    assert incoming.trace_id is None
    assert incoming.parent_span_id is None
    assert incoming.sampling is Sampling.DEFER


def test_b3_debug_for_the_same_span_survives_beside_traceparent() -> None:
    """W3C has no debug state; B3 describing the same span keeps it."""
    incoming = extract(
        ("traceparent", TP_SAMPLED),
        ("x-b3-traceid", TRACE_HEX),
        ("x-b3-spanid", PARENT_HEX),
        ("x-b3-flags", "1"),
    )
    assert incoming.sampling is Sampling.DEBUG


def test_b3_debug_for_another_span_does_not_change_traceparent_sampling() -> None:
    incoming = extract(("traceparent", TP_SAMPLED), ("b3", f"{B3_TRACE}-{B3_SPAN}-d"))
    assert incoming.sampling is Sampling.ACCEPT


def test_bare_b3_debug_marks_a_traceparent_context_debug() -> None:
    """§Sampling State: "Some support guides send debug without IDs as it is easier to do
    in curl"."""
    assert extract(("traceparent", TP_SAMPLED), ("b3", "d")).sampling is Sampling.DEBUG


def test_b3_64_bit_id_for_the_same_trace_survives_beside_traceparent() -> None:
    incoming = extract(
        ("traceparent", f"00-{'0' * 16}{B3_TRACE_64}-{B3_SPAN}-01"),
        ("b3", f"{B3_TRACE_64}-{B3_SPAN}-1"),
    )
    assert incoming.trace_id == int(B3_TRACE_64, 16)
    assert incoming.trace_id_64bit is True


# --------------------------------------------------------------------------
# x-request-id, x-ot-span-context, pass-through


def test_request_id_is_kept() -> None:
    assert extract(("X-Request-Id", "8a2b1c6e-0f1d-4f5e-9d3c-2b1a0f9e8d7c")).request_id == (
        "8a2b1c6e-0f1d-4f5e-9d3c-2b1a0f9e8d7c"
    )


def test_request_id_of_128_characters_is_kept() -> None:
    assert extract(("x-request-id", "r" * 128)).request_id == "r" * 128


@pytest.mark.parametrize("value", ["r" * 129, "has space", "tab\there", "caf\u00e9", "\x00nul", ""])
def test_bad_request_id_is_dropped(value: str) -> None:
    incoming = extract(("x-request-id", value))
    assert incoming.request_id is None
    assert incoming.problems


@pytest.mark.parametrize("values", [("req-1", "req-2"), ("req-1", "req-1")])
def test_duplicated_request_id_is_dropped(values: tuple[str, str]) -> None:
    # README: malformed or duplicated headers are dropped (a new id is made).
    incoming = extract(*(("x-request-id", v) for v in values))
    assert incoming.request_id is None
    assert "x-request-id: sent 2 times, dropped" in incoming.problems


def test_duplicated_ot_span_context_is_dropped() -> None:
    incoming = extract(("x-ot-span-context", "a"), ("x-ot-span-context", "b"))
    assert incoming.ot_span_context is None


def test_ot_span_context_is_passed_through_as_received() -> None:
    value = "0a0b0c0d0e0f1011121314151617181920"
    assert extract(("x-ot-span-context", value)).ot_span_context == value


def test_over_long_ot_span_context_is_dropped() -> None:
    incoming = extract(("x-ot-span-context", "a" * 1025))
    assert incoming.ot_span_context is None
    assert incoming.problems


def test_dev_user_is_passed_through_by_default() -> None:
    assert extract(("X-Dev-User", "alice")).passthrough == (("x-dev-user", "alice"),)


def test_empty_passthrough_value_is_not_kept() -> None:
    assert extract(("x-dev-user", "")).passthrough == ()


@pytest.mark.parametrize("values", [("betaUser", "stressTest"), ("betaUser", "betaUser")])
def test_duplicated_passthrough_header_is_dropped(values: tuple[str, str]) -> None:
    incoming = extract(*(("x-dev-user", v) for v in values), ("x-request-id", "r1"))
    assert incoming.passthrough == ()
    assert incoming.request_id == "r1"  # the rest of the context stands
    assert "x-dev-user: sent 2 times, dropped" in incoming.problems


def test_headers_outside_the_allow_list_are_not_passed_through() -> None:
    incoming = extract(("authorization", "Bearer x"), ("cookie", "a=b"), ("x-other", "1"))
    assert incoming.passthrough == ()


def test_passthrough_allow_list_is_configurable_and_case_insensitive() -> None:
    propagator = Propagator(passthrough=("X-Tenant", "fail"))
    incoming = propagator.extract(hdrs(("x-tenant", "t1"), ("FAIL", "0.3"), ("x-dev-user", "bob")))
    assert incoming.passthrough == (("x-tenant", "t1"), ("fail", "0.3"))


def test_non_ascii_passthrough_value_is_dropped() -> None:
    incoming = extract(("x-dev-user", "j\u00f6rg"))
    assert incoming.passthrough == ()
    assert incoming.problems == ("x-dev-user: not printable ASCII or too long, dropped",)


@pytest.mark.parametrize("name", ["authorization", "Cookie", "proxy-authorization", "host"])
def test_credentials_can_never_be_allow_listed(name: str) -> None:
    with pytest.raises(ValueError, match=name.lower()):
        Propagator(passthrough=(name,))


@pytest.mark.parametrize("name", ["traceparent", "x-request-id", "b3"])
def test_propagation_headers_cannot_be_allow_listed(name: str) -> None:
    with pytest.raises(ValueError, match=name):
        Propagator(passthrough=(name,))


def test_invalid_header_name_cannot_be_allow_listed() -> None:
    with pytest.raises(ValueError, match="not a valid header name"):
        Propagator(passthrough=("x dev",))


# --------------------------------------------------------------------------
# Formats and configuration


def test_incoming_is_immutable_and_slotted() -> None:
    incoming = extract(("traceparent", TP_SAMPLED))
    assert not hasattr(incoming, "__dict__")
    with pytest.raises(dataclasses.FrozenInstanceError):
        incoming.trace_id = 1  # type: ignore[misc]


def test_a_single_string_is_not_a_list_of_formats() -> None:
    """ "b3" would otherwise be read as the formats "b" and "3"."""
    with pytest.raises(TypeError, match="formats"):
        Propagator(formats="b3")


def test_unknown_format_is_named_in_the_error() -> None:
    with pytest.raises(ValueError, match="'jaeger'"):
        Propagator(formats=("tracecontext", "jaeger"))


def test_none_cannot_be_combined_with_other_formats() -> None:
    with pytest.raises(ValueError, match="none"):
        Propagator(formats=("none", "b3"))


def test_format_none_writes_no_trace_headers_but_still_forwards_request_id() -> None:
    incoming = extract(("traceparent", TP_SAMPLED), ("baggage", "a=1"), ("x-request-id", "r1"))
    assert dict(inject(incoming, formats=("none",))) == {"x-request-id": "r1"}


def test_extraction_accepts_every_format_whatever_is_configured() -> None:
    propagator = Propagator(formats=("none",))
    assert propagator.extract(hdrs(("b3", f"{B3_TRACE}-{B3_SPAN}-1"))).trace_id == int(B3_TRACE, 16)


def test_b3_format_writes_only_the_single_header() -> None:
    out = inject(extract(("traceparent", TP_SAMPLED)), formats=("b3",))
    assert set(out) == {"b3"}


def test_default_formats_are_opentelemetrys_tracecontext_and_baggage() -> None:
    out = Propagator()
    headers: CIMultiDict[str] = CIMultiDict()
    incoming = extract(("traceparent", TP_SAMPLED), ("baggage", "a=1"))
    out.inject(incoming, TRACE_ID, 0xABC, True, headers)
    assert set(headers) == {"traceparent", "baggage"}


def test_a_trace_started_here_goes_out_in_the_configured_formats_only() -> None:
    assert set(inject(EMPTY, formats=("tracecontext", "baggage"))) == {"traceparent"}
    assert set(inject(EMPTY, formats=("tracecontext", "b3multi"))) == {
        "traceparent",
        "x-b3-traceid",
        "x-b3-spanid",
        "x-b3-sampled",
    }


B3_MULTI_OTHER_SPAN = (
    ("x-b3-traceid", TRACE_HEX),
    ("x-b3-spanid", "00000000000000ff"),
    ("x-b3-sampled", "1"),
)


@pytest.mark.parametrize(
    ("received", "answered"),
    [
        # B3 alone: the context is B3's, sent on in the caller's form.
        ((("b3", f"{TRACE_HEX}-{PARENT_HEX}-1"),), {"b3": f"{TRACE_HEX}-0000000000000abc-1"}),
        (
            (("x-b3-traceid", TRACE_HEX), ("x-b3-spanid", PARENT_HEX), ("x-b3-sampled", "1")),
            {"x-b3-traceid": TRACE_HEX, "x-b3-spanid": "0000000000000abc", "x-b3-sampled": "1"},
        ),
        # traceparent and x-b3-* naming the same span (what usvc itself sends: the fast path).
        (
            (
                ("traceparent", TP_SAMPLED),
                ("x-b3-traceid", TRACE_HEX),
                ("x-b3-spanid", PARENT_HEX),
                ("x-b3-sampled", "1"),
            ),
            {"x-b3-traceid": TRACE_HEX, "x-b3-spanid": "0000000000000abc"},
        ),
        # The same trace at another span: a B3-only (Zipkin) sidecar moved B3 on and left
        # traceparent as the caller wrote it. traceparent's context is taken, B3 goes on.
        (
            (("traceparent", TP_SAMPLED), *B3_MULTI_OTHER_SPAN),
            {"x-b3-traceid": TRACE_HEX, "x-b3-spanid": "0000000000000abc"},
        ),
        # A bare debug request: W3C cannot carry it, B3 does.
        ((("traceparent", TP_SAMPLED), ("b3", "d")), {"b3": f"{TRACE_HEX}-0000000000000abc-d"}),
    ],
)
def test_a_b3_caller_is_answered_in_kind(
    received: tuple[tuple[str, str], ...], answered: dict[str, str]
) -> None:
    incoming = extract(*received)
    out = inject(incoming, formats=("tracecontext", "baggage"))
    assert out["traceparent"] == f"00-{TRACE_HEX}-0000000000000abc-01"
    for name, value in answered.items():
        assert out[name] == value
    other_form = {"b3"} if "x-b3-traceid" in answered else {"x-b3-traceid", "x-b3-spanid"}
    assert not other_form & set(out)


@pytest.mark.parametrize(
    "b3",
    [
        # Another trace's B3 beside a valid traceparent is not this context's.
        (("x-b3-traceid", "0" * 31 + "1"), ("x-b3-spanid", PARENT_HEX)),
        (("b3", f"{'0' * 31}1-{PARENT_HEX}-1"),),
        # A bare sampling state, which traceparent's flags override.
        (("b3", "0"),),
        # Malformed B3 is dropped, not sent on.
        (("x-b3-traceid", "xyz"), ("x-b3-spanid", PARENT_HEX)),
    ],
)
def test_b3_that_is_not_the_contexts_is_not_sent_on(b3: tuple[tuple[str, str], ...]) -> None:
    incoming = extract(("traceparent", TP_SAMPLED), *b3)
    assert incoming.b3 == ""
    assert set(inject(incoming, formats=("tracecontext", "baggage"))) == {"traceparent"}


def test_none_answers_no_b3_caller_either() -> None:
    incoming = extract(("b3", f"{TRACE_HEX}-{PARENT_HEX}-1"), ("x-request-id", "r-1"))
    assert incoming.b3 == "b3"
    out = inject(incoming, formats=("none",))
    assert dict(out) == {"x-request-id": "r-1"}


def test_the_configured_b3_form_is_written_beside_the_callers() -> None:
    incoming = extract(("b3", f"{TRACE_HEX}-{PARENT_HEX}-1"))
    out = inject(incoming, formats=("tracecontext", "b3multi"))
    assert {"traceparent", "b3", "x-b3-traceid", "x-b3-spanid"} <= set(out)


# --------------------------------------------------------------------------
# Inject


def test_injected_traceparent_is_version_00_with_our_span_as_parent() -> None:
    out = inject(extract(("traceparent", TP_SAMPLED)), span_id=0xABC, sampled=False)
    assert out["traceparent"] == f"00-{TRACE_HEX}-0000000000000abc-00"


def test_injected_random_flag_is_kept_when_continuing_a_trace() -> None:
    """Level 2: "If the flag is set in the incoming traceparent header, it MUST also be set"."""
    incoming = extract(("traceparent", f"00-{TRACE_HEX}-{PARENT_HEX}-02"))
    assert inject(incoming, sampled=True)["traceparent"].endswith("-03")


def test_injected_random_flag_stays_unset_when_it_came_unset() -> None:
    """Level 2: "If the flag is unset in the incoming traceparent header, it MUST also be unset"."""
    incoming = extract(("traceparent", TP_SAMPLED))
    assert inject(incoming, sampled=True)["traceparent"].endswith("-01")


def test_injected_random_flag_is_set_for_a_trace_we_start() -> None:
    trace_id = new_trace_id()
    out = inject(extract(), trace_id=trace_id, sampled=False)
    assert out["traceparent"] == f"00-{trace_id:032x}-0000000000000abc-02"


def test_unknown_incoming_flags_are_not_sent_on() -> None:
    """§Other Flags: "Vendors MUST set those to zero"."""
    incoming = extract(("traceparent", f"00-{TRACE_HEX}-{PARENT_HEX}-ff"))
    assert inject(incoming, sampled=True)["traceparent"].endswith("-03")


def test_tracestate_is_forwarded_when_continuing_the_trace() -> None:
    incoming = extract(("traceparent", TP_SAMPLED), ("tracestate", "congo=t61rcWkgMzE"))
    assert inject(incoming)["tracestate"] == "congo=t61rcWkgMzE"


def test_tracestate_is_not_forwarded_when_the_trace_restarts() -> None:
    """§Mutating the traceparent Field: "Vendors SHOULD clean up tracestate collection on
    traceparent restart"."""
    incoming = extract(("traceparent", TP_SAMPLED), ("tracestate", "congo=t61rcWkgMzE"))
    assert "tracestate" not in inject(incoming, trace_id=new_trace_id())


def test_baggage_is_forwarded() -> None:
    incoming = extract(("baggage", "userId=alice"))
    assert inject(incoming)["baggage"] == "userId=alice"


def test_b3_debug_survives_in_the_single_header() -> None:
    incoming = extract(("b3", f"{B3_TRACE}-{B3_SPAN}-d"))
    out = inject(incoming, trace_id=int(B3_TRACE, 16), sampled=False)
    assert out["b3"] == f"{B3_TRACE}-0000000000000abc-d"


def test_b3_debug_survives_as_x_b3_flags_without_x_b3_sampled() -> None:
    """§Debug Flag: "Debug implies an accept decision, so don't also send the X-B3-Sampled
    header"."""
    incoming = extract(("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN), ("x-b3-flags", "1"))
    out = inject(incoming, trace_id=int(B3_TRACE, 16), sampled=False)
    assert out["x-b3-flags"] == "1"
    assert "x-b3-sampled" not in out


def test_debug_forces_the_w3c_sampled_bit() -> None:
    incoming = extract(("b3", "d"))
    assert inject(incoming, trace_id=new_trace_id(), sampled=False)["traceparent"].endswith("-03")


@pytest.mark.parametrize(("sampled", "expected"), [(True, "1"), (False, "0")])
def test_our_sampling_decision_goes_out_in_b3(sampled: bool, expected: str) -> None:
    out = inject(
        extract(("b3", f"{B3_TRACE}-{B3_SPAN}")), trace_id=int(B3_TRACE, 16), sampled=sampled
    )
    assert out["x-b3-sampled"] == expected
    assert out["b3"].endswith(f"-{expected}")


def test_64_bit_trace_id_is_re_emitted_as_16_hex_characters() -> None:
    incoming = extract(("x-b3-traceid", B3_TRACE_64), ("x-b3-spanid", B3_SPAN))
    out = inject(incoming, trace_id=int(B3_TRACE_64, 16))
    assert out["x-b3-traceid"] == B3_TRACE_64
    assert out["b3"].startswith(f"{B3_TRACE_64}-")
    # traceparent has no 64-bit form: 32 characters, left-padded.
    assert out["traceparent"].startswith(f"00-{'0' * 16}{B3_TRACE_64}-")


def test_128_bit_trace_id_with_zero_high_bits_is_re_emitted_as_32_hex_characters() -> None:
    incoming = extract(("x-b3-traceid", "0" * 16 + B3_TRACE_64), ("x-b3-spanid", B3_SPAN))
    assert inject(incoming, trace_id=int(B3_TRACE_64, 16))["x-b3-traceid"] == "0" * 16 + B3_TRACE_64


def test_new_trace_is_emitted_in_128_bits_even_after_a_64_bit_caller() -> None:
    incoming = extract(("x-b3-traceid", B3_TRACE_64), ("x-b3-spanid", B3_SPAN))
    trace_id = new_trace_id()
    assert inject(incoming, trace_id=trace_id)["x-b3-traceid"] == f"{trace_id:032x}"


def test_b3_parent_span_id_is_the_span_that_made_the_call() -> None:
    """usvc model: the egress client span is SpanId, the server span that made it its parent."""
    incoming = extract(("x-b3-traceid", B3_TRACE), ("x-b3-spanid", B3_SPAN))
    out = inject(incoming, trace_id=int(B3_TRACE, 16), span_id=0xABC, parent_span_id=0xDEF)
    assert out["x-b3-spanid"] == "0000000000000abc"
    assert out["x-b3-parentspanid"] == "0000000000000def"
    assert out["b3"] == f"{B3_TRACE}-0000000000000abc-1-0000000000000def"


def test_b3_parent_span_id_is_absent_unless_given() -> None:
    """§ParentSpanId: "must be absent on the root span"; it may always be omitted."""
    out = inject(extract(), trace_id=new_trace_id())
    assert "x-b3-parentspanid" not in out
    assert out["b3"].count("-") == 2


def test_request_id_is_forwarded_and_can_be_supplied() -> None:
    assert inject(extract(("x-request-id", "r1")))["x-request-id"] == "r1"
    assert inject(with_request_id(extract(), "generated-1"))["x-request-id"] == "generated-1"


def test_with_request_id_rejects_what_the_next_hop_would_drop() -> None:
    with pytest.raises(ValueError, match="request id"):
        with_request_id(extract(), "has space")


def test_ot_span_context_and_passthrough_are_forwarded_as_received() -> None:
    out = inject(extract(("x-ot-span-context", "abc123"), ("x-dev-user", "alice")))
    assert (out["x-ot-span-context"], out["x-dev-user"]) == ("abc123", "alice")


def test_empty_values_are_never_written() -> None:
    out = inject(
        extract(("tracestate", ""), ("baggage", ""), ("x-dev-user", " ")), trace_id=new_trace_id()
    )
    assert all(value for value in out.values())
    assert not {"tracestate", "baggage", "x-dev-user", "x-request-id"} & set(out)


def test_passthrough_is_written_only_for_names_this_propagator_allows() -> None:
    incoming = Propagator(passthrough=("x-tenant",)).extract(hdrs(("x-tenant", "t1")))
    assert "x-tenant" not in inject(incoming, passthrough=("x-dev-user",))


@pytest.mark.parametrize(
    ("trace_id", "span_id"), [(0, 1), (1 << 128, 1), (1, 0), (1, 1 << 64), (-1, 1)]
)
def test_out_of_range_ids_are_a_caller_bug(trace_id: int, span_id: int) -> None:
    with pytest.raises(ValueError, match="must be a non-zero"):
        inject(extract(), trace_id=trace_id, span_id=span_id)


# --------------------------------------------------------------------------
# Id generation


def test_new_ids_are_non_zero_and_in_range() -> None:
    trace_ids = {new_trace_id() for _ in range(1000)}
    span_ids = {new_span_id() for _ in range(1000)}
    assert all(0 < t < 1 << 128 for t in trace_ids)
    assert all(0 < s < 1 << 64 for s in span_ids)
    assert len(trace_ids) == len(span_ids) == 1000


def test_new_trace_ids_use_the_high_bits_too() -> None:
    assert any(new_trace_id() >> 64 for _ in range(10))


# --------------------------------------------------------------------------
# An independent, strict validator for what inject writes. It is written from the
# specs with string methods, not the module's patterns, so the two can disagree.

LOWER_HEX = frozenset("0123456789abcdef")
TS_KEY_FIRST = frozenset(string.ascii_lowercase + string.digits)
TS_KEY_CHARS = TS_KEY_FIRST | frozenset("_-*/@")
TS_VALUE_CHARS = frozenset(chr(c) for c in range(0x20, 0x7F)) - frozenset(",=")
TOKEN_CHARS = frozenset(string.ascii_letters + string.digits + "!#$%&'*+-.^_`|~")
BAGGAGE_OCTETS = frozenset(chr(c) for c in range(0x21, 0x7F)) - frozenset('",;\\')


def is_hex_id(value: str, *lengths: int) -> bool:
    return len(value) in lengths and set(value) <= LOWER_HEX and int(value, 16) != 0


def valid_traceparent(value: str) -> bool:
    parts = value.split("-")
    return (
        len(value) == 55
        and len(parts) == 4
        and parts[0] == "00"
        and is_hex_id(parts[1], 32)
        and is_hex_id(parts[2], 16)
        and len(parts[3]) == 2
        and set(parts[3]) <= LOWER_HEX
        and int(parts[3], 16) & ~0x03 == 0
    )


def valid_tracestate(value: str) -> bool:
    members = value.split(",")
    keys = []
    for member in members:
        key, eq, val = member.partition("=")
        if not eq or not key or len(key) > 256 or key[0] not in TS_KEY_FIRST:
            return False
        if not set(key) <= TS_KEY_CHARS:
            return False
        if not val or len(val) > 256 or not set(val) <= TS_VALUE_CHARS or val.endswith(" "):
            return False
        keys.append(key)
    return (
        len(members) <= 32 and len(set(keys)) == len(keys) and len(value) <= TRACESTATE_MAX_LENGTH
    )


def valid_baggage_key_value(text: str, need_value: bool) -> bool:
    key, eq, val = text.partition("=")
    key, val = key.strip(" \t"), val.strip(" \t")
    if not key or not set(key) <= TOKEN_CHARS:
        return False
    if not eq:
        return not need_value
    return set(val) <= BAGGAGE_OCTETS


def valid_baggage(value: str) -> bool:
    members = value.split(",")
    for member in members:
        if member != member.strip(" \t"):
            return False
        head, *props = member.split(";")
        if not valid_baggage_key_value(head, need_value=True):
            return False
        if not all(valid_baggage_key_value(p, need_value=False) for p in props):
            return False
    return len(members) <= 64 and len(value.encode()) <= 8192


def valid_b3(value: str) -> bool:
    parts = value.split("-")
    if len(parts) not in (3, 4):  # we always send a decision
        return False
    return (
        is_hex_id(parts[0], 16, 32)
        and is_hex_id(parts[1], 16)
        and parts[2] in ("0", "1", "d")
        and (len(parts) == 3 or is_hex_id(parts[3], 16))
    )


def visible_ascii(value: str, limit: int, space: bool = False) -> bool:
    low = 0x20 if space else 0x21
    return 0 < len(value) <= limit and all(
        low <= ord(c) < 0x7F or (space and c == "\t") for c in value
    )


def assert_strictly_valid(out: CIMultiDict[str], passthrough: Iterable[str]) -> None:
    names = [name.lower() for name in out]
    assert len(names) == len(set(names)), "a header was written twice"
    checks: dict[str, Callable[[str], bool]] = {
        "traceparent": valid_traceparent,
        "tracestate": valid_tracestate,
        "baggage": valid_baggage,
        "b3": valid_b3,
        "x-b3-traceid": lambda v: is_hex_id(v, 16, 32),
        "x-b3-spanid": lambda v: is_hex_id(v, 16),
        "x-b3-parentspanid": lambda v: is_hex_id(v, 16),
        "x-b3-sampled": lambda v: v in ("0", "1"),
        "x-b3-flags": lambda v: v == "1",
        "x-request-id": lambda v: visible_ascii(v, 128),
        "x-ot-span-context": lambda v: visible_ascii(v, 1024, space=True),
    }
    allowed = set(passthrough)
    for raw_name, value in out.items():
        name = raw_name.lower()
        if name in checks:
            assert checks[name](value), f"invalid {name}: {value!r}"
        else:
            assert name in allowed
            assert visible_ascii(value, 1024, space=True), f"invalid {name}: {value!r}"
    assert not ("x-b3-sampled" in out and "x-b3-flags" in out)
    if "x-b3-traceid" in out:
        assert "x-b3-spanid" in out


# --------------------------------------------------------------------------
# Property tests

KNOWN_NAMES = sorted(TRACE_HEADERS | {"x-dev-user", "x-tenant", "authorization", "cookie", "fail"})
HEX_ISH = "0123456789abcdefABCDEF-"


def _case(name: str, upper: list[bool]) -> str:
    return "".join(
        c.upper() if u else c for c, u in zip(name, [*upper, *[False] * len(name)], strict=False)
    )


header_names = st.one_of(
    st.builds(_case, st.sampled_from(KNOWN_NAMES), st.lists(st.booleans(), max_size=20)),
    st.text(alphabet=string.ascii_letters + "-", min_size=1, max_size=20),
)
near_valid_values = st.one_of(
    st.builds(
        lambda v, t, p, f, rest: f"{v}-{t}-{p}-{f}{rest}",
        st.sampled_from(["00", "01", "cc", "ff", "0", "000", "FF", "g0"]),
        st.text(alphabet=HEX_ISH, min_size=30, max_size=34),
        st.text(alphabet=HEX_ISH, min_size=14, max_size=18),
        st.text(alphabet=HEX_ISH, min_size=1, max_size=3),
        st.sampled_from(["", "-", "-x", ".", " "]),
    ),
    st.builds(
        lambda t, s, rest: f"{t}-{s}{rest}",
        st.text(alphabet=HEX_ISH, min_size=15, max_size=33),
        st.text(alphabet=HEX_ISH, min_size=15, max_size=17),
        st.sampled_from(["", "-1", "-0", "-d", "-x", f"-1-{B3_PARENT}", f"-{B3_PARENT}", "-"]),
    ),
    st.sampled_from(["0", "1", "d", "true", "false", "", " ", ",", ";", "=", "@", "a=1", "k=v;p"]),
    st.lists(
        st.text(alphabet=string.ascii_lowercase + '@=_-*/ \t;,%"', max_size=12), max_size=40
    ).map(",".join),
)
huge_values = st.builds(lambda c, n: c * n, st.characters(), st.integers(1000, 20000))
any_values = st.text(alphabet=st.characters(codec=None, exclude_categories=()), max_size=300)
header_values = st.one_of(near_valid_values, any_values, huge_values)
header_lists = st.lists(st.tuples(header_names, header_values), max_size=12)
formats = st.lists(st.sampled_from(ALL_FORMATS), unique=True)
trace_formats = st.lists(st.sampled_from(ALL_FORMATS), unique=True).filter(
    lambda f: bool({"tracecontext", "b3", "b3multi"} & set(f))
)
span_ids = st.integers(1, (1 << 64) - 1)
PROPERTY = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.mark.slow
@PROPERTY
@given(header_lists)
def test_extract_never_raises(pairs: list[tuple[str, str]]) -> None:
    incoming = Propagator(passthrough=("x-dev-user", "x-tenant")).extract(hdrs(*pairs))
    assert isinstance(incoming, Incoming)
    assert incoming.trace_id is None or 0 < incoming.trace_id < 1 << 128
    assert (incoming.trace_id is None) == (incoming.parent_span_id is None)
    # Problems are logged: they must never carry attacker-supplied text.
    for problem in incoming.problems:
        assert len(problem) <= 120
        assert all(" " <= c <= "~" for c in problem)


def _choose_trace_id(incoming: Incoming, fresh: int, restart: bool) -> int:
    return fresh if incoming.trace_id is None or restart else incoming.trace_id


@pytest.mark.slow
@PROPERTY
@given(
    header_lists,
    st.integers(1, (1 << 128) - 1),
    st.booleans(),
    span_ids,
    st.booleans(),
    formats,
    st.one_of(st.none(), span_ids),
)
def test_anything_injected_is_strictly_valid(
    pairs: list[tuple[str, str]],
    fresh: int,
    restart: bool,
    span_id: int,
    sampled: bool,
    chosen: list[str],
    parent: int | None,
) -> None:
    propagator = Propagator(chosen, ("x-dev-user", "x-tenant"))
    incoming = propagator.extract(hdrs(*pairs))
    out: CIMultiDict[str] = CIMultiDict()
    trace_id = _choose_trace_id(incoming, fresh, restart)
    propagator.inject(incoming, trace_id, span_id, sampled, out, parent_span_id=parent)
    assert_strictly_valid(out, ("x-dev-user", "x-tenant"))


@pytest.mark.slow
@PROPERTY
@given(header_lists, st.integers(1, (1 << 128) - 1), span_ids, st.booleans(), formats)
def test_nothing_outside_the_allow_list_is_ever_written(
    pairs: list[tuple[str, str]], fresh: int, span_id: int, sampled: bool, chosen: list[str]
) -> None:
    propagator = Propagator(chosen, ("x-dev-user",))
    incoming = propagator.extract(hdrs(*pairs, ("authorization", "Bearer t"), ("cookie", "s=1")))
    out: CIMultiDict[str] = CIMultiDict()
    propagator.inject(incoming, _choose_trace_id(incoming, fresh, False), span_id, sampled, out)
    assert {name.lower() for name in out} <= TRACE_HEADERS | {"x-dev-user"}


# Valid inputs for the round trip: every format the caller might have used.
hex_id16 = st.integers(1, (1 << 64) - 1).map(lambda i: f"{i:016x}")
hex_id32 = st.integers(1, (1 << 128) - 1).map(lambda i: f"{i:032x}")
ts_members = st.lists(
    st.tuples(
        st.text(alphabet=string.ascii_lowercase, min_size=1, max_size=8),
        st.text(alphabet=string.ascii_letters + string.digits + "+/", min_size=1, max_size=16),
    ),
    max_size=5,
    unique_by=lambda kv: kv[0],
).map(lambda kvs: ",".join(f"{k}={v}" for k, v in kvs))
valid_contexts = st.one_of(
    st.just([]),
    st.builds(
        lambda t, p, f, ts: [("traceparent", f"00-{t}-{p}-{f:02x}"), ("tracestate", ts)],
        hex_id32,
        hex_id16,
        st.integers(0, 3),
        ts_members,
    ),
    st.builds(
        lambda t, s, state: [("b3", f"{t}-{s}{state}")],
        st.one_of(hex_id16, hex_id32),
        hex_id16,
        st.sampled_from(["", "-0", "-1", "-d"]),
    ),
    st.builds(
        lambda t, s, extra: [("x-b3-traceid", t), ("x-b3-spanid", s), *extra],
        st.one_of(hex_id16, hex_id32),
        hex_id16,
        st.sampled_from(
            [[], [("x-b3-sampled", "1")], [("x-b3-sampled", "0")], [("x-b3-flags", "1")]]
        ),
    ),
    st.sampled_from([[("b3", "0")], [("b3", "d")], [("x-b3-sampled", "1")], [("x-b3-flags", "1")]]),
)
extras = st.lists(
    st.sampled_from(
        [
            ("baggage", "userId=alice,serverNode=DF%2028;p"),
            ("x-request-id", "req-1"),
            ("x-ot-span-context", "0a0b0c"),
            ("x-dev-user", "alice"),
        ]
    ),
    unique=True,
)


@pytest.mark.slow
@PROPERTY
@given(
    valid_contexts,
    extras,
    st.integers(1, (1 << 128) - 1),
    st.booleans(),
    span_ids,
    st.booleans(),
    trace_formats,
    st.one_of(st.none(), span_ids),
)
def test_round_trip_keeps_ids_sampling_debug_and_width(
    context: list[tuple[str, str]],
    extra: list[tuple[str, str]],
    fresh: int,
    restart: bool,
    span_id: int,
    sampled: bool,
    chosen: list[str],
    parent: int | None,
) -> None:
    propagator = Propagator(chosen)
    incoming = propagator.extract(hdrs(*context, *extra))
    assert incoming.problems == ()
    trace_id = _choose_trace_id(incoming, fresh, restart)
    continuing = trace_id == incoming.trace_id
    out: CIMultiDict[str] = CIMultiDict()
    propagator.inject(incoming, trace_id, span_id, sampled, out, parent_span_id=parent)

    received = propagator.extract(CIMultiDictProxy(out))

    # B3 goes out in the chosen forms and in the caller's (answered in kind).
    forms = {*chosen, incoming.b3} & {"b3", "b3multi"}
    has_b3 = bool(forms)
    assert received.b3 == ("b3" if "b3" in forms else "b3multi" if forms else "")
    debug = incoming.sampling is Sampling.DEBUG
    assert received.problems == ()
    assert (received.trace_id, received.parent_span_id) == (trace_id, span_id)
    if debug and has_b3:
        assert received.sampling is Sampling.DEBUG
    else:
        assert received.sampling is (Sampling.ACCEPT if sampled or debug else Sampling.DENY)
    assert received.trace_id_64bit == (has_b3 and continuing and incoming.trace_id_64bit)
    if "tracecontext" in chosen:
        random_in = bool(incoming.trace_flags & 2) if continuing else True
        assert bool(received.trace_flags & 2) == random_in
        assert received.tracestate == (incoming.tracestate if continuing else "")
    assert received.baggage == (incoming.baggage if "baggage" in chosen else "")
    assert received.request_id == incoming.request_id
    assert received.ot_span_context == incoming.ot_span_context
    assert received.passthrough == incoming.passthrough


def test_a_request_without_any_context_header_is_the_shared_empty_context() -> None:
    propagator = Propagator(passthrough=("x-dev-user",))
    plain = CIMultiDictProxy(CIMultiDict({"Host": "a", "Accept": "*/*", "Cookie": "c=1"}))
    assert propagator.extract(plain) is EMPTY
    # any one header that extraction reads takes the full path
    for name, value in (
        ("x-dev-user", "betaUser"),
        ("x-request-id", "r1"),
        ("b3", "0"),
        ("traceparent", "junk"),
    ):
        headers = CIMultiDictProxy(CIMultiDict({"Host": "a", name: value}))
        assert propagator.extract(headers) != EMPTY, name


# --------------------------------------------------------------------------
# The common case's fast path reads what the full parse reads

_B3_VARIANTS = {
    "x-b3-traceid": st.sampled_from([None, "same", B3_TRACE, B3_TRACE_64, "XYZ"]),
    "x-b3-spanid": st.sampled_from([None, "same", B3_SPAN, "0" * 16]),
    "x-b3-sampled": st.sampled_from([None, "0", "1", "true", "maybe"]),
    "x-b3-flags": st.sampled_from([None, "1", "0"]),
    "x-b3-parentspanid": st.sampled_from([None, B3_PARENT, "0" * 16, "NOTHEX0123456789"]),
    "b3": st.sampled_from([None, "d", f"{B3_TRACE}-{B3_SPAN}-1"]),
}


def _fast_and_full(tp: str, b3: dict[str, str | None]) -> tuple[Incoming, Incoming]:
    """The same headers twice, the second with OWS before traceparent: that
    value is not 55 characters, so it takes the full parse (which strips OWS)."""
    trace_hex, parent_hex = tp[3:35], tp[36:52]
    pairs = []
    for name, value in b3.items():
        if value == "same":
            value = trace_hex if name == "x-b3-traceid" else parent_hex
        if value is not None:
            pairs.append((name, value))
    propagator = Propagator()
    fast = propagator.extract(hdrs(("traceparent", tp), *pairs))
    full = propagator.extract(hdrs(("traceparent", " " + tp), *pairs))
    return fast, full


@pytest.mark.parametrize(
    "b3",
    [
        {},
        {"x-b3-traceid": "same", "x-b3-spanid": "same", "x-b3-sampled": "1"},
        {"x-b3-traceid": "same", "x-b3-spanid": "same", "x-b3-parentspanid": B3_PARENT},
        {"x-b3-traceid": "same", "x-b3-spanid": "same", "x-b3-flags": "1"},
        {"x-b3-traceid": "same", "x-b3-spanid": "same", "x-b3-parentspanid": "0" * 16},
        {"x-b3-traceid": B3_TRACE, "x-b3-spanid": B3_SPAN, "x-b3-sampled": "0"},
        {"x-b3-sampled": "maybe"},
        {"b3": "d"},
    ],
)
def test_a_usvc_hops_headers_read_the_same_by_the_fast_path_and_the_full_parse(
    b3: dict[str, str | None],
) -> None:
    fast, full = _fast_and_full(TP_SAMPLED, b3)
    assert fast == full
    assert fast.trace_id == TRACE_ID


@pytest.mark.slow
@PROPERTY
@given(
    st.integers(0, (1 << 128) - 1),
    st.integers(0, (1 << 64) - 1),
    st.integers(0, 255),
    st.fixed_dictionaries(_B3_VARIANTS),
)
def test_the_fast_path_agrees_with_the_full_parse(
    trace_id: int, parent_id: int, flags: int, b3: dict[str, str | None]
) -> None:
    tp = f"00-{trace_id:032x}-{parent_id:016x}-{flags:02x}"
    fast, full = _fast_and_full(tp, b3)
    assert fast == full


def test_incoming_changes_only_by_copy() -> None:
    incoming = extract(("traceparent", TP_SAMPLED))
    changed = incoming._replace(request_id="r-1")
    assert (changed.request_id, incoming.request_id) == ("r-1", None)
    assert changed.trace_id == incoming.trace_id


def test_what_a_usvc_hop_sends_takes_the_fast_path() -> None:
    defaults = Propagator()  # tracecontext, baggage, b3multi
    for sampled in (True, False):
        out: CIMultiDict[str] = CIMultiDict()
        incoming = extract(("traceparent", TP_SAMPLED))
        defaults.inject(incoming, TRACE_ID, 0xABC, sampled, out, parent_span_id=0x77)
        headers = hdrs(*out.items())
        assert _common_context(out["traceparent"], headers) is not None
        assert defaults.extract(headers).trace_id == TRACE_ID
