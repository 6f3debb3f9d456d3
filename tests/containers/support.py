"""Containers and networks that the tests start, each removed by id."""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import docker
from docker.models.containers import Container
from docker.models.networks import Network

# As in the chart: no root, nothing writable but /tmp, no capabilities.
HARDENED: dict[str, Any] = {
    "read_only": True,
    "tmpfs": {"/tmp": "rw,noexec,nosuid,size=64m"},
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}
QUIET = {"OTEL_TRACES_EXPORTER": "none", "DRAIN_SECONDS": "0"}


@contextmanager
def network(client: docker.DockerClient) -> Iterator[Network]:
    created = client.networks.create(f"usvc-test-{uuid.uuid4().hex[:8]}", driver="bridge")
    try:
        yield created
    finally:
        created.remove()


@contextmanager
def running(
    client: docker.DockerClient,
    image: str,
    net: Network,
    *,
    name: str | None = None,
    env: Mapping[str, str] | None = None,
    publish: bool = True,
    **options: Any,
) -> Iterator[Container]:
    """A detached container on ``net``, port 8080 published on an ephemeral 127.0.0.1 port."""
    container = client.containers.run(
        image,
        detach=True,
        network=net.name,
        name=name,
        environment={**QUIET, **(env or {})},
        ports={"8080/tcp": ("127.0.0.1", None)} if publish else {},
        **{**HARDENED, **options},
    )
    try:
        yield container
    finally:
        container.remove(force=True, v=True)


def wait_healthy(container: Container, timeout: float = 60.0) -> float:
    """Seconds until the image's HEALTHCHECK passes; AssertionError on unhealthy or exit."""
    started = time.monotonic()
    while True:
        container.reload()
        state = container.attrs["State"]
        status = (state.get("Health") or {}).get("Status")
        if status == "healthy":
            return time.monotonic() - started
        if status == "unhealthy" or state["Status"] == "exited":
            raise AssertionError(
                f"{container.name} is {status or state['Status']}: {logs(container)}"
            )
        if time.monotonic() - started > timeout:
            raise AssertionError(f"{container.name} not healthy in {timeout}s: {logs(container)}")
        time.sleep(0.25)


def logs(container: Container, lines: int = 15) -> str:
    text: bytes = container.logs(tail=lines)
    return text.decode(errors="replace")


def published_url(container: Container, port: str = "8080/tcp") -> str:
    container.reload()
    binding = container.attrs["NetworkSettings"]["Ports"][port][0]
    return f"http://{binding['HostIp']}:{binding['HostPort']}"


def get(
    url: str, headers: Mapping[str, str] | None = None, timeout: float = 5.0
) -> tuple[int, bytes]:
    request = urllib.request.Request(url, headers=dict(headers or {}))
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return response.status, response.read()
