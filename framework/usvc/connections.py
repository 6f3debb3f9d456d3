"""Slow clients cannot hold the server: a bound on the first request head.

aiohttp closes a connection that stays idle for ``keepalive_timeout`` (an
hour by default, longer than any proxy's pooled connections), and that timer
is also all that bounds a client which opens a connection and then sends its
request head a byte at a time (slowloris). :class:`HeadTimeout` sits in front
of aiohttp's protocol, an ``asyncio.Protocol`` forwarding every call, and
closes a connection whose first request head is not complete within
REQUEST_HEAD_TIMEOUT. Between requests, an idle keep-alive connection keeps
aiohttp's keep-alive semantics: this class only looks at the bytes before the
first head is complete, then hands the transport to aiohttp's protocol.

A request line without an HTTP version (HTTP/0.9's ``GET /``) is answered 400
and closed at once: aiohttp's parser would wait for the rest of a head that
an HTTP/0.9 client never sends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import cast

# Longer than aiohttp's own limit on a request line (8190): past it, aiohttp rejects the line.
_MAX_LINE = 8192
_REFUSAL = b"expected an HTTP/1.x request line\n"
_NOT_HTTP_1 = (
    b"HTTP/1.1 400 Bad Request\r\nContent-Type: text/plain\r\n"
    b"Content-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(_REFUSAL), _REFUSAL)
)
# States of a connection.
_LINE, _HEAD, _PASS = 0, 1, 2


class HeadTimeout(asyncio.Protocol):
    """Forwards to ``inner``; closes the connection if its first head is late."""

    __slots__ = ("_buffer", "_state", "_tail", "_timer", "_transport", "inner", "timeout")

    def __init__(self, inner: asyncio.Protocol, timeout: float) -> None:
        self.inner = inner
        self.timeout = timeout
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._state = _LINE
        self._buffer = b""  # the request line, until it is complete
        self._tail = b""  # the last bytes seen, for a head end split across reads

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self._transport = cast(asyncio.Transport, transport)
        self._timer = asyncio.get_running_loop().call_later(self.timeout, self._expire)
        self.inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_timer()
        self._transport = None
        self.inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def eof_received(self) -> bool | None:
        if self._buffer:
            self.inner.data_received(self._buffer)
            self._buffer = b""
        return self.inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._state == _PASS:
            self.inner.data_received(data)
            return
        if self._state == _LINE:
            # Hold the request line back until it is whole, to check its version.
            data = (self._buffer + data).lstrip(b"\r\n")  # RFC 9112 §2.2: leading CRLFs
            end = data.find(b"\n")
            if end < 0 and len(data) <= _MAX_LINE:
                self._buffer = data
                return
            self._buffer = b""
            if end >= 0 and b" HTTP/" not in data[:end]:
                self._refuse()
                return
            self._state = _HEAD
        seen = self._tail + data
        if b"\n\n" in seen or b"\n\r\n" in seen:
            self._state = _PASS
            self._stop_timer()
            # The rest of the connection is aiohttp's alone: the transport
            # calls its protocol directly from now on, at no cost per request.
            if self._transport is not None:
                self._transport.set_protocol(self.inner)
        else:
            self._tail = seen[-3:]
        self.inner.data_received(data)

    def _refuse(self) -> None:
        self._stop_timer()
        if self._transport is not None:
            self._transport.write(_NOT_HTTP_1)
            self._transport.close()

    def _expire(self) -> None:
        self._timer = None
        if self._transport is not None:
            self._transport.close()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None


def with_head_timeout(
    factory: Callable[[], asyncio.Protocol], timeout: float
) -> Callable[[], asyncio.Protocol]:
    """A protocol factory for ``loop.create_server``: ``factory``'s protocols, guarded."""

    def guarded() -> asyncio.Protocol:
        return HeadTimeout(factory(), timeout)

    return guarded
