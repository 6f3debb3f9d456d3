"""Fixtures for the local mesh: real aiohttp backends and a real Envoy on loopback."""

from __future__ import annotations

import asyncio
import functools
import random
import ssl
import subprocess
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

import usvc_mesh as mesh
from usvc_mesh.procs import free_port, http_ok, terminate, wait_until

__all__ = ["free_port"]  # the tests import it from here


@dataclass
class Backend:
    """One workload: answers with its name and the request it saw."""

    name: str
    fail_ratio: float = 0.0
    fail_status: int = 500
    delay: float = 0.0
    # A relay: answers with what GET ``forward`` (through ``proxy``) answered.
    forward: str | None = None
    proxy: str | None = None
    port: int = 0
    # Serve HTTPS with this context (a TLS-origination target).
    tls: ssl.SSLContext | None = None
    hits: int = 0
    seen: list[dict[str, Any]] = field(default_factory=list)
    bodies: list[bytes] = field(default_factory=list)  # as sent (OTLP protobuf is not text)
    rng: random.Random = field(default_factory=lambda: random.Random(7))

    async def handle(self, request: web.Request) -> web.Response:
        self.hits += 1
        record = {
            "name": self.name,
            "host": request.host,
            "path": request.path_qs,
            "headers": {k.lower(): v for k, v in request.headers.items()},
        }
        if request.can_read_body:
            raw = await request.read()
            record["body"] = raw.decode("utf-8", "replace")
            self.bodies.append(raw)
        self.seen.append(record)
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.forward is not None:
            async with (
                aiohttp.ClientSession() as session,
                session.get(self.forward, proxy=self.proxy) as upstream,
            ):
                return web.Response(status=upstream.status, body=await upstream.read())
        if self.fail_ratio and self.rng.random() < self.fail_ratio:
            return web.json_response(record, status=self.fail_status)
        return web.json_response(record)

    def reset(self) -> None:
        self.hits = 0
        self.seen.clear()
        self.bodies.clear()


class Backends:
    """aiohttp servers on an event loop of their own, so tests can stay synchronous."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.by_name: dict[str, Backend] = {}
        self.runners: list[web.AppRunner] = []

    def add(self, backend: Backend) -> Backend:
        asyncio.run_coroutine_threadsafe(self._start(backend), self.loop).result(10)
        self.by_name[backend.name] = backend
        return backend

    async def _start(self, backend: Backend) -> None:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", backend.handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0, ssl_context=backend.tls)
        await site.start()
        backend.port = runner.addresses[0][1]
        self.runners.append(runner)

    def __getitem__(self, name: str) -> Backend:
        return self.by_name[name]

    def endpoints(self) -> dict[str, tuple[str, int]]:
        return {name: ("127.0.0.1", backend.port) for name, backend in self.by_name.items()}

    def close(self) -> None:
        async def stop() -> None:
            for runner in self.runners:
                await runner.cleanup()

        asyncio.run_coroutine_threadsafe(stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


@dataclass
class Envoy:
    """A running Envoy reading its configuration from ``config_dir``."""

    process: subprocess.Popen[bytes]
    ports: mesh.MeshPorts
    config_dir: Path
    log: Path
    access_log: Path

    @property
    def admin(self) -> tuple[str, int]:
        return ("127.0.0.1", self.ports.admin)

    @property
    def gateway_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.gateway}"

    @property
    def outbound(self) -> int:
        """The shared outbound listener's port (these Envoys have no sidecars)."""
        assert self.ports.outbound
        return self.ports.outbound

    @property
    def proxy_url(self) -> str:
        return f"http://127.0.0.1:{self.outbound}"

    def apply(self, translation: mesh.Translation) -> None:
        mesh.write(self.config_dir, translation)
        mesh.wait_applied(self.admin, translation)

    def stats(self, prefix: str) -> dict[str, int]:
        """The counters and gauges matching ``prefix`` (not text readouts or histograms)."""
        found = mesh.admin_stats(self.admin, f"filter={prefix}")
        return {name: int(value) for name, value in found.items() if value.isdigit()}


def start_envoy(config_dir: Path, translation: mesh.Translation, **options: Any) -> Envoy:
    ports = mesh.MeshPorts(gateway=free_port(), outbound=free_port(), admin=free_port())
    access_log = config_dir / "access.log"
    path = mesh.write_bootstrap(config_dir, ports, access_log=access_log, **options)
    mesh.write(config_dir, translation)
    log = config_dir / "envoy.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            mesh.envoy_command(path, log_flush_ms=100),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    envoy = Envoy(process, ports, config_dir, log, access_log)
    try:
        await_envoy(process, ports.admin, log, timeout=10)
    except RuntimeError:
        process.kill()
        process.wait()
        raise
    mesh.wait_applied(envoy.admin, translation)
    return envoy


def await_envoy(process: subprocess.Popen[bytes], admin: int, log: Path, timeout: float) -> None:
    """Wait until a test's Envoy answers ``/ready``; RuntimeError with its log otherwise."""

    def alive() -> None:
        if process.poll() is not None:
            raise RuntimeError(f"envoy exited {process.returncode}:\n{log.read_text()}")

    try:
        ready = functools.partial(http_ok, f"http://127.0.0.1:{admin}/ready")
        wait_until(ready, timeout, "envoy", alive, interval=0.02)
    except TimeoutError:
        raise RuntimeError(f"envoy not ready in {timeout:g} s:\n{log.read_text()}") from None


def stop_envoy(envoy: Envoy | subprocess.Popen[bytes]) -> None:
    """Stop a test's Envoy (or a bare Envoy process): SIGTERM, SIGKILL after 5 s."""
    terminate(envoy.process if isinstance(envoy, Envoy) else envoy, timeout=5)


@pytest.fixture(scope="module")
def backends() -> Iterator[Backends]:
    running = Backends()
    yield running
    running.close()


# -- building objects, as they would appear in k8s/ --------------------------------


def deployment(name: str, **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {"template": {"metadata": {"labels": labels}}},
    }


def service(name: str, selector: Mapping[str, str], *ports: int) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": name},
        "spec": {
            "selector": dict(selector),
            "ports": [
                {"name": f"http-{p}" if p != 80 else "http", "port": p, "targetPort": 8080}
                for p in ports or (80,)
            ],
        },
    }


def istio(kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name},
        "spec": dict(spec),
    }


def virtual_service(
    name: str, hosts: list[str], http: list[dict[str, Any]], **extra: Any
) -> dict[str, Any]:
    return istio("VirtualService", name, {"hosts": hosts, "http": http, **extra})


def destination_rule(
    name: str, host: str, subsets: Mapping[str, Mapping[str, str]], **extra: Any
) -> dict[str, Any]:
    return istio(
        "DestinationRule",
        name,
        {
            "host": host,
            "subsets": [{"name": n, "labels": dict(labels)} for n, labels in subsets.items()],
            **extra,
        },
    )


def gateway(name: str = "front-gateway", hosts: tuple[str, ...] = ("*",)) -> dict[str, Any]:
    return istio(
        "Gateway",
        name,
        {
            "selector": {"istio": "ingressgateway"},
            "servers": [
                {"port": {"number": 80, "name": "http", "protocol": "HTTP"}, "hosts": list(hosts)}
            ],
        },
    )
