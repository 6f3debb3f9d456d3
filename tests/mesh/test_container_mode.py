"""What the translator does for a mesh whose workloads are containers (compose).

Endpoints there are container names, resolved by Docker's DNS; Envoy runs in
a container of its own, so its listeners bind every interface and its
bootstrap names the paths it sees (docs/containers.md).
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import usvc_mesh as tr
from tests.mesh.conftest import deployment, istio, service

FQDN = "middleware-svc.default.svc.cluster.local"


def objects() -> list[dict[str, Any]]:
    return [
        deployment("middle-prod", app="middle", env="prod"),
        service("middleware-svc", {"app": "middle"}),
        istio(
            "ServiceEntry",
            "time",
            {
                "hosts": ["time.example"],
                "resolution": "DNS",
                "ports": [{"number": 80, "name": "http"}],
            },
        ),
    ]


def test_endpoint_given_by_name_makes_a_strict_dns_cluster() -> None:
    translation = tr.translate(objects(), endpoints={"middle-prod": ("middle-prod", 8080)})
    cluster = translation.cluster(f"outbound|80||{FQDN}")
    assert cluster["type"] == "STRICT_DNS"
    assert cluster["dns_lookup_family"] == "V4_ONLY"


def test_endpoint_given_by_ip_stays_static() -> None:
    translation = tr.translate(objects(), endpoints={"middle-prod": ("127.0.0.1", 8080)})
    assert translation.cluster(f"outbound|80||{FQDN}")["type"] == "STATIC"


def test_stand_in_given_by_name_makes_a_strict_dns_cluster() -> None:
    translation = tr.translate(
        objects(),
        endpoints={"middle-prod": ("127.0.0.1", 8080)},
        externals={"time.example": ("stand-in.time.example", 8080)},
    )
    cluster = translation.cluster("outbound|80||time.example")
    assert cluster["type"] == "STRICT_DNS"
    address = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
    assert address["socket_address"] == {"address": "stand-in.time.example", "port_value": 8080}


def test_bootstrap_can_bind_outbound_on_all_interfaces() -> None:
    ports = tr.MeshPorts(gateway=8080, outbound=15001, admin=15000, gateway_host="0.0.0.0")
    config = tr.bootstrap(Path("/host/dir"), ports, outbound_host="0.0.0.0")
    listeners = {item["name"]: item for item in config["static_resources"]["listeners"]}
    assert listeners["outbound"]["address"]["socket_address"]["address"] == "0.0.0.0"
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"


def test_bootstrap_names_the_config_path_the_container_sees() -> None:
    ports = tr.MeshPorts(gateway=8080, outbound=15001, admin=15000)
    config = tr.bootstrap(Path("/host/dir"), ports, config_path=PurePosixPath("/etc/usvc/envoy"))
    source = config["dynamic_resources"]["cds_config"]["path_config_source"]["path"]
    assert source == "/etc/usvc/envoy/cds.json"
    assert "/host/dir" not in str(config)


def test_written_xds_files_are_readable_by_another_user(tmp_path: Path) -> None:
    translation = tr.translate(objects(), endpoints={"middle-prod": ("middle-prod", 8080)})
    tr.write(tmp_path, translation)
    for name in (tr.CDS_FILE, *tr.RDS_FILES.values()):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o644
