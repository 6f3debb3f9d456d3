"""docker-compose.yml for real: the chain in containers, routed by the generated Envoy config."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

import usvc_mesh as mesh
from tests.chain.conftest import fetch_many, hops, path_of
from tests.procs import ROOT, free_port
from usvc_mesh.containers import compose
from usvc_mesh.manifests import Layout

from .conftest import FIGURES, TIMINGS, timed
from .engine import Engine
from .support import get

PROJECT = "usvctier"
COMPOSE_V1 = "/usr/bin/docker-compose"
PROFILES = ["--profile", "stand-in"]


def compose_file() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    return loaded


def deployment_names() -> set[str]:
    return set(compose.plan(Layout(ROOT)).env)


def container_names() -> dict[str, str]:
    """Every workload container (compose service) -> its Deployment."""
    plan = compose.plan(Layout(ROOT))
    return {c: name for name, containers in plan.containers.items() for c in containers}


def test_committed_compose_files_match_the_manifests() -> None:
    assert compose.drift(Layout(ROOT), ROOT / compose.COMPOSE_DIR) == []


def test_drift_is_reported_by_file(tmp_path: Path) -> None:
    shutil.copytree(ROOT / compose.COMPOSE_DIR, tmp_path / "compose")
    (tmp_path / "compose" / "env" / "clock.env").write_text("PORT=1\n")
    assert compose.drift(Layout(ROOT), tmp_path / "compose") == ["env/clock.env"]


def test_compose_file_runs_every_deployment_with_its_generated_env() -> None:
    services = compose_file()["services"]
    runs = {name for name, s in services.items() if "env_file" in s}
    assert runs == set(container_names())
    for name, deployment in container_names().items():
        assert services[name]["env_file"] == f"compose/env/{deployment}.env"


def test_compose_runs_as_many_front_containers_as_the_chart_has_replicas() -> None:
    services = compose_file()["services"]
    assert compose.plan(Layout(ROOT)).containers["front"] == ["front-1", "front-2", "front-3"]
    # The hostname is SERVICE_INSTANCE's default: the instance each reply names.
    assert [services[f"front-{i}"]["hostname"] for i in (1, 2, 3)] == [
        "front-1",
        "front-2",
        "front-3",
    ]
    depends = services["envoy"]["depends_on"]
    assert set(container_names()) <= set(depends)


def test_every_front_container_is_an_endpoint_of_its_envoy_cluster() -> None:
    translation = compose.plan(Layout(ROOT)).translation
    cluster = translation.cluster("outbound|80||front-svc.usvc.svc.cluster.local")
    assert cluster["type"] == "STRICT_DNS"
    addresses = [
        e["endpoint"]["address"]["socket_address"]
        for e in cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
    ]
    assert addresses == [{"address": f"front-{i}", "port_value": 8080} for i in (1, 2, 3)]


def test_compose_file_has_no_version_and_publishes_on_loopback_only() -> None:
    data = compose_file()
    assert "version" not in data  # compose v1 honours depends_on conditions only without it
    for name, service in data["services"].items():
        for port in service.get("ports", []):
            assert str(port).startswith("127.0.0.1:"), name


def test_every_container_is_hardened_as_in_the_cluster() -> None:
    for name, service in compose_file()["services"].items():
        assert service["user"] == "10001:10001", name
        assert service["read_only"] is True, name
        assert service["cap_drop"] == ["ALL"], name
        assert "no-new-privileges:true" in service["security_opt"], name


def test_envoy_healthcheck_is_the_one_compose_generates() -> None:
    envoy = compose_file()["services"]["envoy"]
    assert envoy["healthcheck"]["test"] == compose.healthcheck_command()


def test_envoy_endpoints_are_container_names_resolved_by_dns() -> None:
    translation = compose.plan(Layout(ROOT)).translation
    cluster = translation.cluster("outbound|80|canary|middleware-svc.usvc.svc.cluster.local")
    assert cluster["type"] == "STRICT_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]
    assert address["address"]["socket_address"] == {"address": "middle-canary", "port_value": 8080}


def test_bootstrap_binds_all_interfaces_and_reads_container_paths() -> None:
    bootstrap = json.loads((ROOT / "compose/envoy/bootstrap.json").read_text())
    listeners = {item["name"]: item for item in bootstrap["static_resources"]["listeners"]}
    for name in ("gateway", "outbound", "stats"):
        assert listeners[name]["address"]["socket_address"]["address"] == "0.0.0.0"
    assert bootstrap["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    assert bootstrap["dynamic_resources"]["cds_config"]["path_config_source"]["path"] == (
        "/etc/usvc/envoy/cds.json"
    )


def test_compose_keeps_one_shared_outbound_listener_and_says_so() -> None:
    """No sidecar per workload in compose (docs/containers.md): no LDS listeners, a note."""
    bootstrap = json.loads((ROOT / "compose/envoy/bootstrap.json").read_text())
    assert "one shared outbound listener" in bootstrap["node"]["metadata"]["usvc.note"]
    assert json.loads((ROOT / "compose/envoy/lds.json").read_text())["resources"] == []
    assert "one shared outbound listener" in (ROOT / "docker-compose.yml").read_text()


def test_usvc_compose_use_knows_an_envoy_without_an_lds_version_runs_the_plan() -> None:
    """Envoy records no LDS version for an lds.json whose listeners never changed.

    `usvc compose use` waited for one and timed out ("did not load scenario prod").
    """
    translation = compose.plan(Layout(ROOT), "prod").translation
    seen = {k: v for k, v in mesh.versions(translation).items() if k != "lds"}
    assert mesh.runs_versions({**seen, "lds": ""}, translation)
    assert mesh.runs_versions(seen, translation)
    assert not mesh.runs_versions({**seen, "cds": "other"}, translation)


# -- the chain running -----------------------------------------------------------


@dataclass
class Running:
    directory: Path
    env: dict[str, str]
    gateway: str
    engine: Engine

    def compose(self, *args: str, timeout: float = 180) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [COMPOSE_V1, "-p", PROJECT, *PROFILES, *args],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )

    def containers(self) -> dict[str, Any]:
        client = self.engine.client()
        found = client.containers.list(
            all=True, filters={"label": f"com.docker.compose.project={PROJECT}"}
        )
        return {c.labels["com.docker.compose.service"]: c for c in found}

    def unhealthy_logs(self, lines: int = 30) -> str:
        """The last log lines of every container that is not healthy, for a failed start."""
        out = []
        for name, container in sorted(self.containers().items()):
            state = container.attrs["State"]
            health = (state.get("Health") or {}).get("Status")
            if health != "healthy":
                tail = container.logs(tail=lines).decode(errors="replace")
                out.append(f"\n--- {name} ({health or state['Status']}):\n{tail}")
        return "".join(out)


@pytest.fixture(scope="module")
def chain(
    engine: Engine, built: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Running]:
    # A copy: a scenario switch rewrites compose/envoy, which must not touch the checkout.
    directory = tmp_path_factory.mktemp("compose") / PROJECT
    directory.mkdir()
    shutil.copy(ROOT / "docker-compose.yml", directory)
    shutil.copytree(ROOT / "compose", directory / "compose")
    port = free_port()
    env = {
        **engine.env(),
        "USVC_ENVOY_IMAGE": built["envoy"],
        "USVC_GATEWAY_PORT": str(port),
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
    }
    running = Running(directory, env, f"http://127.0.0.1:{port}", engine)
    try:
        with timed("compose up -d"):
            result = running.compose("up", "-d")
        assert result.returncode == 0, result.stderr + running.unhealthy_logs()
        TIMINGS["compose chain healthy"] = compose.wait_healthy(running.containers(), timeout=120)
        yield running
    finally:
        running.compose("down", "--volumes", "--timeout", "20")
        for container in running.containers().values():  # anything down left, by id
            container.remove(force=True, v=True)


def test_compose_chain_is_healthy_with_every_deployment_and_the_stand_in(chain: Running) -> None:
    containers = chain.containers()
    assert set(containers) == set(container_names()) | {"envoy", "worldtime"}
    for name, container in containers.items():
        container.reload()
        assert container.attrs["State"]["Health"]["Status"] == "healthy", name
        assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True, name


async def test_beta_user_goes_to_middle_dev_and_core_test(chain: Running) -> None:
    results = await fetch_many(chain.gateway + "/", 20, {"x-dev-user": "betaUser"}, concurrency=4)
    paths = {tuple(path_of(body)) for status, body in results if status == 200}
    assert [status for status, _ in results] == [200] * 20
    assert paths == {("front/prod", "middle/dev", "core/test", "clock/prod")}


async def test_stress_test_user_goes_to_core_test_through_canary_or_prod(chain: Running) -> None:
    results = await fetch_many(chain.gateway + "/", 40, {"x-dev-user": "stressTest"}, concurrency=4)
    assert [status for status, _ in results] == [200] * 40
    middles = {path_of(body)[1] for _, body in results}
    assert middles <= {"middle/canary", "middle/prod"}
    assert {tuple(path_of(body)[2:]) for _, body in results} == {("core/test", "clock/prod")}


async def test_canary_share_is_20_percent_within_5_points_over_1000_requests(
    chain: Running,
) -> None:
    results = await fetch_many(chain.gateway + "/", 1000, concurrency=16)
    assert [status for status, _ in results] == [200] * 1000
    middles = [path_of(body)[1] for _, body in results]
    share = middles.count("middle/canary") / len(middles)
    FIGURES["compose canary share (1,000 requests)"] = f"{share:.1%}"
    assert set(middles) == {"middle/canary", "middle/prod"}
    assert abs(share - 0.20) <= 0.05
    # no header: core prod, which asks worldtimeapi (the stand-in)
    assert {path_of(body)[2] for _, body in results} == {"core/prod"}


async def test_300_requests_are_spread_over_the_three_front_containers(chain: Running) -> None:
    # The DestinationRule's LEAST_REQUEST (Istio's default), as the chart sets it.
    results = await fetch_many(chain.gateway + "/", 300, concurrency=4)
    assert [status for status, _ in results] == [200] * 300
    spread = Counter(body["instance"] for _, body in results)
    FIGURES["compose front spread (300 requests)"] = str(dict(sorted(spread.items())))
    assert set(spread) == {"front-1", "front-2", "front-3"}
    # issue #12's bound, 100 +- 30 each: every container gets a fair share
    assert all(70 <= count <= 130 for count in spread.values()), spread


def test_one_trace_id_across_every_hop(chain: Running) -> None:
    status, body = get(
        chain.gateway + "/", {"Accept": "application/json", "x-dev-user": "betaUser"}
    )
    reply = json.loads(body)
    assert status == 200 and len(hops(reply)) == 4
    assert {hop["trace_id"] for hop in hops(reply)} == {reply["trace_id"]}


def usvc_compose(chain: Running, *args: str) -> subprocess.CompletedProcess[str]:
    command = [str(Path(sys.executable).parent / "usvc"), "compose", *args]
    where = ["--root", str(chain.directory), "--project-name", PROJECT]
    return subprocess.run(
        [*command, *where, "--manifests", str(ROOT / "k8s")],
        env=chain.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_usvc_compose_wait_reports_the_running_chain_healthy(chain: Running) -> None:
    result = usvc_compose(chain, "wait", "--timeout", "30")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("healthy in ")


async def test_scenario_switch_reroutes_without_restarting_a_container(chain: Running) -> None:
    before = {name: c.attrs["State"]["StartedAt"] for name, c in chain.containers().items()}
    switched = usvc_compose(chain, "use", "prod")
    assert switched.returncode == 0, switched.stderr
    try:
        results = await fetch_many(
            chain.gateway + "/", 50, {"x-dev-user": "betaUser"}, concurrency=4
        )
        assert {path_of(body)[1] for _, body in results} == {"middle/prod"}
    finally:
        back = usvc_compose(chain, "use", "current")
        assert back.returncode == 0, back.stderr
    after = {name: c.attrs["State"]["StartedAt"] for name, c in chain.containers().items()}
    assert after == before


def fetch_from(container: Any, url: str) -> str:
    """GET ``url`` from inside ``container`` with its own Python: the status or the error."""
    code = (
        "import urllib.request, sys\n"
        "try:\n"
        f"    print(urllib.request.urlopen({url!r}, timeout=3).status)\n"
        "except Exception as e:\n"
        "    print(type(e).__name__)\n"
    )
    result = container.exec_run(["python", "-c", code])
    return str(result.output.decode().strip())


def test_envoy_stats_reach_the_network_but_its_admin_does_not(chain: Running) -> None:
    front = chain.containers()["front-1"]
    assert fetch_from(front, f"http://envoy:{compose.STATS_PORT}/stats/prometheus") == "200"
    assert fetch_from(front, f"http://envoy:{compose.STATS_PORT}/config_dump") == "HTTPError"
    assert fetch_from(front, f"http://envoy:{compose.PORTS.admin}/ready") == "URLError"


def test_down_leaves_no_container_network_or_volume(chain: Running) -> None:
    with timed("compose down"):
        result = chain.compose("down", "--volumes", "--timeout", "20")
    assert result.returncode == 0, result.stderr
    client = chain.engine.client()
    label = {"label": f"com.docker.compose.project={PROJECT}"}
    assert client.containers.list(all=True, filters=label) == []
    assert client.networks.list(filters=label) == []
    assert client.volumes.list(filters=label) == []


def test_compose_v1_accepts_the_file_with_every_profile() -> None:
    result = subprocess.run(
        [COMPOSE_V1, "--profile", "stand-in", "--profile", "telemetry", "config", "--quiet"],
        cwd=ROOT,
        env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr


def test_prometheus_scrapes_every_deployment_and_envoys_stats() -> None:
    config = yaml.safe_load((ROOT / "compose/prometheus/prometheus.yml").read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    targets = set(jobs["usvc"]["static_configs"][0]["targets"])
    assert targets == {f"{name}:8080" for name in container_names()}
    assert jobs["envoy"]["static_configs"][0]["targets"] == [f"envoy:{compose.STATS_PORT}"]
