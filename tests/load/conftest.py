"""Traffic at a steady rate through the local mesh, each request's fate recorded.

The resilience tests drive the chain in-process (aiohttp), not with Locust:
they need every request's send time, latency and status to tell which ones
an outage touched. The load tool itself (``python -m load``) is tested as the
command users run.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass

import aiohttp

RATE = 50.0  # requests a second, the stress test's


@dataclass(frozen=True)
class Sent:
    kind: str  # which header it carried ("plain", "betaUser", ...)
    at: float  # monotonic send time
    seconds: float  # until the whole reply was read (or the client gave up)
    status: int  # 0: no answer


async def steady(
    url: str,
    seconds: float,
    kinds: Sequence[tuple[str, dict[str, str]]],
    rate: float = RATE,
    give_up_after: float = 10.0,
    stop: asyncio.Event | None = None,
) -> list[Sent]:
    """``rate`` requests a second for ``seconds`` (or until ``stop`` is set), cycling ``kinds``.

    Open model: each request is sent on schedule whether or not earlier ones
    have answered, as independent users would.
    """
    results: list[Sent] = []
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=give_up_after)
    ) as client:

        async def one(kind: str, headers: dict[str, str]) -> None:
            started = time.monotonic()
            try:
                async with client.get(url, headers=headers) as resp:
                    await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError):
                status = 0
            results.append(Sent(kind, started, time.monotonic() - started, status))

        tasks = []
        begin = time.monotonic()
        count = int(seconds * rate)
        for index in range(count):
            await asyncio.sleep(max(0.0, begin + index / rate - time.monotonic()))
            if stop is not None and stop.is_set():
                break
            kind, headers = kinds[index % len(kinds)]
            tasks.append(asyncio.create_task(one(kind, headers)))
        await asyncio.gather(*tasks)
    return sorted(results, key=lambda sent: sent.at)
