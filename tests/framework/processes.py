"""A usvc service as a real process on a loopback port, for tests of how it runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from usvc_mesh.procs import die_with_parent, free_port

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class ServiceProcess:
    process: subprocess.Popen[bytes]
    port: int
    stdout: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log_lines(self) -> list[dict[str, Any]]:
        """Every JSON line the service wrote to stdout so far."""
        return [json.loads(line) for line in self.stdout.read_text().splitlines() if line]

    def metrics(self) -> str:
        with _OPENER.open(self.url + "/metrics", timeout=5) as resp:
            text: str = resp.read().decode()
            return text

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


def start_service(directory: Path, source: str, **env: str) -> ServiceProcess:
    """Run ``source`` (a module defining ``svc``) with ``usvc run``; wait for /readyz."""
    (directory / "svc_under_test.py").write_text(source)
    port = free_port()
    stdout = directory / "stdout.log"
    with stdout.open("wb") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "usvc", "run", "svc_under_test:svc"],
            cwd=directory,
            env={
                "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
                "PORT": str(port),
                "OTEL_TRACES_EXPORTER": "none",
                **env,
            },
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=die_with_parent,
        )
    service = ServiceProcess(process, port, stdout)
    deadline = time.monotonic() + 20
    while True:
        if process.poll() is not None or time.monotonic() > deadline:
            service.stop()
            raise RuntimeError(f"service did not start:\n{stdout.read_text()[-2000:]}")
        try:
            with _OPENER.open(service.url + "/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return service
        except OSError:
            pass
        time.sleep(0.05)
