"""The local mesh as a Deployment controller: restarts, replicas, rolling restarts, balancing.

One mesh for the module (front has three replicas, as the chart says), with the
supervisor's watch loop running beside the tests as `usvc up` runs it. Load is
paced (a fixed request rate) and bounded in time; instances are told apart by
the gateway's access log (the upstream address of every request).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.chain.conftest import scenario_with
from tests.procs import ROOT, free_port
from usvc_mesh.envoy import admin_stats
from usvc_mesh.manifests import Layout
from usvc_mesh.procs import wait_until
from usvc_mesh.supervisor import ENDPOINT_PROPAGATION, Backoff, LocalMesh, WorkloadProcess

pytestmark = pytest.mark.slow
FRONT_RULE = "front-svc"


@dataclass
class Supervised:
    mesh: LocalMesh
    events: list[str]

    @property
    def gateway(self) -> str:
        assert self.mesh.ports is not None
        return f"http://127.0.0.1:{self.mesh.ports.gateway}"

    def instance_of(self) -> dict[str, str]:
        """Envoy's upstream host -> instance name, for every replica of every workload.

        The host is the replica's inbound listener, an internal address that Envoy
        writes ``envoy://inbound|PORT||INSTANCE/``: Envoy's endpoint for the replica.
        """
        return {
            f"envoy://inbound|{m.port}||{m.name}/": m.name
            for w in self.mesh.workloads.values()
            for m in w.members
        }

    def wait_event(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.events):
            assert time.monotonic() < deadline, f"no event {text!r} in {self.events}"
            time.sleep(0.05)


def with_policy(policy: str) -> Callable[[dict[str, Any]], None]:
    def edit(doc: dict[str, Any]) -> None:
        if doc.get("kind") == "DestinationRule" and doc["spec"]["host"] == FRONT_RULE:
            doc["spec"]["trafficPolicy"]["loadBalancer"]["simple"] = policy

    return edit


@pytest.fixture(scope="module", name="s")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    tmp = tmp_path_factory.mktemp("supervised")
    manifests = tmp / "k8s"
    shutil.copytree(ROOT / "k8s", manifests)
    scenarios = manifests / "mesh" / "scenarios"
    for policy in ("ROUND_ROBIN", "RANDOM", "LEAST_REQUEST"):
        name = policy.lower().replace("_", "-")
        scenario_with(scenarios / "current.yaml", scenarios / f"{name}.yaml", with_policy(policy))
    events: list[str] = []
    mesh = LocalMesh(
        Layout(ROOT, manifests_dir=manifests),
        gateway_port=free_port(),
        run_dir=tmp / "run",
        base_env={"OTEL_TRACES_EXPORTER": "none", "PATH": "/usr/bin:/bin"},
        # long enough to see a replica gone, short enough to see it back
        backoff=Backoff(initial=3.0),
        request_headers_timeout=1.0,
        report=events.append,
    )
    mesh.start()
    stop = threading.Event()
    watcher = threading.Thread(target=mesh.run, args=(stop.is_set,), daemon=True)
    watcher.start()
    try:
        yield Supervised(mesh, events)
    finally:
        stop.set()
        watcher.join(10)
        mesh.stop()


@dataclass
class Sent:
    index: int
    at: float  # seconds since the load started
    status: int


async def paced(url: str, rate: float, until: Callable[[], bool], limit: float = 60) -> list[Sent]:
    """GET ``url?n=INDEX`` ``rate`` times a second until ``until()`` (at most ``limit`` s)."""
    sent: list[Sent] = []
    started = time.monotonic()
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as client:

        async def one(index: int) -> None:
            at = time.monotonic() - started
            try:
                async with client.get(f"{url}?n={index}") as resp:
                    await resp.read()
                    sent.append(Sent(index, at, resp.status))
            except aiohttp.ClientError:
                sent.append(Sent(index, at, 0))

        tasks = []
        index = 0
        while not until() and time.monotonic() - started < limit:
            tasks.append(asyncio.create_task(one(index)))
            index += 1
            await asyncio.sleep(max(0.0, started + index / rate - time.monotonic()))
        await asyncio.gather(*tasks)
    return sorted(sent, key=lambda s: s.index)


def load_while(url: str, rate: float, action: Callable[[], Any]) -> list[Sent]:
    """Paced load on ``url`` for as long as ``action`` runs (in a thread)."""
    done = threading.Event()
    failure: list[BaseException] = []

    def run() -> None:
        try:
            time.sleep(0.5)  # some load before the change
            action()
            time.sleep(0.5)  # and after it
        except BaseException as exc:  # re-raised below
            failure.append(exc)
        finally:
            done.set()

    thread = threading.Thread(target=run)
    thread.start()
    sent = asyncio.run(paced(url, rate, done.is_set))
    thread.join()
    if failure:
        raise failure[0]
    return sent


def upstreams(s: Supervised, marker: str) -> dict[int, str]:
    """Request index -> instance, from the gateway's access-log lines of ``marker`` paths."""
    time.sleep(1.5)  # Envoy flushes its access log every second
    assert s.mesh.run_dir is not None
    names = s.instance_of()
    found = {}
    for line in (s.mesh.run_dir / "envoy-access.log").read_text().splitlines():
        entry = json.loads(line)
        path = entry["path"] or ""  # null for a request whose head never completed
        if entry.get("listener") == "gateway" and path.startswith(f"{marker}?n="):
            found[int(path.split("=", 1)[1])] = names.get(entry["upstream_host"], "?")
    return found


def failures(s: Supervised, failed: list[Sent]) -> list[str]:
    """The access-log lines (every listener) of requests that failed, to say where and how."""
    time.sleep(1.5)
    assert s.mesh.run_dir is not None
    ids = set()
    lines = [json.loads(x) for x in (s.mesh.run_dir / "envoy-access.log").read_text().splitlines()]
    marks = {f"/?n={x.index}" for x in failed}
    for entry in lines:
        if entry.get("listener") == "gateway" and entry.get("path") in marks:
            ids.add(entry["request_id"])
    return [
        f"{e['listener']} {e['authority']} {e['response_code']} {e['response_flags']} "
        f"{e['response_code_details']} {e['upstream_host']}"
        for e in lines
        if e.get("request_id") in ids and e["response_code"] != 200
    ]


def usvc(*args: str, run_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "usvc", *args, "--run-dir", str(run_dir)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def member(s: Supervised, instance: str) -> WorkloadProcess:
    workload, _, _ = instance.rpartition("-")
    for process in s.mesh.workloads[workload].members:
        if process.name == instance:
            return process
    raise KeyError(instance)


# -- the gateway ----------------------------------------------------------------------


def header_timeouts(s: Supervised) -> int:
    """The gateway's count of connections closed for a late request head (Envoy's HCM stats)."""
    assert s.mesh.ports is not None
    admin = ("127.0.0.1", s.mesh.ports.admin)
    stats = admin_stats(admin, "filter=downstream_rq_header_timeout")
    return sum(int(value) for name, value in stats.items() if name.startswith("http.gateway"))


def test_the_gateway_closes_a_connection_whose_request_head_is_late(s: Supervised) -> None:
    assert s.mesh.ports is not None
    before = header_timeouts(s)
    # 10 s: far past the mesh's request_headers_timeout (1 s); a hang fails the test.
    with socket.create_connection(("127.0.0.1", s.mesh.ports.gateway), timeout=10) as sock:
        sock.sendall(b"GET /hello HTTP/1.1\r\nHost: localhost\r\n")  # and never the blank line
        answer = b""
        while chunk := sock.recv(4096):
            answer += chunk  # Envoy may answer 408 before it closes
    assert answer == b"" or answer.startswith(b"HTTP/1.1 408"), answer
    assert header_timeouts(s) == before + 1  # closed by that timeout, not for another reason


# -- restarts ---------------------------------------------------------------------------


def test_a_killed_workload_is_restarted_with_backoff_and_reported(s: Supervised) -> None:
    clock = member(s, "clock-1")
    assert clock.process is not None
    os.kill(clock.process.pid, signal.SIGKILL)
    s.wait_event("clock-1: was killed by SIGKILL", timeout=5)
    assert any("restarting in 3s (CrashLoopBackOff, crash 1)" in line for line in s.events)
    s.wait_event("clock-1: restarted (restart 1)", timeout=10)
    deadline = time.monotonic() + 10
    while not member(s, "clock-1").ready():
        assert time.monotonic() < deadline, "clock did not come back"
        time.sleep(0.1)


def test_a_killed_stand_in_is_reported_and_restarted_like_a_workload(s: Supervised) -> None:
    stand_in = s.mesh.stand_ins["worldtimeapi.org"]
    assert stand_in.process is not None
    os.kill(stand_in.process.pid, signal.SIGKILL)
    s.wait_event("stand-in:worldtimeapi.org: was killed by SIGKILL", timeout=5)
    s.wait_event("stand-in:worldtimeapi.org: restarted (restart 1)", timeout=10)
    deadline = time.monotonic() + 10
    while not stand_in.ready():
        assert time.monotonic() < deadline, "the stand-in did not come back"
        time.sleep(0.1)


def test_a_killed_replica_gets_no_traffic_once_envoy_has_it_out_and_its_share_back_after(
    s: Supervised,
) -> None:
    """Envoy's health check takes a killed replica out; once restarted and healthy it is back.

    The moments are what Envoy's admin API says (the replica's endpoint
    unhealthy, healthy again), not times after the kill: on a busy machine a
    probe period stretches.
    """
    s.mesh.use("round-robin")
    victim = member(s, "front-2")
    assert victim.process is not None
    marks: dict[str, float] = {}
    load_started = time.monotonic()

    def in_envoy(healthy: bool) -> None:
        wait_until(lambda: s.mesh._healthy(victim) is healthy, 30, f"front-2 healthy={healthy}")
        time.sleep(ENDPOINT_PROPAGATION)  # Envoy's workers follow its main thread

    def kill_and_wait() -> None:
        time.sleep(1.5)
        os.kill(victim.process.pid, signal.SIGKILL)  # type: ignore[union-attr]
        in_envoy(healthy=False)
        marks["out"] = time.monotonic() - load_started
        s.wait_event("front-2: restarted", timeout=30)
        marks["restarted"] = time.monotonic() - load_started
        in_envoy(healthy=True)
        marks["in"] = time.monotonic() - load_started
        time.sleep(3)  # load while it is back: ~120 requests

    sent = load_while(f"{s.gateway}/hello", 40, kill_and_wait)
    where = upstreams(s, "/hello")
    gone = [x for x in sent if marks["out"] <= x.at < marks["restarted"]]
    back = [x for x in sent if x.at >= marks["in"]]
    assert gone and len(back) >= 60, (len(gone), len(back))
    assert not [x for x in gone if where.get(x.index) == "front-2"]
    assert all(x.status == 200 for x in gone)
    share = Counter(where.get(x.index) for x in back)
    assert share["front-2"] >= len(back) / 3 * 0.5, share  # round robin: a third
    failed = [x for x in sent if x.status != 200]
    print(
        f"\nkill -9 of front-2 under 40 req/s: {len(failed)} of {len(sent)} failed; back: {share}"
    )


# -- load balancing -------------------------------------------------------------------------


def test_each_reply_names_the_front_replica_that_answered(s: Supervised) -> None:
    s.mesh.use("round-robin")

    async def instances() -> list[str]:
        async with aiohttp.ClientSession(headers={"Accept": "application/json"}) as client:
            found = []
            for _ in range(6):
                async with client.get(f"{s.gateway}/") as resp:
                    found.append((await resp.json())["instance"])
            return found

    assert set(asyncio.run(instances())) == {"front-1", "front-2", "front-3"}


@pytest.mark.parametrize("policy", ["round-robin", "least-request", "random"])
def test_300_requests_reach_all_three_front_instances(s: Supervised, policy: str) -> None:
    s.mesh.use(policy)
    marker = f"/hello/{policy}"  # front answers 404 there: fine, it still names the upstream

    async def send() -> list[tuple[int, int]]:
        out = []
        async with aiohttp.ClientSession() as client:
            for index in range(300):
                async with client.get(f"{s.gateway}{marker}?n={index}") as resp:
                    await resp.read()
                    out.append((index, resp.status))
        return out

    replies = asyncio.run(send())
    where = upstreams(s, marker)
    spread = Counter(where[index] for index, _ in replies)
    print(f"\n{policy}: {dict(sorted(spread.items()))}")
    assert set(spread) == {"front-1", "front-2", "front-3"}
    if policy == "round-robin":
        assert all(70 <= count <= 130 for count in spread.values()), spread


# -- rolling restarts and scenario switches, under load ---------------------------------------


def test_a_rolling_restart_of_every_workload_loses_no_request_at_100_per_second(
    s: Supervised,
) -> None:
    run_dir = s.mesh.run_dir
    assert run_dir is not None
    before = {m.name: m.port for m in s.mesh.processes()}
    results: list[subprocess.CompletedProcess[str]] = []
    sent = load_while(
        f"{s.gateway}/", 100, lambda: results.append(usvc("restart", "--all", run_dir=run_dir))
    )
    assert results[0].returncode == 0, results[0].stderr
    assert "every workload restarted" in results[0].stdout
    failed = [x for x in sent if x.status != 200]
    print(f"\nrolling restart --all under 100 req/s: {len(failed)} of {len(sent)} not 200")
    assert failed == [], failures(s, failed)
    after = {m.name: m.port for w in s.mesh.workloads.values() for m in w.members}
    assert all(after[name] != before[name] for name in after)  # every replica is new


def test_mesh_use_applies_the_scenarios_environment_rolling_and_back(s: Supervised) -> None:
    assert s.mesh.run_dir is not None
    run_dir = s.mesh.run_dir
    faulty = {"x-dev-user": "betaUser", "fail": "1"}

    def status(headers: dict[str, str]) -> int:
        async def get() -> int:
            async with aiohttp.ClientSession() as client:
                async with client.get(f"{s.gateway}/", headers=headers) as resp:
                    return resp.status

        return asyncio.run(get())

    s.mesh.use("current")
    assert status(faulty) == 200  # fault injection off: the header is ignored
    switched: list[subprocess.CompletedProcess[str]] = []
    sent = load_while(
        f"{s.gateway}/", 100, lambda: switched.append(usvc("mesh", "use", "retry", run_dir=run_dir))
    )
    assert switched[0].returncode == 0, switched[0].stderr
    assert "restarted clock" in switched[0].stdout
    assert [x for x in sent if x.status != 200] == []
    assert member(s, "clock-1").env["FAULT_INJECTION"] == "true"
    state = json.loads((run_dir / "mesh.json").read_text())
    assert (state["pid"], state["scenario"]) == (os.getpid(), "retry")  # the supervisor's own
    assert status(faulty) != 200  # clock fails every attempt now
    back: list[subprocess.CompletedProcess[str]] = []
    sent = load_while(
        f"{s.gateway}/", 100, lambda: back.append(usvc("mesh", "use", "current", run_dir=run_dir))
    )
    assert back[0].returncode == 0, back[0].stderr
    assert [x for x in sent if x.status != 200] == []
    assert member(s, "clock-1").env["FAULT_INJECTION"] == "false"
    assert status(faulty) == 200
