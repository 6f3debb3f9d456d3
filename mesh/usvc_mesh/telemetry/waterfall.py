"""``usvc trace``: one trace from the collector's spans files, as a waterfall in the terminal.

Reads the OTLP JSON lines :mod:`.collector` writes, puts each span under its
parent (spans whose parent never arrived sit at the top, in start order) and
prints one line per span: service, span name indented by depth, start offset
from the trace's first span, duration, status, and a bar on a common time axis.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STATUS = {0: "unset", 1: "ok", 2: "ERROR"}
PLAIN_KINDS = ("server", "unspecified")  # the rest are named after the span
KIND = {1: "internal", 2: "server", 3: "client", 4: "producer", 5: "consumer"}


class TraceNotFound(LookupError):
    pass


@dataclass
class Span:
    trace_id: str
    span_id: str
    parent_id: str
    service: str
    name: str
    kind: str
    start_ns: int
    end_ns: int
    status: str
    attributes: dict[str, Any] = field(default_factory=dict)
    resource: dict[str, Any] = field(default_factory=dict)
    children: list[Span] = field(default_factory=list)

    @property
    def duration_ms(self) -> float:
        return (self.end_ns - self.start_ns) / 1e6


def _value(value: dict[str, Any]) -> Any:
    for key in ("stringValue", "boolValue", "intValue", "doubleValue"):
        if key in value:
            return value[key]
    if "arrayValue" in value:
        return [_value(v) for v in value["arrayValue"].get("values", [])]
    return None


def _attributes(items: Iterable[dict[str, Any]]) -> dict[str, Any]:
    return {item["key"]: _value(item.get("value", {})) for item in items}


def read_spans(files: Sequence[Path]) -> Iterator[Span]:
    """Every span of the files, in the order received."""
    for path in files:
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if not line.strip():
                    continue
                request = json.loads(line)
                for resource_spans in request.get("resourceSpans", []):
                    resource = _attributes(resource_spans.get("resource", {}).get("attributes", []))
                    service = str(resource.get("service.name", "unknown"))
                    for scope_spans in resource_spans.get("scopeSpans", []):
                        for raw in scope_spans.get("spans", []):
                            yield Span(
                                trace_id=raw["traceId"].lower(),
                                span_id=raw["spanId"].lower(),
                                parent_id=raw.get("parentSpanId", "").lower(),
                                service=service,
                                name=raw.get("name", ""),
                                kind=KIND.get(int(raw.get("kind", 0)), "unspecified"),
                                start_ns=int(raw.get("startTimeUnixNano", 0)),
                                end_ns=int(raw.get("endTimeUnixNano", 0)),
                                status=STATUS[int(raw.get("status", {}).get("code", 0))],
                                attributes=_attributes(raw.get("attributes", [])),
                                resource=resource,
                            )


def spans_files(directory: Path) -> list[Path]:
    """The collector's files in ``directory``, oldest run first."""
    return sorted(directory.glob("spans-*.jsonl"))


def trace(files: Sequence[Path], trace_id: str) -> list[Span]:
    wanted = trace_id.lower().rjust(32, "0")
    found = [s for s in read_spans(files) if s.trace_id == wanted]
    if not found:
        raise TraceNotFound(f"no span of trace {trace_id} in {', '.join(map(str, files))}")
    return found


def last_trace_id(files: Sequence[Path]) -> str:
    """The trace that began last (by its earliest span) in the newest file with spans."""
    for path in reversed(files):
        began: dict[str, int] = {}
        for span in read_spans([path]):
            began[span.trace_id] = min(began.get(span.trace_id, span.start_ns), span.start_ns)
        if began:
            return max(began, key=lambda t: began[t])
    raise TraceNotFound(f"no spans yet in {', '.join(map(str, files)) or 'any spans file'}")


def tree(spans: Sequence[Span]) -> list[Span]:
    """The roots, each with its children in start order."""
    by_id = {s.span_id: s for s in spans}
    roots: list[Span] = []
    for span in sorted(spans, key=lambda s: s.start_ns):
        parent = by_id.get(span.parent_id)
        (parent.children if parent is not None and parent is not span else roots).append(span)
    return roots


def render(spans: Sequence[Span], width: int = 40) -> str:
    """The waterfall as text; see the module docstring."""
    start = min(s.start_ns for s in spans)
    end = max(s.end_ns for s in spans)
    total = max(end - start, 1)
    rows: list[tuple[str, str, str, str, str, str]] = []

    def walk(span: Span, depth: int) -> None:
        offset = (span.start_ns - start) / total * width
        length = max((span.end_ns - span.start_ns) / total * width, 1.0)
        first = min(int(offset), width - 1)
        bar = " " * first + "█" * max(1, min(round(length), width - first))
        rows.append(
            (
                span.service,
                "  " * depth + span.name + ("" if span.kind in PLAIN_KINDS else f" ({span.kind})"),
                f"{(span.start_ns - start) / 1e6:.1f}",
                f"{span.duration_ms:.1f}",
                span.status,
                f"|{bar.ljust(width)}|",
            )
        )
        for child in span.children:
            walk(child, depth + 1)

    for root in tree(spans):
        walk(root, 0)
    head = ("service", "span", "start ms", "dur ms", "status", "")
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(6)]
    services = sorted({s.service for s in spans})
    lines = [
        f"trace {spans[0].trace_id}: {len(spans)} spans, {total / 1e6:.1f} ms, "
        f"services {', '.join(services)}",
    ]
    for row in [head, *rows]:
        lines.append(
            f"{row[0]:<{widths[0]}}  {row[1]:<{widths[1]}}  {row[2]:>{widths[2]}}  "
            f"{row[3]:>{widths[3]}}  {row[4]:<{widths[4]}}  {row[5]}".rstrip()
        )
    return "\n".join(lines)
