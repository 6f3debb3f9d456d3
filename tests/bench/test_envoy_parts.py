"""bench/envoy_parts.py: every variant is a configuration Envoy accepts, built from the mesh's."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

from bench import envoy_parts
from usvc_mesh import envoy


def context(tmp_path: Path) -> envoy_parts.Context:
    return envoy_parts.Context(tmp_path, upstream_port=18080, collector_port=19411)


@pytest.mark.slow  # one `envoy --mode validate` per variant
def test_every_variant_is_a_configuration_envoy_accepts(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    for variant in envoy_parts.variants():
        path = tmp_path / "variant.json"
        path.write_text(json.dumps(variant.bootstrap(ctx, 18001, 18002)))
        done = subprocess.run(
            [envoy.envoy_binary(), "--mode", "validate", "-c", str(path), "--log-level", "error"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, f"{variant.name}: {done.stderr}{done.stdout}"


def test_the_mesh_variant_is_the_outbound_listener_the_mesh_writes(tmp_path: Path) -> None:
    ctx = context(tmp_path)
    mesh = next(v for v in envoy_parts.variants() if v.name == "mesh")
    (listener,) = mesh.bootstrap(ctx, 18001, 18002)["static_resources"]["listeners"]
    ports = envoy.MeshPorts(gateway=1, outbound=2, admin=3)
    written = envoy.bootstrap(tmp_path, ports, collector=("127.0.0.1", ctx.collector_port))
    outbound = next(x for x in written["static_resources"]["listeners"] if x["name"] == "outbound")
    ours, theirs = (
        x["filter_chains"][0]["filters"][0]["typed_config"] for x in (listener, outbound)
    )
    assert ours["http_filters"] == theirs["http_filters"]
    assert ours["tracing"] == theirs["tracing"]
    assert (
        ours["access_log"][0]["typed_config"]["log_format"]
        == (theirs["access_log"][0]["typed_config"]["log_format"])
    )
    # Only the routes differ: inline, one virtual host for the upstream.
    assert {k for k in ours if ours[k] != theirs.get(k)} == {"route_config", "access_log"}


def test_the_x4_variant_is_four_mesh_listeners_in_a_row_before_the_upstream(
    tmp_path: Path,
) -> None:
    ctx = context(tmp_path)
    x4 = next(v for v in envoy_parts.variants() if v.name == "mesh x4 slow")
    assert (x4.traversals, x4.upstream, x4.base) == (4, "slow", "minimal slow")
    config = x4.bootstrap(ctx, 18001, 18002)
    resources = config["static_resources"]
    ports = {
        c["name"]: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"][
            "socket_address"
        ]["port_value"]
        for c in resources["clusters"]
        if c["load_assignment"]["endpoints"]
    }
    hops = []
    for listener in resources["listeners"]:
        hcm = listener["filter_chains"][0]["filters"][0]["typed_config"]
        route = hcm["route_config"]["virtual_hosts"][-1]["routes"][0]["route"]["cluster"]
        hops.append((listener["address"]["socket_address"]["port_value"], route))
    assert hops[0][0] == 18001
    # Each listener's route goes to the next listener; the last one to the upstream.
    assert [ports[route] for _, route in hops[:-1]] == [port for port, _ in hops[1:]]
    assert ports[hops[-1][1]] == ctx.upstream_port
    # Every hop is the mesh's listener, tracer and access log included.
    assert all(
        "tracing" in x["filter_chains"][0]["filters"][0]["typed_config"]
        for x in resources["listeners"]
    )
