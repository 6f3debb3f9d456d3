"""The private registry: TLS from its own CA, htpasswd logins, push and pull through it."""

from __future__ import annotations

import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from usvc_mesh.containers import images, registry

from .conftest import timed
from .engine import Engine
from .support import get, network, published_url, running, wait_healthy

HOST = "registry.usvc.test"


def free_ipv6_port() -> int:
    with socket.socket(socket.AF_INET6) as probe:
        probe.bind(("::1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def served(
    engine: Engine, tmp_path_factory: pytest.TempPathFactory, monkeypatch_module: pytest.MonkeyPatch
) -> Iterator[registry.Registry]:
    # No credentials of the machine's own: the engine's client config is empty.
    monkeypatch_module.setenv("DOCKER_CONFIG", str(tmp_path_factory.mktemp("docker-config")))
    where = registry.Registry(tmp_path_factory.mktemp("registry"), HOST, ("::1", free_ipv6_port()))
    with timed("registry set-up + start"):
        registry.set_up(where)
        process = registry.start(where)
    # The engine resolves the name to ::1 and trusts the CA: its private /etc files.
    with engine.hosts_file.open("a") as hosts:  # same inode: the bind mount sees it
        hosts.write(f"::1 {HOST}\n")
    registry.trust(where, engine.etc_docker / "certs.d")
    try:
        yield where
    finally:
        registry.stop(where)
        process.wait(10)


@pytest.fixture(scope="module")
def monkeypatch_module() -> Iterator[pytest.MonkeyPatch]:
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def tagged(engine: Engine, built: dict[str, str], where: registry.Registry, tag: str) -> str:
    reference = f"{where.address}/usvc/clock:{tag}"
    engine.client().images.get(built["clock"]).tag(*reference.rsplit(":", 1))
    return reference


def test_password_is_generated_private_and_bcrypt(tmp_path: Path) -> None:
    first = registry.Registry(tmp_path / "a")
    second = registry.Registry(tmp_path / "b")
    assert registry.set_up(first) != registry.set_up(second)
    assert stat.S_IMODE(first.password_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((first.directory / "server.key").stat().st_mode) == 0o600
    assert (first.directory / "htpasswd").read_text().startswith("usvc:$2y$")
    assert not (first.directory / "ca.key").exists()  # nothing more can be signed


def test_short_password_is_refused(tmp_path: Path) -> None:
    with pytest.raises(registry.RegistryError, match="at least 12 characters"):
        registry.set_up(registry.Registry(tmp_path), password="hunter2")


def test_push_without_login_is_refused(
    engine: Engine, built: dict[str, str], served: registry.Registry
) -> None:
    reference = tagged(engine, built, served, "nologin")
    with pytest.raises(images.ImageError, match="no basic auth credentials"):
        images.push(engine.client(), [reference], out=lambda _: None)


def test_wrong_password_is_refused_with_401(engine: Engine, served: registry.Registry) -> None:
    with pytest.raises(images.ImageError, match="401 Unauthorized"):
        images.login(engine.client(), served.address, served.username(), "not-the-password")


def test_untrusted_ca_is_named_with_where_the_engine_reads_it(
    engine: Engine, built: dict[str, str], served: registry.Registry
) -> None:
    installed = served.certs_d(engine.etc_docker / "certs.d")
    installed.rename(installed.with_suffix(".away"))
    try:
        with pytest.raises(images.ImageError) as caught:
            images.login(engine.client(), served.address, served.username(), served.password())
        assert "certificate signed by unknown authority" in str(caught.value)
        assert "/etc/docker/certs.d/HOST:PORT/ca.crt" in str(caught.value)
    finally:
        installed.with_suffix(".away").rename(installed)


def test_push_remove_pull_run_answers_200(
    engine: Engine, built: dict[str, str], served: registry.Registry
) -> None:
    client = engine.client()
    auth = {"username": served.username(), "password": served.password()}
    images.login(client, served.address, **auth)
    reference = tagged(engine, built, served, "0.1.0")
    original = client.images.get(reference).id
    with timed("registry push (clock)"):
        images.push(client, [reference], auth=auth, out=lambda _: None)
    # Remove it locally, every tag of it, so the pull must fetch it.
    for tag in client.images.get(reference).tags:
        client.images.remove(tag)
    with pytest.raises(Exception):  # noqa: B017 - any lookup failure: it is gone
        client.images.get(original)
    with timed("registry pull (clock)"):
        images.pull(client, [reference], auth=auth, out=lambda _: None)
    pulled = client.images.get(reference)
    assert pulled.id == original
    pulled.tag(*built["clock"].rsplit(":", 1))  # what the other tests run stays available
    with network(client) as net, running(client, reference, net) as container:
        wait_healthy(container)
        status, _ = get(published_url(container) + "/hello")
        assert status == 200
