"""Clock stopped under load: only the requests whose path ends at clock fail, fast, and recover.

At 50 requests a second, half plain (middle canary/prod, core prod, the
worldtime stand-in) and half betaUser (middle dev, core test, clock), clock
is stopped for a few seconds and started again. The outage must stay where
it is: plain requests never notice, clock-bound ones fail at once instead of
waiting, and succeed again once clock is back.

No wall-clock bound: "at once" is what Envoy's counters say (once its health
check has taken clock out, every clock-bound request is answered "no healthy
upstream" without an attempt or a retry) and that no failure waited out the
egress timeout core would otherwise apply.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.chain.conftest import gateway, start_mesh
from usvc_mesh import envoy
from usvc_mesh.procs import http_ok, wait_until
from usvc_mesh.supervisor import ENDPOINT_PROPAGATION, LocalMesh

from .conftest import Sent, steady

pytestmark = pytest.mark.slow

KINDS = [("plain", {}), ("betaUser", {"x-dev-user": "betaUser"})]
BEFORE, DOWN, AFTER = 3.0, 4.0, 5.0  # seconds of traffic: before, during, after clock is back
# core-test's egress timeout, set here as its default is: what a clock-bound request
# would wait if the mesh did not know clock is down.
EGRESS_TIMEOUT = 10.0
# Counters of the cluster core-test's sidecar sends clock-svc's requests to.
COUNTERS = ("upstream_cx_none_healthy", "upstream_rq_retry", "upstream_rq_total")


@dataclass(frozen=True)
class Outage:
    sent: list[Sent]
    stopped: float  # clock has exited
    noticed: float  # Envoy's health check has taken it out of clock-svc's endpoints
    restarting: float  # its new process is being started
    ready: float  # and answers /readyz
    back: float  # Envoy's health check has taken it in again
    # COUNTERS of clock-svc's outbound cluster when it was noticed, and at the restart
    at_noticed: dict[str, int]
    at_restart: dict[str, int]

    def clock_bound(self) -> list[Sent]:
        return [s for s in self.sent if s.kind == "betaUser"]

    def during(self) -> list[Sent]:
        """Clock-bound requests sent and answered while clock was down."""
        return [
            s
            for s in self.clock_bound()
            if s.at > self.stopped + 0.05 and s.at + s.seconds < self.restarting
        ]


def clock_health(mesh: LocalMesh) -> bool:
    """Whether Envoy routes to clock: its one endpoint in clock-svc's cluster is healthy."""
    assert mesh.ports is not None
    unhealthy = envoy.unhealthy_hosts(("127.0.0.1", mesh.ports.admin))
    return not any("clock-svc" in cluster for cluster, _ in unhealthy)


def clock_counters(mesh: LocalMesh) -> dict[str, int]:
    """COUNTERS of clock-svc's outbound cluster (one Envoy holds every sidecar's)."""
    assert mesh.ports is not None
    stats = envoy.admin_stats(("127.0.0.1", mesh.ports.admin), "filter=clock-svc")
    found: dict[str, int] = {}
    for name, value in stats.items():
        match = re.fullmatch(r"cluster\.outbound\|\d+\|\|clock-svc\S*\.(\w+)", name)
        if match and match.group(1) in COUNTERS:
            found[match.group(1)] = found.get(match.group(1), 0) + int(value)
    assert set(found) == set(COUNTERS), stats
    return found


@pytest.fixture(scope="module")
def outage(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Outage]:
    mesh = start_mesh(
        tmp_path_factory.mktemp("clock-outage"),
        env_overrides={"core-test": {"EGRESS_TIMEOUT": f"{EGRESS_TIMEOUT:g}"}},
    )
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
            await asyncio.to_thread(
                wait_until, lambda: not clock_health(mesh), 30, "clock out of Envoy's endpoints"
            )
            # The admin API answers for Envoy's main thread; its workers see the
            # change a moment later (as the supervisor allows for in a roll).
            await asyncio.sleep(ENDPOINT_PROPAGATION)
            # Counters first, times after: every request counted in `after` is in the counts.
            at_noticed = await asyncio.to_thread(clock_counters, mesh)
            noticed = time.monotonic()
            await asyncio.sleep(DOWN)
            restarting = time.monotonic()
            at_restart = await asyncio.to_thread(clock_counters, mesh)
            clock.start(mesh.layout.root)
            await asyncio.to_thread(
                wait_until,
                lambda: http_ok(f"{clock.url}{clock.ready_path}"),
                30,
                "clock after its restart",
            )
            ready = time.monotonic()
            await asyncio.to_thread(
                wait_until, lambda: clock_health(mesh), 30, "clock back in Envoy's endpoints"
            )
            back = time.monotonic()
            await asyncio.sleep(AFTER)
            done.set()
            return Outage(
                await traffic, stopped, noticed, restarting, ready, back, at_noticed, at_restart
            )

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
    """Once the health check has taken clock out, Envoy answers without trying it.

    Before that, Envoy still tries clock's port, with Istio's default retries
    (2, 25 ms base backoff). After it, each request finds no healthy host:
    no attempt, no retry, and no timeout waited out.
    """
    after = [s for s in outage.during() if s.at >= outage.noticed]
    moved = {name: outage.at_restart[name] - outage.at_noticed[name] for name in COUNTERS}
    slowest = max((s.seconds for s in after), default=0.0)
    print(
        f"{len(after)} clock-bound failures after the health check noticed: {moved}; "
        f"slowest {slowest * 1000:.1f} ms"
    )
    assert len(after) >= 25
    assert moved["upstream_cx_none_healthy"] >= len(after)  # each one, answered "no healthy host"
    assert moved["upstream_rq_retry"] == 0
    assert moved["upstream_rq_total"] == 0  # not one request reached clock's endpoint
    assert slowest < EGRESS_TIMEOUT / 2  # none waited out core's egress timeout


def test_requests_bound_for_clock_succeed_again_once_it_is_back(outage: Outage) -> None:
    after = [s for s in outage.clock_bound() if s.at > outage.back]  # AFTER seconds of them
    failed = [(round(s.at - outage.ready, 2), s.status) for s in after if s.status != 200]
    assert len(after) >= 50
    assert failed == []
