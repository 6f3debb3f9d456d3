"""A hop made slow under load: callers get 504 at the deadline, and in-flight stays bounded.

Every workload runs with a 1 s request deadline. A VirtualService ``delay``
rule (written by the test as a scenario variant, as tests/chain does) holds
every call to core-svc for 3 s, longer than any deadline. At 50 requests a
second each caller must give up at its deadline with a 504, so no hop holds
more than about rate x deadline requests at once, and none once traffic stops.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import aiohttp
import pytest

from tests.chain.conftest import gateway, scenario_with, start_mesh

from .conftest import RATE, Sent, steady

pytestmark = pytest.mark.slow

DEADLINE = 1.0
DELAY = "3s"
SECONDS = 6.0
KINDS = [("plain", {}), ("stressTest", {"x-dev-user": "stressTest"})]
# Every caller holds a request for at most its deadline: rate x deadline, with
# room for the requests admitted while others time out.
IN_FLIGHT_BOUND = RATE * DEADLINE * 1.5 + 5
GAUGE = "http_server_requests_in_flight "
HOPS = ("front", "middle-canary", "middle-prod", "core-prod", "core-test")
WORKLOADS = (*HOPS, "middle-dev", "clock")


@dataclass(frozen=True)
class SlowHop:
    sent: list[Sent]
    most_in_flight: dict[str, int]  # per workload (all replicas), while the traffic ran
    in_flight_after: dict[str, int]  # DEADLINE + 1 s after the traffic stopped


async def in_flight(client: aiohttp.ClientSession, urls: list[str]) -> int:
    """Requests in flight in a workload: the sum over its replicas."""
    total = 0
    for url in urls:
        async with client.get(f"{url}/metrics") as resp:
            text = await resp.text()
        found = [line for line in text.splitlines() if line.startswith(GAUGE)]
        assert found, f"{url}/metrics has no {GAUGE.strip()}"
        total += int(float(found[0].split()[1]))
    return total


def delay_core(doc: dict[str, Any]) -> None:
    if doc["kind"] == "VirtualService" and doc["metadata"]["name"] == "core-svc":
        for rule in doc["spec"]["http"]:
            rule["fault"] = {"delay": {"fixedDelay": DELAY, "percentage": {"value": 100}}}


@pytest.fixture(scope="module")
def slow_hop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SlowHop]:
    tmp = tmp_path_factory.mktemp("slow-hop")
    deadline = {"REQUEST_DEADLINE": f"{DEADLINE:g}", "EGRESS_TIMEOUT": f"{DEADLINE:g}"}
    mesh = start_mesh(tmp, env_overrides={name: deadline for name in WORKLOADS})
    try:
        scenarios = tmp / "k8s" / "mesh" / "scenarios"
        scenario_with(scenarios / "current.yaml", scenarios / "slow-core.yaml", delay_core)
        mesh.use("slow-core")
        urls = {name: [m.url for m in mesh.workloads[name].members] for name in HOPS}

        async def run() -> SlowHop:
            most = dict.fromkeys(HOPS, 0)
            async with aiohttp.ClientSession() as client:
                traffic = asyncio.create_task(steady(gateway(mesh), SECONDS, KINDS))
                while not traffic.done():
                    for name, url in urls.items():
                        most[name] = max(most[name], await in_flight(client, url))
                    await asyncio.sleep(0.1)
                sent = await traffic
                await asyncio.sleep(DEADLINE + 1)
                after = {name: await in_flight(client, url) for name, url in urls.items()}
            return SlowHop(sent, most, after)

        yield asyncio.run(run())
    finally:
        mesh.stop()


def test_callers_get_504_when_a_hop_is_slower_than_the_deadline(slow_hop: SlowHop) -> None:
    statuses = sorted({s.status for s in slow_hop.sent})
    assert len(slow_hop.sent) == int(SECONDS * RATE)
    assert statuses == [504]


def test_the_504_comes_at_the_deadline(slow_hop: SlowHop) -> None:
    times = sorted(s.seconds for s in slow_hop.sent)
    print(f"504 after {times[0]:.3f}..{times[-1]:.3f} s, median {times[len(times) // 2]:.3f} s")
    assert times[0] >= DEADLINE - 0.05
    assert times[-1] < DEADLINE + 0.5


def test_in_flight_stays_bounded_while_a_hop_is_slow(slow_hop: SlowHop) -> None:
    print(f"most in flight: {slow_hop.most_in_flight} (bound {IN_FLIGHT_BOUND:g})")
    assert slow_hop.most_in_flight["front"] >= RATE * DEADLINE * 0.5  # the load did pile up
    assert all(count <= IN_FLIGHT_BOUND for count in slow_hop.most_in_flight.values())


def test_nothing_stays_in_flight_once_traffic_stops(slow_hop: SlowHop) -> None:
    assert slow_hop.in_flight_after == dict.fromkeys(HOPS, 0)
