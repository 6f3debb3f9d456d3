"""The local mesh for real: every workload a process, one Envoy, loopback only."""

from __future__ import annotations

import asyncio
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml

from tests.procs import ROOT, free_port
from usvc_mesh.manifests import Layout
from usvc_mesh.supervisor import LocalMesh

JSON = {"Accept": "application/json"}


def hops(reply: dict[str, Any]) -> list[dict[str, Any]]:
    """The chain of hop replies, top first."""
    found = []
    node: Any = reply
    while isinstance(node, dict) and "service" in node:
        found.append(node)
        node = node.get("upstream")
    return found


def path_of(reply: dict[str, Any]) -> list[str]:
    """e.g. ['front/prod', 'middle/canary', 'core/test', 'clock/prod']."""
    return [f"{h['service']}/{h['env']}" for h in hops(reply)]


async def fetch_many(
    url: str, count: int, headers: dict[str, str] | None = None, concurrency: int = 16
) -> list[tuple[int, Any]]:
    """``count`` GETs, ``concurrency`` at a time: (status, JSON body or text)."""
    results: list[tuple[int, Any]] = []
    queue = iter(range(count))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as client:

        async def worker() -> None:
            for _ in queue:
                async with client.get(url, headers={**JSON, **(headers or {})}) as resp:
                    text = await resp.text()
                    try:
                        body: Any = await resp.json(content_type=None)
                    except ValueError:
                        body = text
                    results.append((resp.status, body))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return results


def scenario_with(source: Path, target: Path, edit: Any) -> None:
    """Write ``target``: the scenario ``source`` with ``edit(doc)`` applied to each doc."""
    docs = [d for d in yaml.safe_load_all(source.read_text()) if d]
    for doc in docs:
        edit(doc)
    target.write_text(yaml.safe_dump_all(docs))


def start_mesh(
    tmp: Path,
    scenario: str = "current",
    env_overrides: dict[str, dict[str, str]] | None = None,
) -> LocalMesh:
    manifests = tmp / "k8s"
    if not manifests.exists():
        shutil.copytree(ROOT / "k8s", manifests)
    mesh = LocalMesh(
        Layout(ROOT, manifests_dir=manifests),
        scenario=scenario,
        gateway_port=free_port(),
        run_dir=tmp / "run",
        base_env={"OTEL_TRACES_EXPORTER": "none", "PATH": "/usr/bin:/bin"},
        env_overrides=env_overrides or {},
    )
    mesh.start()
    return mesh


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalMesh]:
    running = start_mesh(tmp_path_factory.mktemp("mesh"))
    yield running
    running.stop()


def gateway(mesh: LocalMesh) -> str:
    assert mesh.ports is not None
    return f"http://{mesh.ports.gateway_host}:{mesh.ports.gateway}/"
