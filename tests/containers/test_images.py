"""The images: what they run, as whom, with what, and that the manifests name them."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.procs import ROOT
from usvc_mesh.containers import images

from .conftest import TIMINGS
from .engine import Engine
from .support import get, network, published_url, running, wait_healthy

USVC_SERVICES = ("front", "middle", "core", "clock")


def deployments() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted((ROOT / "k8s" / "workloads").glob("*.yaml")):
        docs.extend(
            d for d in yaml.safe_load_all(path.read_text()) if d and d["kind"] == "Deployment"
        )
    return docs


def test_manifests_reference_exactly_the_images_the_build_tags(project: images.Project) -> None:
    references = {
        c["image"] for d in deployments() for c in d["spec"]["template"]["spec"]["containers"]
    }
    assert references == {project.reference(name) for name in USVC_SERVICES}


def test_chart_values_make_the_same_references(project: images.Project) -> None:
    values = yaml.safe_load((ROOT / "helm/usvc/values.yaml").read_text())
    chart = yaml.safe_load((ROOT / "helm/usvc/Chart.yaml").read_text())
    tag = values["image"]["tag"] or chart["appVersion"]
    assert (values["image"]["registry"], tag) == (project.registry, project.version)
    repositories = {s["image"]["repository"] for s in values["services"].values() if "image" in s}
    assert repositories == {f"{project.repository}/{name}" for name in USVC_SERVICES}


def test_unreachable_engine_is_one_line_naming_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(images.ImageError) as caught:
        images.connect()
    message = str(caught.value)
    assert "unix:///nonexistent/docker.sock" in message and "\n" not in message


def test_missing_base_image_is_an_error_not_a_pull(engine: Engine, project: images.Project) -> None:
    with pytest.raises(images.ImageError, match="usvc-local/absent:1 is not in the engine"):
        images.build(engine.client(), project, base_image="usvc-local/absent:1", out=lambda _: None)


def test_a_service_adds_less_than_a_megabyte_to_the_base(
    engine: Engine, built: dict[str, str]
) -> None:
    client = engine.client()
    base = images.size_of(client, built["base"])
    for name in (*USVC_SERVICES, "worldtime"):
        assert images.size_of(client, built[name]) - base < 1_000_000, name


def test_image_runs_what_its_deployment_runs(engine: Engine, built: dict[str, str]) -> None:
    client = engine.client()
    for deployment in deployments():
        container = deployment["spec"]["template"]["spec"]["containers"][0]
        config = client.images.get(container["image"]).attrs["Config"]
        assert config["Entrypoint"] + config["Cmd"] == container["command"] + container["args"], (
            deployment["metadata"]["name"]
        )


def test_images_run_healthy_as_non_root_on_a_read_only_root(
    engine: Engine, built: dict[str, str]
) -> None:
    client = engine.client()
    with network(client) as net:
        with (
            running(client, built["clock"], net, env={"SERVICE_NAME": "clock"}) as clock,
            running(client, built["worldtime"], net) as worldtime,
        ):
            for container, path in ((clock, "/"), (worldtime, "/api/timezone/Asia/Jakarta")):
                TIMINGS[f"{container.image.tags[0]} healthy"] = wait_healthy(container)
                container.reload()
                assert container.attrs["HostConfig"]["ReadonlyRootfs"] is True
                assert container.attrs["Config"]["User"] == "10001:10001"
                status, _ = get(published_url(container) + path)
                assert status == 200
                assert container.exec_run("id -u").output.strip() == b"10001"
                assert container.exec_run("touch /app/x").exit_code != 0


def test_every_service_image_answers_hello(engine: Engine, built: dict[str, str]) -> None:
    client = engine.client()
    with network(client) as net:
        for name in USVC_SERVICES:
            with running(client, built[name], net, env={"SERVICE_NAME": name}) as container:
                wait_healthy(container)
                status, body = get(published_url(container) + "/hello")
                assert (status, json.loads(body)) == (200, {"hello": "world!"}), name


def test_app_is_pid_1_and_stops_cleanly_on_sigterm(engine: Engine, built: dict[str, str]) -> None:
    client = engine.client()
    with network(client) as net:
        with running(client, built["clock"], net, publish=False) as container:
            wait_healthy(container)
            cmdline = container.exec_run("cat /proc/1/cmdline").output.split(b"\0")
            assert cmdline[:4] == [b"python", b"-m", b"usvc", b"run"]
            container.stop(timeout=20)
            container.reload()
            assert container.attrs["State"]["ExitCode"] == 0
            assert b'"stopped"' in container.logs()


# An assignment to a secret-looking name (ENV, ARG, --build-arg), a key, or a URL with credentials.
_SECRET = re.compile(
    r"(?i)((password|passwd|secret|token|api[_-]?key)[\w-]*=|BEGIN [A-Z ]*PRIVATE KEY|://[^/\s:@]+:[^/\s@]+@)"
)


def test_history_and_environment_hold_no_secret_or_build_cache(
    engine: Engine, built: dict[str, str]
) -> None:
    client = engine.client()
    for reference in built.values():
        image = client.images.get(reference)
        history = " ".join(str(layer.get("CreatedBy", "")) for layer in image.history())
        assert not _SECRET.search(history), reference
        assert "wheelhouse" not in history, reference  # only the throw-away build stage had it
        env = image.attrs["Config"]["Env"] or []
        assert not [e for e in env if _SECRET.search(e)], reference


def test_runtime_image_has_no_pip_no_caches_no_wheels(
    engine: Engine, built: dict[str, str]
) -> None:
    client = engine.client()
    listing = client.containers.run(
        built["base"],
        [
            "sh",
            "-c",
            "ls /wheelhouse /root/.cache /opt/usvc/bin/pip 2>&1;"
            " find / -xdev -name '*.whl' 2>/dev/null; true",
        ],
        remove=True,
        network_mode="none",
        user="0",
    ).decode()
    assert listing.count("No such file or directory") == 3, listing
    # Debian's python3-venv keeps ensurepip's own wheels there; nothing else may.
    wheels = [line for line in listing.splitlines() if line.endswith(".whl")]
    assert all(w.startswith("/usr/share/python-wheels/") for w in wheels), wheels


def test_rebuilding_one_service_after_a_code_change(
    engine: Engine, built: dict[str, str], tmp_path: Path
) -> None:
    copy = tmp_path / "project"
    shutil.copytree(
        ROOT / "services", copy / "services", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copy(ROOT / ".dockerignore", copy / ".dockerignore")
    shutil.copy(ROOT / "setup.cfg", copy / "setup.cfg")
    app = copy / "services" / "clock" / "app.py"
    app.write_text(app.read_text() + "\nREBUILT_MARK = 1\n")
    client = engine.client()
    other = images.Project(copy, registry="rebuilt.test")
    client.images.get(built["base"]).tag(*other.reference("base").rsplit(":", 1))
    started = time.monotonic()
    rebuilt = images.build(client, other, ["clock"], out=lambda _: None)
    TIMINGS["rebuild clock after a change"] = time.monotonic() - started
    try:
        assert list(rebuilt) == ["clock"]  # the base was not rebuilt
        source = client.containers.run(
            rebuilt["clock"],
            ["cat", "/app/services/clock/app.py"],
            entrypoint=[],
            remove=True,
            network_mode="none",
        )
        assert b"REBUILT_MARK = 1" in source
    finally:
        client.images.remove(rebuilt["clock"])
        client.images.remove(other.reference("base"))


def test_sdk_push_refusal_is_raised(engine: Engine, built: dict[str, str]) -> None:
    # No registry listens on port 1: the push stream reports it as an error item.
    client = engine.client()
    client.images.get(built["clock"]).tag("127.0.0.1:1/usvc/clock", "x")
    try:
        with pytest.raises(images.ImageError, match=r"push 127\.0\.0\.1:1/usvc/clock:x"):
            images.push(client, ["127.0.0.1:1/usvc/clock:x"], out=lambda _: None)
    finally:
        client.images.remove("127.0.0.1:1/usvc/clock:x")


def usvc(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(Path(sys.executable).parent / "usvc"), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_usvc_images_list_shows_every_image_with_its_size(
    engine: Engine, built: dict[str, str]
) -> None:
    result = usvc("images", "list", "--root", str(ROOT), env=engine.env())
    assert result.returncode == 0, result.stderr
    listed = {line.split()[0] for line in result.stdout.splitlines()}
    assert set(built.values()) <= listed
    assert all(line.split()[2] == "MB" for line in result.stdout.splitlines())


def test_usvc_images_without_an_engine_fails_in_one_line() -> None:
    env = {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock"}
    result = usvc("images", "build", "--root", str(ROOT), env=env)
    assert result.returncode == 1
    assert result.stderr.count("\n") == 1
    assert result.stderr.startswith("usvc images build: cannot reach the Docker engine at unix:///")
