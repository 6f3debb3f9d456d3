"""Every way an upstream can fail is a fast 502 or 504 naming the hop, and is counted.

The upstream is a raw socket server (asyncio.start_server), so it can break
HTTP in ways no HTTP server library would: a reset, a broken status line, a
body that stops short. The caller's handler reads the body as handlers do
(``await upstream.text()``), after the egress call has returned.
"""

from __future__ import annotations

import asyncio
import re
import socket
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable

import aiohttp
import pytest
from aiohttp import web
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import usvc
from tests.procs import free_port

from .conftest import Serve, ServiceFactory

Behaviour = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]

OK_HEAD = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
HOLD = 30.0  # how long an upstream that hangs holds the connection
# The caller's egress timeout: short where the failure is the timeout, long where it is not,
# so a broken answer must be noticed as broken, not waited out.
CUT, LONG = 0.3, 10.0


async def read_head(reader: asyncio.StreamReader) -> None:
    await reader.readuntil(b"\r\n\r\n")


def reply(raw: bytes, *, then_close: bool = True) -> Behaviour:
    async def behave(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_head(reader)
        writer.write(raw)
        await writer.drain()
        if not then_close:
            await asyncio.sleep(HOLD)

    return behave


async def reset(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    sock = writer.get_extra_info("socket")
    # SO_LINGER with a zero timeout: close() sends RST instead of FIN.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))


async def hang(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    await asyncio.sleep(HOLD)


async def slow_headers(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(b"HTTP/1.1 200 OK\r\n")
    await writer.drain()
    await asyncio.sleep(HOLD)


async def slow_body(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await read_head(reader)
    writer.write(OK_HEAD + b"Content-Length: 10\r\n\r\nab")
    await writer.drain()
    await asyncio.sleep(HOLD)


REFUSED: Behaviour | None = None

# (behaviour, status, outcome label, words the problem's detail must contain)
FAILURES: dict[str, tuple[Behaviour | None, int, str, str]] = {
    "refused": (REFUSED, 502, "connect_error", "unreachable"),
    "reset": (reset, 502, "reset", "connection lost"),
    "hang": (hang, 504, "timeout", "no answer within"),
    "slow_headers": (slow_headers, 504, "timeout", "no answer within"),
    "slow_body": (slow_body, 504, "timeout", "body not complete in time"),
    "truncated_body": (
        reply(OK_HEAD + b"Content-Length: 100\r\n\r\nonly ten b"),
        502,
        "body_error",
        "broken response body",
    ),
    "invalid_status_line": (
        reply(b"HTTP/1.1 two hundred OK\r\n\r\n"),
        502,
        "bad_response",
        "invalid response",
    ),
    "invalid_headers": (
        reply(b"HTTP/1.1 200 OK\r\nno colon in this header\r\nContent-Length: 0\r\n\r\n"),
        502,
        "bad_response",
        "invalid response",
    ),
    "oversized_headers": (
        reply(OK_HEAD + b"X-Big: " + b"a" * 20000 + b"\r\nContent-Length: 0\r\n\r\n"),
        502,
        "bad_response",
        "invalid response",
    ),
    "wrong_content_length": (
        reply(OK_HEAD + b"Content-Length: five\r\n\r\nhello"),
        502,
        "bad_response",
        "invalid response",
    ),
    "chunked_encoding_cut": (
        reply(OK_HEAD + b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n3\r\nab"),
        502,
        "body_error",
        "broken response body",
    ),
}


@pytest.fixture
async def raw_upstream() -> AsyncIterator[Callable[[Behaviour | None], Awaitable[int]]]:
    servers: list[asyncio.Server] = []
    handlers: set[asyncio.Task[None]] = set()

    async def start(behaviour: Behaviour | None) -> int:
        if behaviour is None:
            return free_port()  # nothing listens there

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            handlers.add(task)
            try:
                await behaviour(reader, writer)
            except (ConnectionError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()
                handlers.discard(task)

        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        servers.append(server)
        return int(server.sockets[0].getsockname()[1])

    yield start
    for server in servers:
        server.close()
    for task in handlers:  # the ones still sleeping (hang, slow_*)
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)


def outcome_count(metrics: str, upstream: str, outcome: str) -> float:
    pattern = (
        r'http_client_requests_total\{method="GET",outcome="'
        + re.escape(outcome)
        + r'",upstream="'
        + re.escape(upstream)
        + r'"\} ([0-9.]+)'
    )
    match = re.search(pattern, metrics)
    return float(match.group(1)) if match else 0.0


@pytest.mark.parametrize("mode", list(FAILURES))
async def test_a_failing_upstream_is_a_fast_502_or_504_naming_the_hop_and_counted(
    mode: str,
    make_service: ServiceFactory,
    serve: Serve,
    spans: InMemorySpanExporter,
    raw_upstream: Callable[[Behaviour | None], Awaitable[int]],
) -> None:
    behaviour, status, outcome, words = FAILURES[mode]
    port = await raw_upstream(behaviour)
    timeout = CUT if outcome == "timeout" else LONG
    svc: usvc.Service = make_service(
        "front", EGRESS_TIMEOUT=f"{timeout:g}", REQUEST_DEADLINE=f"{timeout:g}", EGRESS_RETRIES="0"
    )

    @svc.get("/call")
    async def call(request: web.Request) -> web.Response:
        async with svc.egress.get(f"http://127.0.0.1:{port}/") as upstream:
            return web.Response(status=upstream.status, text=await upstream.text())

    front = await serve(svc.app)
    started = time.monotonic()
    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/call")) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == status, body
            assert resp.content_type == "application/problem+json"
        elapsed = time.monotonic() - started
        async with client.get(front.make_url("/metrics")) as resp:
            metrics = await resp.text()
    hop = f"127.0.0.1:{port}"
    # Fast: a hang is cut by the egress timeout long before the upstream lets go, and
    # anything else is noticed as it happens, long before the (10 s) timeout.
    assert elapsed < (HOLD if outcome == "timeout" else LONG) / 2, elapsed
    assert body["upstream"] == hop
    assert body["service"] == "front"
    assert hop in body["detail"] and words in body["detail"], body["detail"]
    assert outcome_count(metrics, hop, outcome) >= 1, metrics
    assert 'code="500"' not in metrics
    assert f'code="{status}",method="GET",route="/call"' in metrics
    attempts = [s for s in spans.get_finished_spans() if s.kind is SpanKind.CLIENT]
    assert attempts and all(s.status.status_code is StatusCode.ERROR for s in attempts)
    assert (attempts[-1].attributes or {}).get("error.type") == outcome


@pytest.mark.parametrize("mode", ["refused", "chunked_encoding_cut"])
async def test_a_failing_call_straight_through_the_session_is_a_502_naming_the_hop(
    mode: str,
    make_service: ServiceFactory,
    serve: Serve,
    raw_upstream: Callable[[Behaviour | None], Awaitable[int]],
) -> None:
    # A connection refused, and a body cut short after the head (so after the call returned).
    behaviour, _, outcome, _ = FAILURES[mode]
    port = await raw_upstream(behaviour)
    svc = make_service("front")

    @svc.get("/direct")
    async def direct(request: web.Request) -> web.Response:
        async with svc.egress.session.get(f"http://127.0.0.1:{port}/") as upstream:
            return web.Response(text=await upstream.text())

    front = await serve(svc.app)
    async with aiohttp.ClientSession() as client:
        async with client.get(front.make_url("/direct")) as resp:
            body = await resp.json(content_type=None)
            assert resp.status == 502
        async with client.get(front.make_url("/metrics")) as resp:
            metrics = await resp.text()
    assert body["upstream"] == f"127.0.0.1:{port}"
    assert outcome_count(metrics, f"127.0.0.1:{port}", outcome) == 1
    assert outcome_count(metrics, f"127.0.0.1:{port}", "200") == 0
