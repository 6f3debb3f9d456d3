"""The supervisor's decisions that need no running chain: backoff, replicas, addresses, state."""

from __future__ import annotations

import json
import os
import socket
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.procs import ROOT, free_port
from usvc_mesh.envoy import MeshPorts, bootstrap, write_bootstrap
from usvc_mesh.manifests import Layout, MeshError
from usvc_mesh.supervisor import (
    STATE_FILE,
    Backoff,
    LocalMesh,
    WorkloadProcess,
    exit_status,
    find_run_dir,
)


def test_backoff_doubles_from_one_second_to_a_thirty_second_cap() -> None:
    backoff = Backoff()
    assert [backoff.delay(n) for n in range(1, 8)] == [1, 2, 4, 8, 16, 30, 30]


def test_backoff_says_how_it_differs_from_kubernetes() -> None:
    assert "Kubernetes: 10s doubling to 5min" in Backoff().describe()


def test_exit_status_names_the_signal_that_killed_a_process() -> None:
    assert exit_status(2) == "exited with status 2"
    assert exit_status(-9) == "was killed by SIGKILL"


def planned(tmp_path: Path) -> LocalMesh:
    mesh = LocalMesh(Layout(ROOT), run_dir=tmp_path)
    mesh.ports = MeshPorts(gateway=1, outbound=2, admin=3)
    mesh.plan(mesh.documents("current"))
    return mesh


def test_each_replica_is_its_own_process_named_by_service_instance(tmp_path: Path) -> None:
    front = planned(tmp_path).workloads["front"]
    assert front.replicas == 3  # the chart's default
    assert [m.env["SERVICE_INSTANCE"] for m in front.members] == ["front-1", "front-2", "front-3"]
    assert len({m.port for m in front.members}) == 3
    assert [m.env["PORT"] for m in front.members] == [str(m.port) for m in front.members]
    assert [m.log_path.name for m in front.members] == ["front-1.log", "front-2.log", "front-3.log"]


def test_every_replica_is_an_envoy_endpoint_health_checked_on_its_readiness_path(
    tmp_path: Path,
) -> None:
    """The endpoints are the replicas' inbound listeners; the probe goes to the process.

    As in a pod: traffic enters through the sidecar, the kubelet probes the app.
    """
    mesh = planned(tmp_path)
    cluster = mesh.translation("current").cluster("outbound|80||front-svc.usvc.svc.cluster.local")
    endpoints = [e["endpoint"] for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]]
    members = mesh.workloads["front"].members
    names = [e["address"]["envoy_internal_address"]["server_listener_name"] for e in endpoints]
    assert names == [f"inbound|{m.port}||{m.name}" for m in members]
    probed = [e["health_check_config"]["address"]["socket_address"] for e in endpoints]
    assert [p["port_value"] for p in probed] == [m.port for m in members]
    (check,) = cluster["health_checks"]
    # the Deployment's readinessProbe: path /readyz, periodSeconds 2, failureThreshold 1
    assert check["http_health_check"]["path"] == "/readyz"
    assert (check["interval"], check["no_traffic_interval"]) == ("2s", "2s")
    assert (check["unhealthy_threshold"], check["healthy_threshold"]) == (1, 1)
    assert cluster["common_lb_config"] == {"healthy_panic_threshold": {"value": 0.0}}


def test_each_inbound_listener_forwards_to_its_own_replica(tmp_path: Path) -> None:
    mesh = planned(tmp_path)
    translation = mesh.translation("current")
    for member in mesh.workloads["front"].members:
        cluster = translation.cluster(f"inbound|{member.port}||{member.name}")
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        assert endpoint["endpoint"]["address"]["socket_address"]["port_value"] == member.port
        assert "health_checks" not in cluster


def test_each_workload_has_its_own_egress_proxy_and_identity(tmp_path: Path) -> None:
    """A sidecar per pod: its own outbound listener, the Deployment's service account."""
    mesh = planned(tmp_path)
    proxies = {w.name: w.env["EGRESS_PROXY"] for w in mesh.workloads.values()}
    assert len(set(proxies.values())) == len(proxies)
    for workload in mesh.workloads.values():
        assert {m.env["EGRESS_PROXY"] for m in workload.members} == {
            f"http://127.0.0.1:{workload.outbound_port}"
        }
    sidecars = {s.workload: s for s in mesh.sidecars()}
    assert sidecars["front"].principal == "cluster.local/ns/usvc/sa/front"
    assert sidecars["front"].cluster_name == "front.usvc"


def test_a_stand_in_is_not_health_checked(tmp_path: Path) -> None:
    cluster = planned(tmp_path).translation("current").cluster("outbound|80||worldtimeapi.org")
    assert "health_checks" not in cluster


def test_the_gateway_listener_times_out_slow_request_heads_and_shares_no_port() -> None:
    config = bootstrap(
        Path("/tmp"), MeshPorts(gateway=1, outbound=2, admin=3), request_headers_timeout=2.5
    )
    gateway, outbound = config["static_resources"]["listeners"]
    hcm = gateway["filter_chains"][0]["filters"][0]["typed_config"]
    assert hcm["request_headers_timeout"] == "2.5s"
    assert gateway["enable_reuse_port"] is False
    assert outbound["enable_reuse_port"] is False


def ended(replica: WorkloadProcess) -> WorkloadProcess:
    """Start ``replica`` and wait until it ends by itself."""
    replica.start(ROOT)
    assert replica.process is not None and replica.log_handle is not None
    replica.process.wait(timeout=60)
    replica.log_handle.close()  # not stop(): that would mark it as asked to end
    replica.log_handle = None
    return replica


def crashed_replica(mesh: LocalMesh, code: str) -> WorkloadProcess:
    """front-1, run as a real process that runs ``code`` and ends."""
    replica = mesh.workloads["front"].members[0]
    replica.argv = [sys.executable, "-c", code]
    return ended(replica)


@contextmanager
def held_port() -> Iterator[int]:
    """A loopback port another process listens on, as when a connection took a picked port."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        yield int(taken.getsockname()[1])


def test_a_replica_that_dies_while_the_mesh_starts_is_named_with_its_last_lines(
    tmp_path: Path,
) -> None:
    mesh = planned(tmp_path)
    crashed_replica(mesh, "print('first'); print('last'); raise SystemExit(2)")
    with pytest.raises(MeshError) as raised:
        mesh.check_alive()
    assert (
        str(raised.value)
        == "front-1 exited with status 2; its last log lines:\n    first\n    last"
    )


def test_a_new_replica_that_dies_in_a_rolling_restart_says_the_old_one_keeps_running(
    tmp_path: Path,
) -> None:
    mesh = planned(tmp_path)
    replica = crashed_replica(
        mesh, "import os, signal; print('bye', flush=True); os.kill(os.getpid(), 9)"
    )
    with pytest.raises(MeshError) as raised:
        mesh._await(replica.ready, "front-1 (new)", replica)
    assert str(raised.value) == (
        "front-1 (new) was killed by SIGKILL; the old one keeps running; "
        "its last log lines:\n    bye"
    )


@pytest.mark.slow  # starts a real service / Envoy
def test_a_replica_whose_port_another_process_took_is_reported_in_one_line(
    tmp_path: Path,
) -> None:
    mesh = planned(tmp_path)
    replica = mesh.workloads["front"].members[0]
    with held_port() as port:
        replica.port = port
        replica.env["PORT"] = str(port)
        ended(replica)  # the real front service
    with pytest.raises(MeshError) as raised:
        mesh.check_alive()
    assert str(raised.value) == (
        f"front-1 could not listen on port {replica.port}: another process took it after it "
        "was picked as free (address already in use)"
    )


@pytest.mark.slow  # starts a real service / Envoy
def test_an_envoy_whose_port_another_process_took_is_reported_in_one_line(
    tmp_path: Path,
) -> None:
    mesh = planned(tmp_path)
    with held_port() as port:
        mesh.ports = MeshPorts(gateway=free_port(), outbound=port, admin=free_port())
        mesh._start_envoy(write_bootstrap(tmp_path / "envoy", mesh.ports))  # the real Envoy
        assert mesh.proxy is not None
        mesh.proxy.wait(timeout=60)
    with pytest.raises(MeshError) as raised:
        mesh.check_envoy()
    assert str(raised.value) == (
        f"envoy could not listen on port {port}: another process took it after it was picked "
        "as free (address already in use)"
    )


def test_a_gateway_address_in_use_is_refused_before_anything_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        mesh = LocalMesh(Layout(ROOT), gateway_port=port, run_dir=tmp_path)
        with pytest.raises(MeshError, match=f"gateway address 127.0.0.1:{port} is already in use"):
            mesh.start()
        assert all(p.process is None for p in mesh.processes())  # nothing was started


def test_a_second_mesh_on_the_same_run_directory_is_refused(tmp_path: Path) -> None:
    # a live process (this one's parent) holds the state file
    (tmp_path / STATE_FILE).write_text(json.dumps({"pid": os.getppid(), "gateway": "g"}))
    mesh = LocalMesh(Layout(ROOT), gateway_port=free_port(), run_dir=tmp_path)
    with pytest.raises(MeshError, match="is already running from"):
        mesh.start()


def test_the_running_mesh_is_found_from_any_directory_below_its_root(tmp_path: Path) -> None:
    run_dir = tmp_path / ".run" / "mesh"
    run_dir.mkdir(parents=True)
    (run_dir / STATE_FILE).write_text("{}")
    below = tmp_path / "services" / "front"
    below.mkdir(parents=True)
    assert find_run_dir(below) == run_dir


def test_no_running_mesh_above_a_directory_says_where_it_looked(tmp_path: Path) -> None:
    with pytest.raises(MeshError, match=f"no local mesh is running from {tmp_path}/.run/mesh"):
        find_run_dir(tmp_path)


def test_the_control_socket_works_under_a_run_directory_too_long_for_a_socket_path(
    tmp_path: Path,
) -> None:
    from usvc_mesh.supervisor import _ControlServer, send_command

    run_dir = tmp_path / ("d" * 120)
    run_dir.mkdir()
    mesh = LocalMesh(Layout(ROOT), run_dir=run_dir)
    server = _ControlServer(mesh)
    try:
        (run_dir / STATE_FILE).write_text(
            json.dumps({"pid": os.getpid(), "control": str(server.path)})
        )
        with pytest.raises(MeshError, match="no workload 'nope'"):
            send_command(run_dir, {"restart": ["nope"]}, print)
    finally:
        server.close()
    assert not server.path.exists()
