"""Clock stopped under load: only the requests whose path ends at clock fail, fast, and recover.

At 50 requests a second, half plain (middle canary/prod, core prod, the
worldtime stand-in) and half betaUser (middle dev, core test, clock), clock
is stopped for a few seconds and started again. The outage must stay where
it is: plain requests never notice, clock-bound ones fail at once instead of
waiting, and succeed again once clock is back.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.chain.conftest import gateway, start_mesh
from usvc_mesh.procs import http_ok, wait_until

from .conftest import Sent, steady

pytestmark = pytest.mark.slow

KINDS = [("plain", {}), ("betaUser", {"x-dev-user": "betaUser"})]
BEFORE, DOWN, AFTER = 3.0, 4.0, 5.0  # seconds of traffic: before, during, after clock is back
# Envoy health-checks clock with its readinessProbe (periodSeconds 2 in
# k8s/workloads/clock.yaml): a ready clock gets traffic within one period, as
# a ready pod joins its Service's endpoints.
PROBE_PERIOD = 2.0
FAST = 0.1  # a request that cannot succeed must say so within this


@dataclass(frozen=True)
class Outage:
    sent: list[Sent]
    stopped: float  # clock has exited
    restarting: float  # its new process is being started
    ready: float  # and answers /readyz

    def clock_bound(self) -> list[Sent]:
        return [s for s in self.sent if s.kind == "betaUser"]

    def during(self) -> list[Sent]:
        """Clock-bound requests sent and answered while clock was down."""
        return [
            s
            for s in self.clock_bound()
            if s.at > self.stopped + 0.05 and s.at + s.seconds < self.restarting
        ]


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    mesh = start_mesh(tmp_path_factory.mktemp("clock-outage"))
    [clock] = mesh.workloads["clock"].members  # its one replica's process
    try:

        async def run() -> Outage:
            done = asyncio.Event()
            # Bounded, but the traffic goes on AFTER seconds past clock's return,
            # however long its restart takes on a busy machine.
            traffic = asyncio.create_task(steady(gateway(mesh), 60, KINDS, stop=done))
            await asyncio.sleep(BEFORE)
            await asyncio.to_thread(clock.stop)
            stopped = time.monotonic()
            await asyncio.sleep(DOWN)
            restarting = time.monotonic()
            clock.start(mesh.layout.root)
            await asyncio.to_thread(
                wait_until,
                lambda: http_ok(f"{clock.url}{clock.ready_path}"),
                20,
                "clock after its restart",
            )
            ready = time.monotonic()
            await asyncio.sleep(AFTER)
            done.set()
            return Outage(await traffic, stopped, restarting, ready)

        yield asyncio.run(run())
    finally:
        mesh.stop()


def test_requests_that_do_not_reach_clock_all_succeed_while_it_is_down(outage: Outage) -> None:
    plain = [s for s in outage.sent if s.kind == "plain"]
    failed = [s for s in plain if s.status != 200]
    assert len(plain) >= 200
    assert failed == []


def test_requests_bound_for_clock_fail_while_it_is_down(outage: Outage) -> None:
    during = outage.during()
    statuses = sorted({s.status for s in during})
    print(f"{len(during)} clock-bound requests during the outage: statuses {statuses}")
    assert len(during) >= 50
    assert all(500 <= s.status <= 599 for s in during), statuses


def test_requests_bound_for_clock_fail_fast_once_the_mesh_knows_it_is_down(
    outage: Outage,
) -> None:
    # Within a probe period of the stop Envoy still tries clock's port, and
    # Istio's default retries (2, 25 ms base backoff) take up to ~80 ms more;
    # from then on the health check has taken clock out of the endpoints.
    noticed = outage.stopped + PROBE_PERIOD + 0.5
    first = sorted(s.seconds for s in outage.during() if s.at < noticed)
    times = sorted(s.seconds for s in outage.during() if s.at >= noticed)
    print(
        f"failure latency before the health check noticed: max {first[-1] * 1000:.1f} ms; "
        f"after: median {times[len(times) // 2] * 1000:.1f} ms, max {times[-1] * 1000:.1f} ms "
        f"over {len(times)}"
    )
    slow = [round(t * 1000, 1) for t in times if t >= FAST]
    assert len(times) >= 25
    assert slow == [], f"{len(slow)} of {len(times)} failures took >= {FAST * 1000:.0f} ms"


def test_requests_bound_for_clock_succeed_again_once_it_is_back(outage: Outage) -> None:
    back = outage.ready + PROBE_PERIOD + 0.5
    after = [s for s in outage.clock_bound() if s.at > back]  # ~2.5 s of them
    failed = [(round(s.at - outage.ready, 2), s.status) for s in after if s.status != 200]
    assert len(after) >= 50
    assert failed == []
