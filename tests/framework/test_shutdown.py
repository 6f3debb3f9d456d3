"""SIGTERM drains: unready at once, in-flight work finishes, exit 0."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

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
def slow_service(tmp_path: Path) -> tuple[subprocess.Popen[bytes], str]:
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
