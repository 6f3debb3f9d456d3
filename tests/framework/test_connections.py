"""Slow clients cannot hold the server: REQUEST_HEAD_TIMEOUT on real sockets."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest

from .processes import ServiceProcess, start_service

HEAD_TIMEOUT = 2.0
SERVICE = """
import usvc
from aiohttp import web

svc = usvc.Service("edge")

@svc.get("/")
async def index(request: web.Request) -> web.Response:
    return web.Response(text="hi")
"""
REQUEST = b"GET / HTTP/1.1\r\nHost: edge\r\n\r\n"


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServiceProcess]:
    running = start_service(
        tmp_path_factory.mktemp("edge"),
        SERVICE,
        REQUEST_HEAD_TIMEOUT=f"{HEAD_TIMEOUT:g}",
        ACCESS_LOG="false",
    )
    yield running
    running.stop()


def connect(service: ServiceProcess) -> socket.socket:
    """A connection whose reads give up at 5 x HEAD_TIMEOUT: a close before is the server's."""
    sock = socket.create_connection(("127.0.0.1", service.port))
    sock.settimeout(HEAD_TIMEOUT * 5)
    return sock


def read_until_closed(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


def read_response(sock: socket.socket) -> bytes:
    received = b""
    while not received.endswith(b"hi"):
        chunk = sock.recv(65536)
        assert chunk, f"closed after {received!r}"
        received += chunk
    return received


@pytest.mark.slow
def test_a_connection_that_sends_half_a_head_is_closed_after_the_head_timeout(
    service: ServiceProcess,
) -> None:
    with connect(service) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: edge\r\n")
        assert read_until_closed(sock) == b""  # closed, with no answer, before our reads gave up


@pytest.mark.slow
def test_a_head_dribbled_a_byte_at_a_time_is_cut_off_at_the_head_timeout(
    service: ServiceProcess,
) -> None:
    head = b"GET / HTTP/1.1\r\nX-Slow: " + b"a" * 100  # 12 s at 10 bytes a second
    with connect(service) as sock:
        sent = 0
        for byte in head:
            try:
                sock.sendall(bytes([byte]))
            except OSError:  # reset: the server closed it
                break
            sent += 1
            time.sleep(0.1)
        # every byte in time, yet cut off long before the head could end: the head's own timer
        assert sent < len(head) / 2, sent


def test_a_head_split_across_several_writes_within_the_timeout_is_served(
    service: ServiceProcess,
) -> None:
    with connect(service) as sock:
        for part in (b"GET / HT", b"TP/1.1\r\nHost: ed", b"ge\r\n", b"\r\n"):
            sock.sendall(part)
            time.sleep(0.1)
        assert read_response(sock).startswith(b"HTTP/1.1 200 OK")


@pytest.mark.slow
def test_an_idle_keep_alive_connection_outlives_the_head_timeout_and_serves_again(
    service: ServiceProcess,
) -> None:
    with connect(service) as sock:
        sock.sendall(REQUEST)
        assert read_response(sock).startswith(b"HTTP/1.1 200 OK")
        time.sleep(HEAD_TIMEOUT + 0.5)  # idle between requests: keep-alive, not the head timer
        sock.sendall(REQUEST)
        assert read_response(sock).startswith(b"HTTP/1.1 200 OK")


def test_an_http_0_9_request_line_is_answered_400_and_closed_at_once(
    service: ServiceProcess,
) -> None:
    with connect(service) as sock:
        sock.sendall(b"GET /\r\n")
        answer = read_until_closed(sock)
    # A 400 naming the request line: the parser's answer (the head timeout closes without one).
    assert answer.startswith(b"HTTP/1.1 400 Bad Request\r\n")
    assert answer.endswith(b"expected an HTTP/1.x request line\n")
