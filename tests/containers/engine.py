"""A private Docker engine for the container tier, started and stopped by pid.

``dockerd`` runs in its own mount namespace (``unshare --mount``) so that what
it writes outside its data root (``/etc/docker/key.json``) and the host names
the registry tests add (``/etc/hosts``) stay private to it. It never touches
the host's iptables or IP forwarding, and has no default bridge: every
container runs on a network the tests create and remove.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import docker

from usvc_mesh.procs import die_with_parent

# Debian's 20.10 client; another docker earlier on PATH may need BuildKit plugins.
DOCKER_CLI = "/usr/bin/docker"
DOCKERD = shutil.which("dockerd") or "/usr/sbin/dockerd"


@dataclass
class Engine:
    root: Path
    process: subprocess.Popen[bytes]
    _client: docker.DockerClient | None = field(default=None, repr=False)

    @property
    def socket(self) -> Path:
        return self.root / "docker.sock"

    @property
    def host(self) -> str:
        return f"unix://{self.socket}"

    @property
    def etc_docker(self) -> Path:
        """The daemon's own /etc/docker (certs.d lives here)."""
        return self.root / "etc-docker"

    @property
    def hosts_file(self) -> Path:
        """The daemon's own /etc/hosts."""
        return self.root / "hosts"

    def env(self) -> dict[str, str]:
        return {**os.environ, "DOCKER_HOST": self.host}

    def client(self) -> docker.DockerClient:
        """One SDK client for the whole tier, closed with the engine (its socket too)."""
        if self._client is None:
            self._client = docker.DockerClient(base_url=self.host, timeout=300)
        return self._client

    def cli(self, *args: str, timeout: float = 300, check: bool = True) -> str:
        result = subprocess.run(
            [DOCKER_CLI, *args],
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"docker {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def stop(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        subprocess.run(["umount", "-R", str(self.root / "data")], capture_output=True, check=False)
        # The daemon's log outlives it, for a failed run.
        shutil.copy(
            self.root / "dockerd.log", Path(tempfile.gettempdir()) / "usvc-dockerd-last.log"
        )
        shutil.rmtree(self.root, ignore_errors=True)


def start_engine(timeout: float = 60.0) -> Engine:
    root = Path(tempfile.mkdtemp(prefix="usvc-dockerd-"))
    for name in ("data", "exec", "etc-docker"):
        (root / name).mkdir()
    shutil.copy("/etc/hosts", root / "hosts")
    (root / "hosts").chmod(0o644)
    daemon = [
        DOCKERD,
        f"--host=unix://{root / 'docker.sock'}",
        f"--data-root={root / 'data'}",
        f"--exec-root={root / 'exec'}",
        f"--pidfile={root / 'dockerd.pid'}",
        "--iptables=false",
        "--ip-forward=false",
        "--ip-masq=false",
        "--bridge=none",
        "--storage-driver=overlay2",
    ]
    # The shell binds the private files, then becomes dockerd: the pid we hold is dockerd's.
    script = (
        f'mount --bind "{root / "etc-docker"}" /etc/docker'
        f' && mount --bind "{root / "hosts"}" /etc/hosts'
        ' && exec "$@"'
    )
    log = (root / "dockerd.log").open("wb")
    process = subprocess.Popen(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "dockerd", *daemon],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        preexec_fn=die_with_parent,  # a killed test run takes its engine with it
    )
    log.close()
    engine = Engine(root, process)
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            tail = (root / "dockerd.log").read_text(errors="replace")[-2000:]
            shutil.rmtree(root, ignore_errors=True)
            raise RuntimeError(f"dockerd exited with {process.returncode}:\n{tail}")
        if engine.socket.exists():
            try:
                engine.client().ping()
                return engine
            except docker.errors.DockerException:
                pass
        if time.monotonic() > deadline:
            engine.stop()
            raise RuntimeError(f"dockerd did not answer within {timeout}s")
        time.sleep(0.25)
