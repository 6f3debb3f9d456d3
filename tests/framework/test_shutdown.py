"""SIGTERM drains: unready at once, in-flight work finishes, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from .processes import ServiceProcess, start_service

SLOW_SERVICE = """
import asyncio
import usvc
from aiohttp import web

svc = usvc.Service("slow")

@svc.get("/slow")
async def slow(request: web.Request) -> web.Response:
    await asyncio.sleep(1.5)
    return web.Response(text="done")
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


async def wait_ready(base: str, proc: subprocess.Popen[bytes]) -> None:
    async with aiohttp.ClientSession() as client:
        for _ in range(200):
            assert proc.poll() is None, "service died at start"
            try:
                async with client.get(f"{base}/readyz") as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientConnectionError:
                pass
            await asyncio.sleep(0.05)
    raise AssertionError("service never became ready")


@pytest.fixture
def slow_service(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], str]]:
    (tmp_path / "slow.py").write_text(SLOW_SERVICE)
    port = free_port()
    env = {
        **os.environ,
        "PORT": str(port),
        "DRAIN_SECONDS": "1",
        "SHUTDOWN_TIMEOUT": "10",
        "OTEL_TRACES_EXPORTER": "none",
        "ACCESS_LOG": "false",
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "usvc", "run", "slow:svc"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    yield proc, f"http://127.0.0.1:{port}"
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    assert proc.stderr is not None
    proc.stderr.close()


@pytest.mark.slow
async def test_sigterm_with_50_slow_requests_in_flight_loses_none(
    slow_service: tuple[subprocess.Popen[bytes], str],
) -> None:
    proc, base = slow_service
    await wait_ready(base, proc)
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as client:

        async def one() -> int:
            async with client.get(f"{base}/slow") as resp:
                await resp.text()
                return resp.status

        in_flight = [asyncio.create_task(one()) for _ in range(50)]
        await asyncio.sleep(0.4)  # all 50 are being served now
        proc.send_signal(signal.SIGTERM)
        await asyncio.sleep(0.1)
        async with client.get(f"{base}/readyz") as resp:
            assert resp.status == 503  # unready at once...
        late = asyncio.create_task(one())  # ...but still serving during the drain
        statuses = await asyncio.gather(*in_flight)
        assert await late == 200
    assert statuses == [200] * 50
    started = time.monotonic()
    while proc.poll() is None and time.monotonic() - started < 15:
        await asyncio.sleep(0.05)
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""


STUCK_SERVICE = """
import asyncio
import usvc
from aiohttp import web

svc = usvc.Service("stuck")

@svc.get("/stuck")
async def stuck(request: web.Request) -> web.Response:
    await asyncio.sleep(60)
    return web.Response(text="too late")
"""


async def in_flight(service: ServiceProcess) -> float:
    text = await asyncio.to_thread(service.metrics)
    (line,) = [x for x in text.splitlines() if x.startswith("http_server_requests_in_flight ")]
    return float(line.split()[1])


@pytest.mark.slow
async def test_shutdown_ends_within_drain_plus_shutdown_timeout_and_logs_how_many_it_cut(
    tmp_path: Path,
) -> None:
    drain, timeout, requests = 1.0, 4.0, 300
    service = start_service(
        tmp_path, STUCK_SERVICE, DRAIN_SECONDS=f"{drain:g}", SHUTDOWN_TIMEOUT=f"{timeout:g}"
    )
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as client:

            async def one() -> int:
                async with client.get(f"{service.url}/stuck") as resp:
                    await resp.text()
                    return resp.status

            calls = [asyncio.create_task(one()) for _ in range(requests)]
            for _ in range(200):
                if await in_flight(service) == requests:
                    break
                await asyncio.sleep(0.05)
            assert await in_flight(service) == requests
            started = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(service.process.wait, 30)
            took = time.monotonic() - started
            outcomes = await asyncio.gather(*calls, return_exceptions=True)
    finally:
        service.stop()
    assert rc == 0
    # One shutdown timeout after the drain, not two (as it was), and not the handlers' 60 s:
    # what ends it is the cut the log line below reports.
    assert took < drain + 2 * timeout, took
    assert all(isinstance(o, aiohttp.ClientError) for o in outcomes), outcomes[:3]
    lines = service.log_lines()
    (cut,) = [line for line in lines if "cut" in line]
    assert cut["cut"] == requests and cut["level"] == "warning"
    assert cut["message"] == f"shutdown timeout cut {requests} request(s) short"
    statuses = [line["status"] for line in lines if line.get("logger") == "usvc.access"]
    assert statuses == [503] * requests


STUBBORN_SERVICE = """
import asyncio
import usvc
from aiohttp import web

svc = usvc.Service("stubborn")

@svc.get("/stubborn")
async def stubborn(request: web.Request) -> web.Response:
    try:
        await asyncio.sleep(60)
    except asyncio.CancelledError:  # ignores the first cancellation
        await asyncio.sleep(60)
    return web.Response(text="too late")
"""


async def test_shutdown_timeout_zero_cuts_at_once_even_a_handler_that_ignores_cancellation(
    tmp_path: Path,
) -> None:
    service = start_service(tmp_path, STUBBORN_SERVICE, DRAIN_SECONDS="0", SHUTDOWN_TIMEOUT="0")
    try:
        async with aiohttp.ClientSession() as client:
            call = asyncio.create_task(client.get(f"{service.url}/stubborn"))
            while await in_flight(service) != 1:
                await asyncio.sleep(0.05)
            started = time.monotonic()
            service.process.send_signal(signal.SIGTERM)
            rc = await asyncio.to_thread(service.process.wait, 30)
            took = time.monotonic() - started
            with pytest.raises(aiohttp.ClientError):
                await call
    finally:
        service.stop()
    assert rc == 0
    # cut at once, not after the handler's 60 s: aiohttp reads a shutdown_timeout of 0 as
    # "wait forever"
    assert took < 60 / 2, took
