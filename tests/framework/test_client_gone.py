"""A client that goes away stops the work: handler and egress cancelled, 499 recorded."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

from usvc.settings import Settings

from .processes import ServiceProcess, start_service

# The relay's request deadline (usvc's default): what a request not cancelled would wait.
DEADLINE = Settings.request_deadline

RELAY = """
import usvc
from aiohttp import web

svc = usvc.Service("relay")

@svc.get("/relay")
async def relay(request: web.Request) -> web.Response:
    async with svc.egress.get(svc.settings.upstream_uri) as upstream:
        return web.Response(text=await upstream.text())
"""


class SilentUpstream:
    """Accepts connections, reads the request, never answers; notes when the caller hangs up."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.hung_up = asyncio.Event()

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        self.called.set()
        while await reader.read(65536):
            pass
        self.hung_up.set()
        writer.close()


def in_flight(service: ServiceProcess) -> float:
    (line,) = [
        x for x in service.metrics().splitlines() if x.startswith("http_server_requests_in_flight ")
    ]
    return float(line.split()[1])


async def test_a_client_that_hangs_up_cancels_the_handler_and_its_egress_and_is_a_499(
    tmp_path: Path,
) -> None:
    upstream = SilentUpstream()
    server = await asyncio.start_server(upstream.handle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    service = start_service(tmp_path, RELAY, UPSTREAM_URI=f"http://127.0.0.1:{port}/")
    try:
        client = socket.create_connection(("127.0.0.1", service.port))
        client.sendall(b"GET /relay HTTP/1.1\r\nHost: relay\r\n\r\n")
        await asyncio.wait_for(upstream.called.wait(), 5)
        assert await asyncio.to_thread(in_flight, service) == 1
        client.close()
        hung_up = time.monotonic()
        # The egress call is cancelled: the upstream sees its connection closed...
        await asyncio.wait_for(upstream.hung_up.wait(), DEADLINE / 2)
        # ...and the request leaves the in-flight gauge at once, not at the 15 s deadline.
        while await asyncio.to_thread(in_flight, service) != 0:
            assert time.monotonic() - hung_up < DEADLINE / 2, "still in flight"
            await asyncio.sleep(0.02)
        metrics = await asyncio.to_thread(service.metrics)
        assert 'http_server_requests_total{code="499",method="GET",route="/relay"} 1.0' in metrics
        assert 'code="504"' not in metrics
        for _ in range(50):  # the access log is written in batches, every 0.2 s
            access = [x for x in service.log_lines() if x.get("logger") == "usvc.access"]
            if access:
                break
            await asyncio.sleep(0.05)
        assert [(x["path"], x["status"]) for x in access] == [("/relay", 499)]
    finally:
        service.stop()
        server.close()
